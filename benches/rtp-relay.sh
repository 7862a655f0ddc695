#!/usr/bin/env bash
# Benchmark: the gateway's RTP relay next to rtpengine and a raw recvmmsg/sendmmsg forwarder,
# measured in the same run with the same load generator (issue 4, item 6).
#
#   load generator (benches/rtp-relay/rtpblast.c): 172-byte RTP packets (12-byte header +
#   160 bytes of G.711), 50 packets/s per flow (20 ms), flows evenly phased; it receives what
#   the relay forwards and counts loss and latency (kernel receive timestamp - send time).
#     -> system under test on 127.0.0.1
#          trunkline: N calls of media::relay::Relay (benches/rtp-relay/relay_bench.rs), started
#                     directly, not through SIP, on --media-threads MediaThreads (default 1);
#                     each call relays A->B and B->A (2 flows per call); side A guarded as a
#                     carrier's (strict source guard, issue 15) unless RELAY_GUARD=off
#          trunkline-shared: the same, with the relays on the tokio multi-thread runtime that
#                     serves SIP in `trunkline run` (one worker per core); not in the default set
#          rtpengine: rtpengine-daemon userspace (--table=-1), N calls set up over its ng
#                     protocol (benches/rtp-relay/ng.py), 2 flows per call
#          raw:       benches/rtp-relay/udprelay.c, one thread, epoll + recvmmsg/sendmmsg,
#                     one socket per flow: the machine's limit
#
# All systems are started first and stay up. Per run: for each system the highest packet rate
# with < 0.1 % of packets lost or later than 50 ms (benches/rtp-relay/pps_search.py: doubling
# from 25k, then bisecting); then LAT_REPS (3) rounds of 15 s at 25,000 packets/s (500 flows)
# through each system in turn and the same flows sent directly (no relay): added latency =
# relayed - direct of the same round (p50, p99), CPU per relayed packet = the relay process's
# utime+stime during its step / packets. Medians over rounds and runs. The load generator
# shares the 2 cores with the system under test: near 120k packets/s it is the ceiling, so CPU
# per packet and latency are what tell relays apart.
#
# The generator, the raw relay, the ng client and the CPU monitor are copies of the project's
# reference bench (shared/reference-bench/rtp, lib/cpumon.py), so the figures compare with it.
# The script installs what it misses (Debian: gcc, python3, rtpengine-daemon), builds the C
# tools and the release example, and stops everything it started on exit. Loopback only.
# Output: benches/out/rtp-relay/<time>/ (per-system step logs, results.txt, summary.md).
# Ports on 127.0.0.1: trunkline 12000-27999 (shared mode 50000-59999), raw relay 28000-31999
# (one block: below the kernel's ephemeral range), rtpengine 34000-43999 and ng 2223,
# generator 40010-40051. The relays skip ports that others hold; the raw relay needs its block.
# Last line printed:
#   RESULT trunkline_us_per_pkt=.. rtpengine_us_per_pkt=.. raw_us_per_pkt=.. ...
#
# usage: benches/rtp-relay.sh [--quick] [--runs N] [--only "SYSTEM..."] [--calls N] [--no-build]
#        [--media-threads N]
#        --quick: no search, one 10 s step at 100k packets/s, then the 25k latency rounds.
#        Other options go to pps_search.py (--dur, --loss-max, ...).
# environment: LAT_REPS (3), LAT_DUR (15 s): latency rounds per run and their length
# environment: BENCH_NICE (default -10): nice of the benchmark's scheduler autogroup; 0 = off
# environment: RELAY_GUARD (strict): trunkline's source guards, strict or off (for A/B runs)
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HERE=$ROOT/benches/rtp-relay

ARGS=("$@")
RUNS=1
SYSTEMS="trunkline rtpengine raw"
CALLS=2000
MEDIA_THREADS=1
QUICK=0
BUILD=1
OUT=
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift ;;
    --only) SYSTEMS=$2; shift ;;
    --calls) CALLS=$2; shift ;;
    --media-threads) MEDIA_THREADS=$2; shift ;;
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    --outdir) OUT=$2; shift ;;
    -h|--help) sed -n '2,46p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) PASS+=("$1") ;;
  esac
  shift
done

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# The whole benchmark in its own scheduler autogroup with a higher priority, so that other
# work on a shared machine disturbs it less (per-process nice does not act across autogroups).
if [ "${BENCH_NICE:--10}" != 0 ] && [ -w /proc/self/autogroup ] && [ -z "${RTP_BENCH_GROUP:-}" ]; then
  export RTP_BENCH_GROUP=1
  setsid bash "$0" "${ARGS[@]}" &
  child=$!
  trap 'kill -TERM $child 2>/dev/null' INT TERM
  wait $child
  exit $?
fi
[ -n "${RTP_BENCH_GROUP:-}" ] && { echo "${BENCH_NICE:--10}" > /proc/self/autogroup 2>/dev/null || log "note: could not set autogroup nice"; }

OUT=${OUT:-$ROOT/benches/out/rtp-relay/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUILD_DIR=$ROOT/benches/out/rtp-relay/build
mkdir -p "$BUILD_DIR"

# --- tools -------------------------------------------------------------------------------
need=()
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v python3 >/dev/null || need+=(python3)
case " $SYSTEMS " in *" rtpengine "*) command -v rtpengine >/dev/null || need+=(rtpengine-daemon) ;; esac
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  created=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created=1; fi
  apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${need[@]}" >&2
  [ "$created" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
for t in rtpblast udprelay; do
  if [ ! -x "$BUILD_DIR/$t" ] || [ "$HERE/$t.c" -nt "$BUILD_DIR/$t" ]; then
    gcc -O2 -Wall -pthread -o "$BUILD_DIR/$t" "$HERE/$t.c" || exit 1
  fi
done
BENCH_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/rtp-relay-bench
if [ "$BUILD" = 1 ]; then
  log "building the release example"
  cargo build --release --example rtp-relay-bench >&2 || exit 1
fi
ulimit -n "$(ulimit -Hn)"

declare -A SUT_PIDS=() FLOWS=() APORT=() BPORT=()
CHILD=
cleanup() {
  trap '' INT TERM
  [ -n "$CHILD" ] && kill -TERM "$CHILD" 2>/dev/null
  local pid
  for pid in "${SUT_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || continue
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# in the background, so that a signal to this script is handled at once (wait returns)
run_child() { "$@" & CHILD=$!; wait "$CHILD"; local rc=$?; CHILD=; return $rc; }

# Every system under test is started once and stays up (idle ones cost nothing), so that the
# latency steps of the systems can alternate within minutes of each other: on a shared machine
# the noise changes from minute to minute, and a comparison is only fair in the same minutes.
start_trunkline() {
  local dir=$1 threads=$2 ports=$3
  "$BENCH_BIN" --calls "$CALLS" --a-port "$4" --b-port "$5" --flows "$dir/flows.txt" \
    --ports "$ports" --media-threads "$threads" --duration 3600 --guard "${RELAY_GUARD:-strict}" \
    > "$dir/relay.out" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q '^ready' "$dir/relay.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '^ready' "$dir/relay.out" || { cat "$dir/relay.out" >&2; return 1; }
  SUT_PIDS[$6]=$pid
}

start_system() {
  local sys=$1 dir=$OUT/$1
  mkdir -p "$dir"
  case "$sys" in
    trunkline) APORT[$sys]=40030; BPORT[$sys]=40031
      start_trunkline "$dir" "$MEDIA_THREADS" 12000-27999 40030 40031 "$sys" || return 1 ;;
    trunkline-shared) APORT[$sys]=40040; BPORT[$sys]=40041
      start_trunkline "$dir" 0 50000-59999 40040 40041 "$sys" || return 1 ;;
    rtpengine) APORT[$sys]=40010; BPORT[$sys]=40011
      local ng=127.0.0.1:2223
      rtpengine --config-file=none --table=-1 --interface=127.0.0.1 --listen-ng="$ng" \
        --port-min=34000 --port-max=43999 --foreground --log-stderr --log-level=4 \
        --num-threads=2 --timeout=3600 --silent-timeout=3600 --delete-delay=0 \
        > "$dir/rtpengine.log" 2>&1 &
      SUT_PIDS[$sys]=$!
      for _ in $(seq 50); do
        sleep 0.2
        kill -0 "${SUT_PIDS[$sys]}" 2>/dev/null || { tail "$dir/rtpengine.log" >&2; return 1; }
        python3 "$HERE/ng.py" --ng "$ng" ping >/dev/null 2>&1 && break
      done
      python3 "$HERE/ng.py" --ng "$ng" setup --calls "$CALLS" --a-port 40010 --b-port 40011 \
        --out "$dir/flows.txt" --bidir >&2 || return 1 ;;
    raw) APORT[$sys]=40020; BPORT[$sys]=40021
      "$BUILD_DIR/udprelay" -l 28000 -n $((CALLS * 2)) -D 40021 -T 1 -d 3600 \
        > "$dir/udprelay.out" 2>&1 &
      SUT_PIDS[$sys]=$!
      sleep 0.5
      kill -0 "${SUT_PIDS[$sys]}" 2>/dev/null || { cat "$dir/udprelay.out" >&2; return 1; }
      for i in $(seq 0 $((CALLS * 2 - 1))); do echo "A $((28000 + i))"; done > "$dir/flows.txt" ;;
    *) log "unknown system $sys"; return 1 ;;
  esac
  FLOWS[$sys]=$dir/flows.txt
}

# search SYS DIR [pps_search args]: the highest loss-free rate (no latency steps here); the
# RESULT line goes to DIR/result.line. Everything runs in this shell (no $(...)), so that a
# signal to the script stops it at once.
search() {
  local sys=$1 dir=$2
  shift 2
  mkdir -p "$dir"
  run_child python3 "$HERE/pps_search.py" --blast "$BUILD_DIR/rtpblast" --label "$sys" \
    --outdir "$dir" --a-port "${APORT[$sys]}" --b-port "${BPORT[$sys]}" --flows "${FLOWS[$sys]}" \
    --sut-pid "${SUT_PIDS[$sys]}" --quiet-wait 10 --no-latency "$@" "${PASS[@]}" > "$dir/search.out"
  cat "$dir/search.out" >> "$OUT/$sys/summary.txt"
  grep '^RESULT' "$dir/search.out" | tail -1 > "$dir/result.line"
}

# latency SYS DIR: one step at LAT_PPS through SYS; writes "p50 p99 cpu_sut_pct loss_pct" to
# DIR/latency.txt
latency() {
  local sys=$1 dir=$2
  search "$sys" "$dir" --rate "$LAT_PPS" --dur "$LAT_DUR"
  # the last step line (a noisy step is repeated; the last one counts, as in the search)
  grep '^step ' "$dir/steps.txt" | tail -1 | python3 -c '
import re, sys
kv = dict(re.findall(r"([a-z0-9_]+)=([-0-9.]+)", sys.stdin.read()))
print(*(kv.get(k, "nan") for k in ("lat_p50_us", "lat_p99_us", "cpu_sut", "loss")))' \
    > "$dir/latency.txt"
}

# direct FILE: the same flows sent straight to the receiver; writes "p50 p99" to FILE
direct() {
  run_child "$BUILD_DIR/rtpblast" -a 40050 -b 40051 -S 40051 -n "$LAT_FLOWS" -r 50 \
    -d "$LAT_DUR" -s 172 -t 200 -w 1000 -L 50 > "$1.out" || return 1
  echo "$(grep -o 'lat_us_p50=[0-9]*' "$1.out" | cut -d= -f2)" \
    "$(grep -o 'lat_us_p99=[0-9]*' "$1.out" | cut -d= -f2)" > "$1"
}

LAT_PPS=25000
LAT_FLOWS=500
LAT_DUR=${LAT_DUR:-15}
LAT_REPS=${LAT_REPS:-3}
log "output in $OUT; systems: $SYSTEMS; runs: $RUNS; calls: $CALLS; media threads: $MEDIA_THREADS"
{
  echo "# $(date -Is) $(uname -r) cpus=$(nproc) rtpengine: $(rtpengine --version 2>&1 | head -1)"
  echo "# trunkline $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) calls=$CALLS quick=$QUICK media_threads=$MEDIA_THREADS guard=${RELAY_GUARD:-strict}"
} > "$OUT/results.txt"
for sys in $SYSTEMS; do
  start_system "$sys" || { log "$sys did not start (see $OUT/$sys)"; exit 1; }
done
for run in $(seq "$RUNS"); do
  # 1. the highest loss-free rate of each system
  for sys in $SYSTEMS; do
    log "run $run: rate search, $sys"
    if [ "$QUICK" = 1 ]; then search "$sys" "$OUT/$sys/search-$run" --rate 100000
    else search "$sys" "$OUT/$sys/search-$run"; fi
    echo "search $sys $run $(cat "$OUT/$sys/search-$run/result.line")" | tee -a "$OUT/results.txt" >&2
  done
  # 2. latency and CPU at 25k packets/s, the systems and the direct path in turn
  for rep in $(seq "$LAT_REPS"); do
    for sys in $SYSTEMS; do
      log "run $run: latency $rep, $sys"
      latency "$sys" "$OUT/$sys/latency-$run-$rep"
      read -r p50 p99 cpu loss < "$OUT/$sys/latency-$run-$rep/latency.txt"
      echo "latency $sys $run.$rep p50=$p50 p99=$p99 cpu_sut=$cpu loss=$loss" | tee -a "$OUT/results.txt" >&2
    done
    direct "$OUT/direct-$run-$rep.txt"
    read -r p50 p99 < "$OUT/direct-$run-$rep.txt"
    echo "latency direct $run.$rep p50=$p50 p99=$p99" | tee -a "$OUT/results.txt" >&2
  done
done

# stop the systems before the summary, so that the last line printed means "all done"
cleanup
trap - EXIT

python3 - "$OUT/results.txt" "$OUT/summary.md" "$LAT_PPS" <<'PY'
import re, statistics, sys
lat_pps = float(sys.argv[3])
search, lat, direct = {}, {}, {}
for line in open(sys.argv[1]):
    f = line.split()
    if not f or f[0] == "#":
        continue
    kv = dict(re.findall(r"([a-z0-9_]+)=([-0-9.]+)", line))
    if f[0] == "search" and "pps" in kv and "(no passing step)" not in line:
        search.setdefault(f[1], []).append(float(kv["pps"]))
    elif f[0] == "latency" and f[1] == "direct":
        direct[f[2]] = kv
    elif f[0] == "latency":
        lat.setdefault(f[1], []).append((f[2], kv))

def med(v):
    v = [x for x in v if x == x]
    return statistics.median(v) if v else None

out = {}
for system, rows in lat.items():
    added50 = [float(kv["p50"]) - float(direct[rep]["p50"]) for rep, kv in rows if rep in direct]
    added99 = [float(kv["p99"]) - float(direct[rep]["p99"]) for rep, kv in rows if rep in direct]
    cpu = [float(kv["cpu_sut"]) for _, kv in rows if "cpu_sut" in kv]
    out[system] = {"pps": med(search.get(system, [])), "p50": med(added50), "p99": med(added99),
                   "us": (med(cpu) or 0) / 100 / lat_pps * 1e6 if cpu else None,
                   "n": len(rows), "cpus": cpu}

def fmt(v, f="%.1f"):
    return "-" if v is None else f % v

order = [s for s in ("trunkline", "trunkline-shared", "rtpengine", "raw") if s in out]
lines = ["| system | loss-free packets/s | CPU per packet at 25k/s | added latency p50 | added p99 | latency steps |",
         "| --- | --- | --- | --- | --- | --- |"]
for system in order:
    o = out[system]
    lines.append("| %s | %s | %s µs | %s µs | %s µs | %d |" % (
        system, fmt(o["pps"], "%.0f"), fmt(o["us"]), fmt(o["p50"], "%.0f"), fmt(o["p99"], "%.0f"), o["n"]))
ratios = []
t, e, r = (out.get(s, {}).get("us") for s in ("trunkline", "rtpengine", "raw"))
if t and e:
    ratios.append("CPU per packet trunkline/rtpengine = %.2f" % (t / e))
if t and r:
    ratios.append("trunkline/raw = %.2f" % (t / r))
text = "\n".join(lines) + ("\n\n" + "; ".join(ratios) if ratios else "") + "\n"
open(sys.argv[2], "w").write(text)
print(text, file=sys.stderr)
parts = ["RESULT"]
for system in order:
    o, k = out[system], system.replace("-", "_")
    parts.append("%s_pps=%s %s_us_per_pkt=%s %s_added_p50_us=%s %s_added_p99_us=%s" % (
        k, fmt(o["pps"], "%.0f"), k, fmt(o["us"], "%.2f"), k, fmt(o["p50"], "%.0f"),
        k, fmt(o["p99"], "%.0f")))
print(" ".join(parts))
PY
