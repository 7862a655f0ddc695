#!/usr/bin/env bash
# Benchmark: concurrent answered calls and resident memory per call, trunkline next to
# Kamailio + rtpengine holding the same calls in the same run (issue 16, item 2).
#
#   sipp UAC (carrier: digest auth, SDP 127.0.0.1:A; benches/concurrent-calls/uac.xml; held)
#     -> system under test on 127.0.0.1
#          trunkline: `trunkline run` on one InboundTrunk (digest + 127.0.0.0/8 allowlist), a
#                     B2BUA with its RTP relay bound in each call (two RTP/RTCP port pairs)
#          kamailio:  Kamailio as the digest-authenticating proxy anchoring the media in
#                     rtpengine (userspace, ng protocol): benches/concurrent-calls/kamailio.cfg.in
#     -> sipp UAS (agent runtime, SDP 127.0.0.1:B; benches/concurrent-calls/uas.xml)
#   RTP (benches/concurrent-calls/rtp_legs.py): from 127.0.0.1:A to each call's carrier-side
#   relay port and from 127.0.0.1:B to each agent-side one, --pps packets/s per leg, the ports
#   read from the sipp logs as calls are answered; it counts what the relays forward back.
#
# One measurement (a system, N calls): start the system; one warm-up call; after 5 s the idle
# memory; N calls at --rate calls/s, held; --steady s after the last is up (RTP flowing), the
# steady-state memory (median of 5 samples over 10 s); then the UAC hangs every call up (BYE, at
# the same rate as they came); memory when the last call has ended and again --after s later
# (trunkline keeps an ended call 32 s for retransmissions). Memory = the sum over the system's
# processes (Kamailio's main process and forked workers, plus rtpengine) of PSS and of RSS from
# /proc/PID/smaps_rollup (benches/lib/procmem.py), sampled every second for the peak.
# Per call = (steady - idle) / N. Kamailio's shared-memory pool use (kamcmd core.shmmem
# real_used) is recorded too. The systems alternate; --calls N, then --small N (linearity);
# --runs times. Each measurement is a fresh system.
#
# Calls are capped by the open-file limit: each call holds 4 relay sockets in trunkline and in
# rtpengine, and the hard limit (ulimit -Hn) cannot be raised without CAP_SYS_RESOURCE; N is
# lowered to fit it (logged) and the same N is used for both systems.
# Everything runs on 127.0.0.1; the script installs what it misses (Debian: sip-tester,
# kamailio, rtpengine-daemon, python3, iproute2) and stops everything it started on exit.
# Ports on 127.0.0.1 (--base-port P): SIP P..P+20, trunkline admin TCP P+30, rtpengine ng P+40
# and CLI TCP P+41, sipp media P+1000 and P+1100, RTP sender P+1200 (A) and P+1202 (B);
# trunkline's relays --rtp-ports (default 10000-31999: below the kernel's ephemeral range),
# rtpengine's --rtpengine-ports (default 32000-59999); each skips ports held by others.
# Output: benches/out/concurrent-calls/<time>/ (results.tsv, per-measurement logs and memory
# samples, summary.md). The last line printed:
#   RESULT calls=N trunkline_kb_per_call=... kamailio_rtpengine_kb_per_call=... ratio=... ...
#
# usage: benches/concurrent-calls.sh [options]     (--help lists them)
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
BENCH=concurrent-calls
HERE=$ROOT/benches/concurrent-calls
source "$ROOT/benches/lib/cps.sh"   # log, die, stop_pid, wait_udp, ports_free, installing
source "$ROOT/benches/lib/spec.sh"   # bench_spec: the one InboundTrunk every benchmark measures

CALLS=5000
SMALL=1000
REPS=2
RATE=200
STEADY=30
AFTER=40
PPS=2
SYSTEMS="trunkline kamailio"
BIN=
BUILD=1
MAX_MINUTES=60
BASE_PORT=7460
RTP_PORTS=10000-31999
RTPE_PORTS=32000-59999
KAM_CHILDREN=2
KAM_SHM_MB=2048
MALLOC_STATS=0
WRAP=
OUT=
NUMBER=15551230001
AUTH_USER=carrier
AUTH_PASS=s3cret-carrier

usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
  cat <<EOF
options:
  --calls N           concurrent calls held (default $CALLS; lowered to fit the open-file limit)
  --small N           a second, smaller N to show the growth is linear (default $SMALL; 0: none)
  --runs N            repetitions of each (system, N) (default $REPS)
  --rate R            calls set up (and hung up) per second (default $RATE)
  --steady S          seconds from the last call up to the steady-state sample (default $STEADY)
  --after S           seconds from the last call ended to the last sample (default $AFTER)
  --pps P             RTP packets per second per leg (default $PPS)
  --only SYSTEM       trunkline or kamailio (Kamailio + rtpengine)
  --bin PATH          the trunkline binary (default target/release/trunkline, built when missing)
  --no-build          do not build target/release/trunkline (without --bin)
  --max-minutes M     stop starting measurements after M minutes (default $MAX_MINUTES)
  --base-port P       see the ports above (default $BASE_PORT)
  --rtp-ports LO-HI   trunkline's --rtp-ports (default $RTP_PORTS)
  --rtpengine-ports LO-HI   rtpengine's --port-min/--port-max (default $RTPE_PORTS)
  --kamailio-children N   Kamailio UDP workers (default $KAM_CHILDREN)
  --kamailio-shm MB   Kamailio shared memory pool, -m (default $KAM_SHM_MB)
  --malloc-stats      diagnosis (trunkline): glibc's malloc_stats() through gdb at each sample
                      (bytes in use vs held from the system); pauses the process about 1 s;
                      at the end, malloc_trim(0) and the memory after it
  --wrap CMD          diagnosis: run trunkline under CMD (e.g. "heaptrack -o DIR/ht"); the
                      memory figures then include the tool's
  --outdir DIR        where logs and results go
environment: BENCH_NICE (default -10): nice of the benchmark's scheduler autogroup; 0 = off
EOF
}

cps_enter_autogroup "$@"   # runs this script again (with its arguments) in a niced autogroup
while [ $# -gt 0 ]; do
  case "$1" in
    --calls) CALLS=$2; shift ;;
    --small) SMALL=$2; shift ;;
    --runs) REPS=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --steady) STEADY=$2; shift ;;
    --after) AFTER=$2; shift ;;
    --pps) PPS=$2; shift ;;
    --only) SYSTEMS=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --no-build) BUILD=0 ;;
    --max-minutes) MAX_MINUTES=$2; shift ;;
    --base-port) BASE_PORT=$2; shift ;;
    --rtp-ports) RTP_PORTS=$2; shift ;;
    --rtpengine-ports) RTPE_PORTS=$2; shift ;;
    --kamailio-children) KAM_CHILDREN=$2; shift ;;
    --kamailio-shm) KAM_SHM_MB=$2; shift ;;
    --malloc-stats) MALLOC_STATS=1 ;;
    --wrap) WRAP=$2; shift ;;
    --outdir) OUT=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for s in $SYSTEMS; do
  case "$s" in trunkline|kamailio) ;; *) die "unknown system $s (trunkline or kamailio)" ;; esac
done

T_START=$(date +%s)
cps_install rtpengine:rtpengine-daemon kamcmd:kamailio
[ "$MALLOC_STATS" = 1 ] && cps_install gdb:gdb

# --- the binary: --bin, or target/release/trunkline (built when missing unless --no-build)
if [ -z "$BIN" ]; then
  BIN=$ROOT/target/release/trunkline
  if [ ! -x "$BIN" ] && [ "$BUILD" = 1 ]; then
    log "cargo build --release"
    cargo build --release --quiet || die "cargo build --release failed"
  fi
fi
[ -x "$BIN" ] || die "$BIN not found (build it, or give --bin)"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

OUT=${OUT:-$ROOT/benches/out/$BENCH/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.tsv

# --- open files: 4 relay sockets per call (trunkline; rtpengine too), plus a margin
ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)
fit=$(( (NOFILE - 200) / 4 / 50 * 50 ))
if [ "$CALLS" -gt "$fit" ]; then
  log "open-file limit $NOFILE (hard; raising it needs CAP_SYS_RESOURCE): $CALLS calls need $((CALLS * 4)) relay sockets; holding $fit calls instead"
  CALLS=$fit
fi
[ "$SMALL" -ge "$CALLS" ] && SMALL=0

# --- ports (all on 127.0.0.1)
GW_PORT=$BASE_PORT                 # trunkline carrier side
KAM_PORT=$((BASE_PORT + 1))        # kamailio
GW_INTERNAL=$((BASE_PORT + 2))     # trunkline agent side
UAC_PORT=$((BASE_PORT + 10))
UAS_PORT=$((BASE_PORT + 20))
ADMIN_PORT=$((BASE_PORT + 30))     # trunkline admin (TCP)
NG_PORT=$((BASE_PORT + 40))        # rtpengine ng (UDP)
CLI_PORT=$((BASE_PORT + 41))       # rtpengine CLI (TCP)
UAC_MEDIA=$((BASE_PORT + 1000))
UAS_MEDIA=$((BASE_PORT + 1100))
A_PORT=$((BASE_PORT + 1200))       # the carrier's media address in every call
B_PORT=$((BASE_PORT + 1202))       # the agent's
PORTS_UDP="$GW_PORT $KAM_PORT $GW_INTERNAL $UAC_PORT $UAS_PORT $NG_PORT $UAC_MEDIA $UAS_MEDIA $A_PORT $B_PORT"
PORTS_TCP="$ADMIN_PORT $CLI_PORT"

# --- the trunkline side: a specs folder and a state folder of its own
SPECS=$OUT/specs
mkdir -p "$SPECS" "$OUT/state" && chmod 700 "$OUT/state"
bench_spec "$SPECS/bench.yaml" benches/concurrent-calls.sh 127.0.0.0/8
"$BIN" check "$SPECS" > "$OUT/check.txt" 2>&1 || { cat "$OUT/check.txt" >&2; die "trunkline check refused the bench specs"; }

# --- the reference side: Kamailio (kamailio.cfg.in) + rtpengine
sed -e "s#@CHILDREN@#$KAM_CHILDREN#g; s#@LISTEN_IP@#127.0.0.1#g; s#@LISTEN_PORT@#$KAM_PORT#g; \
        s#@UAS_IP@#127.0.0.1#g; s#@UAS_PORT@#$UAS_PORT#g; s#@REALM@#kamailio#g; \
        s#@USER@#$AUTH_USER#g; s#@PASSWORD@#$AUTH_PASS#g; s#@NUMBER@#$NUMBER#g; \
        s#@NG_ADDR@#127.0.0.1:$NG_PORT#g; s#@CTL@#$OUT/kamailio.ctl#g" \
    "$HERE/kamailio.cfg.in" > "$OUT/kamailio.cfg"
kamailio -c -f "$OUT/kamailio.cfg" > "$OUT/kamailio-check.txt" 2>&1 \
  || { tail -20 "$OUT/kamailio-check.txt" >&2; die "kamailio refused $OUT/kamailio.cfg"; }

SUT_PID='' RE_PID='' UAS_PID='' UAC_PID='' RTP_PID='' WATCH_PID='' WATCHDOG_PID=''
cleanup() {
  trap '' INT TERM
  stop_pid "$WATCHDOG_PID" 1
  stop_pid "$UAC_PID"; UAC_PID=
  stop_pid "$RTP_PID"; RTP_PID=
  stop_pid "$UAS_PID"; UAS_PID=
  stop_sut
  stop_pid "$WATCH_PID" 2; WATCH_PID=
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# a hard bound: the whole run stops after --max-minutes plus the time one measurement may take
# (its sleep is stopped with it: a stray sleep would hold the script's output open)
( trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  sleep $(( MAX_MINUTES * 60 + CALLS * 2 / RATE + STEADY + AFTER + 180 )) & nap=$!
  wait "$nap" && kill -TERM $$ ) &
WATCHDOG_PID=$!

start_sut() {  # start_sut SYSTEM TAG: a fresh system; SUT_TARGET and MEM_PIDS set
  local tag=$2 i
  case "$1" in
    trunkline)
      RUST_LOG=warn $WRAP "$BIN" run --specs "$SPECS" --listen "udp://127.0.0.1:$GW_PORT" \
        --internal-listen "udp://127.0.0.1:$GW_INTERNAL" --admin "127.0.0.1:$ADMIN_PORT" \
        --state-dir "$OUT/state" --agent-timeout 10 --drain-timeout 1 --rtp-ports "$RTP_PORTS" \
        > "$OUT/$tag.trunkline.log" 2>&1 &
      SUT_PID=$!
      SUT_TARGET=127.0.0.1:$GW_PORT
      MEM_PIDS=$SUT_PID
      wait_udp "$SUT_PID" "$GW_PORT" "$GW_INTERNAL" && sleep 0.2 && kill -0 "$SUT_PID" 2>/dev/null \
        || { tail -20 "$OUT/$tag.trunkline.log" >&2; die "trunkline did not start"; }
      ;;
    kamailio)
      # rtpengine as the reference bench runs it (shared/reference-bench/run-sip-rtp-pps.sh)
      rtpengine --config-file=none --table=-1 --interface=127.0.0.1 \
        --listen-ng="127.0.0.1:$NG_PORT" --listen-cli="127.0.0.1:$CLI_PORT" \
        --port-min="${RTPE_PORTS%-*}" --port-max="${RTPE_PORTS#*-}" --foreground --log-stderr \
        --log-level=4 --num-threads=2 --timeout=3600 --silent-timeout=3600 --delete-delay=0 \
        > "$OUT/$tag.rtpengine.log" 2>&1 &
      RE_PID=$!
      wait_udp "$RE_PID" "$NG_PORT" && sleep 0.3 && kill -0 "$RE_PID" 2>/dev/null \
        || { tail -20 "$OUT/$tag.rtpengine.log" >&2; die "rtpengine did not start"; }
      kamailio -f "$OUT/kamailio.cfg" -DD -E -m "$KAM_SHM_MB" -M 16 -P "$OUT/kamailio.pid" \
        > "$OUT/$tag.kamailio.log" 2>&1 &
      SUT_PID=$!
      SUT_TARGET=127.0.0.1:$KAM_PORT
      MEM_PIDS="$SUT_PID $RE_PID"
      wait_udp "$SUT_PID" "$KAM_PORT" || { tail -20 "$OUT/$tag.kamailio.log" >&2; die "kamailio did not start"; }
      for ((i = 0; i < 50; i++)); do   # the workers fork; ctl answers when they are up
        kamcmd -s "unix:$OUT/kamailio.ctl" core.version > /dev/null 2>&1 && break
        sleep 0.1
      done
      kill -0 "$SUT_PID" 2>/dev/null || { tail -20 "$OUT/$tag.kamailio.log" >&2; die "kamailio did not start"; }
      ;;
  esac
}
stop_sut() {
  # under --wrap, the wrapper's children are the gateway: stop them first
  [ -n "$WRAP" ] && [ -n "$SUT_PID" ] && pkill -TERM -P "$SUT_PID" 2>/dev/null && sleep 2
  stop_pid "$SUT_PID" 30; SUT_PID=
  stop_pid "$RE_PID" 10; RE_PID=
}

shm_used() {  # Kamailio's shm pool in use (real_used, bytes), or -
  [ "$1" = kamailio ] || { echo -; return; }
  kamcmd -s "unix:$OUT/kamailio.ctl" core.shmmem 2>/dev/null | awk '$1 == "real_used:" { print $2; f = 1 } END { if (!f) print "-" }'
}

active_calls() {  # the system's own count of the calls it holds
  case "$1" in
    trunkline) python3 - "$ADMIN_PORT" <<'PY'
import sys, urllib.request
try:
    text = urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/metrics', timeout=5).read().decode()
except Exception:
    print('-'); sys.exit()
calls = pairs = 0.0
for line in text.splitlines():
    if line.startswith('trunkline_active_calls'):
        calls += float(line.split()[-1])
    elif line.startswith('trunkline_rtp_port_pairs') and 'state="used"' in line:
        pairs += float(line.split()[-1])
print(f'calls={int(calls)},port_pairs={int(pairs)}')
PY
    ;;
    kamailio) python3 - "$CLI_PORT" <<'PY'
import socket, sys
try:
    s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5)
    s.sendall(b'list numsessions\n')
    data = b''
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    own = [l for l in data.decode(errors='replace').splitlines() if 'own' in l]
    print('rtpengine_sessions=' + (own[0].split(':')[-1].strip() if own else '?'))
except Exception:
    print('-')
PY
    ;;
  esac
}

# malloc_stats SYSTEM TAG LABEL: glibc's own account (--malloc-stats, trunkline): the totals of
# malloc_stats(), which the process prints on its stderr (the log), appended to TAG.malloc
malloc_stats() {
  [ "$MALLOC_STATS" = 1 ] && [ "$1" = trunkline ] || return 0
  local logf=$OUT/$2.trunkline.log before line
  before=$(wc -l < "$logf")
  timeout 60 gdb -p "$SUT_PID" -batch -ex 'call (void)malloc_stats()' > /dev/null 2>&1
  sleep 0.5
  line=$(tail -n +"$((before + 1))" "$logf" | awk '
    /^Arena [0-9]+:/ { arenas++ }
    /^Total/ { total = 1 }
    total && /system bytes/ { sys = $NF }
    total && /in use bytes/ { use = $NF }
    END { printf "system_bytes=%s in_use_bytes=%s arenas=%d", sys, use, arenas }')
  echo "$3 $line" >> "$OUT/$2.malloc"
  log "$1 malloc_stats at $3: $line"
  if [ "$3" = after ]; then  # what glibc can give back when asked (not part of the figures)
    timeout 60 gdb -p "$SUT_PID" -batch -ex 'call (int)malloc_trim(0)' > /dev/null 2>&1
    line="after_trim $(python3 "$ROOT/benches/lib/procmem.py" snap --count 2 --interval 1 $MEM_PIDS) (rss_kb pss_kb procs fds)"
    echo "$line" >> "$OUT/$2.malloc"
    log "$1 after malloc_trim(0): $line"
  fi
}

rtp_counters() { tail -1 "$1" 2>/dev/null || echo "0 0 0 0 0 0 0"; }

start_uas() {  # start_uas TAG
  sipp -sf "$HERE/uas.xml" -i 127.0.0.1 -p "$UAS_PORT" -mp "$UAS_MEDIA" -set bport "$B_PORT" \
    -nostdin -buff_size 4194304 -timeout "$UAS_TIMEOUT"s -trace_err -error_file "$OUT/$1.uas.err" \
    -trace_logs -log_file "$OUT/$1.uas.log" -max_log_size 50000000 > "$OUT/$1.uas.out" 2>&1 &
  UAS_PID=$!
  wait_udp "$UAS_PID" "$UAS_PORT" || { tail -20 "$OUT/$1.uas.out" >&2; die "the sipp UAS did not start"; }
}

uac() {  # uac TAG CALLS HOLD_MS TIMEOUT_S [extra sipp args]: the carrier, in the background
  local tag=$1 n=$2 hold=$3 tmo=$4; shift 4
  timeout -k 5 "$((tmo + 10))" sipp "$SUT_TARGET" -sf "$HERE/uac.xml" -s "$NUMBER" \
    -au "$AUTH_USER" -ap "$AUTH_PASS" -auth_uri "$NUMBER@$SUT_TARGET" -set aport "$A_PORT" \
    -i 127.0.0.1 -p "$UAC_PORT" -mp "$UAC_MEDIA" -d "$hold" -m "$n" -l "$((n + 10))" \
    -nostdin -buff_size 4194304 -timeout "${tmo}s" -recv_timeout 10s \
    -trace_err -error_file "$OUT/$tag.err" -trace_logs -log_file "$OUT/$tag.log" \
    -max_log_size 50000000 -trace_screen -screen_file "$OUT/$tag.screen" "$@" \
    > "$OUT/$tag.out" 2>&1 &
  UAC_PID=$!
}

count() { local c; c=$(grep -c "^$1 " "$2" 2>/dev/null); echo "${c:-0}"; }

echo -e "system\trep\tcalls\tup_a\tup_b\tidle_rss_kb\tidle_pss_kb\tsteady_rss_kb\tsteady_pss_kb\tpeak_rss_kb\tpeak_pss_kb\tended_rss_kb\tended_pss_kb\tafter_rss_kb\tafter_pss_kb\tidle_procs\tidle_fds\tsteady_fds\tafter_fds\tshm_idle\tshm_steady\tshm_ended\tshm_after\trelayed\tsetup_s\tsipp_rc\tfailed_calls\tactive_steady\tactive_after\tidle_pss_parts\tsteady_pss_parts\tafter_pss_parts" > "$RESULTS"

# measure SYSTEM REP N: one measurement, a line in results.tsv
measure() {
  local sys=$1 rep=$2 n=$3 tag setup_s hold_s tmo t0 t_up deadline na nb idle steady ended after
  local shm_idle shm_steady shm_ended shm_after c1 c2 relayed rc failed act_steady act_after peak
  tag=$sys-n$n-run$rep
  setup_s=$(( (n + RATE - 1) / RATE ))
  hold_s=$(( setup_s + 15 + STEADY + 10 ))    # the first BYE comes after the steady sample
  tmo=$(( hold_s + setup_s + 60 ))
  UAS_TIMEOUT=$(( tmo + 60 ))
  log "== $sys, $n calls, run $rep"
  ports_free
  start_sut "$sys" "$tag"
  start_uas "$tag"
  python3 "$ROOT/benches/lib/procmem.py" watch --out "$OUT/$tag.mem" --interval 1 $MEM_PIDS &
  WATCH_PID=$!

  # one warm-up call, then the idle figures
  uac "$tag.warmup" 1 200 20
  wait "$UAC_PID"; rc=$?; UAC_PID=
  [ "$rc" = 0 ] || { tail -20 "$OUT/$tag.warmup.err" >&2 2>/dev/null; die "the warm-up call through $sys failed (sipp exit $rc): $OUT/$tag.warmup.*"; }
  sleep 5
  idle=$(python3 "$ROOT/benches/lib/procmem.py" snap --count 3 --interval 1 $MEM_PIDS)
  shm_idle=$(shm_used "$sys")
  malloc_stats "$sys" "$tag" idle

  # RTP on every leg as calls come up, then the calls
  python3 "$HERE/rtp_legs.py" --a-port "$A_PORT" --b-port "$B_PORT" --a-log "$OUT/$tag.uac.log" \
    --b-log "$OUT/$tag.uas.log" --b-log-from-end --pps "$PPS" --stats "$OUT/$tag.rtp" \
    > "$OUT/$tag.rtp.out" 2>&1 &
  RTP_PID=$!
  sleep 0.5
  kill -0 "$RTP_PID" 2>/dev/null || { cat "$OUT/$tag.rtp.out" >&2; die "the RTP sender did not start"; }
  t0=$(date +%s)
  uac "$tag.uac" "$n" "$((hold_s * 1000))" "$tmo" -r "$RATE"
  deadline=$(( t0 + setup_s + 15 ))
  while :; do
    na=$(count A "$OUT/$tag.uac.log"); nb=$(count B "$OUT/$tag.uas.log"); nb=$((nb - 1))  # - the warm-up
    [ "$na" -ge "$n" ] && [ "$nb" -ge "$n" ] && break
    kill -0 "$UAC_PID" 2>/dev/null || { log "the UAC exited early"; tail -5 "$OUT/$tag.uac.out" >&2; break; }
    [ "$(date +%s)" -ge "$deadline" ] && { log "only $na/$nb of $n calls up by the deadline"; break; }
    sleep 1
  done
  t_up=$(( $(date +%s) - t0 ))
  log "$sys: $na carrier legs and $nb agent legs up after ${t_up}s; steady state in ${STEADY}s"

  # steady state: RTP flowing on every leg
  sleep $(( STEADY > 10 ? STEADY - 10 : 0 ))
  c1=$(rtp_counters "$OUT/$tag.rtp")
  steady=$(python3 "$ROOT/benches/lib/procmem.py" snap --count 5 --interval 2 $MEM_PIDS)
  c2=$(rtp_counters "$OUT/$tag.rtp")
  shm_steady=$(shm_used "$sys")
  act_steady=$(active_calls "$sys")
  malloc_stats "$sys" "$tag" steady
  relayed=$(python3 -c "
a = '$c1'.split(); b = '$c2'.split()
d = [float(y) - float(x) for x, y in zip(a, b)]
sent, got = d[3] + d[4], d[5] + d[6]
print(f'{got / sent:.4f}' if sent > 0 else '-')")
  [ "$(date +%s)" -lt $(( t0 + hold_s )) ] || log "note: the steady sample ended after the first BYE (the setup was slow)"
  log "$sys: steady $steady (rss_kb pss_kb procs fds); relayed $relayed of the RTP sent; $act_steady"

  # hang up: the UAC sends the BYEs as each call's hold ends, then exits
  wait "$UAC_PID"; rc=$?; UAC_PID=
  ended=$(python3 "$ROOT/benches/lib/procmem.py" snap --count 3 --interval 1 $MEM_PIDS)
  shm_ended=$(shm_used "$sys")
  malloc_stats "$sys" "$tag" ended
  stop_pid "$RTP_PID"; RTP_PID=
  sleep $(( AFTER > 3 ? AFTER - 3 : 0 ))
  after=$(python3 "$ROOT/benches/lib/procmem.py" snap --count 3 --interval 1 $MEM_PIDS)
  shm_after=$(shm_used "$sys")
  act_after=$(active_calls "$sys")
  malloc_stats "$sys" "$tag" after
  failed=$(awk -F'|' '/Failed call/ { gsub(/ /, "", $3); v = $3 } END { print (v == "" ? "?" : v) }' "$OUT/$tag.uac.screen" 2>/dev/null)
  stop_pid "$UAS_PID"; UAS_PID=
  stop_sut
  stop_pid "$WATCH_PID" 2; WATCH_PID=
  peak=$(awk 'BEGIN { r = 0; p = 0 } { if ($2 > r) r = $2; if ($3 > p) p = $3 } END { print r, p }' "$OUT/$tag.mem")
  log "$sys: ended $ended, after ${AFTER}s $after; peak $peak; sipp exit $rc, failed calls $failed; $act_after"
  # the PSS of each part (kamailio's tree + rtpengine), kB, when there are several
  set -- $idle; local i_rss=$1 i_pss=$2 i_procs=$3 i_fds=$4; shift 4; local i_parts; i_parts=$(IFS=+; echo "${*:--}")
  set -- $steady; local s_rss=$1 s_pss=$2 s_fds=$4; shift 4; local s_parts; s_parts=$(IFS=+; echo "${*:--}")
  set -- $ended; local e_rss=$1 e_pss=$2
  set -- $after; local a_rss=$1 a_pss=$2 a_fds=$4; shift 4; local a_parts; a_parts=$(IFS=+; echo "${*:--}")
  set -- $peak
  echo -e "$sys\t$rep\t$n\t$na\t$nb\t$i_rss\t$i_pss\t$s_rss\t$s_pss\t$1\t$2\t$e_rss\t$e_pss\t$a_rss\t$a_pss\t$i_procs\t$i_fds\t$s_fds\t$a_fds\t$shm_idle\t$shm_steady\t$shm_ended\t$shm_after\t$relayed\t$t_up\t$rc\t$failed\t$act_steady\t$act_after\t$i_parts\t$s_parts\t$a_parts" >> "$RESULTS"
}

GIT_REV=$(git describe --always --dirty 2>/dev/null || echo unknown)
{
  echo "# $(date -Is) $BENCH: calls=$CALLS small=$SMALL runs=$REPS rate=$RATE/s steady=${STEADY}s after=${AFTER}s pps_per_leg=$PPS kamailio_children=$KAM_CHILDREN kamailio_shm=${KAM_SHM_MB}MB nofile=$NOFILE"
  echo "# trunkline: $GIT_REV ($BIN: $("$BIN" --version 2>/dev/null | head -1)) --rtp-ports $RTP_PORTS"
  echo "# kamailio: $(kamailio -v 2>/dev/null | head -1 | sed 's/^version: //'); rtpengine: $(rtpengine --version 2>&1 | head -1) ports $RTPE_PORTS"
  echo "# sipp: $(sipp -v 2>/dev/null | grep -m1 SIPp | sed 's/^ *//')"
  echo "# machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(awk '/MemTotal/ { print int($2 / 1024) " MB" }' /proc/meminfo)"
  echo "# output: $OUT"
} | tee "$OUT/summary.md" >&2

SIZES=$CALLS
[ "$SMALL" -gt 0 ] && SIZES="$CALLS $SMALL"
T_END=$(( T_START + MAX_MINUTES * 60 ))
for ((rep = 1; rep <= REPS; rep++)); do
  for n in $SIZES; do
    for sys in $SYSTEMS; do
      need=$(( 2 * (n + RATE - 1) / RATE + STEADY + AFTER + 60 ))
      if [ $(( $(date +%s) + need )) -gt "$T_END" ]; then
        log "out of time (--max-minutes $MAX_MINUTES): $sys, $n calls, run $rep not measured"
        continue
      fi
      measure "$sys" "$rep" "$n"
    done
  done
done

find "$OUT" -maxdepth 1 -name '*.err' -empty -delete 2>/dev/null
{
  echo
  echo "Every measurement (tab-separated): $RESULTS"
  echo
  python3 "$HERE/summary.py" "$RESULTS"
} | tee -a "$OUT/summary.md"
