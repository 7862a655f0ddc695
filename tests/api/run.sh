#!/usr/bin/env bash
# The call API tests (tests/api/): the built binary (target/debug/trunkline, which tests/run.sh
# builds first) checked against its own OpenAPI document by schemathesis, plus its wiring. The
# packages, pinned in requirements.txt and constraints.txt, go into target/api-venv, made again
# whenever the pins change. Needs python3 with venv (tests/run.sh installs python3-venv for the
# chart tests before calling this).
set -euo pipefail
cd "$(dirname "$0")/../.."

venv=target/api-venv
pins="$(cat tests/api/requirements.txt tests/api/constraints.txt)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/pins.txt" 2>/dev/null)" != "$pins" ]; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv"; then
    echo "tests/api/run.sh: python3 cannot make a virtual environment (apt-get install python3-venv)" >&2
    exit 1
  fi
  echo "tests/api/run.sh: installing the call API test tools into $venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/api/requirements.txt
  printf '%s' "$pins" >"$venv/pins.txt"
fi
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -p no:cacheprovider -q tests/api "$@"
