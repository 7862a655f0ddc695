#!/usr/bin/env bash
# Profile: instructions per inbound call, trunkline next to Kamailio, under callgrind.
#
# The calls of benches/inbound-cps.sh (sipp carrier with digest, benches/inbound-cps/uac.xml
# -> system under test -> sipp agent, uas.xml; trunkline: one InboundTrunk with digest and the
# RTP relay in every call; Kamailio: the digest proxy of kamailio.cfg.in), but a FIXED number
# of calls at a low rate, with the system under test under valgrind's callgrind, which counts
# the instructions it executes (Ir). The counts do not depend on the load of a shared machine:
# two runs agree within 0.1 %, where timings differ by tens of %.
#
# Per system (alternating, --runs times):
#  1. start it under callgrind with instrumentation off (start-up is not counted);
#  2. --warmup calls, then --settle s (their transactions and call tasks end);
#  3. zero the counters, instrumentation on; --calls calls at --rate calls/s;
#  4. --settle s more, so every counted call's timers, transactions and task end inside the
#     window; dump: the window (its Ir at the end of the calls is logged too: the tail);
#  5. --idle s more without calls: the process's idle cost, reported per second.
# Ir per call = the window's Ir / completed calls (sipp's count). A call retransmitted by sipp
# costs more: the retransmissions are reported and should be 0.
# trunkline is one process (all its threads are counted). Kamailio forks: it runs under
# --trace-children=yes, its processes' windows are summed (main, UDP workers, timers).
#
# Then, unless --no-syscalls, the same sequence natively under `strace -f -c` attached for the
# window: system calls per call by name (callgrind sees no kernel work).
#
# The binary: `cargo build --profile bench-profile` (Cargo.toml: release + line tables, in
# target/bench-profile/: the release code, with file:line for the listings).
# Ports on 127.0.0.1: SIP --base-port (default 9360) .. +30, sipp media +1000 and +1100,
# trunkline's RTP relays --rtp-ports (default 34000-35999); checked free first.
# Output: benches/out/callgrind/<time>/: callgrind.<system>.run<N>.<pid>.out.1 (the window;
# `desc: Trigger: dump window`), <system>.run<N>.areas.md (benches/callgrind/areas.py: by
# purpose, by kind of code, call counts, top functions), trunkline.run<N>.{inclusive,self}.txt
# (callgrind_annotate), <system>.native.strace.txt, sipp logs; summary.md. The last line:
#   RESULT trunkline_ir_per_call=... kamailio_ir_per_call=... ratio=... (medians of the runs)
#
# usage: benches/callgrind-invite.sh [options]     (--help lists them)
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BENCH=callgrind
HERE=$ROOT/benches/inbound-cps
source "$ROOT/benches/lib/cps.sh"   # log, die, stop_pid, ports_free, cps_install, autogroup
source "$ROOT/benches/lib/spec.sh"   # bench_spec: the one InboundTrunk every benchmark measures

RUNS=1
CALLS=200
RATE=10
WARMUP=20
SETTLE=40
IDLE=10
TOP=25
BASE_PORT=9360
RTP_PORTS=34000-35999
KAM_CHILDREN=1
KAM_SHM_MB=256
KAM_MEM=
SYSCALLS=1
BUILD=1
SYSTEMS="trunkline kamailio"
OUT=
NUMBER=15551230001
AUTH_USER=carrier
AUTH_PASS=s3cret-carrier

usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
  cat <<EOF
options:
  --runs N            profiled runs per system, alternating (default $RUNS)
  --calls N           counted calls per run (default $CALLS)
  --rate R            calls/s (default $RATE; under valgrind the system is ~50x slower, and
                      a late answer is retransmitted by sipp, which costs more)
  --warmup N          calls before the window, not counted (default $WARMUP)
  --settle S          wait after the warm-up and after the calls (default $SETTLE: trunkline's
                      calls linger 32 s after their end, like transaction timers J and D)
  --idle S            idle time counted after the window (default $IDLE)
  --top N             functions in the top lists (default $TOP)
  --only SYSTEM       trunkline or kamailio
  --kamailio-children N   Kamailio UDP workers (default $KAM_CHILDREN: valgrind runs the
                      threads of a process one at a time, and one worker has no lock
                      contention between workers to count; see docs/benchmarks.md)
  --kamailio-shm MB   Kamailio shared memory (default $KAM_SHM_MB)
  --kamailio-mem NAME Kamailio's memory manager (kamailio -x: qm, fm, tlsf; default: the
                      package's, qm, as in benches/inbound-cps.sh)
  --no-syscalls       skip the native strace pass
  --base-port P       see above (default $BASE_PORT)
  --rtp-ports LO-HI   trunkline's --rtp-ports (default $RTP_PORTS)
  --no-build          use target/bench-profile/trunkline as it is
  --outdir DIR        where the output goes
environment: BENCH_NICE (default -10): nice of the script's scheduler autogroup; 0 = off
EOF
}

ARGS=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift ;;
    --calls) CALLS=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --settle) SETTLE=$2; shift ;;
    --idle) IDLE=$2; shift ;;
    --top) TOP=$2; shift ;;
    --only) SYSTEMS=$2; shift ;;
    --kamailio-children) KAM_CHILDREN=$2; shift ;;
    --kamailio-shm) KAM_SHM_MB=$2; shift ;;
    --kamailio-mem) KAM_MEM=$2; shift ;;
    --no-syscalls) SYSCALLS=0 ;;
    --base-port) BASE_PORT=$2; shift ;;
    --rtp-ports) RTP_PORTS=$2; shift ;;
    --no-build) BUILD=0 ;;
    --outdir) OUT=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

cps_enter_autogroup ${ARGS[@]+"${ARGS[@]}"}
cps_install
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null \
  || die "valgrind is missing (apt-get install valgrind)"
[ "$SYSCALLS" = 0 ] || command -v strace >/dev/null || die "strace is missing (apt-get install strace), or --no-syscalls"

BIN=$ROOT/target/bench-profile/trunkline
if [[ " $SYSTEMS " == *" trunkline "* ]]; then
  if [ "$BUILD" = 1 ]; then
    log "cargo build --profile bench-profile --bin trunkline"
    cargo build --profile bench-profile --bin trunkline --quiet || die "cargo build failed"
  fi
  [ -x "$BIN" ] || die "$BIN not found (build it, or drop --no-build)"
fi
OUT=${OUT:-$ROOT/benches/out/$BENCH/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# --- ports (all on 127.0.0.1)
GW_PORT=$BASE_PORT
KAM_PORT=$((BASE_PORT + 1))
GW_INTERNAL=$((BASE_PORT + 2))
UAC_PORT=$((BASE_PORT + 10))
UAS_PORT=$((BASE_PORT + 20))
ADMIN_PORT=$((BASE_PORT + 30))
UAC_MEDIA=$((BASE_PORT + 1000))
UAS_MEDIA=$((BASE_PORT + 1100))
PORTS_UDP="$GW_PORT $KAM_PORT $GW_INTERNAL $UAC_PORT $UAS_PORT $UAC_MEDIA $UAS_MEDIA"
PORTS_TCP=$ADMIN_PORT

SUT_PID='' UAS_PID='' UAC_PID='' STRACE_PID=''
cleanup() {
  trap '' INT TERM
  [ -n "$STRACE_PID" ] && kill -INT "$STRACE_PID" 2>/dev/null
  stop_pid "$STRACE_PID" 5; STRACE_PID=
  stop_pid "$UAC_PID" 5; UAC_PID=
  stop_pid "$UAS_PID" 5; UAS_PID=
  stop_pid "$SUT_PID" 60; SUT_PID=
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the specs and the Kamailio configuration: those of benches/inbound-cps.sh. The specs
# folder's parent is watched too (source::watch): it holds nothing else, so that the files
# sipp writes in $OUT do not wake the gateway's folder watch during the window.
SPECS=$OUT/sut/specs
mkdir -p "$SPECS"
bench_spec "$SPECS/bench.yaml" "benches/callgrind-invite.sh (the spec of benches/inbound-cps.sh)" 127.0.0.0/8
if [ -x "$BIN" ]; then
  "$BIN" check "$SPECS" > "$OUT/check.txt" 2>&1 || { cat "$OUT/check.txt" >&2; die "trunkline check refused the specs"; }
fi
sed -e "s#@CHILDREN@#$KAM_CHILDREN#g; s#@LISTEN_IP@#127.0.0.1#g; s#@LISTEN_PORT@#$KAM_PORT#g; \
        s#@UAS_IP@#127.0.0.1#g; s#@UAS_PORT@#$UAS_PORT#g; s#@REALM@#kamailio#g; \
        s#@USER@#$AUTH_USER#g; s#@PASSWORD@#$AUTH_PASS#g; s#@NUMBER@#$NUMBER#g" \
    "$HERE/kamailio.cfg.in" > "$OUT/kamailio.cfg"
kamailio -c -f "$OUT/kamailio.cfg" > "$OUT/kamailio-check.txt" 2>&1 \
  || { tail -20 "$OUT/kamailio-check.txt" >&2; die "kamailio refused $OUT/kamailio.cfg"; }

# --- processes
VALGRIND=(valgrind --tool=callgrind --instr-atstart=no --dump-line=yes)

descendants() { local p; for p in $(pgrep -P "$1"); do echo "$p"; descendants "$p"; done; }
sut_pids() { echo "$SUT_PID"; descendants "$SUT_PID"; }

wait_udp_long() {  # wait_udp_long PID SECONDS PORT...: until it listens (valgrind starts slowly)
  local pid=$1 t=$2 i p ok; shift 2
  for ((i = 0; i < t * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    ok=1
    for p in "$@"; do ss -Hlun "sport = :$p" | grep -q . || ok=0; done
    [ $ok = 1 ] && return 0
    sleep 0.1
  done
  return 1
}

start_sut() {  # start_sut SYSTEM TAG callgrind|native: SUT_PID, SUT_TARGET
  local sys=$1 tag=$2 wrap=()
  if [ "$3" = callgrind ]; then
    wrap=("${VALGRIND[@]}" --callgrind-out-file="$OUT/callgrind.$tag.%p.out")
    [ "$sys" = kamailio ] && wrap+=(--trace-children=yes)
  fi
  case "$sys" in
    trunkline)
      rm -rf "$OUT/state" && mkdir -p "$OUT/state" && chmod 700 "$OUT/state"
      RUST_LOG=warn ${wrap[@]+"${wrap[@]}"} "$BIN" run --specs "$SPECS" \
        --listen "udp://127.0.0.1:$GW_PORT" --internal-listen "udp://127.0.0.1:$GW_INTERNAL" \
        --admin "127.0.0.1:$ADMIN_PORT" --state-dir "$OUT/state" --agent-timeout 10 \
        --drain-timeout 1 --rtp-ports "$RTP_PORTS" >> "$OUT/$tag.log" 2>&1 &
      SUT_PID=$!
      SUT_TARGET=127.0.0.1:$GW_PORT
      wait_udp_long "$SUT_PID" 180 "$GW_PORT" "$GW_INTERNAL" \
        || { tail -20 "$OUT/$tag.log" >&2; die "trunkline did not start"; }
      ;;
    kamailio)
      ${wrap[@]+"${wrap[@]}"} kamailio -f "$OUT/kamailio.cfg" -DD -E -m "$KAM_SHM_MB" -M 16 \
        ${KAM_MEM:+-x "$KAM_MEM"} -P "$OUT/kamailio.pid" >> "$OUT/$tag.log" 2>&1 &
      SUT_PID=$!
      SUT_TARGET=127.0.0.1:$KAM_PORT
      # (5 s: its workers and timer processes fork after the socket is bound)
      wait_udp_long "$SUT_PID" 180 "$KAM_PORT" && sleep 5 \
        || { tail -20 "$OUT/$tag.log" >&2; die "kamailio did not start"; }
      ;;
  esac
}

start_uas() {  # start_uas TAG: the sipp agent, for the whole run of a system
  sipp -sf "$HERE/uas.xml" -i 127.0.0.1 -p "$UAS_PORT" -mp "$UAS_MEDIA" -nostdin \
    -buff_size 4194304 -trace_stat -fd 1 -stf "$OUT/$1.uas.csv" \
    -trace_err -error_file "$OUT/$1.uas.err" > "$OUT/$1.uas.out" 2>&1 &
  UAS_PID=$!
  wait_udp_long "$UAS_PID" 10 "$UAS_PORT" || { tail -20 "$OUT/$1.uas.out" >&2; die "the sipp UAS did not start"; }
}

run_uac() {  # run_uac TAG CALLS: the sipp carrier, to its end; 0 = every call completed
  local rc
  sipp "$SUT_TARGET" -sf "$HERE/uac.xml" -s "$NUMBER" -au "$AUTH_USER" -ap "$AUTH_PASS" \
    -auth_uri "$NUMBER@$SUT_TARGET" -i 127.0.0.1 -p "$UAC_PORT" -mp "$UAC_MEDIA" \
    -r "$RATE" -m "$2" -l 10000 -nostdin -buff_size 4194304 -recv_timeout 20s \
    -timeout "$(($2 / RATE + 120))s" -trace_stat -fd 1 -stf "$OUT/$1.uac.csv" \
    -trace_err -error_file "$OUT/$1.uac.err" > "$OUT/$1.uac.out" 2>&1 &
  UAC_PID=$!
  wait "$UAC_PID"; rc=$?
  UAC_PID=
  return $rc
}

csv_last() {  # csv_last FILE COLUMN: the column in sipp's last statistics line (0 if none)
  python3 - "$1" "$2" <<'PY'
import sys
try:
    rows = [l.rstrip("\n").split(";") for l in open(sys.argv[1]) if l.strip()]
    print(int(rows[-1][rows[0].index(sys.argv[2])]) if len(rows) > 1 else 0)
except (OSError, ValueError, IndexError):
    print(0)
PY
}

cg() {  # cg ARGS...: callgrind_control on every process of the SUT; fails unless all say OK
  local out pids
  pids=$(sut_pids | tr '\n' ' ')
  # shellcheck disable=SC2086
  out=$(callgrind_control "$@" $pids 2>&1)
  echo "$out" >> "$OUT/callgrind_control.log"
  [ "$(grep -c 'OK\.' <<< "$out")" -ge "$(wc -w <<< "$pids")" ] || { echo "$out" >&2; return 1; }
}

cg_ir() {  # the SUT's Ir since the last zero or dump: all its processes and threads
  local pids
  pids=$(sut_pids | tr '\n' ' ')
  # shellcheck disable=SC2086
  callgrind_control -e $pids 2>&1 | tee -a "$OUT/callgrind_control.log" \
    | awk '$1 == "Th" { gsub(",", "", $3); s += $3 } END { printf "%d\n", s }'
}

# The window of one system: warm-up, settle, (window on) calls, settle (window off). Calls
# window_on / window_off, set by the caller; sets OK, FAIL, RETR, UAS_RETR, T_CALLS.
run_window() {
  local sys=$1 tag=$2 t0 uas_retr0
  log "$tag: $WARMUP warm-up calls, then $SETTLE s"
  run_uac "$tag-warmup" "$WARMUP" || log "note: not every warm-up call through $sys completed ($OUT/$tag-warmup.uac.err)"
  sleep "$SETTLE"
  uas_retr0=$(csv_last "$OUT/$tag.uas.csv" 'Retransmissions(C)')
  window_on
  log "$tag: $CALLS calls at $RATE/s (counted)"
  t0=$(date +%s)
  run_uac "$tag-calls" "$CALLS" || log "note: not every counted call through $sys completed ($OUT/$tag-calls.uac.err)"
  T_CALLS=$(( $(date +%s) - t0 ))
  calls_done
  log "$tag: calls done in $T_CALLS s; $SETTLE s for their tails"
  sleep "$SETTLE"
  window_off
  sleep 1.5   # the UAS's last statistics line
  UAS_RETR=$(( $(csv_last "$OUT/$tag.uas.csv" 'Retransmissions(C)') - uas_retr0 ))
  OK=$(csv_last "$OUT/$tag-calls.uac.csv" 'SuccessfulCall(C)')
  FAIL=$(csv_last "$OUT/$tag-calls.uac.csv" 'FailedCall(C)')
  RETR=$(csv_last "$OUT/$tag-calls.uac.csv" 'Retransmissions(C)')
}

profile() {  # profile SYSTEM RUN: the callgrind pass; writes $OUT/<tag>.result
  local sys=$1 tag=$1.run$2 calls_ir idle_ir files window_ir
  ports_free
  log "$tag: starting $sys under callgrind (instrumentation off)"
  start_sut "$sys" "$tag" callgrind
  start_uas "$tag"
  log "$tag: processes $(sut_pids | tr '\n' ' ')"
  window_on() { cg -z && cg -i on || die "callgrind_control could not switch on $sys's instrumentation"; }
  calls_done() { calls_ir=$(cg_ir); }
  window_off() { cg --dump=window || die "callgrind_control could not dump $sys's window"; }
  run_window "$sys" "$tag"
  log "$tag: $IDLE s idle"
  cg -z; sleep "$IDLE"; idle_ir=$(cg_ir)
  cg -i off
  stop_pid "$UAS_PID" 5; UAS_PID=
  stop_pid "$SUT_PID" 60; SUT_PID=
  files=$(grep -l '^desc: Trigger: dump window' "$OUT"/callgrind."$tag".*.out* 2>/dev/null | tr '\n' ' ')
  [ -n "$files" ] || die "no window dump of $tag in $OUT"
  # shellcheck disable=SC2086
  window_ir=$(python3 "$ROOT/benches/callgrind/areas.py" --totals $files)
  python3 - "$OK" "$FAIL" "$RETR" "$UAS_RETR" "$window_ir" "$calls_ir" "$idle_ir" "$IDLE" \
      "$((T_CALLS + SETTLE))" "$files" > "$OUT/$tag.result" <<'PY'
import sys
ok, fail, retr, uas_retr, window, calls_ir, idle, idle_s, span = map(int, sys.argv[1:10])
per = window / max(ok, 1)
idle_rate = idle / max(idle_s, 1)
print(f"completed={ok} failed={fail} retransmissions_uac={retr} retransmissions_uas={uas_retr}")
print(f"window_ir={window} calls_part_ir={calls_ir} tail_ir={window - calls_ir} "
      f"idle_ir_per_s={idle_rate:.0f} idle_ir_per_call={idle_rate * span / max(ok, 1):.0f}")
print(f"ir_per_call={per:.0f}")
print(f"files={sys.argv[10]}")
PY
  log "$tag: $(grep '^ir_per_call=' "$OUT/$tag.result") ($(head -1 "$OUT/$tag.result"))"
  local purpose=()
  [ "$sys" = trunkline ] || purpose=(--no-purpose)   # the purposes are trunkline's modules
  # shellcheck disable=SC2086
  python3 "$ROOT/benches/callgrind/areas.py" --calls "$OK" --top "$TOP" ${purpose[@]+"${purpose[@]}"} \
    $files > "$OUT/$tag.areas.md"
  if [ "$sys" = trunkline ]; then
    callgrind_annotate --inclusive=yes --threshold=100 --auto=no $files > "$OUT/$tag.inclusive.txt" 2>&1
    callgrind_annotate --inclusive=no --threshold=100 --auto=no $files > "$OUT/$tag.self.txt" 2>&1
  fi
}

syscalls() {  # syscalls SYSTEM: the native pass under strace -c; writes $OUT/<sys>.strace.txt
  local sys=$1 tag=$1.native
  ports_free
  log "$tag: starting $sys natively"
  start_sut "$sys" "$tag" native
  start_uas "$tag"
  window_on() {
    local p args=()
    for p in $(sut_pids); do args+=(-p "$p"); done
    strace -f -c -qq -o "$OUT/$tag.strace.raw" "${args[@]}" 2>> "$OUT/$tag.strace.err" &
    STRACE_PID=$!
    sleep 2   # attached to every thread
  }
  calls_done() { :; }
  window_off() { kill -INT "$STRACE_PID" 2>/dev/null; stop_pid "$STRACE_PID" 10; STRACE_PID=; }
  run_window "$sys" "$tag"
  stop_pid "$UAS_PID" 5; UAS_PID=
  stop_pid "$SUT_PID" 30; SUT_PID=
  python3 - "$OUT/$tag.strace.raw" "$OK" "$RETR" "$UAS_RETR" > "$OUT/$tag.strace.txt" <<'PY'
import sys
path, ok, retr, uas_retr = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = []
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and not line.startswith("100.00"):
        calls = int(f[3])
        errors = int(f[4]) if len(f) == 6 else 0
        rows.append((calls, errors, f[-1]))
print(f"completed={ok} retransmissions_uac={retr} retransmissions_uas={uas_retr}")
print(f"total_per_call={sum(r[0] for r in rows) / max(ok, 1):.1f}")
for calls, errors, name in sorted(rows, reverse=True):
    print(f"{name} {calls / max(ok, 1):.2f} {errors / max(ok, 1):.2f}")
PY
  log "$tag: $(sed -n 2p "$OUT/$tag.strace.txt") system calls per call ($(head -1 "$OUT/$tag.strace.txt"))"
}

{
  echo "# $(date -Is) callgrind-invite: runs=$RUNS calls=$CALLS rate=$RATE warmup=$WARMUP settle=${SETTLE}s idle=${IDLE}s kamailio_children=$KAM_CHILDREN kamailio_mem=${KAM_MEM:-default(qm)}"
  echo "# trunkline: $(git describe --always --dirty 2>/dev/null || echo unknown) ($BIN, profile bench-profile)"
  echo "# kamailio: $(kamailio -v 2>/dev/null | head -1 | sed 's/^version: //')"
  echo "# sipp: $(sipp -v 2>/dev/null | grep -m1 SIPp | sed 's/^ *//')"
  echo "# $(valgrind --version): ${VALGRIND[*]}; $(strace -V 2>/dev/null | head -1)"
  echo "# machine: $(nproc) cores, $(uname -r)"
  echo "# output: $OUT"
} | tee "$OUT/summary.md" >&2

for ((run = 1; run <= RUNS; run++)); do
  for sys in $SYSTEMS; do
    profile "$sys" "$run"
  done
done
if [ "$SYSCALLS" = 1 ]; then
  for sys in $SYSTEMS; do
    syscalls "$sys"
  done
fi

# --- the summary: per run, the medians and the ratio; the last run's tables
python3 - "$OUT" "$RUNS" "$SYSCALLS" $SYSTEMS <<'PY' | tee -a "$OUT/summary.md"
import re, statistics, sys
out, runs, syscalls, systems = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4:]
def kv(path):
    return dict(re.findall(r"(\w+)=(\S+)", open(path).read()))
print("\n| system | run | completed | retransmitted (uac/uas) | Ir per call | window Ir | tail Ir | idle Ir/s |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
med = {}
for s in systems:
    per = []
    for r in range(1, runs + 1):
        v = kv(f"{out}/{s}.run{r}.result")
        per.append(int(v["ir_per_call"]))
        print(f"| {s} | {r} | {v['completed']} | {v['retransmissions_uac']}/{v['retransmissions_uas']} | "
              f"{int(v['ir_per_call']):,} | {int(v['window_ir']):,} | {int(v['tail_ir']):,} | "
              f"{int(v['idle_ir_per_s']):,} |")
    med[s] = statistics.median(per)
    spread = (max(per) - min(per)) / med[s] * 100 if med[s] else 0
    print(f"| {s} | median | | | **{med[s]:,.0f}** | | | spread {spread:.1f} % |")
if syscalls:
    tables = {}
    for s in systems:
        lines = open(f"{out}/{s}.native.strace.txt").read().split("\n")
        tables[s] = {l.split()[0]: (float(l.split()[1]), float(l.split()[2]))
                     for l in lines[2:] if l.strip()}
        tables[s]["(all)"] = (float(lines[1].split("=")[1]), 0.0)
    names = sorted({n for t in tables.values() for n in t},
                   key=lambda n: -max(t.get(n, (0, 0))[0] for t in tables.values()))
    cell = lambda c: f"{c[0]:.1f}" + (f" ({c[1]:.1f} failed)" if c[1] >= 0.05 else "")
    print("\nSystem calls per call (native run under strace -f -c; the same window, idle "
          "timer ticks included):\n")
    print("| system call | " + " | ".join(systems) + " |")
    print("| --- | " + " | ".join("---:" for _ in systems) + " |")
    for n in names[:20]:
        print(f"| {n} | " + " | ".join(cell(tables[s].get(n, (0, 0))) for s in systems) + " |")
for s in systems:
    print(f"\n{s}, run {runs}: {out}/{s}.run{runs}.areas.md\n")
    print(open(f"{out}/{s}.run{runs}.areas.md").read())
parts = [f"{s}_ir_per_call={med[s]:.0f}" for s in systems]
if "trunkline" in med and "kamailio" in med:
    parts.append(f"ratio={med['trunkline'] / med['kamailio']:.2f}")
print("RESULT " + " ".join(parts) + f" runs={runs}")
PY
