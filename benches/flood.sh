#!/usr/bin/env bash
# Benchmark: a real carrier's calls while one other source floods the gateway (issue 15 item 3).
#
#   sipp UAC (carrier on 127.0.0.1: digest, short calls, benches/inbound-cps/uac.xml, --rate/s)
#   flooder on 127.0.0.66 (benches/flood/flood.py): FACTOR x CAPACITY datagrams/s, half
#        garbage (random bytes and broken SIP), half unauthenticated INVITEs (each a new
#        Call-ID: without the per-source limits every one gets a stateless 407)
#     -> trunkline run on 127.0.0.1 (one InboundTrunk with digest, +15551230001 -> agent)
#     -> sipp UAS (agent runtime, benches/inbound-cps/uas.xml)
#
# The carrier starts first (its first routed call makes its address known-good, as a carrier
# that was calling before an attack), the flood starts WARMUP s later and runs DUR s; the carrier
# runs until the flood ends plus a few seconds, then stops. Passes when >= 95 % of the carrier's
# calls completed. CAPACITY is the gateway's inbound calls/s (docs/benchmarks.md, "Inbound calls
# per second"); pass it for the build measured (--capacity). The flooder reports the datagrams it
# really sent; the gateway's /metrics before and after are kept (trunkline_guard_dropped_total).
# With --no-guard the per-source limits are turned off (all rates 0): the same flood without
# them, for comparison.
#
# Everything runs on 127.0.0.1..127.0.0.66; the load generators share the cores with the gateway.
# Output: benches/out/flood/<time>/ (sipp logs, metrics, summary.md). The last line printed:
#   RESULT completed_pct=... calls=... failed=... flood_sent=... flood_rate=... dropped=...
#
# usage: benches/flood.sh [--capacity CPS] [--factor N] [--rate CPS] [--dur S] [--debug]
#                         [--no-guard] [--base-port P]
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
source "$ROOT/benches/lib/spec.sh"   # bench_spec: the one InboundTrunk every benchmark measures
HERE=$ROOT/benches/flood

CAPACITY=3000     # inbound calls/s of the release build (docs/benchmarks.md)
FACTOR=3          # the flood is FACTOR x CAPACITY datagrams/s
RATE=20           # the carrier's calls/s
DUR=40            # seconds of flood
WARMUP=3          # seconds of carrier calls before the flood
BASE_PORT=7160
PROFILE=release
GUARD=1
die() { echo "flood.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --capacity) CAPACITY=$2; shift 2 ;;
    --factor) FACTOR=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --dur) DUR=$2; shift 2 ;;
    --base-port) BASE_PORT=$2; shift 2 ;;
    --debug) PROFILE=debug; shift ;;
    --no-guard) GUARD=0; shift ;;
    --help|-h) sed -n '2,27p' "$0"; exit 0 ;;
    *) die "unknown option $1 (--help)" ;;
  esac
done
command -v sipp >/dev/null || die "sipp missing (apt-get install sip-tester)"
command -v python3 >/dev/null || die "python3 missing"
if [ "$PROFILE" = release ]; then
  cargo build --release --quiet || die "cargo build --release failed"
else
  cargo build --quiet || die "cargo build failed"
fi
BIN=$ROOT/target/$PROFILE/trunkline
OUT=$ROOT/benches/out/flood/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT/specs" "$OUT/state" && chmod 700 "$OUT/state"

NUMBER=15551230001
AUTH_USER=carrier
AUTH_PASS=s3cret-carrier
GW_PORT=$BASE_PORT; GW_INTERNAL=$((BASE_PORT + 2)); UAC_PORT=$((BASE_PORT + 10))
UAS_PORT=$((BASE_PORT + 20)); ADMIN_PORT=$((BASE_PORT + 30))
UAC_MEDIA=$((BASE_PORT + 1000)); UAS_MEDIA=$((BASE_PORT + 1100))

bench_spec "$OUT/specs/bench.yaml" benches/flood.sh

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

GUARD_ARGS=()
[ "$GUARD" = 0 ] && GUARD_ARGS=(--source-invite-rate 0 --source-options-rate 0
  --source-request-rate 0 --global-request-rate 0 --auth-failures 0 --username-failures 0)
RUST_LOG=warn "$BIN" run --specs "$OUT/specs" --listen "udp://127.0.0.1:$GW_PORT" \
  --internal-listen "udp://127.0.0.1:$GW_INTERNAL" --admin "127.0.0.1:$ADMIN_PORT" \
  --state-dir "$OUT/state" --agent-timeout 10 --drain-timeout 1 --rtp-ports 20000-31999 \
  "${GUARD_ARGS[@]}" >> "$OUT/trunkline.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null || die "trunkline did not get ready ($OUT/trunkline.log)"

CARRIER_SECS=$((WARMUP + DUR + 3))
CALLS=$((RATE * CARRIER_SECS))
sipp -sf "$ROOT/benches/inbound-cps/uas.xml" -i 127.0.0.1 -p "$UAS_PORT" -mp "$UAS_MEDIA" \
  -bg -trace_err -error_file "$OUT/uas-errors.log" > "$OUT/uas.out" 2>&1 &
sleep 0.5
sipp 127.0.0.1:"$GW_PORT" -sf "$ROOT/benches/inbound-cps/uac.xml" -s "$NUMBER" \
  -au "$AUTH_USER" -ap "$AUTH_PASS" -auth_uri "$NUMBER@127.0.0.1:$GW_PORT" \
  -i 127.0.0.1 -p "$UAC_PORT" -mp "$UAC_MEDIA" -r "$RATE" -m "$CALLS" -l $((RATE * 5)) \
  -timeout $((CARRIER_SECS + 30)) -timeout_error -trace_stat -stf "$OUT/uac-stat.csv" -fd 1 \
  -trace_err -error_file "$OUT/uac-errors.log" -bg > "$OUT/uac.out" 2>&1
UAC_PID=$(pgrep -n -f "sipp 127.0.0.1:$GW_PORT")
UAS_PID=$(pgrep -n -f "sipp -sf $ROOT/benches/inbound-cps/uas.xml")
PIDS+=("$UAC_PID" "$UAS_PID")

sleep "$WARMUP"
curl -fs "http://127.0.0.1:$ADMIN_PORT/metrics" > "$OUT/metrics-before.txt"
FLOOD_RATE=$((CAPACITY * FACTOR))
python3 "$HERE/flood.py" --target "127.0.0.1:$GW_PORT" --source 127.0.0.66 \
  --rate "$FLOOD_RATE" --seconds "$DUR" > "$OUT/flood.txt" 2>&1
curl -fs "http://127.0.0.1:$ADMIN_PORT/metrics" > "$OUT/metrics-after.txt"

# The carrier's last calls end a few seconds after the flood.
for _ in $(seq $((CARRIER_SECS + 40))); do
  kill -0 "$UAC_PID" 2>/dev/null || break
  sleep 1
done
kill "$UAC_PID" 2>/dev/null
sleep 1

python3 - "$OUT" <<'EOF'
import csv, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
rows = list(csv.DictReader(open(out / "uac-stat.csv"), delimiter=";"))
last = rows[-1] if rows else {}
ok = int(last.get("SuccessfulCall(C)", 0))
failed = int(last.get("FailedCall(C)", 0))
total = ok + failed
flood = (out / "flood.txt").read_text()
sent = re.search(r"sent=(\d+)", flood)
rate = re.search(r"rate=(\d+)", flood)
def dropped(page):
    return sum(float(l.rsplit(" ", 1)[1]) for l in page.splitlines()
               if l.startswith("trunkline_guard_dropped_total{"))
d = dropped((out / "metrics-after.txt").read_text()) - dropped((out / "metrics-before.txt").read_text())
pct = 100.0 * ok / total if total else 0.0
line = (f"RESULT completed_pct={pct:.1f} calls={total} failed={failed} "
        f"flood_sent={sent.group(1) if sent else '?'} flood_rate={rate.group(1) if rate else '?'} "
        f"dropped={int(d)}")
(out / "summary.md").write_text(line + "\n")
print(line)
EOF
