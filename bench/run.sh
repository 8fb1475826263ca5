#!/usr/bin/env bash
# `make bench`: a fresh local node, the standard suite, then stop it and clean up.
# Leaves bench/results/<stamp>.json (machine-readable), bench/results/<stamp>/summary.md and
# bench/results/<stamp>/latency.svg. Bounded: about 13 runs of KAHUNA_BENCH_SECONDS (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${KAHUNA_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/kahuna-target}/release}"
PORT="${KAHUNA_BENCH_PORT:-7400}"
SECONDS_PER_RUN="${KAHUNA_BENCH_SECONDS:-8}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
DATA="./data/bench-$STAMP"
OUT="bench/results"
mkdir -p "$OUT/$STAMP" "$DATA"
"$BIN/kahuna-server" --listen "127.0.0.1:$PORT" --data-dir "$DATA" >"$OUT/$STAMP/server.log" 2>&1 &
PID=$!
trap 'kill -9 $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do
  "$BIN/kahuna-cli" --endpoints "127.0.0.1:$PORT" --timeout-ms 200 lock get __ready >/dev/null 2>&1 && break
  sleep 0.1
done
"$BIN/kahuna-bench" --endpoints "127.0.0.1:$PORT" --suite standard --duration "${SECONDS_PER_RUN}s" \
  --warmup 1s --floor-dir "$DATA" --output "$OUT/$STAMP.json" --report-dir "$OUT/$STAMP"
echo "results: $OUT/$STAMP.json, $OUT/$STAMP/summary.md, $OUT/$STAMP/latency.svg"
