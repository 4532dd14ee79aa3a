#!/usr/bin/env bash
# The local broker's JVM settings against the Kafka floor's tail (issue 17): for each setting,
# a fresh single-node broker of its own (state in a temporary directory, ports 29092/29093,
# never the test broker), then kafka-floor's bare round trip (produce -> consume -> produce ->
# consume, the services' client settings) at each rate after a warmup.
#
#   cargo build --release --bins && scripts/bench_kafka_jvm.sh
#
# Knobs: RATES ["200 500"], DURATION [20s], WARMUP [5s], RUNS [1] (the settings in turn, RUNS
# times over). Prints a markdown table for docs/benchmarks.md. Each setting is one KAFKA_HEAP +
# KAFKA_GC_OPTS pair (scripts/services.sh); the broker logs its collections
# (-Xlog:gc,gc+phases) and each row counts the stop-the-world pauses of its measured window
# (lines with "Pause": G1's and Parallel's young, mixed, remark and cleanup pauses, ZGC's
# mark-start, mark-end and relocate-start pauses), their sum and the longest.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RATES="${RATES:-200 500}"
DURATION="${DURATION:-20s}"
WARMUP="${WARMUP:-5s}"
RUNS="${RUNS:-1}"
FLOOR="$REPO_DIR/target/release/kafka-floor"
[[ -x $FLOOR ]] || { echo "build first: cargo build --release --bins" >&2; exit 1; }
STATE=$(mktemp -d /tmp/sluice-jvm-bench.XXXXXX)
export SLUICE_STATE="$STATE" KAFKA_PORT=29092 KAFKA_CONTROLLER_PORT=29093
services() { bash "$REPO_DIR/scripts/services.sh" "$@"; }
trap 'services stop-kafka >/dev/null 2>&1 || true; rm -rf "$STATE"' EXIT

G1="-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent"
SETTINGS=(
  "512m|$G1|G1, pause target 20 ms, 512 MB (Kafka's start script flags; the tests' default)"
  "1g|$G1|G1, pause target 20 ms, 1 GB"
  "512m|-XX:+UseG1GC -XX:MaxGCPauseMillis=5 -XX:InitiatingHeapOccupancyPercent=35|G1, pause target 5 ms, 512 MB"
  "512m|-XX:+UseZGC|ZGC (Java 17, not generational), 512 MB"
  "512m|-XX:+UseParallelGC|Parallel (throughput collector), 512 MB"
)

echo "| JVM setting | run | rate/s | sent | p50 ms | p99 ms | p99.9 ms | max ms | GC pauses | pause ms sum | longest ms |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
# The pauses logged after line $1 of $2: count, sum, longest (ms).
pauses() {
  tail -n "+$(($1 + 1))" "$2" | grep -o 'Pause[^:]*[ ]\([0-9.]*\)ms$' |
    awk '{ v = $NF; sub(/ms$/, "", v); v += 0; n++; s += v; if (v > m) m = v }
         END { printf "%d | %.1f | %.1f", n, s, m }'
}
n=0
for run in $(seq "$RUNS"); do
for s in "${SETTINGS[@]}"; do
  IFS='|' read -r heap gc label <<<"$s"
  services stop-kafka >/dev/null 2>&1 || true
  gclog="$STATE/gc-$run-$n.log"
  KAFKA_HEAP="$heap" KAFKA_GC_OPTS="$gc -Xlog:gc,gc+phases:file=$gclog:uptime" services start-kafka >/dev/null
  for rate in $RATES; do
    n=$((n + 1))
    "$FLOOR" --bootstrap "127.0.0.1:$KAFKA_PORT" roundtrip --topic-prefix "jvm$n-warm" --rate "$rate" --duration "$WARMUP" >/dev/null 2>&1 || true
    from=$(wc -l <"$gclog")
    line=$("$FLOOR" --bootstrap "127.0.0.1:$KAFKA_PORT" --json roundtrip --topic-prefix "jvm$n" --rate "$rate" --duration "$DURATION" 2>/dev/null)
    gcs=$(pauses "$from" "$gclog")
    jq -r --arg name "$label" --arg run "$run" --arg rate "$rate" --arg gc "$gcs" \
      '"| \($name) | \($run) | \($rate) | \(.sent) | \(.p50_ms) | \(.p99_ms) | \(.p999_ms) | \(.max_ms) | \($gc) |"' <<<"$line"
  done
done
done
echo
echo "(java: $(java -version 2>&1 | head -1); $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end)"
