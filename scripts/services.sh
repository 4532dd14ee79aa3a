#!/usr/bin/env bash
# Local services for Sluice's integration tests: Apache Kafka (KRaft, single node, jars from
# Maven Central), ClickHouse (Debian's clickhouse-server 18.16) and Redis (Debian's
# redis-server 7.0: the ingress's idempotency keys), all as plain processes bound to
# 127.0.0.1. Debian bookworm. Idempotent. See docs/services.md for measurements.
#
#   services.sh install              apt packages (if missing) + Kafka jars + probe class
#   services.sh start                start all three (installing first if needed), wait until
#                                    ready, then print the env (same as `env`) on stdout
#   services.sh stop                 stop only the processes this script started (pid files)
#   services.sh restart | status | env
#   services.sh clean                stop, then delete Kafka, ClickHouse and Redis data (jars kept)
#   services.sh start-kafka | stop-kafka            just the broker
#   services.sh start-clickhouse | stop-clickhouse  just ClickHouse
#   services.sh start-redis | stop-redis            just Redis
#   services.sh topics               list the broker's topics (Java admin client)
#   services.sh create-topic NAME [PARTITIONS]   create a topic (replication factor 1)
#
# Environment knobs [defaults]:
#   SLUICE_STATE           pid files, data, logs      [<repo>/.state]
#   SLUICE_CACHE           Kafka jars (kept by clean)  [$HOME/.cache/sluice]
#   KAFKA_PORT [19092]  KAFKA_CONTROLLER_PORT [19093]  KAFKA_HEAP [512m]  KAFKA_VERSION [4.3.1]
#   KAFKA_GC_OPTS          the broker's collector flags [G1 as kafka-server-start.sh sets it]
#   CH_HTTP_PORT [18123]  CH_TCP_PORT [19000]
#   CH_DATABASES [sluice sluice_acl sluice_acl_e2e]  analyst databases the per-process users may use (each
#                          with its `<db>_private`); see "ClickHouse users" below
#   REDIS_PORT [16379]
#   KAFKA_START_TIMEOUT [90]  CH_START_TIMEOUT [30]  REDIS_START_TIMEOUT [10]   seconds
#   KAFKA_EXTRA_PROPERTIES   lines appended to server.properties (a new or restarted broker)
#
# A second, independent broker (e.g. for a restart test) only needs another state dir and ports:
#   SLUICE_STATE=/tmp/x KAFKA_PORT=29092 KAFKA_CONTROLLER_PORT=29093 services.sh start-kafka
# Its data dir survives stop-kafka/start-kafka (storage is formatted only once).
#
# Logs go to stderr; stdout carries only `env`/`status`/`topics` output, so
#   eval "$(scripts/services.sh start)"   works.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"

SLUICE_STATE="${SLUICE_STATE:-$REPO_DIR/.state}"
SLUICE_CACHE="${SLUICE_CACHE:-${HOME:-/root}/.cache/sluice}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
# The broker's collector flags: Kafka's own kafka-server-start.sh choice (G1, short pauses).
# scripts/bench_kafka_jvm.sh measures others (docs/benchmarks.md, "broker JVM").
KAFKA_GC_OPTS="${KAFKA_GC_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent}"
KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
CH_HTTP_PORT="${CH_HTTP_PORT:-18123}"
CH_TCP_PORT="${CH_TCP_PORT:-19000}"
CH_START_TIMEOUT="${CH_START_TIMEOUT:-30}"
CH_DATABASES="${CH_DATABASES:-sluice sluice_acl sluice_acl_e2e}"
CH_SERVER="${CH_SERVER:-/usr/sbin/clickhouse-server}"   # Debian clickhouse-server 18.16.1
REDIS_PORT="${REDIS_PORT:-16379}"
REDIS_START_TIMEOUT="${REDIS_START_TIMEOUT:-10}"

KAFKA_SRC="$SCRIPT_DIR/kafka"                           # pom.xml, log4j2 configs, KafkaProbe.java
KAFKA_HOME="$SLUICE_CACHE/kafka-$KAFKA_VERSION"         # shared by all state dirs on this machine
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_PROBE_DIR="$KAFKA_HOME/probe"
KAFKA_DIR="$SLUICE_STATE/kafka"                         # per state dir: config, data, logs, pid
CH_DIR="$SLUICE_STATE/clickhouse"
REDIS_DIR="$SLUICE_STATE/redis"                         # data (AOF), log, pid

LOG_TAG=services
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"  # log, die, alive
as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
now_ms() { date +%s%3N; }

# ---------- helpers ----------
pid_alive() { # pidfile [expected-substring-of-cmdline]
  local f=$1 want=${2:-} pid
  [[ -s $f ]] || return 1
  pid=$(cat "$f")
  [[ -d /proc/$pid ]] || return 1
  # The cmdline check guards against a stale pid file whose pid was reused by something else.
  [[ -z $want ]] || tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$want"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
stop_pidfile() { # name pidfile timeout_s
  local name=$1 f=$2 t=${3:-30} pid i
  if ! pid_alive "$f"; then rm -f "$f"; log "$name: not running"; return 0; fi
  pid=$(cat "$f")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < t * 10; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
  if [[ -d /proc/$pid ]]; then log "$name: still alive after ${t}s, SIGKILL $pid"; kill -KILL "$pid" 2>/dev/null || true; fi
  for ((i = 0; i < 50; i++)); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
  rm -f "$f"
  log "$name: stopped (pid $pid)"
}
# Start "$@" detached in its own session (so it outlives the calling shell and its process
# group), stdout/stderr to $2. The child writes its own pid before exec'ing, so the pid file
# holds the server's pid even where setsid has to fork.
spawn() { # pidfile logfile cmd...
  local pidf=$1 logf=$2 i; shift 2
  rm -f "$pidf"
  # shellcheck disable=SC2016  # expanded by the inner bash, on purpose
  setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidf" "$@" </dev/null >"$logf" 2>&1 &
  for ((i = 0; i < 50; i++)); do [[ -s $pidf ]] && return 0; sleep 0.1; done
  die "could not start $1"
}

# ---------- install ----------
install_apt() {
  local pkgs=()
  command -v curl >/dev/null || pkgs+=(curl ca-certificates)
  command -v setsid >/dev/null && command -v flock >/dev/null || pkgs+=(util-linux)
  [[ -x $CH_SERVER ]] || pkgs+=(clickhouse-server clickhouse-client)
  command -v javac >/dev/null || pkgs+=(openjdk-17-jdk-headless)   # javac: the probe is compiled
  command -v mvn >/dev/null || pkgs+=(maven)
  command -v redis-server >/dev/null || pkgs+=(redis-server)       # pulls redis-tools (redis-cli)
  ((${#pkgs[@]})) || return 0
  log "apt-get install ${pkgs[*]}"
  # No systemd here: the packages' postinst cannot start their system services, which we do not
  # use anyway (policy-rc.d denies it; harmless messages).
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

# Kafka jars: Maven resolves kafka_2.13 + log4j2 into $KAFKA_LIBS once per machine. The marker
# records the pom's hash, so editing scripts/kafka/pom.xml refetches; the local Maven repository
# (~/.m2) makes a refetch fast.
install_kafka_libs() {
  local want marker="$KAFKA_HOME/libs.ok" tmp t0
  want="$(sha256sum "$KAFKA_SRC/pom.xml" | cut -c1-16) kafka=$KAFKA_VERSION"
  [[ -s $marker && $(cat "$marker") == "$want" && -d $KAFKA_LIBS ]] && return 0
  mkdir -p "$KAFKA_HOME"
  # Two scripts (e.g. a test starting a second broker) may get here at once: serialise.
  exec 9>"$KAFKA_HOME/.lock"; flock 9
  if [[ -s $marker && $(cat "$marker") == "$want" && -d $KAFKA_LIBS ]]; then exec 9>&-; return 0; fi
  command -v mvn >/dev/null || install_apt
  log "kafka: fetching Kafka $KAFKA_VERSION jars with Maven -> $KAFKA_LIBS"
  t0=$(now_ms)
  tmp="$KAFKA_HOME/libs.tmp.$$"; rm -rf "$tmp"
  # Fetch into a temp dir and rename, so an interrupted run never leaves half a classpath.
  if ! mvn -q -B -f "$KAFKA_SRC/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >"$KAFKA_HOME/mvn.log" 2>&1; then
    tail -n 30 "$KAFKA_HOME/mvn.log" >&2; rm -rf "$tmp"; exec 9>&-
    die "maven could not fetch the Kafka jars (log: $KAFKA_HOME/mvn.log)"
  fi
  rm -rf "$KAFKA_LIBS" "$KAFKA_PROBE_DIR"; mv "$tmp" "$KAFKA_LIBS"
  echo "$want" >"$marker"
  log "kafka: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars, $(du -sh "$KAFKA_LIBS" | cut -f1), in $(( $(now_ms) - t0 ))ms"
  exec 9>&-
}

# The readiness probe, compiled once against the fetched kafka-clients jar.
install_kafka_probe() {
  local want marker="$KAFKA_PROBE_DIR/probe.ok" tmp
  want=$(sha256sum "$KAFKA_SRC/KafkaProbe.java" | cut -c1-16)
  [[ -s $marker && $(cat "$marker") == "$want" ]] && return 0
  command -v javac >/dev/null || install_apt
  exec 9>"$KAFKA_HOME/.lock"; flock 9   # same lock as the jar fetch: one writer at a time
  if [[ -s $marker && $(cat "$marker") == "$want" ]]; then exec 9>&-; return 0; fi
  tmp="$KAFKA_HOME/probe.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
  javac -nowarn -cp "$KAFKA_LIBS/*" -d "$tmp" "$KAFKA_SRC/KafkaProbe.java" \
    || { rm -rf "$tmp"; exec 9>&-; die "javac KafkaProbe failed"; }
  echo "$want" >"$tmp/probe.ok"
  rm -rf "$KAFKA_PROBE_DIR"; mv "$tmp" "$KAFKA_PROBE_DIR"
  exec 9>&-
}

cmd_install() { install_apt; install_kafka_libs; install_kafka_probe; }

# ---------- Kafka (KRaft combined mode) ----------
kafka_java() { # run a short-lived Kafka tool class quietly
  java -Xmx256m -XX:TieredStopAtLevel=1 -Xshare:auto \
    -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2-cli.properties" \
    -cp "$KAFKA_LIBS/*:$KAFKA_PROBE_DIR" "$@"
}
kafka_probe() { kafka_java KafkaProbe "$@"; }

write_kafka_config() {
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by scripts/services.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DIR/data

# Single node: every internal topic with one replica.
offsets.topic.replication.factor=1
# Fewer __consumer_offsets partitions than the default 50: the first group join is faster.
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1

# Tests: no waiting for more group members; topics only as our ingress creates them.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
num.partitions=6
# Largest message, as the ingress creates its topics ([kafka] max_message_bytes, 8 MiB: a
# 4 MiB request body with its envelope and audit copy). Topics made by other tools get it too.
message.max.bytes=8388608

# After a SIGKILL the restarted broker waits until the old incarnation's session expires
# (default 9 s); a shorter session makes crash-restart tests quicker (~12 s -> ~6 s).
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000

# Small machine, test data.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.segment.bytes=16777216
log.retention.hours=24
log.retention.check.interval.ms=60000
EOF
  # Extra broker settings, e.g. scripts/chaos.sh's consumer-group session timeouts.
  if [[ -n ${KAFKA_EXTRA_PROPERTIES:-} ]]; then
    printf '\n# KAFKA_EXTRA_PROPERTIES\n%s\n' "$KAFKA_EXTRA_PROPERTIES" >>"$KAFKA_DIR/server.properties"
  fi
}

# Ready = the broker logged "Kafka Server started", its port accepts, and a metadata round
# trip (describeCluster + listTopics through KafkaProbe) succeeds.
wait_kafka_ready() { # t0_ms spawned(0|1)
  local t0=$1 spawned=$2 pidf="$KAFKA_DIR/kafka.pid" deadline probe_out pid
  pid=$(cat "$pidf")
  deadline=$(( $(date +%s) + KAFKA_START_TIMEOUT ))
  while (( $(date +%s) < deadline )); do
    if ! pid_alive "$pidf"; then
      tail -n 30 "$KAFKA_DIR/logs/stdout.log" "$KAFKA_DIR/logs/server.log" >&2 2>/dev/null || true
      die "kafka: exited during startup (logs in $KAFKA_DIR/logs)"
    fi
    if grep -q "Kafka Server started" "$KAFKA_DIR/logs/server.log" 2>/dev/null && port_open "$KAFKA_PORT" \
        && probe_out=$(kafka_probe ready "127.0.0.1:$KAFKA_PORT" 5000 2>/dev/null); then
      log "kafka: ready on 127.0.0.1:$KAFKA_PORT (pid $pid) in $(( $(now_ms) - t0 ))ms: $probe_out"
      return 0
    fi
    sleep 0.2
  done
  log "kafka: last lines of $KAFKA_DIR/logs/server.log:"
  tail -n 30 "$KAFKA_DIR/logs/server.log" >&2 2>/dev/null || true
  # Do not leave a half-started broker behind that a later `start` would take for a good one.
  (( spawned )) && stop_kafka
  die "kafka: not ready on 127.0.0.1:$KAFKA_PORT after ${KAFKA_START_TIMEOUT}s (logs in $KAFKA_DIR/logs)"
}

start_kafka() {
  local pidf="$KAFKA_DIR/kafka.pid" t0 p
  if pid_alive "$pidf" kafka.Kafka; then
    # Someone else may have started it a moment ago: still make sure it answers.
    log "kafka: already running (pid $(cat "$pidf"))"
    install_kafka_probe
    wait_kafka_ready "$(now_ms)" 0
    return 0
  fi
  install_kafka_libs; install_kafka_probe
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    port_open "$p" && die "kafka: port $p on 127.0.0.1 is already in use by another process"
  done
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  write_kafka_config
  # Format once: meta.properties marks a formatted log dir; reformatting would fail (and the
  # data must survive a restart). The cluster id is kept next to the data.
  if [[ ! -s $KAFKA_DIR/data/meta.properties ]]; then
    [[ -s $KAFKA_DIR/cluster.id ]] || kafka_java kafka.tools.StorageTool random-uuid >"$KAFKA_DIR/cluster.id"
    # Static quorum (controller.quorum.voters), so no --standalone / --initial-controllers.
    kafka_java kafka.tools.StorageTool format -t "$(cat "$KAFKA_DIR/cluster.id")" \
      -c "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/logs/format.log" 2>&1 \
      || { cat "$KAFKA_DIR/logs/format.log" >&2; die "kafka: storage format failed"; }
    log "kafka: formatted $KAFKA_DIR/data (cluster $(cat "$KAFKA_DIR/cluster.id"))"
  fi
  # Fresh log each start, so readiness only sees this run's "started" line.
  if [[ -f $KAFKA_DIR/logs/server.log ]]; then mv -f "$KAFKA_DIR/logs/server.log" "$KAFKA_DIR/logs/server.log.prev"; fi
  t0=$(now_ms)
  # JVM flags as in Kafka's own kafka-server-start.sh (G1, short pauses, headless) unless
  # KAFKA_GC_OPTS says otherwise (split on spaces on purpose).
  # shellcheck disable=SC2086
  spawn "$pidf" "$KAFKA_DIR/logs/stdout.log" \
    java "-Xmx$KAFKA_HEAP" "-Xms$KAFKA_HEAP" $KAFKA_GC_OPTS -Djava.awt.headless=true \
      -Dkafka.logs.dir="$KAFKA_DIR/logs" -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties" \
      -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties"
  wait_kafka_ready "$t0" 1
}
# Controlled shutdown of a combined node takes a few seconds; SIGKILL only after 60s.
stop_kafka() { stop_pidfile kafka "$KAFKA_DIR/kafka.pid" 60; }

# ---------- ClickHouse users (docs/security.md) ----------
# Each Sluice process has its own user and password; nothing is open without one.
# 18.16 has no GRANTs: users.xml gives each user a profile (readonly, allow_ddl) and the
# databases it may touch (allow_databases, checked for every table a query reads or writes,
# the tables under a view included). Per-table rights do not exist, so what only the ingress
# may read or write lives in `<db>_private` (analytics/migrations/0006_private_and_retention.sql).
#   sluice_migrator  DDL, every database: migrations, the retention job, and tests (which
#                    create a database per test); also exported as SLUICE_CLICKHOUSE_USER
#   sluice_ingress   `<db>_private` only (batch tables, result bodies); allow_ddl=0
#   sluice_sink      `<db>` and `<db>_private`, inserts; allow_ddl=0
#   sluice_analyst   `<db>` only, readonly=1 (no writes, no settings, no table functions)
#   sluice_worker    `<db>` only, readonly=1: the workers' redelivery check reads results/usage
#   default          a random password nobody is given, readonly, no database
# allow_ddl=0 is a profile default that 18.16 lets a writer override per query
# (`?allow_ddl=1`): what holds a writer is its databases (docs/security.md).
# Passwords: random per state dir, in $CH_DIR/credentials.env (mode 600); users.xml holds
# only their SHA-256.
CH_ROLES=(migrator ingress sink analyst worker default)
ch_credentials() { # create once; print the file's path
  local f="$CH_DIR/credentials.env" role
  mkdir -p "$CH_DIR"
  # Roles added since the file was made get theirs appended.
  ( umask 077
    for role in "${CH_ROLES[@]}"; do
      grep -q "^CH_${role^^}_PASSWORD=" "$f" 2>/dev/null && continue
      # A letter first: a password of digits only would parse as a number in TOML/env.
      printf 'CH_%s_PASSWORD=p%s\n' "${role^^}" "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" >>"$f"
    done )
  echo "$f"
}
ch_password() { # role
  local v
  v=$(grep "^CH_${1^^}_PASSWORD=" "$(ch_credentials)" | cut -d= -f2-)
  [[ -n $v ]] || die "clickhouse: no password for $1 in $CH_DIR/credentials.env"
  echo "$v"
}
ch_user_xml() { # name role profile databases... ('*': all)
  local name=$1 role=$2 profile=$3 db hash; shift 3
  hash=$(printf '%s' "$(ch_password "$role")" | sha256sum | cut -d' ' -f1)
  printf '    <%s>\n      <password_sha256_hex>%s</password_sha256_hex>\n' "$name" "$hash"
  printf '      <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>\n'
  printf '      <profile>%s</profile>\n      <quota>default</quota>\n' "$profile"
  if [[ $1 != '*' ]]; then
    printf '      <allow_databases>\n'
    for db in "$@"; do printf '        <database>%s</database>\n' "$db"; done
    printf '      </allow_databases>\n'
  fi
  printf '    </%s>\n' "$name"
}
write_users_xml() {
  local dbs=() private=() db settings
  for db in $CH_DATABASES; do dbs+=("$db"); private+=("${db}_private"); done
  settings='<max_memory_usage>4000000000</max_memory_usage>
      <!-- 18.16: LowCardinality(String) DDL is refused without this -->
      <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>'
  {
    cat <<EOF
<?xml version="1.0"?>
<!-- Written by scripts/services.sh on every start; passwords in credentials.env. -->
<yandex>
  <profiles>
    <default>
      $settings
    </default>
    <sluice_writer>
      $settings
      <allow_ddl>0</allow_ddl>
    </sluice_writer>
    <sluice_readonly>
      <max_memory_usage>4000000000</max_memory_usage>
      <readonly>1</readonly>
    </sluice_readonly>
  </profiles>
  <users>
EOF
    ch_user_xml sluice_migrator migrator default '*'
    ch_user_xml sluice_ingress ingress sluice_writer "${private[@]}"
    ch_user_xml sluice_sink sink sluice_writer "${dbs[@]}" "${private[@]}"
    ch_user_xml sluice_analyst analyst sluice_readonly "${dbs[@]}"
    ch_user_xml sluice_worker worker sluice_readonly "${dbs[@]}"
    ch_user_xml default default sluice_readonly no_database
    cat <<'EOF'
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
EOF
  } >"$CH_DIR/users.xml.tmp"
  chmod 600 "$CH_DIR/users.xml.tmp"
  mv "$CH_DIR/users.xml.tmp" "$CH_DIR/users.xml"
}

# ---------- ClickHouse 18.16 (recipe from the shared reference script) ----------
wait_clickhouse_ready() { # t0_ms spawned(0|1)
  local t0=$1 spawned=$2 d=$CH_DIR pidf="$CH_DIR/server.pid" i
  for ((i = 0; i < CH_START_TIMEOUT * 10; i++)); do
    if curl -sf "http://127.0.0.1:$CH_HTTP_PORT/ping" >/dev/null 2>&1; then
      log "clickhouse: ready on http://127.0.0.1:$CH_HTTP_PORT (tcp $CH_TCP_PORT, pid $(cat "$pidf")) in $(( $(now_ms) - t0 ))ms, version $(ch_curl_migrator "http://127.0.0.1:$CH_HTTP_PORT/?query=SELECT%20version()")"
      return 0
    fi
    pid_alive "$pidf" || { tail -n 20 "$d/log/stdout.log" "$d/log/server.err.log" >&2 || true; die "clickhouse: exited during startup"; }
    sleep 0.1
  done
  tail -n 20 "$d/log/server.err.log" >&2 2>/dev/null || true
  (( spawned )) && stop_clickhouse
  die "clickhouse: not ready on 127.0.0.1:$CH_HTTP_PORT after ${CH_START_TIMEOUT}s (logs in $d/log)"
}

start_clickhouse() {
  local d=$CH_DIR pidf="$CH_DIR/server.pid" t0 i
  if pid_alive "$pidf" clickhouse-server; then
    log "clickhouse: already running (pid $(cat "$pidf"))"
    wait_clickhouse_ready "$(now_ms)" 0
    return 0
  fi
  [[ -x $CH_SERVER ]] || install_apt
  for i in "$CH_HTTP_PORT" "$CH_TCP_PORT"; do
    port_open "$i" && die "clickhouse: port $i on 127.0.0.1 is already in use by another process"
  done
  mkdir -p "$d"/{data,tmp,log,user_files,format_schemas}
  cat >"$d/config.xml" <<EOF
<?xml version="1.0"?>
<!-- Written by scripts/services.sh on every start. -->
<yandex>
  <logger><level>warning</level><log>$d/log/server.log</log><errorlog>$d/log/server.err.log</errorlog><size>100M</size><count>2</count></logger>
  <listen_host>127.0.0.1</listen_host>
  <http_port>$CH_HTTP_PORT</http_port>
  <tcp_port>$CH_TCP_PORT</tcp_port>
  <max_connections>1024</max_connections>
  <keep_alive_timeout>3</keep_alive_timeout>
  <max_concurrent_queries>100</max_concurrent_queries>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <mark_cache_size>268435456</mark_cache_size>
  <path>$d/data/</path>
  <tmp_path>$d/tmp/</tmp_path>
  <user_files_path>$d/user_files/</user_files_path>
  <format_schema_path>$d/format_schemas/</format_schema_path>
  <users_config>users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
</yandex>
EOF
  write_users_xml
  t0=$(now_ms)
  # Run from its dir: users.xml is resolved relative to config.xml, tmp files stay here.
  (cd "$d" && spawn "$pidf" "$d/log/stdout.log" "$CH_SERVER" --config-file="$d/config.xml")
  wait_clickhouse_ready "$t0" 1
}
stop_clickhouse() { stop_pidfile clickhouse "$CH_DIR/server.pid" 30; }
# curl as the migrator when this state dir has users (an older server may have none).
ch_curl_migrator() {
  if [[ -s $CH_DIR/credentials.env ]]; then
    curl -sf -H 'X-ClickHouse-User: sluice_migrator' -H "X-ClickHouse-Key: $(ch_password migrator)" "$@"
  else curl -sf "$@"; fi
}

# ---------- Redis 7.0 (the ingress's idempotency keys) ----------
redis_cli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
wait_redis_ready() { # t0_ms spawned(0|1)
  local t0=$1 spawned=$2 pidf="$REDIS_DIR/redis.pid" i
  for ((i = 0; i < REDIS_START_TIMEOUT * 10; i++)); do
    if [[ $(redis_cli ping 2>/dev/null) == PONG ]]; then
      log "redis: ready on 127.0.0.1:$REDIS_PORT (pid $(cat "$pidf")) in $(( $(now_ms) - t0 ))ms, version $(redis_cli info server 2>/dev/null | tr -d '\r' | sed -n 's/^redis_version://p')"
      return 0
    fi
    pid_alive "$pidf" || { tail -n 20 "$REDIS_DIR/redis.log" >&2 2>/dev/null || true; die "redis: exited during startup"; }
    sleep 0.1
  done
  tail -n 20 "$REDIS_DIR/redis.log" >&2 2>/dev/null || true
  (( spawned )) && stop_redis
  die "redis: not ready on 127.0.0.1:$REDIS_PORT after ${REDIS_START_TIMEOUT}s (log: $REDIS_DIR/redis.log)"
}

start_redis() {
  local d=$REDIS_DIR pidf="$REDIS_DIR/redis.pid" t0
  if pid_alive "$pidf" redis-server; then
    log "redis: already running (pid $(cat "$pidf"))"
    wait_redis_ready "$(now_ms)" 0
    return 0
  fi
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || install_apt
  port_open "$REDIS_PORT" && die "redis: port $REDIS_PORT on 127.0.0.1 is already in use by another process"
  mkdir -p "$d/data"
  t0=$(now_ms)
  # All settings on the command line (no config file). AOF only, fsync once a second, no RDB
  # snapshots; loopback only; logs to stdout, which spawn sends to redis.log.
  spawn "$pidf" "$d/redis.log" \
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes --daemonize no \
      --dir "$d/data" --appendonly yes --appendfsync everysec --save "" \
      --logfile ""
  wait_redis_ready "$t0" 1
}
# SIGTERM: Redis fsyncs the AOF and exits.
stop_redis() { stop_pidfile redis "$REDIS_DIR/redis.pid" 30; }

# ---------- commands ----------
# SLUICE_CLICKHOUSE_USER/PASSWORD: the migrator, for tests and tools in this shell (tests
# create databases). Each process's own user: SLUICE_CH_<ROLE>_USER/PASSWORD, which
# scripts/run.sh maps onto each process's SLUICE_CLICKHOUSE_*. Only once this state dir's
# ClickHouse was started with users (credentials.env exists).
cmd_env() {
  cat <<EOF
export SLUICE_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
export SLUICE_CLICKHOUSE_URL=http://127.0.0.1:$CH_HTTP_PORT
export SLUICE_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
EOF
  [[ -s $CH_DIR/credentials.env ]] || return 0
  local role
  echo "export SLUICE_CLICKHOUSE_USER=sluice_migrator SLUICE_CLICKHOUSE_PASSWORD=$(ch_password migrator)"
  for role in migrator ingress sink analyst worker; do
    echo "export SLUICE_CH_${role^^}_USER=sluice_$role SLUICE_CH_${role^^}_PASSWORD=$(ch_password "$role")"
  done
}
cmd_start() {
  # ClickHouse and Redis first: they are ready in well under a second, Kafka takes several.
  start_clickhouse
  start_redis
  start_kafka
  cmd_env
}
cmd_stop() { stop_kafka; stop_redis; stop_clickhouse; }
rss_mb() { awk '/VmRSS/ {printf "%d MB", $2/1024}' "/proc/$1/status" 2>/dev/null; }
cmd_status() { # exit 1 if anything is stopped
  local rc=0 pid
  if pid_alive "$KAFKA_DIR/kafka.pid" kafka.Kafka; then
    pid=$(cat "$KAFKA_DIR/kafka.pid")
    echo "kafka      running pid $pid 127.0.0.1:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT) rss $(rss_mb "$pid") data $KAFKA_DIR/data"
  else echo "kafka      stopped ($KAFKA_DIR)"; rc=1; fi
  if pid_alive "$CH_DIR/server.pid" clickhouse-server; then
    pid=$(cat "$CH_DIR/server.pid")
    echo "clickhouse running pid $pid http 127.0.0.1:$CH_HTTP_PORT tcp $CH_TCP_PORT rss $(rss_mb "$pid") data $CH_DIR/data"
  else echo "clickhouse stopped ($CH_DIR)"; rc=1; fi
  if pid_alive "$REDIS_DIR/redis.pid" redis-server; then
    pid=$(cat "$REDIS_DIR/redis.pid")
    echo "redis      running pid $pid 127.0.0.1:$REDIS_PORT rss $(rss_mb "$pid") data $REDIS_DIR/data"
  else echo "redis      stopped ($REDIS_DIR)"; rc=1; fi
  return $rc
}
cmd_clean() {
  cmd_stop
  rm -rf "$KAFKA_DIR" "$CH_DIR" "$REDIS_DIR"
  log "removed $KAFKA_DIR, $CH_DIR and $REDIS_DIR (Kafka jars kept in $KAFKA_HOME)"
}
cmd_topics() {
  install_kafka_libs; install_kafka_probe
  kafka_probe topics "127.0.0.1:$KAFKA_PORT"
}
cmd_create_topic() { # name [partitions]
  [[ -n ${1:-} ]] || die "usage: $0 create-topic NAME [PARTITIONS]"
  install_kafka_libs; install_kafka_probe
  kafka_probe create "127.0.0.1:$KAFKA_PORT" "$1" "${2:-6}"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop; cmd_start ;;
  status) cmd_status ;;
  env) cmd_env ;;
  clean) cmd_clean ;;
  start-kafka) start_kafka ;;
  stop-kafka) stop_kafka ;;
  start-clickhouse) start_clickhouse ;;
  stop-clickhouse) stop_clickhouse ;;
  start-redis) start_redis ;;
  stop-redis) stop_redis ;;
  topics) cmd_topics ;;
  create-topic) shift; cmd_create_topic "$@" ;;
  *) echo "usage: $0 {install|start|stop|restart|status|env|clean|start-kafka|stop-kafka|start-clickhouse|stop-clickhouse|start-redis|stop-redis|topics|create-topic}" >&2; exit 2 ;;
esac
