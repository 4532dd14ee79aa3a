#!/usr/bin/env bash
# Throttling, priorities and fairness, reproducibly (issue 5's figures, docs/benchmarks.md).
#
#   scripts/scenario.sh        ~3 minutes plus the build; a markdown report on stdout
#
# One worker with 8 slots in front of a mock provider that takes 100 ms per call and enforces
# its own limit of 3,000 requests a minute; the worker's deployment is configured with the same
# limit. Phases:
#   1. team-b alone: 10 async req/s for 20 s                      (baseline queueing delay)
#   2. team-b 10 req/s while team demo floods 100 req/s (10x)     (same measure, under flood)
#   3. interactive sync calls, 5/s for 20 s, on an idle system     (baseline latency)
#   4. the same while a 3,000-request batch backlog drains        (priority under load)
# Queueing delay = worker start - ingress accept, from ClickHouse's results rows. Provider
# 429s = retried attempts (the mock fails only through its rate limit here).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
export SLUICE_STATE="${SLUICE_STATE:-$REPO_DIR/.state}"
DIR="$SLUICE_STATE/scenario"
INGRESS_PORT=18280
MOCK_PORT=19280
PREFIX=sluice-scn
DB=sluice_scn
BIN="$REPO_DIR/target/release"
LOG_TAG=scenario LOG_T0=0
# shellcheck source=scripts/lib.sh
source "$REPO_DIR/scripts/lib.sh"  # log, die, alive
services() { bash "$REPO_DIR/scripts/services.sh" "$@"; }

mkdir -p "$DIR"
log "building"
cargo build --release --bins >&2
eval "$(services start)"
CH="$SLUICE_CLICKHOUSE_URL"
ch() { curl -sf "$CH" --data-binary "$1"; }
ch "DROP DATABASE IF EXISTS $DB" >/dev/null

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
start() { # name cmd...
  local name=$1; shift
  "$@" >"$DIR/$name.log" 2>&1 &
  pids+=($!)
}
wait_http() { for _ in $(seq 1 300); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; log "no answer at $1"; exit 1; }

cat >"$DIR/worker.toml" <<TOML
[kafka]
bootstrap = "$SLUICE_KAFKA_BOOTSTRAP"
topic_prefix = "$PREFIX"
group_id = "$PREFIX-workers"

[worker]
id = "scenario-worker"
max_in_flight = 8

[[deployments]]
name = "mock"
model = "gpt-4o-mini"
provider = { type = "openai", base_url = "http://127.0.0.1:$MOCK_PORT/v1" }
limits = { requests_per_minute = 3000 }

[[prices]]
model = "gpt-4o-mini"
input_per_million = 0.15
output_per_million = 0.6
TOML

export RUST_LOG=warn
start mock "$BIN/mock-provider" --listen "127.0.0.1:$MOCK_PORT" \
  --behaviour '{"latency": "100ms", "requests_per_minute": 3000, "record_calls": false}'
wait_http "http://127.0.0.1:$MOCK_PORT/v1/models"
common_env=(SLUICE_KAFKA_TOPIC_PREFIX=$PREFIX SLUICE_CLICKHOUSE_DATABASE=$DB)
start ingress env "${common_env[@]}" SLUICE_SERVER_LISTEN=127.0.0.1:$INGRESS_PORT \
  "$BIN/sluice-ingress" --config config/ingress.toml --demo
wait_http "http://127.0.0.1:$INGRESS_PORT/healthz"
start analytics env "${common_env[@]}" SLUICE_KAFKA_GROUP_ID=$PREFIX-analytics SLUICE_SINK_FLUSH_INTERVAL_MS=200 \
  "$BIN/sluice-analytics" --config config/analytics.toml
start worker "$BIN/sluice-worker" --config "$DIR/worker.toml"
sleep 3

URL="http://127.0.0.1:$INGRESS_PORT/v1"
body() { # text [priority]
  printf '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"%s"}],"max_tokens":32,"sluice":{"priority":"%s"}}' "$1" "${2:-standard}"
}
async_load_body() { # key rate duration body
  "$BIN/loadgen" --url "$URL/requests" --key "$1" --rate "$2" --duration "$3" --warmup 0s \
    --expect-status 202 --json --body "$4" 2>/dev/null
}
async_load() { # key rate duration text
  async_load_body "$1" "$2" "$3" "$(body "$4")"
}
now_ms() { date +%s%3N; }
settle() { # wait until every accepted request has a result
  local want=$1 n=0
  for _ in $(seq 1 600); do
    n=$(ch "SELECT count() FROM $DB.results FINAL")
    ((n >= want)) && return 0
    sleep 1
  done
  log "only $n of $want results"
}
delay() { # team from_ms to_ms -> "n p50 p99 max" of queueing delay in ms
  ch "SELECT count(), quantileExact(0.5)(started_at_ms - created_at_ms), quantileExact(0.99)(started_at_ms - created_at_ms), max(started_at_ms - created_at_ms) FROM $DB.results FINAL WHERE team = '$1' AND created_at_ms BETWEEN $2 AND $3 FORMAT TSV"
}

log "phase 1: team-b alone"
t1=$(now_ms); async_load sk-sluice-team-b 10 20s steady >/dev/null; t1e=$(now_ms)
settle 200
log "phase 2: team demo floods at 10x while team-b stays steady"
t2=$(now_ms)
async_load sk-sluice-demo 100 20s flood >"$DIR/flood.json" &
flood=$!
async_load sk-sluice-team-b 10 20s steady >/dev/null
wait $flood
t2e=$(now_ms)
settle 2400
log "phase 3: interactive sync calls on an idle system"
sync_load() {
  "$BIN/loadgen" --url "$URL/chat/completions" --key sk-sluice-team-b --rate 5 --duration 20s --warmup 0s \
    --json --body "$(body interactive interactive)" 2>/dev/null
}
idle=$(sync_load)
log "phase 4: the same while a 3,000-request batch backlog drains"
async_load_body sk-sluice-demo 1500 2s "$(body backlog batch)" >"$DIR/batch.json"
batch_sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ok"])' "$DIR/batch.json")
busy=$(sync_load)
backlog_left=$(ch "SELECT $batch_sent - countIf(priority = 'batch') FROM $DB.results FINAL")
settle $((2400 + 100 + 100 + batch_sent))

field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d[sys.argv[2]])' "$1" "$2"; }
read -r b1n b1p50 b1p99 b1max <<<"$(delay team-b "$t1" "$t1e")"
read -r b2n b2p50 b2p99 b2max <<<"$(delay team-b "$t2" "$t2e")"
read -r a2n a2p50 a2p99 a2max <<<"$(delay demo "$t2" "$t2e")"
retries=$(ch "SELECT sum(attempts) - count() FROM $DB.results FINAL")
rejected=$(ch "SELECT countIf(status != 'completed') FROM $DB.results FINAL")
cat <<EOF
## Throttling, priorities and fairness (scripts/scenario.sh, $(date -u +%FT%TZ))

One worker, 8 slots, mock provider 100 ms per call with its own limit of 3,000 requests/min;
the deployment's limit is configured to match.

| phase | team | requests | queueing delay p50 ms | p99 ms | max ms |
|---|---|---:|---:|---:|---:|
| 1. team-b alone, 10/s | team-b | $b1n | $b1p50 | $b1p99 | $b1max |
| 2. team-b 10/s during demo's 100/s flood | team-b | $b2n | $b2p50 | $b2p99 | $b2max |
| 2. the flood itself | demo | $a2n | $a2p50 | $a2p99 | $a2max |

| interactive sync, 5/s | p50 ms | p99 ms | max ms |
|---|---:|---:|---:|
| 3. idle system | $(field "$idle" p50_ms) | $(field "$idle" p99_ms) | $(field "$idle" max_ms) |
| 4. while a $batch_sent-request batch backlog drains ($backlog_left still queued when it ended) | $(field "$busy" p50_ms) | $(field "$busy" p99_ms) | $(field "$busy" max_ms) |

Provider calls answered 429 (retried attempts): $retries. Requests not completed: $rejected.
EOF
