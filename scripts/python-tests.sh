#!/usr/bin/env bash
# The Python client's tests, against real three-node clusters started from the tollgate
# binary (TOLLGATE_BIN, default target/debug/tollgate: run `cargo build --workspace` first).
# The virtualenv lives in target/py-venv and is reused; the client is reinstalled each run
# so its generated protobuf modules always match proto/tollgate.proto.
set -euo pipefail
cd "$(dirname "$0")/.."

export TOLLGATE_BIN="${TOLLGATE_BIN:-$PWD/target/debug/tollgate}"
if [[ ! -x "$TOLLGATE_BIN" ]]; then
    echo "no tollgate binary at $TOLLGATE_BIN: run 'cargo build --workspace' or set TOLLGATE_BIN" >&2
    exit 1
fi

venv=target/py-venv
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps ./client/python
"$venv/bin/python" -m pip install --quiet "./client/python[test,lint,openai-agents,langchain]"
(
    cd client/python
    "../../$venv/bin/python" -m black --check --quiet src tests examples
    "../../$venv/bin/python" -m ruff check --quiet src tests examples
    "../../$venv/bin/python" -m mypy --strict src tests examples
)
"$venv/bin/python" -m pytest client/python/tests -q "$@"
