# What the bench scripts share: logging, waiting for a port, and starting a Tollgate cluster
# the way every bench measures it (three `tollgate serve` processes, durable log, loopback,
# authentication on). Sourced, not run. The caller defines TG_PORTS and TG_PEER_PORTS (three
# each) and a PIDS array that its exit trap stops.

log() { printf '== %s\n' "$*" >&2; }

wait_port() { # host port seconds
  local deadline=$((SECONDS + $3))
  until (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "nothing listens on $1:$2" >&2; return 1; }
    sleep 0.1
  done
}

# Starts three nodes of `tollgate` with their data, logs and admin key (admin.key) under dir,
# and waits until each listens. Sets TG_PIDS (also appended to PIDS) and TG_ENDPOINTS.
# Clear text on loopback: --insecure is what a node without TLS needs to start.
start_tollgate() { # tollgate-binary dir
  local bin="$1" dir="$2" peers="" id i port
  mkdir -p "$dir"
  "$bin" key generate >"$dir/admin.key"
  for i in 0 1 2; do
    peers+="$((i + 1))=127.0.0.1:${TG_PORTS[$i]}/127.0.0.1:${TG_PEER_PORTS[$i]},"
  done
  peers="${peers%,}"
  TG_PIDS=()
  for i in 0 1 2; do
    id=$((i + 1))
    RUST_LOG=warn "$bin" serve --id "$id" --listen "127.0.0.1:${TG_PORTS[$i]}" \
      --peer-listen "127.0.0.1:${TG_PEER_PORTS[$i]}" --peers "$peers" --insecure \
      --data-dir "$dir/node-$id" --admin-key-file "$dir/admin.key" \
      >"$dir/node-$id.log" 2>&1 &
    PIDS+=($!); TG_PIDS+=($!)
  done
  for port in "${TG_PORTS[@]}"; do wait_port 127.0.0.1 "$port" 30; done
  TG_ENDPOINTS="$(printf '127.0.0.1:%s,' "${TG_PORTS[@]}")"
  TG_ENDPOINTS="${TG_ENDPOINTS%,}"
}
