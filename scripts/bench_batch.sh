#!/usr/bin/env bash
# Batch benchmark: a 100,000-line OpenAI batch through a whole stack (Kafka + ClickHouse via
# scripts/services.sh; mock provider, ingress, worker(s) and the analytics sink as release
# binaries with the configs in config/). Prints upload, publish and completion rates, and the
# ingress's memory (peak RSS) while it streams the upload and drives the batch.
# docs/benchmarks.md records a run. Everything it starts is stopped on exit.
#
#   scripts/bench_batch.sh
#
# Knobs [defaults]: BATCH_LINES [100000]  BATCH_WORKERS [1]  BENCH_MOCK_LATENCY_MS [0]
#   BENCH_INGRESS_PORT [18280]  BENCH_MOCK_PORT [19280]  BENCH_NO_BUILD [0]
#   BENCH_OUT [<repo>/.state/bench-batch]  BATCH_TIMEOUT_S [1800]
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
SLUICE_STATE="${SLUICE_STATE:-$REPO_DIR/.state}"
export SLUICE_STATE

LINES="${BATCH_LINES:-100000}"
WORKERS="${BATCH_WORKERS:-1}"
MOCK_LATENCY_MS="${BENCH_MOCK_LATENCY_MS:-0}"
INGRESS_PORT="${BENCH_INGRESS_PORT:-18280}"
MOCK_PORT="${BENCH_MOCK_PORT:-19280}"
OUT="${BENCH_OUT:-$SLUICE_STATE/bench-batch}"
TIMEOUT_S="${BATCH_TIMEOUT_S:-1800}"
KEY=sk-sluice-demo   # demo key of config/ingress.toml (team demo)
MODEL=gpt-4o-mini
PREFIX="bbench$(date +%s)"
DB="sluice_$PREFIX"
BIN="$REPO_DIR/target/release"
INGRESS="http://127.0.0.1:$INGRESS_PORT"

T0=$SECONDS
LOG_TAG=bench-batch LOG_T0=$T0
# shellcheck source=scripts/lib.sh
source "$REPO_DIR/scripts/lib.sh"  # log, die, alive
rss_kb() { awk -v f="$2" '$1 == f":" { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
now_ms() { date +%s%3N; }
mkdir -p "$OUT"
rm -f "$OUT"/*.log

declare -A PID=()
on_exit() {
  local rc=$? name pid i
  for name in "${!PID[@]}"; do
    pid=${PID[$name]}
    kill -TERM "$pid" 2>/dev/null || continue
    for ((i = 0; i < 300; i++)); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  done
  [[ -n ${CH:-} ]] && curl -sf "$CH" --data-binary "DROP DATABASE IF EXISTS $DB" >/dev/null || true
  ((rc == 0)) || log "FAILED (exit $rc); logs in $OUT"
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
  log "cargo build --release --bins"
  cargo build --release --bins >&2
fi
eval "$(bash scripts/services.sh start)"
CH="$SLUICE_CLICKHOUSE_URL"

start() { # name cmd...
  local name=$1; shift
  "$@" >"$OUT/$name.log" 2>&1 &
  PID[$name]=$!
}
COMMON=(RUST_LOG=warn SLUICE_KAFKA_BOOTSTRAP="$SLUICE_KAFKA_BOOTSTRAP" SLUICE_KAFKA_TOPIC_PREFIX="$PREFIX"
  SLUICE_CLICKHOUSE_URL="$CH" SLUICE_CLICKHOUSE_DATABASE="$DB")
sed "s#http://127.0.0.1:9100#http://127.0.0.1:$MOCK_PORT#g" config/worker.toml >"$OUT/worker.toml"
cp config/prices.toml "$OUT/prices.toml" # worker.toml's [pricing] file

start mock env RUST_LOG=warn "$BIN/mock-provider" --listen "127.0.0.1:$MOCK_PORT" \
  --latency-ms "$MOCK_LATENCY_MS" --completion-tokens 16
start ingress env "${COMMON[@]}" SLUICE_SERVER_LISTEN="127.0.0.1:$INGRESS_PORT" \
  "$BIN/sluice-ingress" --config config/ingress.toml --demo
start analytics env "${COMMON[@]}" SLUICE_KAFKA_GROUP_ID="$PREFIX-analytics" \
  "$BIN/sluice-analytics" --config config/analytics.toml
for ((w = 1; w <= WORKERS; w++)); do
  start "worker$w" env "${COMMON[@]}" SLUICE_KAFKA_GROUP_ID="$PREFIX-workers" SLUICE_WORKER_ID="$PREFIX-w$w" \
    "$BIN/sluice-worker" --config "$OUT/worker.toml"
done
for ((i = 0; i < 600; i++)); do
  [[ $(curl -s "$CH" --data-binary "EXISTS TABLE $DB.batch_lines" 2>/dev/null) == 1 ]] &&
    curl -sf "$INGRESS/healthz" >/dev/null 2>&1 && break
  for name in "${!PID[@]}"; do alive "${PID[$name]}" || { tail "$OUT/$name.log" >&2; die "$name exited"; }; done
  sleep 0.1
done
ING=${PID[ingress]}
log "stack up (prefix $PREFIX); ingress RSS at rest: $(rss_kb "$ING" VmRSS) kB"

INPUT="$OUT/input.jsonl"
awk -v n="$LINES" -v model="$MODEL" 'BEGIN { for (i = 0; i < n; i++)
  printf "{\"custom_id\":\"line-%d\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"Question number %d: say hello in one short sentence.\"}]}}\n", i, model, i }' >"$INPUT"
log "input: $LINES lines, $(stat -c %s "$INPUT") bytes"

t_up=$(now_ms)
file=$(curl -sf "$INGRESS/v1/files" -H "Authorization: Bearer $KEY" -F purpose=batch -F "file=@$INPUT") ||
  die "upload failed"
t_up_end=$(now_ms)
file_id=$(jq -r .id <<<"$file")
rss_after_upload=$(rss_kb "$ING" VmHWM)
log "uploaded $file_id in $((t_up_end - t_up)) ms"

t_create=$(now_ms)
batch=$(curl -sf "$INGRESS/v1/batches" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
  -d "{\"input_file_id\":\"$file_id\",\"endpoint\":\"/v1/chat/completions\",\"completion_window\":\"24h\"}") ||
  die "batch create failed"
batch_id=$(jq -r .id <<<"$batch")
published_ms=0 status=""
deadline=$((SECONDS + TIMEOUT_S))
while ((SECONDS < deadline)); do
  b=$(curl -sf "$INGRESS/v1/batches/$batch_id" -H "Authorization: Bearer $KEY") || { sleep 1; continue; }
  status=$(jq -r .status <<<"$b")
  if ((published_ms == 0)); then
    p=$(curl -s "$CH" --data-binary "SELECT published_at_ms FROM $DB.batches FINAL WHERE batch_id = '$batch_id'")
    [[ -n $p && $p != 0 ]] && published_ms=$((p - t_create))
  fi
  log "status $status, counts $(jq -c .request_counts <<<"$b"), ingress RSS $(rss_kb "$ING" VmRSS) kB"
  [[ $status == completed || $status == failed || $status == expired || $status == cancelled ]] && break
  sleep 2
done
t_done=$(now_ms)
[[ $status == completed ]] || die "batch ended $status"
t_out=$(now_ms)
out_lines=$(curl -sf "$INGRESS/v1/files/file-$batch_id-output/content" -H "Authorization: Bearer $KEY" | wc -l)
t_out_end=$(now_ms)
unique=$(curl -sf "$INGRESS/v1/files/file-$batch_id-output/content" -H "Authorization: Bearer $KEY" |
  jq -r .custom_id | sort -u | wc -l)
hwm=$(rss_kb "$ING" VmHWM)

rate() { awk -v n="$1" -v ms="$2" 'BEGIN { printf "%.0f", (ms > 0 ? n * 1000 / ms : 0) }'; }
up_ms=$((t_up_end - t_up)) done_ms=$((t_done - t_create)) out_ms=$((t_out_end - t_out))
cat <<EOF
| batch of $LINES lines, mock latency ${MOCK_LATENCY_MS} ms, $WORKERS worker(s) | time | lines/s |
|---|---|---|
| upload (multipart, streamed into ClickHouse) | ${up_ms} ms | $(rate "$LINES" "$up_ms") |
| create → every line validated and published | ${published_ms} ms | $(rate "$LINES" "$published_ms") |
| create → status completed (≤ 2 s polling) | ${done_ms} ms | $(rate "$LINES" "$done_ms") |
| output file download ($out_lines lines, $unique distinct custom_ids) | ${out_ms} ms | $(rate "$out_lines" "$out_ms") |

ingress peak RSS: $((rss_after_upload / 1024)) MiB after the upload, $((hwm / 1024)) MiB over the whole run (input file $(($(stat -c %s "$INPUT") / 1024 / 1024)) MiB)
EOF
[[ $out_lines == "$LINES" && $unique == "$LINES" ]] || die "output has $out_lines lines, $unique distinct (want $LINES)"
