#!/bin/bash
# ClickHouse users of docker-compose.yml (current ClickHouse: SQL users and GRANTs), run once
# by the image's entrypoint on an empty data volume (/docker-entrypoint-initdb.d), as the
# image's CLICKHOUSE_USER (sluice_migrator: every right, DDL; the migrations run as it).
# The same rights as scripts/services.sh gives 18.16 through users.xml (docs/security.md):
#   sluice_ingress   reads and writes the private database only (batch tables, bodies)
#   sluice_sink      inserts and reads the analyst and private databases
#   sluice_analyst   SELECT on the analyst database (its views and tables), nothing else
#   sluice_worker    SELECT on the analyst database (the redelivery check reads results, usage)
# Passwords come from this container's environment; they are stored as SHA-256.
set -euo pipefail

db=${SLUICE_DATABASE:-sluice}
private="${db}_private"   # sluice_schemas::tables::private_database
for v in CLICKHOUSE_INGRESS_PASSWORD CLICKHOUSE_SINK_PASSWORD CLICKHOUSE_ANALYST_PASSWORD CLICKHOUSE_WORKER_PASSWORD; do
  [[ -n ${!v:-} ]] || { echo "10-sluice-users.sh: $v is not set" >&2; exit 1; }
done
# Passwords go into SQL string literals: refuse quotes and backslashes rather than escape.
for v in "$CLICKHOUSE_INGRESS_PASSWORD" "$CLICKHOUSE_SINK_PASSWORD" "$CLICKHOUSE_ANALYST_PASSWORD" "$CLICKHOUSE_WORKER_PASSWORD"; do
  [[ $v != *[\'\\]* ]] || { echo "10-sluice-users.sh: a password contains ' or \\" >&2; exit 1; }
done

clickhouse client --user "$CLICKHOUSE_USER" --password "$CLICKHOUSE_PASSWORD" --multiquery <<SQL
CREATE DATABASE IF NOT EXISTS $db;
CREATE DATABASE IF NOT EXISTS $private;
CREATE USER IF NOT EXISTS sluice_ingress IDENTIFIED WITH sha256_password BY '$CLICKHOUSE_INGRESS_PASSWORD';
CREATE USER IF NOT EXISTS sluice_sink IDENTIFIED WITH sha256_password BY '$CLICKHOUSE_SINK_PASSWORD';
CREATE USER IF NOT EXISTS sluice_analyst IDENTIFIED WITH sha256_password BY '$CLICKHOUSE_ANALYST_PASSWORD';
CREATE USER IF NOT EXISTS sluice_worker IDENTIFIED WITH sha256_password BY '$CLICKHOUSE_WORKER_PASSWORD';
GRANT SELECT, INSERT, ALTER DELETE ON $private.* TO sluice_ingress;
GRANT SELECT, INSERT ON $db.* TO sluice_sink;
GRANT SELECT, INSERT ON $private.* TO sluice_sink;
GRANT SELECT ON $db.* TO sluice_analyst;
GRANT SELECT ON $db.results TO sluice_worker;
GRANT SELECT ON $db.usage TO sluice_worker;
SQL
