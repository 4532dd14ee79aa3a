#!/usr/bin/env bash
# Sluice benchmark: builds the release binaries, starts a whole stack (Kafka + ClickHouse via
# scripts/services.sh; mock provider, ingress, one worker and the analytics sink as release
# binaries with the configs in config/), drives it with tests/src/bin/loadgen.rs and prints
# the figures as markdown tables. Everything it starts is stopped on exit. docs/benchmarks.md
# explains the scenarios and records a run. Takes about 5 minutes plus the build.
#
#   scripts/bench.sh                 full run; figures on stdout, logs on stderr
#
# The stack runs beside anything else on the machine: its own ports, a fresh topic prefix and
# consumer groups (bench<epoch>), and the ClickHouse database sluice_bench (dropped and
# re-created at start). Knobs [defaults]:
#   BENCH_INGRESS_PORT [18180]  BENCH_MOCK_PORT [19180]
#   BENCH_MOCK_LATENCY_MS [0]   fixed latency of the mock provider's answers
#   BENCH_STEP [15s]  BENCH_WARMUP [3s]      measured time and warmup of each load step
#   BENCH_SYNC_RATES ["100 500 1000"]        sync steps, req/s (each: direct, then through)
#   BENCH_SYNC_CONNECTIONS [64]  then sync closed-loop (direct, then through) with this many
#                              connections: the most sync req/s the stack serves (0 skips it)
#   BENCH_ASYNC_RATE [5000]  BENCH_ASYNC_CONNECTIONS [64]
#   BENCH_E2E_SAMPLES [50]   BENCH_DRAIN_S [30]  BENCH_NO_BUILD [0]
#   BENCH_BIN [<repo>/target/release]   where the binaries are (with BENCH_NO_BUILD=1: an older build, for before/after)
#   BENCH_SCENARIOS ["sync e2e async soak"]   which parts to run; "streams" (not in the
#                              default) measures streaming, with the knobs below
#   BENCH_STREAM_RATES ["20 100 200"]        new streams/s (each: direct, then through)
#   BENCH_STREAM_CHUNKS [50]  BENCH_STREAM_DELAY_MS [20]   the mock's streams
#   BENCH_STREAM_OPEN [1000]  BENCH_STREAM_SLOW_DELAY_MS [400]  concurrent open streams for
#                              the memory step, and the chunk delay that keeps them open
#   BENCH_STREAM_CONNECTIONS [64]   closed-loop streams at most, direct and through (0: skip)
#   BENCH_STREAM_IN_FLIGHT [1100]   the worker's max_in_flight during the streams scenario
#   BENCH_CANCEL_SAMPLES [100]  BENCH_DISCONNECT_AFTER [5]  BENCH_RELAY_PORT [19181]
#                              (BENCH_CANCEL_SAMPLES=0 / BENCH_STREAM_OPEN=0 skip those steps)
#   BENCH_SCENARIOS may also hold "cache": response-cache hits (one request opted in with
#                              sluice.cache, asked again) at BENCH_CACHE_RATES ["500 1000"]
#                              req/s and closed-loop x BENCH_CACHE_CONNECTIONS [32], each
#                              against the same body straight to the mock
#   BENCH_SCENARIOS may also hold "serial" (in "streams" too): one stream at a time,
#                              BENCH_SERIAL_SAMPLES [30] streams of BENCH_SERIAL_CHUNKS [20]
#                              chunks BENCH_SERIAL_DELAY_MS [20] ms apart, each chunk timed from
#                              the mock (loadgen's relay) to the client, direct and through
#   BENCH_FLOOR [1]   with each sync rate, the bare Kafka round trip (kafka-floor: two hops,
#                              the services' client settings, no HTTP) at the same rate
#   BENCH_TRAFFIC [1]  Kafka messages and bytes per request by topic, for each step through
#                              the ingress (kafka-floor offsets before / traffic after)
#   BENCH_DB [sluice_bench]    the ClickHouse database (dropped at start)
#   BENCH_SOAK [30s]   the soak: closed-loop async load on one ingress, answers/s every second
#   BENCH_KAFKA_OPTIONS [""]   librdkafka settings added to the ingress's and the worker's
#                              [kafka.options] for an experiment, e.g. '"linger.ms" = "0"'
#   BENCH_ANALYTICS_KAFKA_OPTIONS [""]  the same for the analytics sink's consumer
#   BENCH_COALESCE_MS [unset]  the worker's [streaming] coalesce_ms (shipped 5; 0 = one reply
#                              record per stream event, as before coalescing), for before/after
#   BENCH_PROMPT_STREAMS [unset]  the worker's [streaming] prompt_streams (shipped 2; 0 =
#                              every stream's records on the batched producer)
#   BENCH_BUDGET_USD [1000000]  the demo team's monthly budget in the ingress config: large
#                              enough that the ledger and reservations run (their cost is
#                              measured) but nothing is refused; "none" removes [[budgets]]
#   BENCH_TRACE [0]   1: every service exports its spans ([trace], sample_ratio 1) to a local
#                              OTLP/HTTP sink (python3, answers 200, logs exports and bytes) on
#                              BENCH_OTLP_PORT [14318], to price tracing against a run without
#   BENCH_SHADOW_PERCENT [unset]  a [[shadows]] entry in the ingress config copying that share
#                              of $MODEL's requests to local-llama (docs/replay.md), to price
#                              shadow traffic against a run without
#   BENCH_PROFILE [""]  processes to sample with perf (e.g. "ingress worker") during the
#                              steps whose label holds BENCH_PROFILE_STEP ["sync ingress"]:
#                              perf record -F BENCH_PROFILE_HZ [499] --call-graph dwarf, and a
#                              flat report of the hottest functions (self time) beside the
#                              step's JSON, NN.<proc>.perf.txt; sampling costs CPU, so a
#                              profiled run's figures are not the benchmark's
#   BENCH_SCENARIOS may also hold "backlog": the worker paused (SIGSTOP), async requests
#                              submitted for BENCH_BACKLOG_SUBMIT [5s] closed loop, then the
#                              worker resumed against a mock answering in
#                              BENCH_BACKLOG_LATENCY_MS [40]: how fast one worker (and the sink)
#                              drain what waits
#   BENCH_TOKIO_WORKERS [unset]  Tokio worker threads of the ingress and the worker
#                              (TOKIO_WORKER_THREADS; unset: one per core)
#   BENCH_OUT [<repo>/.state/bench]           logs, loadgen JSON, results.md
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
SLUICE_STATE="${SLUICE_STATE:-$REPO_DIR/.state}"
export SLUICE_STATE

INGRESS_PORT="${BENCH_INGRESS_PORT:-18180}"
MOCK_PORT="${BENCH_MOCK_PORT:-19180}"
MOCK_LATENCY_MS="${BENCH_MOCK_LATENCY_MS:-0}"
STEP="${BENCH_STEP:-15s}"
WARMUP="${BENCH_WARMUP:-3s}"
SYNC_RATES="${BENCH_SYNC_RATES:-100 500 1000}"
ASYNC_RATE="${BENCH_ASYNC_RATE:-5000}"
ASYNC_CONNECTIONS="${BENCH_ASYNC_CONNECTIONS:-64}"
E2E_SAMPLES="${BENCH_E2E_SAMPLES:-50}"
DRAIN_S="${BENCH_DRAIN_S:-30}"
OUT="${BENCH_OUT:-$SLUICE_STATE/bench}"
SCENARIOS="${BENCH_SCENARIOS:-sync e2e async soak}"
SOAK="${BENCH_SOAK:-30s}"
KAFKA_OPTIONS="${BENCH_KAFKA_OPTIONS:-}"
STREAM_RATES="${BENCH_STREAM_RATES:-20 100 200}"
STREAM_CHUNKS="${BENCH_STREAM_CHUNKS:-50}"
STREAM_DELAY_MS="${BENCH_STREAM_DELAY_MS:-20}"
STREAM_OPEN="${BENCH_STREAM_OPEN:-1000}"
STREAM_SLOW_DELAY_MS="${BENCH_STREAM_SLOW_DELAY_MS:-400}"
STREAM_IN_FLIGHT="${BENCH_STREAM_IN_FLIGHT:-1100}"
STREAM_CONNECTIONS="${BENCH_STREAM_CONNECTIONS:-64}"
CANCEL_SAMPLES="${BENCH_CANCEL_SAMPLES:-100}"
BUDGET_USD="${BENCH_BUDGET_USD:-1000000}"
DISCONNECT_AFTER="${BENCH_DISCONNECT_AFTER:-5}"
SERIAL_SAMPLES="${BENCH_SERIAL_SAMPLES:-30}"
SERIAL_CHUNKS="${BENCH_SERIAL_CHUNKS:-20}"
SERIAL_DELAY_MS="${BENCH_SERIAL_DELAY_MS:-20}"
BACKLOG_SUBMIT="${BENCH_BACKLOG_SUBMIT:-5s}"
BACKLOG_LATENCY_MS="${BENCH_BACKLOG_LATENCY_MS:-40}"
FLOOR="${BENCH_FLOOR:-1}"
TRAFFIC="${BENCH_TRAFFIC:-1}"
RELAY_PORT="${BENCH_RELAY_PORT:-19181}"
CACHE_RATES="${BENCH_CACHE_RATES:-500 1000}"
CACHE_CONNECTIONS="${BENCH_CACHE_CONNECTIONS:-32}"
SYNC_CONNECTIONS="${BENCH_SYNC_CONNECTIONS:-64}"
ANALYTICS_KAFKA_OPTIONS="${BENCH_ANALYTICS_KAFKA_OPTIONS:-}"

KEY=sk-sluice-demo          # demo key of config/ingress.toml (team demo)
MODEL=gpt-4o-mini
DB="${BENCH_DB:-sluice_bench}"
# Fresh topics and consumer groups per run (as the tests do): nothing a previous run left in
# a topic, and no change of the worker's group naming, can make a run replay old requests.
PREFIX="${BENCH_PREFIX:-bench$(date +%s)}"
BIN="${BENCH_BIN:-$REPO_DIR/target/release}"
INGRESS="http://127.0.0.1:$INGRESS_PORT"
MOCK="http://127.0.0.1:$MOCK_PORT"
BODY="{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello in one short sentence.\"}]}"
# The same request, opted into the response cache for an hour (docs/cache.md).
CACHE_BODY="{\"model\":\"$MODEL\",\"sluice\":{\"cache\":{\"ttl_s\":3600}},\"messages\":[{\"role\":\"user\",\"content\":\"Say hello in one short sentence.\"}]}"
STREAM_BODY="{\"model\":\"$MODEL\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Say hello in one short sentence.\"}]}"
# The cancel step's model: the worker reaches its deployment through loadgen's relay.
RELAY_MODEL=local-llama
CANCEL_BODY="{\"model\":\"$RELAY_MODEL\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Say hello in one short sentence.\"}]}"

T0=$SECONDS
LOG_TAG=bench LOG_T0=$T0
# shellcheck source=scripts/lib.sh
source "$REPO_DIR/scripts/lib.sh"  # log, die, alive
services() { bash "$REPO_DIR/scripts/services.sh" "$@"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

command -v jq >/dev/null || {
  log "installing jq (formats the figures)"
  apt-get update -qq && apt-get install -y -qq jq >/dev/null
}
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.json.tmp "$OUT"/*.log "$OUT"/*.tsv "$OUT"/*.offsets "$OUT"/*.traffic
touch "$OUT/steps.tsv" "$OUT/cpu.tsv" "$OUT/cpu_ms.tsv" "$OUT/gc.tsv" "$OUT/hwm.tsv"

# ---------- cleanup: only what this run started ----------
status_before=$(services status 2>/dev/null || true)
stop_services=()
grep -q '^kafka *running' <<<"$status_before" || stop_services+=(stop-kafka)
grep -q '^clickhouse *running' <<<"$status_before" || stop_services+=(stop-clickhouse)
declare -A PID=()   # name -> pid of the processes this run started
# Running, and not a zombie waiting to be reaped.
on_exit() {
  local rc=$? name pid i
  for name in analytics worker ingress mock otlp; do
    pid=${PID[$name]:-}
    [[ -n $pid ]] || continue
    kill -TERM "$pid" 2>/dev/null || continue
    # The worker drains in-flight requests and the sink flushes: give them time.
    for ((i = 0; i < 300; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then log "$name still running after 30s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  done
  for s in "${stop_services[@]}"; do services "$s" || true; done
  ((rc == 0)) || log "FAILED (exit $rc); logs in $OUT"
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ---------- build, services ----------
if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
  log "cargo build --release --bins"
  cargo build --release --bins >&2
fi
for b in sluice-ingress sluice-worker sluice-analytics mock-provider loadgen kafka-floor; do
  [[ -x $BIN/$b ]] || die "$BIN/$b is missing (cargo build --release --bins)"
done
log "services: Kafka + ClickHouse"
eval "$(services start)"
CH="$SLUICE_CLICKHOUSE_URL"
# As the migrator (DDL), when services.sh configured users; loadgen reads the same variables.
CH_AUTH=()
[[ -n ${SLUICE_CLICKHOUSE_USER:-} ]] && CH_AUTH=(-u "$SLUICE_CLICKHOUSE_USER:$SLUICE_CLICKHOUSE_PASSWORD")
KAFKA_PID=$(cat "$SLUICE_STATE/kafka/kafka.pid")
CLICKHOUSE_PID=$(cat "$SLUICE_STATE/clickhouse/server.pid")
for p in "$INGRESS_PORT" "$MOCK_PORT" "$RELAY_PORT"; do
  port_open "$p" && die "port $p is in use (set BENCH_INGRESS_PORT / BENCH_MOCK_PORT)"
done
curl -sf "${CH_AUTH[@]}" "$CH" --data-binary "DROP DATABASE IF EXISTS $DB" >/dev/null || die "ClickHouse refused DROP DATABASE"

# ---------- the stack ----------
start() { # name logfile env... -- cmd...
  local name=$1 logf=$2; shift 2
  local envs=()
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" "$@" >"$logf" 2>&1 &
  PID[$name]=$!
}
wait_for() { # what timeout_s cmd...
  local what=$1 t=$2 deadline=$((SECONDS + $2)) name
  shift 2
  until "$@" >/dev/null 2>&1; do
    # A process that exited (bad config, port taken) will not become ready: say so at once.
    for name in "${!PID[@]}"; do
      alive "${PID[$name]}" && continue
      tail -n 20 "$OUT/$name.log" >&2
      die "$name exited while waiting for $what (log: $OUT/$name.log)"
    done
    ((SECONDS < deadline)) || die "$what not ready after ${t}s (logs in $OUT)"
    sleep 0.1
  done
}

start_mock() { # extra mock-provider args...
  start mock "$OUT/mock.log" RUST_LOG=warn -- \
    "$BIN/mock-provider" --listen "127.0.0.1:$MOCK_PORT" --latency-ms "$MOCK_LATENCY_MS" "$@"
  wait_for "mock provider" 10 curl -sf "$MOCK/v1/models"
}
# The streams scenario restarts the mock with other stream shapes (its behaviour is global).
restart_mock() { # extra mock-provider args...
  local pid=${PID[mock]} i
  kill -TERM "$pid"
  for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && die "mock did not stop within 10s"
  start_mock "$@"
}
log "mock provider on $MOCK (latency ${MOCK_LATENCY_MS} ms, 16 completion tokens)"
start_mock --completion-tokens 16

# The configs of config/, the worker's deployments pointed at this run's mock, and the
# experiment's librdkafka settings (if any) appended.
sed "s#http://127.0.0.1:9100#$MOCK#g" config/worker.toml >"$OUT/worker.toml"
cp config/prices.toml "$OUT/prices.toml" # worker.toml's [pricing] file
grep -q "$MOCK/v1" "$OUT/worker.toml" || die "config/worker.toml has no mock deployment on 127.0.0.1:9100"
if [[ $BUDGET_USD == none ]]; then
  log "experiment: no [[budgets]] in the ingress config"
  awk '/^\[/ { skip = ($0 == "[[budgets]]") } !skip { print }' config/ingress.toml >"$OUT/ingress.toml"
else
  sed "s/^limit_usd = .*/limit_usd = $BUDGET_USD/" config/ingress.toml >"$OUT/ingress.toml"
fi
if [[ -n ${BENCH_SHADOW_PERCENT:-} ]]; then
  log "experiment: [[shadows]] $BENCH_SHADOW_PERCENT % of $MODEL to local-llama"
  printf '\n[[shadows]]\nname = "bench"\nmodel = "%s"\ntarget_model = "local-llama"\npercent = %s\n' \
    "$MODEL" "$BENCH_SHADOW_PERCENT" >>"$OUT/ingress.toml"
fi
# The streams scenario's cancel step: the deployment of $RELAY_MODEL goes through loadgen's
# relay on RELAY_PORT (which forwards to the mock), so the relay sees when the worker closes
# its provider connection. Nothing else calls that model.
if [[ " $SCENARIOS " == *" streams "* || " $SCENARIOS " == *" serial "* ]]; then
  awk -v mock="$MOCK" -v relay="http://127.0.0.1:$RELAY_PORT" -v model="\"$RELAY_MODEL\"" '
    /^\[\[/ { mine = 0 } $1 == "model" && $3 == model { mine = 1 }
    mine && /base_url/ { sub(mock, relay) } { print }' "$OUT/worker.toml" >"$OUT/worker.toml.tmp"
  mv "$OUT/worker.toml.tmp" "$OUT/worker.toml"
  grep -q "127.0.0.1:$RELAY_PORT" "$OUT/worker.toml" || die "no deployment of $RELAY_MODEL to route through the relay"
fi
cp config/analytics.toml "$OUT/analytics.toml"
if [[ -n $ANALYTICS_KAFKA_OPTIONS ]]; then
  log "experiment: analytics [kafka.options] += $ANALYTICS_KAFKA_OPTIONS"
  if grep -q '^\[kafka.options\]' config/analytics.toml; then
    awk -v add="$ANALYTICS_KAFKA_OPTIONS" '{ print } /^\[kafka.options\]/ { print add }' config/analytics.toml >"$OUT/analytics.toml"
  else
    printf '\n[kafka.options]\n%s\n' "$ANALYTICS_KAFKA_OPTIONS" >>"$OUT/analytics.toml"
  fi
fi
if [[ -n $KAFKA_OPTIONS ]]; then
  log "experiment: ingress and worker [kafka.options] += $KAFKA_OPTIONS"
  for f in "$OUT/ingress.toml" "$OUT/worker.toml"; do
    grep -q '^\[kafka.options\]' "$f" && die "$f already has [kafka.options]; BENCH_KAFKA_OPTIONS cannot add to it"
    printf '\n[kafka.options]\n%s\n' "$KAFKA_OPTIONS" >>"$f"
  done
fi

# ---------- traces (BENCH_TRACE=1): a sink that takes OTLP/HTTP exports and counts them ----------
if [[ ${BENCH_TRACE:-0} == 1 ]]; then
  OTLP_PORT="${BENCH_OTLP_PORT:-14318}"
  port_open "$OTLP_PORT" && die "port $OTLP_PORT is in use (set BENCH_OTLP_PORT)"
  start otlp "$OUT/otlp.log" -- python3 -c '
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    exports = 0
    received = 0
    def do_POST(self):
        size = int(self.headers.get("content-length", 0))
        self.rfile.read(size)
        Sink.exports += 1
        Sink.received += size
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
        print(Sink.exports, Sink.received, flush=True)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
' "$OTLP_PORT"
  export SLUICE_TRACE_OTLP_ENDPOINT="http://127.0.0.1:$OTLP_PORT/v1/traces" SLUICE_TRACE_SAMPLE_RATIO=1
  log "traces: every service exports its spans to $SLUICE_TRACE_OTLP_ENDPOINT"
fi

# BENCH_TOKIO_WORKERS: the Tokio runtime's worker threads in the ingress and the worker
# (TOKIO_WORKER_THREADS; unset = one per core).
TOKIO_ENV=()
[[ -n ${BENCH_TOKIO_WORKERS:-} ]] && TOKIO_ENV=(TOKIO_WORKER_THREADS="$BENCH_TOKIO_WORKERS")
start_ingress() {
  start ingress "$OUT/ingress.log" "${TOKIO_ENV[@]}" SLUICE_SERVER_LISTEN="127.0.0.1:$INGRESS_PORT" \
    SLUICE_KAFKA_TOPIC_PREFIX="$PREFIX" SLUICE_CLICKHOUSE_DATABASE="$DB" -- \
    "$BIN/sluice-ingress" --config "$OUT/ingress.toml" --demo
  wait_for ingress 60 curl -sf "$INGRESS/healthz"
}
# Each async step starts on a fresh ingress, so that no step inherits the previous one's
# per-replica state (the map of recently accepted requests: docs/benchmarks.md).
restart_ingress() {
  local pid=${PID[ingress]} i
  kill -TERM "$pid"
  for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && die "ingress did not stop within 10s"
  start_ingress
}
log "ingress on $INGRESS, topic prefix $PREFIX"
start_ingress

log "worker (group $PREFIX-workers) and analytics sink (group $PREFIX-analytics, database $DB)"
# 1,000 concurrent streams need as many provider calls in flight (the shipped config: 256).
want_streams=0; [[ " $SCENARIOS " == *" streams "* ]] && want_streams=1
WORKER_ENV=("${TOKIO_ENV[@]}" SLUICE_KAFKA_TOPIC_PREFIX="$PREFIX" SLUICE_KAFKA_GROUP_ID="$PREFIX-workers")
((want_streams)) && WORKER_ENV+=(SLUICE_WORKER_MAX_IN_FLIGHT="$STREAM_IN_FLIGHT")
[[ -n "${BENCH_COALESCE_MS:-}" ]] && WORKER_ENV+=(SLUICE_STREAMING_COALESCE_MS="$BENCH_COALESCE_MS")
[[ -n "${BENCH_PROMPT_STREAMS:-}" ]] && WORKER_ENV+=(SLUICE_STREAMING_PROMPT_STREAMS="$BENCH_PROMPT_STREAMS")
start worker "$OUT/worker.log" "${WORKER_ENV[@]}" -- "$BIN/sluice-worker" --config "$OUT/worker.toml"
start analytics "$OUT/analytics.log" SLUICE_KAFKA_TOPIC_PREFIX="$PREFIX" \
  SLUICE_KAFKA_GROUP_ID="$PREFIX-analytics" SLUICE_CLICKHOUSE_DATABASE="$DB" -- \
  "$BIN/sluice-analytics" --config "$OUT/analytics.toml" run

# Ready = a sync request comes back through the worker, and its usage row reaches ClickHouse.
sync_ok() {
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' -d "$BODY" "$INGRESS/v1/chat/completions") == 200 ]]
}
wait_for "worker (sync round trip)" 60 sync_ok
usage_rows() { curl -sf "${CH_AUTH[@]}" "$CH" --data-binary "SELECT count() FROM $DB.usage" 2>/dev/null || echo 0; }
usage_seen() { (($(usage_rows) > 0)); }
wait_for "analytics sink (first usage row)" 60 usage_seen
log "stack ready"

# ---------- measuring ----------
PROCS=(ingress worker analytics mock kafka clickhouse)
pid_of() {
  case $1 in
    kafka) echo "$KAFKA_PID" ;;
    clickhouse) echo "$CLICKHOUSE_PID" ;;
    *) echo "${PID[$1]}" ;;
  esac
}
# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/<pid>/stat; the
# command name in field 2 may hold spaces, so split after its closing parenthesis).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)
# Kafka's garbage collections ("count seconds" of young + mixed/full pauses), from the JDK's
# jstat, which services.sh installs with the JDK; GC pauses stop the broker for their length.
kafka_gc() {
  command -v jstat >/dev/null || { echo "0 0"; return; }
  jstat -gc "$KAFKA_PID" 2>/dev/null | awk 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i }
    NR == 2 { printf "%d %.3f\n", $c["YGC"] + $c["FGC"], $c["YGCT"] + $c["FGCT"] }'
}
# Microseconds during which some runnable task waited for a core (pressure stall information):
# how oversubscribed the two cores were, whoever caused it. (/proc/stat cannot tell: this kernel
# samples it at each tick, and timer-driven processes that sleep before the tick escape it.)
cpu_wait_us() { awk '/^some/ { sub("total=", "", $5); print $5 }' /proc/pressure/cpu 2>/dev/null || echo 0; }
declare -A TICKS=()
mark() {
  local p
  GC_BEFORE=$(kafka_gc)
  TICKS[wait]=$(cpu_wait_us)
  for p in "${PROCS[@]}"; do TICKS[$p]=$(cpu_ticks "$(pid_of "$p")"); done
  MARK_MS=$(date +%s%3N)
}
# Appends "scenario proc cpu%-of-one-core" rows (and "scenario wait %") to cpu.tsv, and the
# step's Kafka GC pauses to gc.tsv.
account() { # scenario
  local p now dt n0 t0 n1 t1
  now=$(date +%s%3N); dt=$((now - MARK_MS))
  for p in "${PROCS[@]}"; do
    local pid; pid=$(pid_of "$p")
    local ticks=$(($(cpu_ticks "$pid") - TICKS[$p]))
    printf '%s\t%s\t%s\n' "$1" "$p" \
      "$(awk -v d="$ticks" -v hz="$HZ" -v ms="$dt" 'BEGIN {printf "%.0f", d / hz * 100000 / ms}')" >>"$OUT/cpu.tsv"
    # CPU milliseconds of the step (divided by the step's requests in the report).
    printf '%s\t%s\t%s\n' "$1" "$p" "$(awk -v d="$ticks" -v hz="$HZ" 'BEGIN {printf "%.1f", d / hz * 1000}')" >>"$OUT/cpu_ms.tsv"
  done
  printf '%s\t%s\t%s\n' "$1" wait \
    "$(awk -v d="$(($(cpu_wait_us) - TICKS[wait]))" -v ms="$dt" 'BEGIN {printf "%.0f", d / 10 / ms}')" >>"$OUT/cpu.tsv"
  # Stop-the-world pauses only (G1's concurrent cycles run beside the application).
  read -r n0 t0 <<<"$GC_BEFORE"
  read -r n1 t1 <<<"$(kafka_gc)"
  awk -v s="$1" -v n="$((n1 - n0))" -v t0="$t0" -v t1="$t1" \
    'BEGIN { ms = (t1 - t0) * 1000; printf "%s\t%d\t%.0f\t%.1f\n", s, n, ms, n ? ms / n : 0 }' >>"$OUT/gc.tsv"
}

# perf sampling of BENCH_PROFILE's processes during the matching steps (see the header).
PROFILE="${BENCH_PROFILE:-}"
PROFILE_STEP="${BENCH_PROFILE_STEP:-sync ingress}"
declare -A PERF=()   # proc -> pid of its perf record
profile_start() { # label n
  [[ -n $PROFILE && $1 == *"$PROFILE_STEP"* ]] || return 0
  command -v perf >/dev/null || die "BENCH_PROFILE needs perf (Debian's linux-perf)"
  local p
  for p in $PROFILE; do
    perf record -q -F "${BENCH_PROFILE_HZ:-499}" --call-graph dwarf,16384 -p "$(pid_of "$p")" \
      -o "$OUT/$2.$p.perf.data" 2>"$OUT/$2.$p.perf.log" &
    PERF[$p]=$!
  done
}
profile_stop() { # n
  local p
  for p in "${!PERF[@]}"; do
    kill -INT "${PERF[$p]}" 2>/dev/null || true
    wait "${PERF[$p]}" 2>/dev/null || true
    perf report -i "$OUT/$1.$p.perf.data" --no-children --stdio -g none --percent-limit 0.3 \
      --sort symbol 2>/dev/null | grep -v '^$' >"$OUT/$1.$p.perf.txt" || true
    log "  perf: $OUT/$1.$p.perf.txt"
  done
  PERF=()
}

N=0
FLOOR_ARGS=()   # the experiment's librdkafka options, for kafka-floor's clients
while IFS= read -r line; do
  [[ $line =~ ^[[:space:]]*\"?([^\"=]+)\"?[[:space:]]*=[[:space:]]*\"?([^\"]*)\"?[[:space:]]*$ ]] &&
    FLOOR_ARGS+=(--option "${BASH_REMATCH[1]}=${BASH_REMATCH[2]}")
done <<<"$KAFKA_OPTIONS"
# Kafka traffic of the steps through the stack: the topics' high watermarks before the step,
# the records written to them after (kafka-floor offsets / traffic). Other steps: none.
traffic_of() { [[ $TRAFFIC == 1 && $1 == *ingress* ]]; }
run_step() { # label loadgen-args... (STEP_TOOL=kafka-floor for the floor)
  local label=$1; shift
  N=$((N + 1))
  local n; n=$(printf '%02d' "$N")
  local f="$OUT/$n.json"
  log "$label"
  if traffic_of "$label"; then
    "$BIN/kafka-floor" --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" offsets --prefix "$PREFIX" >"$OUT/$n.offsets" \
      || die "kafka-floor offsets failed"
  fi
  mark
  local from_ms=$MARK_MS
  profile_start "$label" "$n"
  "$BIN/${STEP_TOOL:-loadgen}" --json "$@" >"$f.tmp" 2>"$OUT/$n.log" \
    || { cat "$OUT/$n.log" >&2; die "${STEP_TOOL:-loadgen} failed: $label"; }
  account "$label"
  profile_stop "$n"
  if traffic_of "$label"; then
    "$BIN/kafka-floor" --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" traffic --prefix "$PREFIX" \
      --since "$OUT/$n.offsets" >"$OUT/$n.traffic" || die "kafka-floor traffic failed"
    jq -c --arg l "$label" --slurpfile s "$f.tmp" \
      '{label: $l, requests: ($s[0].sent_total // $s[0].sent), topics: .}' "$OUT/$n.traffic" >"$OUT/$n.traffic.tmp" &&
      mv "$OUT/$n.traffic.tmp" "$OUT/$n.traffic"
  fi
  printf '%s\t%s\t%s\n' "$label" "$from_ms" "$(date +%s%3N)" >>"$OUT/steps.tsv"
  jq -c --arg l "$label" '. + {"label": $l}' "$f.tmp" >"$f" && rm -f "$f.tmp"
  sed 's/^/    /' "$OUT/$n.log" >&2
}

want() { [[ " $SCENARIOS " == *" $1 "* ]]; }
want sync || SYNC_RATES=""
# Waits (at most DRAIN_S) until `accepted` usage rows beyond `rows_before` are in ClickHouse;
# prints how long after the load that took, or how many are missing.
drain() { # rows_before accepted load_start_ms
  local want=$(($1 + $2)) end rows done_ms
  log "backlog: waiting up to ${DRAIN_S}s for $2 usage rows"
  end=$(date +%s%3N)
  while rows=$(usage_rows); ((rows < want && $(date +%s%3N) - end < DRAIN_S * 1000)); do sleep 0.2; done
  done_ms=$(date +%s%3N)
  if ((rows >= want)); then
    echo "all $2 usage rows were in ClickHouse $((done_ms - end)) ms after the load stopped" \
      "($(($2 * 1000 / (done_ms - $3))) rows/s from the first request on)"
  else
    echo "$((want - rows)) of $2 usage rows still missing ${DRAIN_S}s after the load stopped" \
      "(worker + sink: $(((rows - $1) * 1000 / (done_ms - $3))) rows/s from the first request on)"
  fi
}

# (b) sync: the same body straight to the mock, then through the ingress, at each rate.
for rate in $SYNC_RATES; do
  run_step "sync direct ${rate}/s" --mode open --url "$MOCK/v1/chat/completions" --body "$BODY" \
    --rate "$rate" --duration "$STEP" --warmup "$WARMUP"
  run_step "sync ingress ${rate}/s" --mode open --url "$INGRESS/v1/chat/completions" --key "$KEY" \
    --body "$BODY" --rate "$rate" --duration "$STEP" --warmup "$WARMUP"
  # The Kafka floor at the same rate, on the same broker: the two hops of a sync call.
  if [[ $FLOOR == 1 ]]; then
    STEP_TOOL=kafka-floor run_step "kafka floor ${rate}/s" --bootstrap "$SLUICE_KAFKA_BOOTSTRAP" \
      "${FLOOR_ARGS[@]}" roundtrip --topic-prefix "$PREFIX-floor-$rate" --rate "$rate" \
      --duration "$STEP" --warmup "$WARMUP"
  fi
done
# (b1) sync at most: closed loop, each of SYNC_CONNECTIONS connections sends its next request
# when its answer arrives; the direct mock call beside it.
if want sync && ((SYNC_CONNECTIONS > 0)); then
  run_step "sync direct closed x${SYNC_CONNECTIONS}" --mode closed --url "$MOCK/v1/chat/completions" \
    --body "$BODY" --concurrency "$SYNC_CONNECTIONS" --duration "$STEP" --warmup "$WARMUP"
  run_step "sync ingress closed x${SYNC_CONNECTIONS}" --mode closed --url "$INGRESS/v1/chat/completions" \
    --key "$KEY" --body "$BODY" --concurrency "$SYNC_CONNECTIONS" --duration "$STEP" --warmup "$WARMUP"
fi
# (c) accept -> usage row in ClickHouse, one request at a time, before any async backlog.
want e2e && run_step "e2e accept->ClickHouse" --mode e2e --url "$INGRESS/v1/requests" --key "$KEY" \
  --body "$BODY" --expect-status 202 --samples "$E2E_SAMPLES" --clickhouse-url "$CH" --database "$DB"
# (b2) cache: one miss stores the answer, then every request is a hit the ingress answers
# itself (no Kafka round trip, no provider); the direct mock call beside it.
if want cache; then
  hit=$(curl -s -o /dev/null -D - -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d "$CACHE_BODY" "$INGRESS/v1/chat/completions" | tr -d '\r' | sed -n 's/^x-sluice-cache: //Ip')
  [[ $hit == miss || $hit == hit ]] || die "the cache body was not cached (x-sluice-cache: '$hit')"
  for rate in $CACHE_RATES; do
    run_step "cache direct ${rate}/s" --mode open --url "$MOCK/v1/chat/completions" --body "$BODY" \
      --rate "$rate" --duration "$STEP" --warmup "$WARMUP"
    run_step "cache hit ${rate}/s" --mode open --url "$INGRESS/v1/chat/completions" --key "$KEY" \
      --body "$CACHE_BODY" --rate "$rate" --duration "$STEP" --warmup "$WARMUP"
  done
  run_step "cache direct closed x${CACHE_CONNECTIONS}" --mode closed --url "$MOCK/v1/chat/completions" \
    --body "$BODY" --concurrency "$CACHE_CONNECTIONS" --duration "$STEP" --warmup "$WARMUP"
  run_step "cache hit closed x${CACHE_CONNECTIONS}" --mode closed --url "$INGRESS/v1/chat/completions" \
    --key "$KEY" --body "$CACHE_BODY" --concurrency "$CACHE_CONNECTIONS" --duration "$STEP" --warmup "$WARMUP"
fi
# (a) async accept: at the target rate, then as fast as the connections go. The worker and the
# sink process the accepted requests at the same time, on the same two cores.
if want async; then
  rows_before_async=$(usage_rows)
  async_from_ms=$(date +%s%3N)
  restart_ingress
  run_step "async ingress ${ASYNC_RATE}/s" --mode open --url "$INGRESS/v1/requests" --key "$KEY" \
    --body "$BODY" --expect-status 202 --rate "$ASYNC_RATE" --duration "$STEP" --warmup "$WARMUP"
  restart_ingress
  run_step "async ingress closed x${ASYNC_CONNECTIONS}" --mode closed --url "$INGRESS/v1/requests" \
    --key "$KEY" --body "$BODY" --expect-status 202 --concurrency "$ASYNC_CONNECTIONS" \
    --duration "$STEP" --warmup "$WARMUP"
  # The backlog: how long after the load stops the worker + sink have every usage row.
  accepted_async=$(jq -s '[.[] | select(.label | startswith("async")) | .ok] | add' "$OUT"/*.json)
  backlog=$(drain "$rows_before_async" "$accepted_async" "$async_from_ms")
fi
# Async soak: one fresh ingress under closed-loop load for BENCH_SOAK, answers/s each second.
if want soak; then
  restart_ingress
  rows_before_soak=$(usage_rows)
  soak_from_ms=$(date +%s%3N)
  run_step "async soak closed x${ASYNC_CONNECTIONS}" --mode closed --url "$INGRESS/v1/requests" \
    --key "$KEY" --body "$BODY" --expect-status 202 --concurrency "$ASYNC_CONNECTIONS" \
    --duration "$SOAK" --warmup 0s --progress
  soak_log="$OUT/$(printf '%02d' "$N").log"
  soak_backlog=$(drain "$rows_before_soak" "$(jq -r .ok "$OUT/$(printf '%02d' "$N").json")" "$soak_from_ms")
fi
# Backlog drain: requests wait in Kafka while the worker is paused (SIGSTOP), then one worker
# drains them against a provider answering in BACKLOG_LATENCY_MS. The worker's short session
# expires during the pause, so it rejoins the group on resume: the figure from the resume
# includes that rebalance, the one from the first usage row does not.
if want backlog; then
  log "mock restarted: latency ${BACKLOG_LATENCY_MS} ms (backlog)"
  MOCK_LATENCY_MS=$BACKLOG_LATENCY_MS restart_mock --completion-tokens 16
  restart_ingress
  rows_before_backlog=$(usage_rows)
  kill -STOP "${PID[worker]}"
  run_step "backlog submit closed x${ASYNC_CONNECTIONS}" --mode closed --url "$INGRESS/v1/requests" \
    --key "$KEY" --body "$BODY" --expect-status 202 --concurrency "$ASYNC_CONNECTIONS" \
    --duration "$BACKLOG_SUBMIT" --warmup 0s
  backlog_n=$(jq -r .ok "$OUT/$(printf '%02d' "$N").json")
  backlog_want=$((rows_before_backlog + backlog_n))
  resumed_ms=$(date +%s%3N)
  kill -CONT "${PID[worker]}"
  first_ms=""
  while rows=$(usage_rows); ((rows < backlog_want && $(date +%s%3N) - resumed_ms < DRAIN_S * 1000)); do
    [[ -z $first_ms ]] && ((rows > rows_before_backlog)) && first_ms=$(date +%s%3N) first_rows=$rows
    sleep 0.1
  done
  done_ms=$(date +%s%3N)
  if ((rows >= backlog_want)); then
    drained="all $backlog_n requests drained $((done_ms - resumed_ms)) ms after the worker resumed:"
    drained+=" $((backlog_n * 1000 / (done_ms - resumed_ms))) rows/s from the resume"
    if [[ -n $first_ms ]] && ((done_ms > first_ms)); then
      drained+=", $(((backlog_want - first_rows) * 1000 / (done_ms - first_ms))) rows/s from the first row on"
    fi
  else
    drained="$((backlog_want - rows)) of $backlog_n usage rows still missing ${DRAIN_S}s after the worker resumed"
  fi
  log "backlog: $drained"
  MOCK_LATENCY_MS=${BENCH_MOCK_LATENCY_MS:-0} restart_mock --completion-tokens 16
fi
# Streaming: time to first token and whole stream, direct vs through, at each rate of new
# streams (each stream STREAM_CHUNKS content chunks STREAM_DELAY_MS apart); then client
# disconnect -> provider connection closed; then memory with STREAM_OPEN streams open at once.
# Every (ingress RSS, worker RSS, Kafka RSS, client connections to the ingress), each 0.5 s.
sample_mem() {
  while :; do
    printf '%s\t%s\t%s\t%s\t%s\n' "$(date +%s%3N)" "$(kb "${PID[ingress]}" VmRSS)" \
      "$(kb "${PID[worker]}" VmRSS)" "$(kb "$KAFKA_PID" VmRSS)" \
      "$(ss -Htn state established "( sport = :$INGRESS_PORT )" | wc -l)"
    sleep 0.5
  done
}
# Serial streams: one at a time, SERIAL_CHUNKS chunks SERIAL_DELAY_MS apart; loadgen's relay in
# front of the mock notes when each content chunk left it, the client when it arrived. Direct
# = client -> relay -> mock; through = client -> ingress -> Kafka -> worker -> relay -> mock.
run_serial() {
  log "mock restarted: streams of $SERIAL_CHUNKS content chunks ${SERIAL_DELAY_MS} ms apart (serial)"
  restart_mock --completion-tokens "$SERIAL_CHUNKS" --stream-chunks "$SERIAL_CHUNKS" \
    --stream-chunk-delay-ms "$SERIAL_DELAY_MS"
  local relay=(--relay-listen "127.0.0.1:$RELAY_PORT" --relay-upstream "127.0.0.1:$MOCK_PORT"
    --samples "$SERIAL_SAMPLES")
  run_step "serial direct" --mode serial --url "http://127.0.0.1:$RELAY_PORT/v1/chat/completions" \
    --body "$CANCEL_BODY" "${relay[@]}"
  run_step "serial ingress" --mode serial --url "$INGRESS/v1/chat/completions" --key "$KEY" \
    --body "$CANCEL_BODY" "${relay[@]}"
  serial_ran=1
}
serial_ran=0
want serial && ((!want_streams)) && run_serial
if ((want_streams)); then
  stream_mock=(--completion-tokens "$STREAM_CHUNKS" --stream-chunks "$STREAM_CHUNKS")
  log "mock restarted: streams of $STREAM_CHUNKS content chunks ${STREAM_DELAY_MS} ms apart"
  restart_mock "${stream_mock[@]}" --stream-chunk-delay-ms "$STREAM_DELAY_MS"
  for rate in $STREAM_RATES; do
    run_step "stream direct ${rate}/s" --mode open --url "$MOCK/v1/chat/completions" \
      --body "$STREAM_BODY" --rate "$rate" --duration "$STEP" --warmup "$WARMUP"
    run_step "stream ingress ${rate}/s" --mode open --url "$INGRESS/v1/chat/completions" \
      --key "$KEY" --body "$STREAM_BODY" --rate "$rate" --duration "$STEP" --warmup "$WARMUP"
  done
  # Streams at most: closed loop, each connection opens its next stream when the last ends.
  if ((STREAM_CONNECTIONS > 0)); then
    run_step "stream direct closed x${STREAM_CONNECTIONS}" --mode closed --url "$MOCK/v1/chat/completions" \
      --body "$STREAM_BODY" --concurrency "$STREAM_CONNECTIONS" --duration "$STEP" --warmup "$WARMUP"
    run_step "stream ingress closed x${STREAM_CONNECTIONS}" --mode closed --url "$INGRESS/v1/chat/completions" \
      --key "$KEY" --body "$STREAM_BODY" --concurrency "$STREAM_CONNECTIONS" --duration "$STEP" --warmup "$WARMUP"
  fi
  if ((CANCEL_SAMPLES > 0)); then
    run_step "stream cancel x${CANCEL_SAMPLES}" --mode cancel --url "$INGRESS/v1/chat/completions" \
      --key "$KEY" --body "$CANCEL_BODY" --samples "$CANCEL_SAMPLES" \
      --disconnect-after "$DISCONNECT_AFTER" --relay-listen "127.0.0.1:$RELAY_PORT" \
      --relay-upstream "127.0.0.1:$MOCK_PORT"
    cancel_json="$OUT/$(printf '%02d' "$N").json"
  fi
  run_serial
  # Memory: a fresh ingress (its baseline), then STREAM_OPEN connections each open one long
  # stream at once (closed loop; nothing new starts after the first second).
  if ((STREAM_OPEN > 0)); then
    log "mock restarted: chunks ${STREAM_SLOW_DELAY_MS} ms apart (streams stay open)"
    restart_mock "${stream_mock[@]}" --stream-chunk-delay-ms "$STREAM_SLOW_DELAY_MS"
    restart_ingress
    sync_ok || die "no sync answer from the restarted ingress"
    sleep 1
    mem_base="$(kb "${PID[ingress]}" VmRSS) $(kb "${PID[worker]}" VmRSS) $(kb "$KAFKA_PID" VmRSS)"
    sample_mem >"$OUT/stream-mem.tsv" &
    sampler=$!
    run_step "stream open x${STREAM_OPEN}" --mode closed --url "$INGRESS/v1/chat/completions" \
      --key "$KEY" --body "$STREAM_BODY" --concurrency "$STREAM_OPEN" --duration 1s --warmup 0s \
      --timeout 300s
    kill "$sampler"
    mem_hwm="$(kb "${PID[ingress]}" VmHWM) $(kb "${PID[worker]}" VmHWM)"
  fi
fi
for p in "${PROCS[@]}"; do
  printf '%s\t%s\t%s\n' "$p" "$(kb "$(pid_of "$p")" VmRSS)" "$(kb "$(pid_of "$p")" VmHWM)" >>"$OUT/hwm.tsv"
done

# ---------- report ----------
# shellcheck source=scripts/bench_report.sh
source "$REPO_DIR/scripts/bench_report.sh"
bench_report | tee "$OUT/results.md"
if [[ -s $OUT/otlp.log ]]; then
  read -r exports bytes < <(tail -1 "$OUT/otlp.log")
  log "traces: the OTLP sink took $exports exports, $((bytes / 1024)) KiB"
fi
if [[ -n ${BENCH_SHADOW_PERCENT:-} ]]; then
  copies=$(curl -sf "${CH_AUTH[@]}" "$CH" --data-binary "SELECT count() FROM $DB.replay_results FINAL WHERE replay_id = 'shadow-bench'" || echo "?")
  live=$(curl -sf "${CH_AUTH[@]}" "$CH" --data-binary "SELECT count() FROM $DB.usage FINAL WHERE model = '$MODEL'" || echo "?")
  log "shadow: $copies copies in replay_results for $live live $MODEL requests in usage"
fi
log "done; figures also in $OUT/results.md"
