#!/usr/bin/env bash
# Runs Sluice end to end on this machine: Kafka + ClickHouse + Redis (scripts/services.sh), the
# mock LLM provider, the ingress, a worker group and the analytics sink, all on 127.0.0.1.
#
#   scripts/run.sh          start everything, print where to send requests, run until Ctrl-C
#   scripts/run.sh stop     stop what a running `scripts/run.sh` started (from another shell)
#
# Knobs: WORKERS [2] workers in the group, MOCK_LATENCY_MS [40], INGRESS_PORT [8080],
# MOCK_PORT [9100], CONSOLE_PORT [9470], KEEP_SERVICES=1 leaves Kafka, ClickHouse and Redis running on exit,
# PROFILE [release], PROMETHEUS [1] starts a Prometheus on PROM_PORT [19090] scraping the
# services' ops listeners (scripts/prometheus.sh; 0: none).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
export SLUICE_STATE="${SLUICE_STATE:-$REPO_DIR/.state}"
RUN_DIR="$SLUICE_STATE/run"
LOG_DIR="$RUN_DIR/logs"
WORKERS="${WORKERS:-2}"
MOCK_LATENCY_MS="${MOCK_LATENCY_MS:-40}"
INGRESS_PORT="${INGRESS_PORT:-8080}"
MOCK_PORT="${MOCK_PORT:-9100}"
CONSOLE_PORT="${CONSOLE_PORT:-9470}"
KEEP_SERVICES="${KEEP_SERVICES:-0}"
PROFILE="${PROFILE:-release}"
PROMETHEUS="${PROMETHEUS:-1}"
export PROM_PORT="${PROM_PORT:-19090}"
BIN="$REPO_DIR/target/$PROFILE"

LOG_TAG=run
# shellcheck source=scripts/lib.sh
source "$REPO_DIR/scripts/lib.sh"  # log, die, alive
services() { bash "$REPO_DIR/scripts/services.sh" "$@"; }

stop_processes() {
  local f pid
  for f in "$RUN_DIR"/*.pid; do
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    # Graceful: each service drains and commits on SIGTERM.
    kill -TERM "$pid" 2>/dev/null || true
  done
  for f in "$RUN_DIR"/*.pid; do
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    for _ in $(seq 1 150); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    [[ -d /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

# Ops listeners (/metrics, /healthz, /readyz): the shipped configs' ports; worker n > 1 gets
# its own (9467, 9468, ...: 9466 is the sink's).
worker_ops_port() { if (($1 == 1)); then echo 9465; else echo $((9465 + $1)); fi; }

if [[ ${1:-} == stop ]]; then
  stop_processes
  bash "$REPO_DIR/scripts/prometheus.sh" stop || true
  [[ $KEEP_SERVICES == 1 ]] || services stop
  exit 0
fi

wait_http() { # url what
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  log "ERROR: $2 did not come up; see $LOG_DIR"
  exit 1
}

start() { # name binary args...
  local name=$1; shift
  nohup "$@" >"$LOG_DIR/$name.log" 2>&1 &
  echo $! >"$RUN_DIR/$name.pid"
}

# Each process as its own ClickHouse user (scripts/services.sh "ClickHouse users"): the
# shell's SLUICE_CLICKHOUSE_USER is the migrator, which only the sink's migrations and
# retention job get. A ClickHouse started before it had users exports none: then nothing is set.
ch_env() { # role [migrator]: sets CH_ENV, the `env` arguments for that process
  local u="SLUICE_CH_${1^^}_USER" p="SLUICE_CH_${1^^}_PASSWORD"
  CH_ENV=(-u SLUICE_CLICKHOUSE_USER -u SLUICE_CLICKHOUSE_PASSWORD)
  [[ -n ${!u:-} ]] || return 0
  CH_ENV+=("SLUICE_CLICKHOUSE_USER=${!u}" "SLUICE_CLICKHOUSE_PASSWORD=${!p}")
  if [[ ${2:-} == migrator ]]; then
    CH_ENV+=("SLUICE_CLICKHOUSE_MIGRATOR_USER=$SLUICE_CH_MIGRATOR_USER" "SLUICE_CLICKHOUSE_MIGRATOR_PASSWORD=$SLUICE_CH_MIGRATOR_PASSWORD")
  fi
}

on_exit() {
  trap - EXIT INT TERM
  log "stopping Sluice"
  stop_processes
  if [[ $PROMETHEUS == 1 ]]; then bash "$REPO_DIR/scripts/prometheus.sh" stop || true; fi
  if [[ $KEEP_SERVICES != 1 ]]; then services stop || true; fi
}

mkdir -p "$RUN_DIR" "$LOG_DIR"
stop_processes   # leftovers of a run that was killed

log "building ($PROFILE)"
if [[ $PROFILE == release ]]; then cargo build --release --bins; else cargo build --bins; fi

log "starting Kafka, ClickHouse and Redis"
eval "$(services start)"
trap on_exit EXIT INT TERM

export RUST_LOG="${RUST_LOG:-info,rdkafka=warn}"
# The guard example in config/ingress.toml (commented out as shipped) asks the mock provider's
# /v1/moderations with a bearer token from this variable; the mock takes any token.
export SLUICE_EXAMPLE_MODERATION_KEY="${SLUICE_EXAMPLE_MODERATION_KEY:-mock-moderation-key}"
start mock-provider "$BIN/mock-provider" --listen "127.0.0.1:$MOCK_PORT" --latency-ms "$MOCK_LATENCY_MS"
wait_http "http://127.0.0.1:$MOCK_PORT/v1/models" "mock provider"

# The ingress creates the topics; the sink applies the ClickHouse migrations. Idempotency-Key
# claims go to services.sh's Redis.
ch_env ingress
# The console reads the analytics views as the read-only analyst user.
console_ch=()
[[ -n ${SLUICE_CH_ANALYST_USER:-} ]] && console_ch=("SLUICE_CONSOLE_CLICKHOUSE_USER=$SLUICE_CH_ANALYST_USER" "SLUICE_CONSOLE_CLICKHOUSE_PASSWORD=$SLUICE_CH_ANALYST_PASSWORD")
SLUICE_SERVER_LISTEN="127.0.0.1:$INGRESS_PORT" SLUICE_IDEMPOTENCY_REDIS_URL="$SLUICE_REDIS_URL" \
  SLUICE_CONSOLE_LISTEN="127.0.0.1:$CONSOLE_PORT" \
  start ingress env "${CH_ENV[@]}" "${console_ch[@]}" "$BIN/sluice-ingress" --config config/ingress.toml --demo
wait_http "http://127.0.0.1:$INGRESS_PORT/healthz" "ingress"
ch_env sink migrator
start analytics env "${CH_ENV[@]}" "$BIN/sluice-analytics" --config config/analytics.toml
for i in $(seq 1 "$WORKERS"); do
  # The redelivery check (a result already in ClickHouse is not asked again) reads as the
  # read-only worker user.
  SLUICE_WORKER_ID="worker-$i" SLUICE_OPS_LISTEN="127.0.0.1:$(worker_ops_port "$i")" start "worker-$i" env -u SLUICE_CLICKHOUSE_USER -u SLUICE_CLICKHOUSE_PASSWORD \
    SLUICE_REDELIVERY_CLICKHOUSE_URL="$SLUICE_CLICKHOUSE_URL" \
    ${SLUICE_CH_WORKER_USER:+SLUICE_REDELIVERY_USER="$SLUICE_CH_WORKER_USER"} \
    ${SLUICE_CH_WORKER_USER:+SLUICE_REDELIVERY_PASSWORD_ENV=SLUICE_CH_WORKER_PASSWORD} \
    "$BIN/sluice-worker" --config config/worker.toml
done

prom_line="(PROMETHEUS=0: none)"
if [[ $PROMETHEUS == 1 ]]; then
  worker_targets=""
  for i in $(seq 1 "$WORKERS"); do worker_targets+="${worker_targets:+ }127.0.0.1:$(worker_ops_port "$i")"; done
  if PROM_WORKER_TARGETS="$worker_targets" bash "$REPO_DIR/scripts/prometheus.sh" start; then
    prom_line="http://127.0.0.1:$PROM_PORT   (alerts: /alerts, targets: /targets; deploy/prometheus/alerts.yml)"
  else
    prom_line="(did not start: see $SLUICE_STATE/prometheus/prometheus.log)"
  fi
fi

cat <<BANNER

  Sluice is running.

  OpenAI-compatible endpoint   http://127.0.0.1:$INGRESS_PORT/v1      (demo key: sk-sluice-demo)
  Models                       gpt-4o-mini, local-llama  (served by the mock provider on :$MOCK_PORT)

  Sync:
    curl -s http://127.0.0.1:$INGRESS_PORT/v1/chat/completions -H 'Authorization: Bearer sk-sluice-demo' \\
      -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
  Async:
    curl -s http://127.0.0.1:$INGRESS_PORT/v1/requests -H 'Authorization: Bearer sk-sluice-demo' \\
      -H 'x-sluice-priority: batch' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
    curl -s http://127.0.0.1:$INGRESS_PORT/v1/requests/<id> -H 'Authorization: Bearer sk-sluice-demo'
  Retry-safe (the same Idempotency-Key gets the first request's answer; keys in Redis, $SLUICE_REDIS_URL):
    curl -s http://127.0.0.1:$INGRESS_PORT/v1/requests -H 'Authorization: Bearer sk-sluice-demo' \\
      -H 'Idempotency-Key: my-key-1' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'

  Keys (admin key sk-sluice-admin), budgets, batches:
    curl -s http://127.0.0.1:$INGRESS_PORT/admin/keys -H 'Authorization: Bearer sk-sluice-admin' \
      -d '{"team":"demo","label":"my-app"}'          # the new key is shown once
    curl -s http://127.0.0.1:$INGRESS_PORT/v1/budgets -H 'Authorization: Bearer sk-sluice-demo'
    OpenAI SDK: client.files.create(purpose="batch") + client.batches.create(...)   (docs/batch.md)

  Console (spend, budgets, latency, backlog, batches, audit, keys), in a browser:
    http://127.0.0.1:$CONSOLE_PORT/console   log in with sk-sluice-console (read-only) or sk-sluice-admin

  Spend in ClickHouse (rows land within a second or two), as the read-only analyst user
  (passwords: $SLUICE_STATE/clickhouse/credentials.env; \$SLUICE_CH_ANALYST_PASSWORD after
  eval "\$(scripts/services.sh env)"):
    clickhouse-client --port ${CH_TCP_PORT:-19000} --user sluice_analyst --password "\$SLUICE_CH_ANALYST_PASSWORD" -q 'SELECT * FROM sluice.spend_by_team_model_day'
    curl -s -u "sluice_analyst:\$SLUICE_CH_ANALYST_PASSWORD" '$SLUICE_CLICKHOUSE_URL' --data-binary 'SELECT * FROM sluice.spend_by_team_day FORMAT PrettyCompact'

    SLUICE_CLICKHOUSE_USER=sluice_analyst SLUICE_CLICKHOUSE_PASSWORD="\$SLUICE_CH_ANALYST_PASSWORD" \\
      $BIN/sluice-analytics --config config/analytics.toml report spend --by team --days 7

  Metrics (ops listeners: /metrics, /healthz, /readyz):
    ingress 127.0.0.1:9464   analytics 127.0.0.1:9466   workers $(for i in $(seq 1 "$WORKERS"); do printf '127.0.0.1:%s ' "$(worker_ops_port "$i")"; done)
  Prometheus $prom_line
    curl -s 'http://127.0.0.1:$PROM_PORT/api/v1/query' --data-urlencode 'query=sluice:backlog_records:class'

  Logs: $LOG_DIR    Stop: Ctrl-C here, or scripts/run.sh stop

BANNER

# Run until interrupted, or until a Sluice process dies.
while true; do
  for f in "$RUN_DIR"/*.pid; do
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    if [[ ! -d /proc/$pid ]]; then
      log "ERROR: $(basename "$f" .pid) exited; last log lines:"
      tail -n 20 "$LOG_DIR/$(basename "$f" .pid).log" >&2 || true
      exit 1
    fi
  done
  sleep 1
done
