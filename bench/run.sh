#!/usr/bin/env bash
# `make bench`: a fresh local node, a standard set of workloads, then stop it and clean up.
# Results: bench/results/<date>/<workload>.json, and the tables on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-$HOME/.cache/kahuna-target}/release"
PORT="${KAHUNA_BENCH_PORT:-7400}"
DATA="./data/bench-$$"
OUT="bench/results/$(date -u +%Y%m%dT%H%M%SZ)"
DURATION="${KAHUNA_BENCH_SECONDS:-10}"
mkdir -p "$OUT"
rm -rf "$DATA"
"$BIN/kahuna-server" --listen "127.0.0.1:$PORT" --data-dir "$DATA" >"$OUT/server.log" 2>&1 &
PID=$!
trap 'kill -9 $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do
  "$BIN/kahuna-cli" --endpoints "127.0.0.1:$PORT" --timeout-ms 200 lock get __ready >/dev/null 2>&1 && break
  sleep 0.1
done
run() {
  local name=$1; shift
  echo "== $name"
  "$BIN/kahuna-bench" --endpoints "127.0.0.1:$PORT" --floor-dir "$DATA" --duration "$DURATION" \
    --output "$OUT/$name.json" "$@"
}
run kv-set-seq      --workload kv-set --durability persistent --connections 1 --pipeline 1
run kv-get-seq      --workload kv-get --durability persistent --connections 1 --pipeline 1
run kv-set-eph-seq  --workload kv-set --durability ephemeral  --connections 1 --pipeline 1
run kv-set-64       --workload kv-set --durability persistent --connections 4 --pipeline 16
run lock-seq        --workload lock   --durability persistent --connections 1 --pipeline 1
run seq-seq         --workload seq    --connections 1 --pipeline 1
echo "results in $OUT"
