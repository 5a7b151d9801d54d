#!/usr/bin/env bash
# The test command of the README: everything CI checks, in the order a failure is cheapest.
# One `cargo build` of the workspace serves every step after it.
set -euo pipefail
cd "$(dirname "$0")/.."
# A clean build is not helped by incremental caches, which would take gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . | tail -1 | awk '{print "disk free at the start: " $4}'

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
cargo build --workspace --all-targets --locked

echo "== unit, property and cluster tests"
# Cluster tests start three real nodes each; two at a time fit two cores.
RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}" cargo test --workspace --locked

echo "== fuzz targets: every decoder of network and disk bytes, for a bounded number of cases"
# The test run above gave each target 256 cases; this gives them 20,000 (about a minute).
FUZZ_CASES="${FUZZ_CASES:-20000}" cargo test -q -p tollgate-tests --test fuzz --locked

echo "== the Python client and its framework hooks against real clusters (a venv in target/py-venv)"
scripts/python-tests.sh

echo "== the web console (/ui) in headless Chromium (installs chromium with apt-get if missing)"
scripts/console-test.sh

echo "== runaway scenarios against an embedded three-node cluster"
# Two seeds in CI; more on demand: cargo run -p tollgate-sim -- run simulator/scenarios/*.toml --seeds 20
cargo run -q -p tollgate-sim --locked -- run simulator/scenarios/*.toml --seeds "${TOLLGATE_SIM_SEEDS:-2}"

echo "== the README's first command, as written: a cluster with its demo, then Ctrl-C"
scripts/first-command.sh

echo "== the compose cluster under node loss and partitions (skips without a Docker engine)"
tests/compose/run.sh
