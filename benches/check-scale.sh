#!/usr/bin/env bash
# Benchmark: `trunkline check` on a generated folder of 10,000 InboundTrunks with 100,000
# numbers (plus 5,000 Secrets, 50 OutboundTrunks, 50 TransferDestinations).
#
# Reference, measured in the same run on the same files: parsing the YAML alone with PyYAML's
# C loader (what any tool has to do before it can check anything). The ratio check/parse says
# how much the schema validation, CEL rules and compile add on top of reading the files.
#
# usage: benches/check-scale.sh [RUNS]      (default 5 runs; prints medians)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
out=benches/out/check-scale
rm -rf "$out" && mkdir -p "$out"
python3 benches/gen-specs.py "$out/specs" --trunks 10000 --numbers-per-trunk 10 --files 100
cargo build --release --quiet
bin=target/release/trunkline
command -v bc >/dev/null && [ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq bc time; }
python3 -c 'import yaml' 2>/dev/null || pip install --quiet pyyaml

median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f\n", m}'; }
now() { date +%s.%N; }

check_times=() parse_times=() rss=()
for i in $(seq "$runs"); do
  t0=$(now)
  /usr/bin/time -f '%M' -o "$out/rss" "$bin" check "$out/specs" > "$out/check.txt"
  t1=$(now)
  python3 - "$out/specs" <<'PY'
import glob, sys, yaml
loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
for f in sorted(glob.glob(sys.argv[1] + "/*.yaml")):
    with open(f) as fh:
        list(yaml.load_all(fh, Loader=loader))
PY
  t2=$(now)
  check_times+=("$(echo "$t1 - $t0" | bc)")
  parse_times+=("$(echo "$t2 - $t1" | bc)")
  rss+=("$(cat "$out/rss")")
done
check=$(printf '%s\n' "${check_times[@]}" | median)
parse=$(printf '%s\n' "${parse_times[@]}" | median)
mem=$(printf '%s\n' "${rss[@]}" | median)
tail -n 1 "$out/check.txt"
echo "check runs (s): ${check_times[*]}"
echo "parse runs (s): ${parse_times[*]}"
echo "RESULT check_median_s=$check pyyaml_parse_median_s=$parse ratio=$(echo "scale=2; $check / $parse" | bc) check_max_rss_kib=$mem"
