#!/usr/bin/env bash
# The test command of the README: installs what the tests need when it is missing, then runs
# every test (unit, golden, CLI, real SIP peers). Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

# The real SIP peers of tests/gateway_inbound.rs: sipp (package sip-tester) plays the carrier and
# the agent runtime, Kamailio with its TLS module is the TLS front of sipp (which has no TLS), and
# linphonec (linphone-cli) answers SHA-256 digest challenges (which sipp cannot). CI runs this as
# root on a fresh Debian machine; elsewhere sudo is used when it is there. apt-get update runs once,
# only when something is missing; apt's output is shown only when it fails.
apt_install() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "run.sh: $* missing and not root: install it (apt-get install $*)" >&2
      return 1
    fi
  fi
  local log
  log="$(mktemp)"
  if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
  # The tests start their own Kamailio; the system service the package may start is not needed.
  if [[ " $* " == *" kamailio "* ]] && command -v systemctl >/dev/null 2>&1; then
    "${sudo[@]}" systemctl disable --now kamailio.service >/dev/null 2>&1 || true
  fi
}
missing=()
command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
command -v linphonec >/dev/null 2>&1 || missing+=(linphone-cli)
command -v kamailio >/dev/null 2>&1 || missing+=(kamailio)
# SIPVicious (svwar, svcrack) attacks the gateway in tests/scanners.rs.
command -v svcrack >/dev/null 2>&1 || missing+=(sipvicious)
dpkg-query -W -f='${Status}' kamailio-tls-modules 2>/dev/null | grep -q "ok installed" ||
  missing+=(kamailio-tls-modules)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "run.sh: installing ${missing[*]}" >&2
  apt_install "${missing[@]}"
fi

cargo build --locked --all-targets
# nextest runs unit, golden, CLI and integration tests; the crate has no doctests.
cargo nextest run --locked --no-fail-fast

# The Helm chart (charts/trunkline, tests/chart/): rendered and linted by the real Helm SDK
# (PyPI helm-python-sdk: its wheel bundles Helm's Go code as a library, so no helm binary and
# nothing fetched from outside PyPI), validated with kubernetes-validate and scanned with checkov
# --skip-download (both offline). The packages, pinned in tests/chart/requirements.txt and
# constraints.txt, go into target/chart-venv, made again whenever the pins change.
chart_venv=target/chart-venv
chart_pins="$(cat tests/chart/requirements.txt tests/chart/constraints.txt)"
if [ ! -x "$chart_venv/bin/python" ] || [ "$(cat "$chart_venv/pins.txt" 2>/dev/null)" != "$chart_pins" ]; then
  command -v python3 >/dev/null 2>&1 || apt_install python3
  rm -rf "$chart_venv"
  # Debian's python3 makes virtual environments only with python3-venv (ensurepip).
  if ! python3 -m venv "$chart_venv" >/dev/null 2>&1; then
    echo "run.sh: installing python3-venv" >&2
    apt_install python3-venv
    rm -rf "$chart_venv"
    python3 -m venv "$chart_venv"
  fi
  echo "run.sh: installing the chart test tools into $chart_venv" >&2
  "$chart_venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r tests/chart/requirements.txt
  printf '%s' "$chart_pins" >"$chart_venv/pins.txt"
fi
PYTHONDONTWRITEBYTECODE=1 "$chart_venv/bin/python" -m pytest -p no:cacheprovider -q tests/chart

# The call API (tests/api/): the built binary against its own OpenAPI document with schemathesis
# (PyPI, pinned, in target/api-venv), and the API's wiring.
tests/api/run.sh

# Fuzz smoke (fuzz/, docs/security.md "Fuzzing"): every cargo-fuzz target for 10 s from its
# seeds (fuzz/seeds/<target>, corpus grown in fuzz/corpus/<target>, both ways ignored by git),
# about a minute in all; a crash fails the run and leaves its input in fuzz/artifacts/<target>.
# cargo-fuzz needs the nightly toolchain (the CI image has it; stable builds everything else).
# The long runs (10 minutes and more per target) are by hand: see the docs.
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "run.sh: fuzz smoke skipped: no nightly toolchain (rustup toolchain install nightly)" >&2
else
  if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked ||
      echo "run.sh: cargo install cargo-fuzz failed" >&2
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: fuzz smoke skipped: cargo-fuzz is missing (cargo install cargo-fuzz)" >&2
  else
    for target in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
      mkdir -p "fuzz/corpus/$target"
      log="$(mktemp)"
      if ! cargo +nightly fuzz run --fuzz-dir fuzz -O "$target" "fuzz/corpus/$target" \
        "fuzz/seeds/$target" -- -max_total_time=10 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        rm -f "$log"
        echo "run.sh: fuzz target $target failed (input in fuzz/artifacts/$target)" >&2
        exit 1
      fi
      echo "run.sh: fuzz $target: $(grep -m1 '^stat::number_of_executed_units' "$log")" >&2
      rm -f "$log"
    done
  fi
fi
