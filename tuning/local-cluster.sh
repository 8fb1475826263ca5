#!/usr/bin/env bash
# `make run`: a 3-node cluster on this machine. Client ports 7000-7002, peer ports 7100-7102,
# data in ./data/node-N. One unpinned shard per node, so three nodes share a small machine
# (and the per-shard peer ports, base + shard, do not collide). Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${KAHUNA_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/kahuna-target}/release}"
CLUSTER="1=127.0.0.1:7100,2=127.0.0.1:7101,3=127.0.0.1:7102"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT INT TERM
for i in 1 2 3; do
  mkdir -p "./data/node-$i"
  "$BIN/kahuna-server" --id "$i" --listen "127.0.0.1:700$((i - 1))" --initial-cluster "$CLUSTER" \
    --data-dir "./data/node-$i" --shards 1 --no-pin 2>>"./data/node-$i.log" &
  PIDS+=($!)
done
for _ in $(seq 1 100); do
  "$BIN/kahuna-cli" --timeout-ms 300 lock get __ready >/dev/null 2>&1 && break
  sleep 0.2
done
# Every partition led by its preferred node (leaders spread evenly) before saying it is up.
"$BIN/kahuna-cli" --endpoints 127.0.0.1:7000 --timeout-ms 30000 cluster wait --balanced >/dev/null ||
  echo "warning: the cluster did not settle its leaders within 30 s" >&2
cat <<MSG
Kahuna: 3 nodes on 127.0.0.1:7000, :7001, :7002 (logs in ./data/node-N.log). Any node serves
any request. In another terminal:
  alias kahuna-cli=$BIN/kahuna-cli
  kahuna-cli kv set hello world
  kahuna-cli --endpoints 127.0.0.1:7002 kv get hello
  kahuna-cli cluster status
Ctrl-C stops the cluster.
MSG
wait
