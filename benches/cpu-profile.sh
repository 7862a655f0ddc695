#!/usr/bin/env bash
# Where a system's CPU goes under a steady call rate, kernel included (issue 16, item 1).
#
# callgrind (benches/callgrind-invite.sh) counts user-space instructions exactly, but not the
# kernel, the context switches or the page faults. This runs the inbound benchmark's calls
# (benches/inbound-cps.sh, one fixed rate, --only SYSTEM) and, once the calls are steady,
# attaches perf to the system under test (all its processes): `perf stat` (task-clock, context
# switches, page faults) for --stat s, then `perf record` (software cpu-clock sampling with
# kernel call chains) for --record s. Printed: CPU ms per call, context switches and page
# faults per call; the share of samples in the kernel, in the binary and in libc, by thread;
# and the inclusive share of each system call and of page faults. perf's cpu-clock needs no
# hardware counters (this sandbox has none).
#
# usage: benches/cpu-profile.sh [--system trunkline|kamailio] [--rate R] [--bin PATH]
#                               [--stat S] [--record S]
# Output: benches/out/cpu-profile/<time>/ (perf.data, stat.txt, report.txt, the bench's log).
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM=trunkline
RATE=1000
BIN=target/release/trunkline
STAT=10
RECORD=8
while [ $# -gt 0 ]; do
  case $1 in
    --system) SYSTEM=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --stat) STAT=$2; shift ;;
    --record) RECORD=$2; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (--help)" >&2; exit 2 ;;
  esac
  shift
done
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null; }
OUT=benches/out/cpu-profile/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"

# The step lasts long enough for the warm-up, both perf windows and a margin.
DUR=$((STAT + RECORD + 20))
bench_args=(--only "$SYSTEM" --runs 1 --start "$RATE" --max "$RATE" --coarse-dur "$DUR"
  --dur 5 --max-minutes 3)
if [ "$SYSTEM" = trunkline ]; then
  BIN=$(realpath "$BIN")
  bench_args+=(--bin "$BIN")
  pattern="^$BIN run"
else
  bench_args+=(--no-build)
  pattern="^kamailio .*-f"
fi
bash benches/inbound-cps.sh "${bench_args[@]}" > "$OUT/bench.log" 2>&1 &
bench=$!
trap 'kill $bench 2>/dev/null || true' EXIT

# The system under test of the first step (after the bench's single-call check, which starts
# and stops one of its own), once its calls are steady.
for _ in $(seq 1 120); do
  grep -q "run 1 of 1" "$OUT/bench.log" && break
  sleep 0.5
done
pids=""
for _ in $(seq 1 60); do
  pids=$(pgrep -d, -f "$pattern" || true)
  [ -n "$pids" ] && break
  sleep 0.5
done
[ -n "$pids" ] || { echo "the system under test did not start (see $OUT/bench.log)" >&2; exit 1; }
sleep 8
pids=$(pgrep -d, -f "$pattern" || true)
[ -n "$pids" ] || { echo "the system under test stopped (see $OUT/bench.log)" >&2; exit 1; }
perf stat -x, -e task-clock,context-switches,page-faults -p "$pids" -o "$OUT/stat.txt" -- sleep "$STAT"
perf record -q -g -F 999 -e cpu-clock -p "$pids" -o "$OUT/perf.data" -- sleep "$RECORD" 2>/dev/null
wait $bench || true
trap - EXIT

# head closes perf report's pipe early: not an error here.
set +o pipefail
count() { grep ",$1" "$OUT/stat.txt" | cut -d, -f1; }
{
  echo "# $SYSTEM at $RATE calls/s ($(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD))"
  python3 - "$(count task-clock)" "$(count context-switches)" "$(count page-faults)" "$STAT" "$RATE" <<'PY'
import sys
ms, cs, pf, secs, rate = (float(x) for x in sys.argv[1:])
calls = secs * rate
print(f"CPU per call {ms / calls:.3f} ms; context switches per call {cs / calls:.1f}; "
      f"page faults per call {pf / calls:.1f}")
PY
  echo
  echo "## samples by thread and object"
  perf report -i "$OUT/perf.data" --no-children --sort comm,dso -q -g none 2>/dev/null | head -12
  echo
  echo "## system calls and page faults (inclusive share of all samples)"
  perf report -i "$OUT/perf.data" --children --sort sym -q -g none 2>/dev/null \
    | grep -E "__x64_sys_|\] exc_page_fault" | head -20
  echo
  echo "## top 25 symbols (self)"
  perf report -i "$OUT/perf.data" --no-children --sort sym -q -g none 2>/dev/null | head -25
} > "$OUT/report.txt"
cat "$OUT/report.txt"
echo "output: $OUT"
