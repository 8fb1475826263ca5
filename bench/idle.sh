#!/usr/bin/env bash
# Idle cost: CPU a cluster spends holding many partitions and serving nothing.
#   bench/idle.sh NODES PARTITIONS [extra server flags...]
# Starts NODES local nodes (release binaries, 2 shards each, unpinned) with PARTITIONS
# partitions, waits until every partition has a leader, lets it settle 15 s, then measures the
# CPU time each node uses over 20 s (utime + stime from /proc). Prints one line per node and
# the total, as a share of one core. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=${1:-1}; PARTS=${2:-10000}; shift 2 || true
BIN="${KAHUNA_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/kahuna-target}/release}"
BASE="${KAHUNA_IDLE_PORT:-7800}"
DATA="./data/idle-$$"
mkdir -p "$DATA"
CLUSTER=$(for i in $(seq 1 "$NODES"); do printf "%s=127.0.0.1:%s," "$i" $((BASE + 100 + i * 10)); done)
CLUSTER=${CLUSTER%,}
PIDS=()
trap 'kill -9 "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DATA"' EXIT
EP=""
for i in $(seq 1 "$NODES"); do
  "$BIN/kahuna-server" --id "$i" --listen "127.0.0.1:$((BASE + i))" --initial-cluster "$CLUSTER" \
    --data-dir "$DATA/node-$i" --shards 2 --no-pin --partitions "$PARTS" --metrics-listen off \
    "$@" >"$DATA/node-$i.log" 2>&1 &
  PIDS+=($!)
  EP="$EP,127.0.0.1:$((BASE + i))"
done
EP=${EP#,}
start=$(date +%s)
"$BIN/kahuna-cli" --endpoints "$EP" --timeout-ms 300000 cluster wait >/dev/null
echo "ready after $(( $(date +%s) - start )) s; settling 15 s"
sleep 15
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -a before
for i in "${!PIDS[@]}"; do before[$i]=$(cpu "${PIDS[$i]}"); done
sleep 20
total=0
for i in "${!PIDS[@]}"; do
  used=$(( $(cpu "${PIDS[$i]}") - before[i] ))
  total=$(( total + used ))
  rss=$(awk '/VmRSS/ {print $2}' "/proc/${PIDS[$i]}/status")
  echo "node $((i + 1)): $(awk -v u="$used" -v t="$ticks" 'BEGIN {printf "%.1f", 100 * u / t / 20}')% of a core, RSS $((rss / 1024)) MiB"
done
echo "total: $(awk -v u="$total" -v t="$ticks" 'BEGIN {printf "%.1f", 100 * u / t / 20}')% of a core ($NODES nodes, $PARTS partitions, flags: ${*:-none})"
