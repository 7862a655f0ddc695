#!/usr/bin/env bash
# Benchmark: configuration at scale (issue 16 item 5). With 10,000 InboundTrunks / 100,000
# numbers (benches/gen-specs.py, as check-scale.sh) plus InboundTrunk bench/bench-in, which
# admits 127.0.0.1 and routes to a sipp agent runtime:
#  (a) startup: exec -> /readyz answers 200 -> the first call to bench-in's number is routed,
#      for `trunkline run --specs DIR` and for `trunkline gateway` fed by the fake API server of
#      the e2e tests (tests/config_scale.rs loads the same folder into it);
#  (b) one trunk edited: a number added to bench-in (run: the file rewritten; gateway: a PUT to
#      the API server), timed until an INVITE to that number is routed, while sipp places calls
#      at a constant rate to bench-in's first number: failed calls and the worst INVITE-to-200
#      time during the swaps;
#  (c) memory: the gateway's resident memory with the 10,000 trunks minus with 10.
# References measured in the same run: `trunkline check` on the same folder (the full read,
# validation and compile an unchanged `run` would redo per edit), and the same figures for 10
# trunks.
#
# usage: benches/config-scale.sh [--bin PATH] [--runs N] [--edits N] [--rate CPS] [--skip-gateway]
#   --bin: the trunkline binary (default: a release build of this tree).
# Output: benches/out/config-scale/<time>/ (logs, sipp traces), RESULT lines on stdout.
# Everything listens on 127.0.0.1; every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="" runs=3 edits=5 rate=200 gateway=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --edits) edits=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --skip-gateway) gateway=0; shift ;;
    *) sed -n '2,24p' "$0"; exit 2 ;;
  esac
done
out=benches/out/config-scale/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
if [ -z "$bin" ]; then
  cargo build --release --quiet
  bin=target/release/trunkline
fi
bin=$(realpath "$bin")
command -v sipp >/dev/null || { echo "sipp is needed (apt-get install sip-tester)"; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
agent=$(free_port)
gen() { python3 benches/gen-specs.py "$1" --trunks "$2" --numbers-per-trunk 10 --files "$3" --bench-agent "127.0.0.1:$agent"; }
drive() { timeout 600 python3 benches/config-scale/drive.py "$@" --bin "$bin" --agent-port "$agent" --edits "$edits" --rate "$rate"; }

echo "== reference: trunkline check on the same folder"
gen "$out/specs" 10000 100
for i in $(seq "$runs"); do
  t0=$(date +%s.%N); "$bin" check "$out/specs" > "$out/check.txt"; t1=$(date +%s.%N)
  echo "RESULT check run=$i check_s=$(python3 -c "print('%.3f' % ($t1 - $t0))")"
done

echo "== run, 10 trunks (reference: startup and memory of a small config)"
for i in $(seq "$runs"); do
  gen "$out/few-$i" 10 1
  drive run --specs "$out/few-$i" --out "$out/run-few-$i" --startup-only | sed "s/^RESULT/RESULT run-few run=$i/"
done

echo "== run, 10,000 trunks: startup, then $edits edits under $rate calls/s"
for i in $(seq "$runs"); do
  gen "$out/specs-$i" 10000 100
  drive run --specs "$out/specs-$i" --out "$out/run-$i" | sed "s/^RESULT/RESULT run-10k run=$i/"
done

if [ "$gateway" = 1 ]; then
  echo "== gateway fed by the fake API server (tests/config_scale.rs)"
  cargo test --release --quiet --test config_scale --no-run
  harness=$(cargo test --release --test config_scale --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("executable") and m.get("target",{}).get("name")=="config_scale": print(m["executable"])')
  for size in few 10k; do
    for i in $(seq "$runs"); do
      dir="$out/gateway-$size-$i"; mkdir -p "$dir"
      if [ "$size" = few ]; then gen "$dir/specs" 10 1; else gen "$dir/specs" 10000 100; fi
      CONFIG_SCALE_SPECS="$dir/specs" CONFIG_SCALE_DIR="$dir" timeout 900 "$harness" --ignored --exact \
        serve_a_spec_folder_from_the_fake_api_server > "$dir/apiserver.log" 2>&1 &
      api_pid=$!
      for _ in $(seq 600); do [ -s "$dir/api-url" ] && break; sleep 0.2; done
      [ -s "$dir/api-url" ] || { echo "the fake API server did not start"; kill "$api_pid"; exit 1; }
      extra=(); [ "$size" = few ] && extra=(--startup-only)
      drive gateway --api "$(cat "$dir/api-url")" --kubeconfig "$dir/kubeconfig" --out "$dir/drive" "${extra[@]}" \
        | sed "s/^RESULT/RESULT gateway-$size run=$i/" || true
      touch "$dir/stop"; wait "$api_pid" || true
    done
  done
fi
echo "output: $out"
