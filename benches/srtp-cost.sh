#!/usr/bin/env bash
# Benchmark: CPU per packet of the relay's SRTP work (issue 17, item 3), next to plain relaying.
#
#   benches/rtp-relay/srtp_cost.rs (release example `srtp-cost`): per suite
#   (AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM), ROUNDS rounds of
#   PACKETS packets of 172 bytes: the relay side's unprotect (carrier -> agent: authenticate,
#   replay check, decrypt) and protect (agent -> carrier: encrypt, tag), timed with the thread's
#   CPU clock; medians over the rounds. A packet relayed between an SRTP carrier and the plain
#   agent leg pays one of the two; the sum is a call's two directions.
#   --relay: then benches/rtp-relay.sh --quick --only trunkline --runs 1 in the same run, whose
#   CPU per relayed plain packet is the reference; the script prints the ratios.
#
# usage: benches/srtp-cost.sh [--packets N] [--rounds N] [--relay] [--no-build]
# Output: benches/out/srtp-cost/<time>/ (srtp.txt, the relay run, summary.md). Last line:
#   RESULT plain_us=.. aes80_us=.. aes32_us=.. gcm_us=.. (per direction: the mean of the two)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PACKETS=200000
ROUNDS=5
RELAY=0
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --packets) PACKETS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --relay) RELAY=1 ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
OUT=$ROOT/benches/out/srtp-cost/$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
cd "$ROOT"
if [ "$BUILD" = 1 ]; then
  cargo build --release --example srtp-cost >&2
fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/srtp-cost
"$BIN" --packets "$PACKETS" --rounds "$ROUNDS" | tee "$OUT/srtp.txt" >&2
median() { grep "^MEDIAN $1 " "$OUT/srtp.txt" | sed -E 's/.* both_ns=([0-9.]+).*/\1/'; }
aes80=$(median AES_CM_128_HMAC_SHA1_80)
aes32=$(median AES_CM_128_HMAC_SHA1_32)
gcm=$(median AEAD_AES_128_GCM)
plain=
if [ "$RELAY" = 1 ]; then
  bash "$ROOT/benches/rtp-relay.sh" --quick --only trunkline --runs 1 --outdir "$OUT/relay" \
    | tee "$OUT/relay.txt" >&2 || true
  plain=$(grep -o 'trunkline_us_per_pkt=[0-9.]*' "$OUT/relay.txt" | tail -1 | cut -d= -f2 || true)
fi
us() { awk -v ns="$1" 'BEGIN { printf "%.3f", ns / 2000 }'; }
{
  echo "| suite | unprotect + protect (ns, medians of $ROUNDS x $PACKETS) | per relayed packet (µs, one direction) |${plain:+ ratio to plain relaying ($plain µs/packet) |}"
  echo "| --- | ---: | ---: |${plain:+ ---: |}"
  for s in AES_CM_128_HMAC_SHA1_80:$aes80 AES_CM_128_HMAC_SHA1_32:$aes32 AEAD_AES_128_GCM:$gcm; do
    name=${s%%:*}; ns=${s#*:}; per=$(us "$ns")
    ratio=
    [ -n "$plain" ] && ratio=$(awk -v a="$per" -v b="$plain" 'BEGIN { printf " %.2f |", (a + b) / b }')
    echo "| $name | $ns | $per |$ratio"
  done
} | tee "$OUT/summary.md" >&2
echo "RESULT plain_us=${plain:-n/a} aes80_us=$(us "$aes80") aes32_us=$(us "$aes32") gcm_us=$(us "$gcm")"
