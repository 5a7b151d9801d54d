#!/usr/bin/env bash
# Runs the README's first command exactly as written (the first line of the first code block
# under "## Run it"), waits until it serves a cluster with a leader and has played its demo,
# asks the cluster for its status, runs the README's Python example against it, then stops it
# with Ctrl-C and expects a clean exit.
# A fresh clone's first minute must not end in an error, so CI runs this on every change.
set -euo pipefail
cd "$(dirname "$0")/.."

# How long the build (a release build on a cold cache) and the demo may take.
ready_wait_s="${TOLLGATE_FIRST_COMMAND_WAIT_S:-1500}"
log="target/first-command.log"
mkdir -p target

command=$(awk '/^## Run it/ { section = 1; next }
               section && /^```/ { if (inside) exit; inside = 1; next }
               inside { print; exit }' README.md)
[ -n "$command" ] || { echo "first command: none found under '## Run it' in README.md" >&2; exit 1; }
echo "first command: $command"

: >"$log"
# Its own process group, so Ctrl-C reaches cargo and the node it runs alike.
setsid bash -c "$command" >"$log" 2>&1 &
group=$!
stop() { kill -INT -- "-$group" 2>/dev/null || true; }
trap stop EXIT

deadline=$((SECONDS + ready_wait_s))
until grep -q '^serving;' "$log"; do
  if ! kill -0 "$group" 2>/dev/null; then
    echo "first command: exited before serving; its output:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  if ((SECONDS > deadline)); then
    echo "first command: not serving after ${ready_wait_s} s; its output:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
  sleep 1
done
grep -q '^demo done\.' "$log" || { echo "first command: the demo did not finish" >&2; cat "$log" >&2; exit 1; }

status=$(target/release/tollgate status)
echo "$status"
grep -q leader <<<"$status" || { echo "first command: no node reports itself leader" >&2; exit 1; }

# The README's Python example, as written, in a fresh venv with the package installed as the
# README says: it must show a grant, a commit and a denial against this cluster.
example=$(awk '/^```python/ { inside = 1; next } inside && /^```/ { exit } inside { print }' README.md)
[ -n "$example" ] || { echo "first command: no Python example in README.md" >&2; exit 1; }
venv=$(mktemp -d)
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet ./client/python
printed=$("$venv/bin/python" -c "$example")
rm -rf "$venv"
echo "$printed"
for shown in '^granted [0-9]+' '^committed [0-9]+ micro-USD' '^denied by batch-bot-daily-cost'; do
  grep -Eq "$shown" <<<"$printed" || { echo "first command: the Python example did not print /$shown/" >&2; exit 1; }
done

trap - EXIT
stop
wait "$group" && code=0 || code=$?
# cargo run reports the node's exit; Ctrl-C stops the node cleanly (exit 0), and cargo
# itself may die of the signal (130).
if ((code != 0 && code != 130)); then
  echo "first command: exit code $code after Ctrl-C; its output:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
echo "first command: served a cluster with a leader, played the demo, ran the Python example, stopped cleanly"
