#!/usr/bin/env bash
# `make demo`: start a Ludus server, train CartPole-v1 through it until solved
# (mean return >= 475 over the last 20 episodes), then stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${LUDUS_DEMO_PORT:-50051}"
log="$(mktemp -t ludus-demo-server.XXXXXX.log)"
ludus-server --host 127.0.0.1 --port "$port" --config configs/cartpole.yaml --seed 0 --log-level WARNING >"$log" 2>&1 &
server_pid=$!
trap 'kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "listening on" "$log" && break
  kill -0 "$server_pid" 2>/dev/null || { echo "ludus-server failed to start:"; cat "$log"; exit 1; }
  sleep 0.2
done
echo "$(head -n 1 "$log")"
ludus-gym --env CartPole-v1 --server "127.0.0.1:$port" --steps 300000 --num-envs 8 --seed 0 --target-return 475 --window 20
