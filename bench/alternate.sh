#!/usr/bin/env bash
# Old build against new build, alternated on this machine: the release `tollgate` and
# `tollgate-sim` of an older revision (HEAD~N, checked out in a worktree) and of the work
# tree, each run on a fresh three-node cluster (separate processes, durable log, loopback,
# authentication on: what bench/compare.sh runs), driven by `tollgate-sim bench` at 64
# clients per call (hot budget, no leases). Old, new, old, new, old, new: alternating
# spreads drift of a shared machine (other work, thermal, page cache) over both builds.
# Prints each run's pairs/s, then `new vs old: X.XX (median of 3 each)`, and the new build's
# trail bytes per decision (the leader's records and answers as its store counts them, over
# its audit head: every decision writes one audit record; a run this short never leaves the
# open bucket, counted before compression, so this is an upper bound).
#
#   bench/alternate.sh            # old = HEAD~1; ~3 minutes of runs after the builds
#   bench/alternate.sh 3          # old = HEAD~3
#   bench/alternate.sh v1.2       # old = any revision
#   bench/alternate.sh 1 --duration 2 --warmup 0.5 --runs 1   # a quick check
#
# Each side builds in its own target/alternate/target-{old,new} (the work tree's target/
# stays free for other builds; a rerun rebuilds only what changed); each binary is copied
# out under target/alternate/ as soon as it is built. Every process started here is stopped
# on exit, and each run's data directory removed once measured.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BACK=1
DURATION=10
WARMUP=1
RUNS=3
CLIENTS=64
OLD_SPEC=""
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then BACK="$1"; shift
elif [[ $# -gt 0 && "$1" != -* ]]; then OLD_SPEC="$1"; shift; fi
while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done

ALT="$ROOT/target/alternate"
OLD_SRC="$ALT/old-src"
OLD_REV="$(git -C "$ROOT" rev-parse --verify "${OLD_SPEC:-HEAD~$BACK}^{commit}")"
TG_PORTS=(17401 17402 17403)
TG_PEER_PORTS=(17411 17412 17413)
mkdir -p "$ALT/old" "$ALT/new"
WORK="$(mktemp -d "$ALT/runs.XXXXXX")"
PIDS=()

stop_cluster() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

cleanup() {
  local status=$?
  stop_cluster
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT INT TERM
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

build() { # source-dir out-dir
  # A target dir for each side: cargo names a workspace member's artifacts by its path
  # inside the workspace, so the two checkouts' crates would overwrite each other's.
  local target="$ALT/target-$(basename "$2")"
  (cd "$1" && CARGO_TARGET_DIR="$target" cargo build --release -q \
    -p tollgate-server -p tollgate-sim)
  cp "$target/release/tollgate" "$target/release/tollgate-sim" "$2/"
}

log "old: $(git -C "$ROOT" log -1 --format='%h %s' "$OLD_REV")"
if [[ -e "$OLD_SRC/.git" ]]; then
  git -C "$OLD_SRC" checkout -q --detach "$OLD_REV"
else
  git -C "$ROOT" worktree add -q --detach "$OLD_SRC" "$OLD_REV"
fi
log "building old (release) in $OLD_SRC"
build "$OLD_SRC" "$ALT/old"
log "new: the work tree at $(git -C "$ROOT" log -1 --format='%h %s')$(git -C "$ROOT" diff --quiet HEAD || echo ' (with uncommitted changes)')"
log "building new (release)"
build "$ROOT" "$ALT/new"

# One run: a fresh cluster of `which`'s build, the bench, then the figures. Writes
# `pairs/s` to $WORK/figures and, for the new build, `bytes-of-trail decisions` on its
# second line. Runs in this shell (not a subshell), so the exit trap knows its servers.
run() { # which index
  local bin="$ALT/$1" dir="$WORK/$1-$2" pids
  start_tollgate "$bin/tollgate" "$dir"
  pids="$(IFS=,; echo "${TG_PIDS[*]}")"
  TOLLGATE_API_KEY_FILE="$dir/admin.key" "$bin/tollgate-sim" bench --system tollgate \
    --cluster "$TG_ENDPOINTS" --server-pids "$pids" --workload hot --clients "$CLIENTS" \
    --duration "$DURATION" --warmup "$WARMUP" --label "tollgate-$1" \
    --json "$dir/result.json" >"$dir/bench.out" 2>"$dir/bench.err" \
    || { cat "$dir/bench.err" >&2; return 1; }
  jq -r '.[0].throughput_pairs_s' "$dir/result.json" >"$WORK/figures"
  if [[ "$1" == new ]]; then
    local status head trail_bytes
    status="$("$bin/tollgate" status --cluster "$TG_ENDPOINTS" --api-key-file "$dir/admin.key" \
      --json)"
    head="$(jq '[.. | objects | .chain_head_seq? // empty] | max' <<<"$status")"
    trail_bytes="$(jq '[.[] | select(.role == "leader") | (.trail.bytes // -1) + (.answers.bytes // 0)]
      | first // -1' <<<"$status")"
    echo "$trail_bytes $head" >>"$WORK/figures"
  fi
  stop_cluster
  rm -rf "$dir"
}

OLD_RATES=()
NEW_RATES=()
TRAIL_FIGURES=()
for k in $(seq 1 "$RUNS"); do
  for which in old new; do
    log "run $k/$RUNS: $which, hot, $CLIENTS clients per call, ${DURATION} s"
    run "$which" "$k"
    mapfile -t out <"$WORK/figures"
    [[ ${#out[@]} -ge 1 ]] || { echo "run $which $k gave no figures" >&2; exit 1; }
    printf '%s run %d: %.0f pairs/s\n' "$which" "$k" "${out[0]}"
    if [[ "$which" == old ]]; then OLD_RATES+=("${out[0]}"); else NEW_RATES+=("${out[0]}"); fi
    if [[ ${#out[@]} -ge 2 ]]; then TRAIL_FIGURES+=("${out[1]}"); fi
  done
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
  if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
OLD_MEDIAN="$(median "${OLD_RATES[@]}")"
NEW_MEDIAN="$(median "${NEW_RATES[@]}")"
for figures in "${TRAIL_FIGURES[@]}"; do
  read -r bytes decisions <<<"$figures"
  if [[ "$bytes" -lt 0 ]]; then
    echo "new build: its status shows no trail (this build keeps no trail on disk)"
  elif [[ "$decisions" -gt 0 ]]; then
    awk -v b="$bytes" -v d="$decisions" \
      'BEGIN { printf "new build: trail %d bytes for %d decisions: %.1f bytes per decision (upper bound)\n", b, d, b / d }'
  fi
done
log "load: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores shared with other work)"
awk -v n="$NEW_MEDIAN" -v o="$OLD_MEDIAN" -v r="$RUNS" \
  'BEGIN { printf "new vs old: %.2f (median of %d each)\n", n / o, r }'
