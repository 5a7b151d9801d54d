#!/usr/bin/env bash
# Tollgate against what users would pick instead, on this machine, in one run:
#   - Tollgate: three nodes (release build, separate processes, durable log), loopback;
#   - etcd: three nodes (Debian's etcd-server), reserve and commit as compare-and-swap
#     transactions on the budget key;
#   - Redis: one server (Debian's redis-server, no persistence), reserve and commit as Lua.
# The same client process (tollgate-sim bench) drives each with the same workload at
# concurrency 1, 16, 64 and 256 (hot budget), and 64 on the spread workload. Then the hot
# budget sized to run out half-way (a short calibration run each), 64 clients in 8 client
# processes, for Tollgate per call, Tollgate with budget leases, and Redis+Lua. Prints a
# table of each, a table of what each system guarantees, and, last,
# `ratio vs etcd: X, vs redis: Y, leases vs redis: Z, overspend: N` (X, Y: Tollgate per
# call pairs/s over the peer's, hot, 64 clients, one process; Z: leases pairs/s before
# exhaustion over Redis's, same 8-process run; N: the leases run's overspend, cost µ).
#
#   bench/compare.sh            # ~6 minutes
#   bench/compare.sh --quick    # ~2.5 minutes, shorter runs
# Every process it starts is stopped on exit (trap), and its data directories removed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DURATION=10
WARMUP=1
CONCURRENCY="1,16,64,256"
for arg in "$@"; do
  case "$arg" in
    --quick) DURATION=3; WARMUP=0.5 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg (try --quick)" >&2; exit 2 ;;
  esac
done

# Loopback ports; data on the same disk as the work tree (never a tmpfs: fsync must cost).
TG_PORTS=(17101 17102 17103)
TG_PEER_PORTS=(17111 17112 17113)
ETCD_CLIENT_PORTS=(17201 17202 17203)
ETCD_PEER_PORTS=(17211 17212 17213)
REDIS_PORT=17301
WORK="$(mktemp -d "$ROOT/target/bench-compare.XXXXXX")"
PIDS=()

cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT INT TERM
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

install_if_missing() {
  local missing=()
  command -v etcd >/dev/null || missing+=(etcd-server)
  command -v etcdctl >/dev/null || missing+=(etcd-client)
  command -v redis-server >/dev/null || missing+=(redis-server)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

install_if_missing
log "building tollgate and tollgate-sim (release)"
(cd "$ROOT" && cargo build --release -q -p tollgate-server -p tollgate-sim)
TOLLGATE="$ROOT/target/release/tollgate"
SIM="$ROOT/target/release/tollgate-sim"

log "starting Tollgate (3 nodes, authentication on)"
start_tollgate "$TOLLGATE" "$WORK/tollgate"
export TOLLGATE_API_KEY_FILE="$WORK/tollgate/admin.key"

log "starting etcd (3 nodes)"
ETCD_CLUSTER="e1=http://127.0.0.1:${ETCD_PEER_PORTS[0]},e2=http://127.0.0.1:${ETCD_PEER_PORTS[1]},e3=http://127.0.0.1:${ETCD_PEER_PORTS[2]}"
ETCD_PIDS=()
for i in 0 1 2; do
  name="e$((i + 1))"
  etcd --name "$name" --data-dir "$WORK/etcd-$name" \
    --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new \
    --initial-cluster-token tollgate-bench --log-level warn --logger zap \
    >"$WORK/etcd-$name.log" 2>&1 &
  PIDS+=($!); ETCD_PIDS+=($!)
done

log "starting Redis (no persistence)"
mkdir -p "$WORK/redis"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$WORK/redis" --daemonize no >"$WORK/redis.log" 2>&1 &
PIDS+=($!); REDIS_PIDS=($!)

for port in "${ETCD_CLIENT_PORTS[@]}" "$REDIS_PORT"; do
  wait_port 127.0.0.1 "$port" 30
done
ETCD_ENDPOINTS="$(printf '127.0.0.1:%s,' "${ETCD_CLIENT_PORTS[@]}")"
ETCD_ENDPOINTS="${ETCD_ENDPOINTS%,}"
# etcd forwards proposals from followers to its leader: give the client the leader.
ETCD_LEADER=""
for _ in $(seq 1 100); do
  ETCD_LEADER="$(ETCDCTL_API=3 etcdctl --endpoints="$ETCD_ENDPOINTS" endpoint status 2>/dev/null \
    | awk -F', ' '$5 == "true" { print $1 }' | sed 's#^http://##' | head -n 1)" || true
  [[ -n "$ETCD_LEADER" ]] && break
  sleep 0.2
done
[[ -n "$ETCD_LEADER" ]] || { echo "etcd elected no leader; see $WORK/etcd-*.log" >&2; exit 1; }
log "etcd leader: $ETCD_LEADER"

join() { local IFS=,; echo "$*"; }

bench() { # system endpoints pids workload clients out
  log "$1: $4 workload, clients $5, ${DURATION} s each"
  "$SIM" bench --system "$1" --cluster "$2" --server-pids "$3" --workload "$4" \
    --clients "$5" --duration "$DURATION" --warmup "$WARMUP" --json "$6"
}

budget_bench() { # system endpoints pids out extra-args...
  log "$1 ${*:5}: hot budget running out, 64 clients in 8 processes, ${DURATION} s"
  "$SIM" bench --system "$1" --cluster "$2" --server-pids "$3" --workload hot \
    --clients 64 --processes 8 --connections 1 --budget-runs-out \
    --duration "$DURATION" --warmup "$WARMUP" --json "$4" "${@:5}"
}

bench tollgate "$TG_ENDPOINTS" "$(join "${TG_PIDS[@]}")" hot "$CONCURRENCY" "$WORK/tollgate-hot.json"
bench etcd "$ETCD_LEADER" "$(join "${ETCD_PIDS[@]}")" hot "$CONCURRENCY" "$WORK/etcd-hot.json"
bench redis "127.0.0.1:$REDIS_PORT" "$(join "${REDIS_PIDS[@]}")" hot "$CONCURRENCY" "$WORK/redis-hot.json"
bench tollgate "$TG_ENDPOINTS" "$(join "${TG_PIDS[@]}")" spread 64 "$WORK/tollgate-spread.json"
bench etcd "$ETCD_LEADER" "$(join "${ETCD_PIDS[@]}")" spread 64 "$WORK/etcd-spread.json"
bench redis "127.0.0.1:$REDIS_PORT" "$(join "${REDIS_PIDS[@]}")" spread 64 "$WORK/redis-spread.json"

# Then the edge: every system's budget runs out half-way. Leases last: a cluster it
# overloads does not spoil the runs before it.
# A run that fails is reported and left out of the table, not the end of the comparison.
budget_bench tollgate "$TG_ENDPOINTS" "$(join "${TG_PIDS[@]}")" "$WORK/budget-percall.json" \
  --label tollgate-percall || log "the per-call budget run failed"
budget_bench redis "127.0.0.1:$REDIS_PORT" "$(join "${REDIS_PIDS[@]}")" \
  "$WORK/budget-redis.json" || log "the Redis budget run failed"
budget_bench tollgate "$TG_ENDPOINTS" "$(join "${TG_PIDS[@]}")" "$WORK/budget-leases.json" \
  --leases || log "the leases budget run failed"

log "load: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores shared with other work)"
# The runs' JSON outlives the work directory, for what the tables leave out (errors, the
# clients' own spend).
mkdir -p "$ROOT/target/bench-compare-last"
cp "$WORK"/*.json "$ROOT/target/bench-compare-last/"
python3 "$ROOT/bench/table.py" "$WORK"/{tollgate,etcd,redis}-{hot,spread}.json \
  "$WORK"/budget-{percall,leases,redis}.json
