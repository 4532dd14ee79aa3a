#!/usr/bin/env bash
# Failover under steady load (issue 15; figures in docs/operations.md, "Failover").
#
#   scripts/chaos.sh [MODE]     ~4 minutes plus the build; a markdown report on stdout
#
# Starts its OWN stack under its own state dir and ports (never the shared services on
# 19092/18123): a Kafka broker, a ClickHouse, the mock provider (40 ms), the ingress, 2
# workers and the analytics sink. Steady load all along: async (/v1/requests, standard) and
# sync (/v1/chat/completions, interactive) callers. One phase of PHASE_S seconds each:
#   1 steady          no fault
#   2 kill-w1         worker-1 SIGKILLed (stays down)
#   3 restart-w1      worker-1 started again
#   4 broker          the broker SIGKILLed, started again after BROKER_DOWN_S
#   5 kill-restart-w2 worker-2 SIGKILLed and started again at once
#   6 sink            the analytics sink SIGKILLed, started again after 5 s
#   7 calm            no fault (the tail of the recovery)
# Then it waits for every accepted request's result and checks in ClickHouse: 0 lost (an
# `accepted` audit event without a result), 0 double-billed (a request with two completed
# provider attempts, or two usage rows before deduplication), and reports time in queue
# (created -> worker started) per phase and class, and the sync callers' latency per phase.
#
# MODE (the workers' [kafka.membership] and the broker's group settings):
#   main      what main shipped: librdkafka defaults (45 s session, eager range/roundrobin,
#             no static membership)
#   classic   the shipped defaults: static membership, 6 s session, cooperative-sticky
#   fast      classic with a 3 s session (the broker's group.min.session.timeout.ms lowered)
#   kip848    group.protocol=consumer, static membership; the broker's consumer-group
#             session 3 s, heartbeat 1 s
# Knobs: CHAOS_BUILD [1] (0: use the binaries already built), PHASE_S [20], BROKER_DOWN_S [10], ASYNC_RATE [120], SYNC_RATE [20], PROFILE [debug],
# CHAOS_STATE [<repo>/.state/chaos], CHAOS_PORT_BASE [29000] (broker +92/+93, ClickHouse
# +123/+100, ingress +180, mock +190).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
MODE="${1:-classic}"
PHASE_S="${PHASE_S:-20}"
BROKER_DOWN_S="${BROKER_DOWN_S:-10}"
ASYNC_RATE="${ASYNC_RATE:-120}"
SYNC_RATE="${SYNC_RATE:-20}"
PROFILE="${PROFILE:-debug}"
BIN="$REPO_DIR/target/$PROFILE"
BASE="${CHAOS_PORT_BASE:-29000}"
# Everything of ours lives here; the shared services' state dir is never touched.
export SLUICE_STATE="${CHAOS_STATE:-$REPO_DIR/.state/chaos}"
export KAFKA_PORT=$((BASE + 92)) KAFKA_CONTROLLER_PORT=$((BASE + 93))
export CH_HTTP_PORT=$((BASE + 123)) CH_TCP_PORT=$((BASE + 100)) CH_DATABASES=sluice_chaos
INGRESS_PORT=$((BASE + 180))
MOCK_PORT=$((BASE + 190))
DIR="$SLUICE_STATE/chaos"
PREFIX=sluice-chaos
DB=sluice_chaos
LOG_TAG=chaos LOG_T0=$SECONDS
# shellcheck source=scripts/lib.sh
source "$REPO_DIR/scripts/lib.sh"  # log, die, alive
services() { bash "$REPO_DIR/scripts/services.sh" "$@"; }
now_ms() { date +%s%3N; }

# The shared services (scripts/services.sh's defaults) are never stopped or restarted here.
[[ $SLUICE_STATE != "$REPO_DIR/.state" && $KAFKA_PORT != 19092 && $CH_HTTP_PORT != 18123 ]] \
  || die "refusing to run on the shared services' state dir or ports"
case "$MODE" in
  main)
    membership='static_membership = false'
    options='options = { "session.timeout.ms" = "45000", "heartbeat.interval.ms" = "3000", "partition.assignment.strategy" = "range,roundrobin", "auto.commit.interval.ms" = "5000" }'
    broker_props='' ;;
  classic)
    membership='' options='' broker_props='' ;;
  fast)
    membership=$'session_timeout_ms = 3000\nheartbeat_interval_ms = 1000'
    options=''
    broker_props='group.min.session.timeout.ms=2000' ;;
  kip848)
    membership='protocol = "consumer"'
    options=''
    broker_props=$'group.consumer.min.session.timeout.ms=2000\ngroup.consumer.session.timeout.ms=3000\ngroup.consumer.min.heartbeat.interval.ms=500\ngroup.consumer.heartbeat.interval.ms=1000' ;;
  *) die "unknown mode $MODE (main | classic | fast | kip848)" ;;
esac
export KAFKA_EXTRA_PROPERTIES="$broker_props"

if [[ ${CHAOS_BUILD:-1} == 1 ]]; then
  log "building ($PROFILE)"
  if [[ $PROFILE == release ]]; then cargo build --release --bins >&2; else cargo build --bins >&2; fi
fi

# A fresh broker and ClickHouse each run: stop ours if a run was interrupted, then clean.
services clean >/dev/null 2>&1 || true
mkdir -p "$DIR"
eval "$(services start)"
CH="$SLUICE_CLICKHOUSE_URL"
ch() { curl -sf -u "$SLUICE_CLICKHOUSE_USER:$SLUICE_CLICKHOUSE_PASSWORD" "$CH" --data-binary "$1"; }

declare -A pid
cleanup() {
  local p
  trap - EXIT INT TERM
  for p in "${pid[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  services stop >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
wait_http() { for _ in $(seq 1 600); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; die "no answer at $1"; }

cat >"$DIR/worker.toml" <<TOML
[kafka]
bootstrap = "$SLUICE_KAFKA_BOOTSTRAP"
topic_prefix = "$PREFIX"
group_id = "$PREFIX-workers"
$options

[kafka.membership]
$membership

[worker]
max_in_flight = 256
drain_timeout_ms = 10000

[redelivery]
clickhouse_url = "$CH"
database = "$DB"
user = "$SLUICE_CLICKHOUSE_USER"
password_env = "SLUICE_CLICKHOUSE_PASSWORD"

[[deployments]]
name = "mock"
model = "gpt-4o-mini"
timeout_ms = 60000
max_retries = 2
provider = { type = "openai", base_url = "http://127.0.0.1:$MOCK_PORT/v1" }

[[prices]]
model = "gpt-4o-mini"
input_per_million = 0.15
output_per_million = 0.6
TOML

export RUST_LOG="${RUST_LOG:-info,rdkafka=warn}"
common_env=("SLUICE_KAFKA_TOPIC_PREFIX=$PREFIX" "SLUICE_CLICKHOUSE_DATABASE=$DB")
start() { # name cmd...: appends to the log, so a restarted process keeps its history
  local name=$1; shift
  "$@" >>"$DIR/$name.log" 2>&1 &
  pid[$name]=$!
}
start_worker() { start "$1" env SLUICE_WORKER_ID="$1" "$BIN/sluice-worker" --config "$DIR/worker.toml"; }
start_sink() {
  start sink env "${common_env[@]}" SLUICE_KAFKA_GROUP_ID=$PREFIX-analytics SLUICE_SINK_FLUSH_INTERVAL_MS=200 \
    "$BIN/sluice-analytics" --config config/analytics.toml
}
kill9() { log "SIGKILL $1 (pid ${pid[$1]})"; kill -KILL "${pid[$1]}" 2>/dev/null || true; wait "${pid[$1]}" 2>/dev/null || true; }
kafka_kill9() { log "SIGKILL broker"; kill -KILL "$(cat "$SLUICE_STATE/kafka/kafka.pid")"; }

rm -f "$DIR"/*.log
start mock "$BIN/mock-provider" --listen "127.0.0.1:$MOCK_PORT" --latency-ms 40
wait_http "http://127.0.0.1:$MOCK_PORT/v1/models"
start ingress env "${common_env[@]}" SLUICE_SERVER_LISTEN=127.0.0.1:$INGRESS_PORT \
  "$BIN/sluice-ingress" --config config/ingress.toml --demo
wait_http "http://127.0.0.1:$INGRESS_PORT/healthz"
start_sink
start_worker worker-1
start_worker worker-2

URL="http://127.0.0.1:$INGRESS_PORT/v1"
body() { printf '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"chaos"}],"max_tokens":16,"sluice":{"priority":"%s"}}' "$1"; }
# Warm up until a sync call is answered (topics made, both workers assigned).
for _ in $(seq 1 120); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 "$URL/chat/completions" -H 'Authorization: Bearer sk-sluice-demo' \
    -H 'content-type: application/json' -d "$(body interactive)" || true)
  [[ $code == 200 ]] && break
  sleep 0.5
done
[[ $code == 200 ]] || die "the stack never answered a sync call"
sleep 3

load() { # phase: async + sync callers for PHASE_S seconds, in the background
  "$BIN/loadgen" --url "$URL/requests" --key sk-sluice-demo --rate "$ASYNC_RATE" --duration "${PHASE_S}s" \
    --warmup 0s --expect-status 202 --timeout 30s --json --body "$(body standard)" >"$DIR/$1.async.json" 2>/dev/null &
  "$BIN/loadgen" --url "$URL/chat/completions" --key sk-sluice-team-b --rate "$SYNC_RATE" --duration "${PHASE_S}s" \
    --warmup 0s --timeout 150s --json --body "$(body interactive)" >"$DIR/$1.sync.json" 2>/dev/null &
}
phases=(steady kill-w1 restart-w1 broker kill-restart-w2 sink calm)
declare -A t_start t_end
broker_down_ms=0
for phase in "${phases[@]}"; do
  t_start[$phase]=$(now_ms)
  log "phase $phase"
  load "$phase"
  case "$phase" in
    kill-w1) kill9 worker-1 ;;
    restart-w1) start_worker worker-1 ;;
    broker)
      kafka_kill9; t0=$(now_ms); sleep "$BROKER_DOWN_S"
      services start-kafka >/dev/null 2>&1 || die "broker did not come back"
      broker_down_ms=$(( $(now_ms) - t0 )); log "broker back after ${broker_down_ms} ms" ;;
    kill-restart-w2) kill9 worker-2; start_worker worker-2 ;;
    sink) kill9 sink; sleep 5; start_sink ;;
  esac
  # Phases are on the clock: a stalled caller does not delay the next phase.
  left=$(( t_start[$phase] + PHASE_S * 1000 - $(now_ms) ))
  (( left > 0 )) && sleep "$(awk "BEGIN {print $left / 1000}")"
  t_end[$phase]=$(now_ms)
done
log "load done; waiting for the callers still waiting"
for p in $(jobs -p); do
  [[ " ${pid[*]} " == *" $p "* ]] || wait "$p" || true
done

accepted_sql="SELECT request_id FROM $DB.audit FINAL WHERE action = 'accepted'"
accepted=0 answered=0
for _ in $(seq 1 180); do
  accepted=$(ch "SELECT count() FROM ($accepted_sql)")
  answered=$(ch "SELECT count() FROM $DB.results FINAL WHERE request_id IN ($accepted_sql)")
  (( accepted > 0 && answered >= accepted )) && break
  sleep 1
done
# An `accepted` audit event whose request the broker then refused (the caller got 503,
# the ingress logged "nothing was accepted") is not a lost request: counted apart.
refused=0
for id in $(ch "$accepted_sql AND request_id NOT IN (SELECT request_id FROM $DB.results FINAL)"); do
  grep -q "request_id=\"$id\".*nothing was accepted" <(sed 's/\x1b\[[0-9;]*m//g' "$DIR/ingress.log") && refused=$((refused + 1))
done
lost=$((accepted - answered - refused))
billed_twice=$(ch "SELECT count() FROM (SELECT request_id FROM $DB.attempts FINAL WHERE outcome = 'completed' GROUP BY request_id HAVING count() > 1)")
usage_dupes=$(ch "SELECT count() FROM (SELECT request_id FROM $DB.usage FINAL GROUP BY request_id HAVING count() > 1)")
usage_rows=$(ch "SELECT count() FROM $DB.usage FINAL")
redelivered=$(ch "SELECT count() - uniqExact(request_id) FROM $DB.usage")
not_completed=$(ch "SELECT countIf(status != 'completed') FROM $DB.results FINAL")

field() { python3 -c 'import json,sys
try: d=json.load(open(sys.argv[1]))
except Exception: print("-"); sys.exit()
v=d.get(sys.argv[2], "-")
print(", ".join(f"{k}: {n}" for k, n in v.items()) or "none" if isinstance(v, dict) else v)' "$1" "$2"; }
# Time in queue: created -> the FIRST provider attempt started (a request replayed after a
# crash has a later result row, but its caller was served by the first). Async callers are
# team demo (standard), sync callers team-b (interactive).
queue() { # from to team -> "n p50 p99 max" (seconds)
  ch "SELECT count(), round(quantileExact(0.5)(s - c) / 1000, 2), round(quantileExact(0.99)(s - c) / 1000, 2), round(max(s - c) / 1000, 2) FROM (SELECT request_id, min(started_at_ms) AS s, any(created_at_ms) AS c FROM $DB.attempts FINAL WHERE team = '$3' GROUP BY request_id) WHERE c >= $1 AND c < $2 FORMAT TSV"
}

cat <<EOF
## Failover: scripts/chaos.sh $MODE ($(date -u +%FT%TZ), $PROFILE build)

2 workers, mock provider 40 ms, $ASYNC_RATE async (standard) + $SYNC_RATE sync (interactive)
req/s, phases of ${PHASE_S} s; broker down ${broker_down_ms} ms (SIGKILL to ready again).

Workers' \`[kafka.membership]\`: ${membership:-(defaults)} ${options:+; $options}
${broker_props:+Broker: $(tr '\n' ' ' <<<"$broker_props")}

| phase | interactive n | queue p50 s | p99 s | max s | standard n | queue p50 s | p99 s | max s | sync p50 ms | sync p99 ms | sync max ms | sync errors |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
EOF
for phase in "${phases[@]}"; do
  read -r in ip50 ip99 imax <<<"$(queue "${t_start[$phase]}" "${t_end[$phase]}" team-b)"
  read -r sn sp50 sp99 smax <<<"$(queue "${t_start[$phase]}" "${t_end[$phase]}" demo)"
  s="$DIR/$phase.sync.json"
  echo "| $phase | $in | $ip50 | $ip99 | $imax | $sn | $sp50 | $sp99 | $smax | $(field "$s" p50_ms) | $(field "$s" p99_ms) | $(field "$s" max_ms) | $(field "$s" errors_by_status) |"
done
cat <<EOF

Accepted $accepted, answered $answered, refused after the accepted audit (503) $refused:
**lost $lost**. Billed twice (two completed provider
attempts for one request): **$billed_twice**; usage rows $usage_rows, duplicates after FINAL
$usage_dupes; redelivered usage records the sink collapsed: $redelivered. Results not
\`completed\`: $not_completed.
EOF
