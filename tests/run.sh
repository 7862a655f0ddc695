#!/usr/bin/env bash
# The test command of the README: installs what the tests need when it is missing, then runs
# every test (unit, golden, CLI). Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi

cargo build --locked --all-targets
# nextest runs unit, golden, CLI and integration tests; the crate has no doctests.
cargo nextest run --locked --no-fail-fast
