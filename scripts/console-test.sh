#!/usr/bin/env bash
# The web console (/ui) in a real browser: headless Chromium, driven by Selenium through
# Debian's chromedriver, against a three-node cluster with TLS and keys started from the
# tollgate binary (TOLLGATE_BIN, default target/debug/tollgate). Installs chromium and its
# driver with apt-get when missing (CI runs as root on a fresh Debian machine); the venv lives
# in target/console-venv. Writes target/console/console.png. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

export TOLLGATE_BIN="${TOLLGATE_BIN:-$PWD/target/debug/tollgate}"
if [[ ! -x "$TOLLGATE_BIN" ]]; then
    echo "no tollgate binary at $TOLLGATE_BIN: run 'cargo build -p tollgate-server' or set TOLLGATE_BIN" >&2
    exit 1
fi

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "chromium and chromedriver are missing: apt-get install chromium chromium-driver (as root)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

venv=target/console-venv
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# The client is reinstalled each run so its generated modules match proto/tollgate.proto.
"$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps ./client/python
"$venv/bin/python" -m pip install --quiet ./client/python "selenium>=4.20,<5" "pytest>=8,<9"

mkdir -p target/console
rm -f target/console/console.png
"$venv/bin/python" -m pytest tests/console -q -p no:cacheprovider "$@"
[[ -s target/console/console.png ]] || { echo "console test: no screenshot written" >&2; exit 1; }
echo "console test: screenshot in target/console/console.png"
