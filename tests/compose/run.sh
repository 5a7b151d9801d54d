#!/usr/bin/env bash
# The compose fault test: builds the image, starts the three-node cluster of
# docker-compose.yml, drives load from several client processes through the published
# 127.0.0.1 ports over TLS, and injects faults one after another and then mixed: kill -9 of the
# leader, a partition that leaves the leader in a minority, a partition of one follower,
# docker pause, a restart of the whole cluster. Client processes are killed mid-run too.
# Then compose_check holds the histories and the cluster's final state to the promises and
# prints the summary; its last line is `compose faults: <N> violations, <M> ops, max
# unavailable <S> s`. Exits non-zero on any violation; skips (exit 0) without a Docker engine.
#
#   tests/compose/run.sh                                   # the full run, 3 minutes of load
#   TOLLGATE_COMPOSE_DURATION_S=120 tests/compose/run.sh   # shorter, for local iteration
#
# Results stay in target/compose-faults/<project>/ (histories, faults, snapshots, node logs).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! docker info >/dev/null 2>&1; then
  echo "compose fault test: skipped: no Docker engine (docker info failed)"
  exit 0
fi
for tool in docker-compose cargo; do
  command -v "$tool" >/dev/null || { echo "compose fault test: $tool is not installed" >&2; exit 1; }
done

# The fault schedule's first, one-after-another phase needs about 100 s of load; CI runs the
# default of 180 s.
duration_s="${TOLLGATE_COMPOSE_DURATION_S:-180}"
duration_min_s=120
if ((duration_s < duration_min_s)); then
  echo "TOLLGATE_COMPOSE_DURATION_S=$duration_s is below the ${duration_min_s} s the schedule needs; using ${duration_min_s}"
  duration_s=$duration_min_s
fi
clients="${TOLLGATE_COMPOSE_CLIENTS:-4}"
workers="${TOLLGATE_COMPOSE_WORKERS:-6}"
endpoints="127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
ports=(7001 7002 7003 9101 9102 9103)
# How long a node may take to report healthy, and the leader to be found, after a start.
healthy_wait_s=90

project="tollgate-faults-$$"
run_dir="target/compose-faults/$project"
mkdir -p "$run_dir"
export TOLLGATE_IMAGE="${TOLLGATE_IMAGE:-tollgate:local}"

compose() { docker-compose --project-name "$project" --file docker-compose.yml "$@"; }
now_ms() { date +%s%3N; }
log() { echo "[$(date +%T)] $*"; }

for port in "${ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "compose fault test: 127.0.0.1:$port is in use (another cluster?); stop it first" >&2
    exit 1
  fi
done

client_pids=()
cleanup() {
  local status=$?
  set +e
  for pid in "${client_pids[@]}"; do
    kill -9 "$pid" 2>/dev/null
  done
  # A paused container can be neither stopped nor removed.
  for container in $(compose ps -q 2>/dev/null); do
    docker unpause "$container" >/dev/null 2>&1
  done
  compose logs --no-color --timestamps >"$run_dir/cluster.log" 2>&1
  compose down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1
  log "cluster removed; results in $run_dir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "== image, load client and checker"
# One static build for the image and the test's own binaries (see scripts/build-image.sh).
TOLLGATE_IMAGE_BUILD_ALSO="-p tollgate-tests --bin compose_load --bin compose_check" \
  scripts/build-image.sh
bin_dir="target/image-build/x86_64-unknown-linux-gnu/release"
load="$bin_dir/compose_load"
check="$bin_dir/compose_check"

# A follower's leader hint names nodeN:700N, the address peers use. The clients run in a
# private mount namespace where those names resolve to 127.0.0.1 (where the same ports are
# published), as they would on a host whose /etc/hosts names the nodes. Without that
# (no root, no unshare) the clients find the leader by trying each endpoint in turn.
hosts_file="$PWD/$run_dir/hosts"
printf '127.0.0.1 localhost\n127.0.0.1 node1 node2 node3\n' >"$hosts_file"
# shellcheck disable=SC2016 # $0 and $@ belong to the inner sh.
ns_prefix=(unshare --mount --propagation private sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' "$hosts_file")
if "${ns_prefix[@]}" true 2>/dev/null; then
  log "clients resolve node1..node3 to 127.0.0.1 (private mount namespace)"
else
  log "no private mount namespace here: clients follow leader hints by trying each endpoint"
  ns_prefix=()
fi

container() { compose ps -q "node$1"; }

wait_healthy() {
  local node=$1 deadline=$((SECONDS + healthy_wait_s)) health
  while ((SECONDS < deadline)); do
    health="$(docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$(container "$node")" 2>/dev/null || true)"
    [[ "$health" == healthy ]] && return 0
    sleep 0.5
  done
  echo "node$node did not report healthy within ${healthy_wait_s} s" >&2
  return 1
}

leader() { "$check" --endpoints "$endpoints" leader --wait-s "$healthy_wait_s"; }
# The first node in 1..3 that is not $1.
follower_of() { local n; for n in 1 2 3; do [[ "$n" != "$1" ]] && { echo "$n"; return; }; done; }
other_follower_of() { local n; for n in 3 2 1; do [[ "$n" != "$1" ]] && { echo "$n"; return; }; done; }

log_fault() { # fault target phase injected_ms healed_ms measure
  printf '{"fault":"%s","target":"%s","phase":"%s","injected_at_ms":%s,"healed_at_ms":%s,"measure":"%s"}\n' \
    "$1" "$2" "$3" "$4" "$5" "$6" >>"$run_dir/faults.jsonl"
  log "fault $1 on $2 ($3): $((($5 - $4))) ms"
}

kill_node() { docker kill --signal KILL "$(container "$1")" >/dev/null; }
# After kill -9 the restart policy may already have brought it back: start is then a no-op.
start_node() { docker start "$(container "$1")" >/dev/null; }
cut_node() { docker network disconnect "$network" "$(container "$1")"; }
join_node() { docker network connect --alias "node$1" "$network" "$(container "$1")"; }
# kill -9 of the node's process from the host, as a crash would: the restart policy brings it
# back (docker kill would count as an operator's stop and leave it down).
crash_node() {
  local pid
  pid="$(docker inspect --format '{{.State.Pid}}' "$(container "$1")")"
  if ! kill -9 "$pid" 2>/dev/null; then
    docker kill --signal KILL "$(container "$1")" >/dev/null
  fi
}
# Waits for the restart policy to bring a crashed node back; starts it if it does not.
await_restart() {
  local deadline=$((SECONDS + 10))
  while ((SECONDS < deadline)); do
    [[ "$(docker inspect --format '{{.State.Running}}' "$(container "$1")")" == true ]] && return 0
    sleep 0.2
  done
  echo "node$1 was not restarted by its restart policy within 10 s; starting it" >&2
  start_node "$1"
}
pause_node() { docker pause "$(container "$1")" >/dev/null; }
unpause_node() { docker unpause "$(container "$1")" >/dev/null; }

# One fault: inject on a node, hold, heal, log. kind: kill | crash | cut | pause.
single_fault() { # name kind node hold_s phase
  local name=$1 kind=$2 node=$3 hold_s=$4 phase=$5 injected healed
  injected="$(now_ms)"
  case "$kind" in
    kill) kill_node "$node" ;;
    crash) crash_node "$node" ;;
    cut) cut_node "$node" ;;
    pause) pause_node "$node" ;;
  esac
  sleep "$hold_s"
  case "$kind" in
    kill) start_node "$node" ;;
    crash) await_restart "$node" ;;
    cut) join_node "$node" ;;
    pause) unpause_node "$node" ;;
  esac
  healed="$(now_ms)"
  log_fault "$name" "node$node" "$phase" "$injected" "$healed" injected
}

next_client_id=1
start_client() { # duration_s
  local id=$next_client_id
  next_client_id=$((next_client_id + 1))
  "${ns_prefix[@]}" "$load" --endpoints "$endpoints" run --client-id "$id" --duration-s "$1" \
    --workers "$workers" --history "$run_dir/history-$id.jsonl" \
    --tenant-keys "$run_dir/tenant-keys" 2>>"$run_dir/client-$id.log" &
  client_pids+=("$!")
}

# Kills one running client process with SIGKILL (its reservations in flight are abandoned)
# and starts a replacement for the rest of the load.
crash_client() {
  local live=() pid left_s
  for pid in "${client_pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then live+=("$pid"); fi
  done
  ((${#live[@]} > 0)) || return 0
  pid="${live[$((RANDOM % ${#live[@]}))]}"
  kill -9 "$pid"
  # Reaped here, so the shell does not report the job as killed later.
  wait "$pid" 2>/dev/null || true
  echo "$pid" >>"$run_dir/clients-killed.txt"
  log "client process $pid killed with SIGKILL mid-run"
  left_s=$((load_end - SECONDS))
  if ((left_s > 5)); then
    start_client "$left_s"
  fi
}

settle() { sleep "$1"; }

log "== cluster ($project)"
# The certs service makes the CA, the node certificates and the bootstrap admin key first;
# nodes serve TLS to clients and mutual TLS to each other. The load client and checker trust
# the cluster's CA and call with the admin key; setup makes a worker key per tenant.
compose up -d
docker cp "$(container 1):/certs/ca.pem" "$run_dir/ca.pem"
docker cp "$(container 1):/certs/admin.key" "$run_dir/admin.key"
export TOLLGATE_TLS_CA="$PWD/$run_dir/ca.pem"
export TOLLGATE_API_KEY_FILE="$PWD/$run_dir/admin.key"
for node in 1 2 3; do wait_healthy "$node"; done
network="$(docker inspect --format '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' "$(container 1)")"
log "leader: node$(leader); network $network"
"$load" --endpoints "$endpoints" setup --budgets "$run_dir/budgets.json" --tenant-keys "$run_dir/tenant-keys"

log "== load: $clients client processes x $workers workers for ${duration_s} s"
load_end=$((SECONDS + duration_s))
for _ in $(seq "$clients"); do start_client "$duration_s"; done
: >"$run_dir/faults.jsonl"

log "== faults, one after another"
settle 10
node="$(leader)"
single_fault kill-leader kill "$node" 4 single
settle 6
crash_client
node="$(leader)"
single_fault partition-leader cut "$node" 8 single
settle 6
node="$(other_follower_of "$(leader)")"
single_fault partition-follower cut "$node" 8 single
settle 6
crash_client
node="$(leader)"
single_fault pause-leader pause "$node" 6 single
settle 6
injected="$(now_ms)"
compose restart --timeout 10 >/dev/null 2>&1
healed="$(now_ms)"
log_fault restart-cluster all single "$injected" "$healed" injected
for node in 1 2 3; do wait_healthy "$node"; done
settle 8

log "== faults, mixed"
step=0
# Each step takes up to ~15 s; stop in time for the load to see the last heal.
while ((load_end - SECONDS > 20)); do
  leader_node="$(leader)"
  follower="$(follower_of "$leader_node")"
  case $((step % 6)) in
    0) single_fault crash-follower crash "$follower" 1 mixed ;;
    1)
      # A follower cut off, then the leader killed: no majority until the leader is back.
      cut_at="$(now_ms)"
      cut_node "$follower"
      sleep 2
      killed_at="$(now_ms)"
      kill_node "$leader_node"
      sleep 3
      start_node "$leader_node"
      restarted_at="$(now_ms)"
      sleep 2
      join_node "$follower"
      joined_at="$(now_ms)"
      log_fault partition-follower "node$follower" mixed "$cut_at" "$joined_at" injected
      log_fault kill-leader-no-quorum "node$leader_node" mixed "$killed_at" "$restarted_at" healed
      ;;
    2) single_fault pause-follower pause "$follower" 4 mixed ;;
    3)
      # Two followers paused: the leader is alone until they return.
      other="$(other_follower_of "$leader_node")"
      paused_at="$(now_ms)"
      pause_node "$follower"
      pause_node "$other"
      sleep 3
      unpause_node "$follower"
      unpause_node "$other"
      log_fault pause-majority "node$follower+node$other" mixed "$paused_at" "$(now_ms)" healed
      ;;
    4)
      single_fault partition-leader cut "$leader_node" 4 mixed
      crash_client
      ;;
    5) single_fault crash-leader crash "$leader_node" 1 mixed ;;
  esac
  step=$((step + 1))
  settle 5
done

log "== waiting for the load to end"
for pid in "${client_pids[@]}"; do
  if grep -qx "$pid" "$run_dir/clients-killed.txt" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
  elif ! wait "$pid"; then
    echo "a load client (pid $pid) failed; see $run_dir/client-*.log" >&2
    exit 1
  fi
done
client_pids=()

log "== final state: one snapshot per leader, moving leadership until every node has led"
for node in 1 2 3; do wait_healthy "$node"; done
snapshot() {
  "$check" --endpoints "$endpoints" snapshot --out "$run_dir/snapshots.jsonl" \
    --budgets "$run_dir/budgets.json" | sed -n 's/^snapshot: leader node \([0-9]*\).*/\1/p'
}
led=" $(snapshot) "
# To hand leadership to node U that has not led yet: pause the third node C, stop the
# leader L. U campaigns alone, raising its term, and wins C's vote the moment C resumes.
rounds_max=6
for ((round = 1; round <= rounds_max; round++)); do
  next=""
  for node in 1 2 3; do
    if [[ "$led" != *" $node "* ]]; then
      next=$node
      break
    fi
  done
  [[ -n "$next" ]] || break
  node="$(leader)"
  if [[ "$node" == "$next" ]]; then
    led="$led $(snapshot) "
    continue
  fi
  third=""
  for other in 1 2 3; do
    if [[ "$other" != "$node" && "$other" != "$next" ]]; then third=$other; fi
  done
  pause_node "$third"
  docker stop --time 10 "$(container "$node")" >/dev/null
  sleep 2
  unpause_node "$third"
  leader >/dev/null
  start_node "$node"
  wait_healthy "$node"
  led="$led $(snapshot) "
done
log "usage read from nodes:$led"

initialised="$(compose logs --no-color 2>/dev/null | grep -c 'cluster initialised' || true)"
if [[ "$initialised" != 1 ]]; then
  echo "the cluster was initialised $initialised times; it must be exactly once (first start)" >&2
  exit 1
fi
log "bootstrapped exactly once across every restart"

log "== check"
"$check" --endpoints "$endpoints" check --dir "$run_dir"
