#!/usr/bin/env bash
# `make bench`: a fresh local 3-node cluster, the standard suite, then stop it and clean up.
# Leaves bench/results/<stamp>.json (machine-readable), bench/results/<stamp>/summary.md and
# bench/results/<stamp>/latency.svg. Bounded: 14 runs of KAHUNA_BENCH_SECONDS (default 8) each
# (the one-prefix run warms up 25 s first).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${KAHUNA_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/kahuna-target}/release}"
BASE="${KAHUNA_BENCH_PORT:-7400}"
NODES="${KAHUNA_BENCH_NODES:-3}"
SECONDS_PER_RUN="${KAHUNA_BENCH_SECONDS:-8}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
DATA="./data/bench-$STAMP"
OUT="bench/results"
mkdir -p "$OUT/$STAMP" "$DATA"
CLUSTER=$(for i in $(seq 1 "$NODES"); do printf "%s=127.0.0.1:%s," "$i" $((BASE + 100 + i)); done)
CLUSTER=${CLUSTER%,}
PIDS=()
trap 'kill -9 "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
ENDPOINTS=""
for i in $(seq 1 "$NODES"); do
  "$BIN/kahuna-server" --id "$i" --listen "127.0.0.1:$((BASE + i))" --initial-cluster "$CLUSTER" \
    --data-dir "$DATA/node-$i" --shards 1 --no-pin >"$OUT/$STAMP/node-$i.log" 2>&1 &
  PIDS+=($!)
  ENDPOINTS="$ENDPOINTS,127.0.0.1:$((BASE + i))"
done
ENDPOINTS=${ENDPOINTS#,}
for _ in $(seq 1 100); do
  "$BIN/kahuna-cli" --endpoints "$ENDPOINTS" --timeout-ms 300 lock get __ready >/dev/null 2>&1 && break
  sleep 0.2
done
# Every partition led by its preferred node (leaders spread evenly) before anything is measured.
"$BIN/kahuna-cli" --endpoints "$ENDPOINTS" --timeout-ms 30000 cluster wait --balanced >/dev/null ||
  echo "warning: the cluster did not settle its leaders within 30 s" >&2
# KAHUNA_BENCH_ARGS replaces the suite (say, one workload to compare cluster sizes).
# shellcheck disable=SC2086
"$BIN/kahuna-bench" --endpoints "$ENDPOINTS" ${KAHUNA_BENCH_ARGS:---suite standard} \
  --duration "${SECONDS_PER_RUN}s" --warmup 1s --floor-dir "$DATA" --output "$OUT/$STAMP.json" \
  --report-dir "$OUT/$STAMP"
echo "results: $OUT/$STAMP.json, $OUT/$STAMP/summary.md, $OUT/$STAMP/latency.svg"
