"""Sluice's ClickHouse SQL on *current* ClickHouse, in process (chdb-core).

The services on the test machines run ClickHouse 18.16; production runs a current release.
This runs every migration (twice: they must be idempotent), loads the shared fixtures and
checks every analyst view and query against the same expected files as the Rust integration
tests on 18.16 (analytics/tests/fixtures/expected/, computed by make_expected.py), and runs
every panel of the provisioned Grafana dashboards (docs/grafana/dashboards/json/) with the
plugin's macros expanded, as analytics/tests/grafana.rs does on 18.16.

Install (chdb-core declares pandas and pyarrow but does not need them for this):
    python3 -m venv /tmp/venv-chdb
    /tmp/venv-chdb/bin/pip install --no-deps -r tests/python/requirements.txt
    /tmp/venv-chdb/bin/python -m pytest tests/python -q
"""

import filecmp
import glob
import importlib.util
import json
import os
import re

import pytest
from chdb.session import Session

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANALYTICS = os.path.join(ROOT, "analytics")
MIGRATIONS = os.path.join(ANALYTICS, "migrations")
QUERIES = os.path.join(ANALYTICS, "queries")
FIXTURES = os.path.join(ANALYTICS, "tests", "fixtures")
EXPECTED = os.path.join(FIXTURES, "expected")
DB = "sluice_chdb_test"
PRIVATE = DB + "_private"  # sluice_schemas::tables::private_database
TODAY = "toDate('2025-03-04')"  # the date make_expected.py pins the analyst queries to
VIEWS = [
    "spend_by_team_day",
    "spend_by_team_model_day",
    "spend_by_key_day",
    "latency_by_model_hour",
    "outcomes_by_team_day",
    "spend_by_team_hour",
    "spend_by_key_hour",
    "spend_by_model_hour",
    "spend_by_model_day",
    "spend_by_provider_hour",
    "spend_by_provider_day",
    "latency_by_deployment_hour",
    "error_rates_by_team_model_hour",
    "audit_trail",
    "reconciliation_by_deployment_day",
    "cache_by_team_model_day",
    "replay_comparison",
    "replay_summary",
]


def parse_statements(sql):
    """The same rules as analytics/src/migrations.rs: `;` ending a line ends a statement,
    `--` lines are comments, `-- @if COND` makes the next statement conditional.
    Returns (condition or None, statement) pairs."""
    statements, current, condition = [], [], None
    for line in sql.splitlines():
        stripped = line.strip()
        if stripped.startswith("--"):
            rest = stripped[2:].strip()
            if rest.startswith("@if "):
                condition = rest[4:].split()
                assert condition[0] in ("ttl", "table", "column"), "unknown condition %r" % rest
            continue
        if stripped.endswith(";"):
            current.append(line.rstrip()[:-1])
            statement = "\n".join(current).strip()
            if statement:
                statements.append((condition, statement))
            current, condition = [], None
        else:
            current.append(line)
    statement = "\n".join(current).strip()
    if statement:
        statements.append((condition, statement))
    return statements


def split_statements(sql):
    return [statement for _, statement in parse_statements(sql)]


def render(sql, **values):
    for name, value in values.items():
        sql = sql.replace("{%s}" % name, value)
    return sql


def read(path):
    with open(path) as f:
        return f.read()


def migration_files():
    files = sorted(glob.glob(os.path.join(MIGRATIONS, "[0-9][0-9][0-9][0-9]_*.sql")))
    assert files, "no migrations found"
    return files


def query_names():
    return sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(QUERIES, "*.sql")))


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    s = Session(str(tmp_path_factory.mktemp("chdb")))
    # Without it chdb accepts a bare expression as a query, which a server would reject.
    s.query("SET implicit_select=0")
    yield s
    s.close()


def q(session, sql, fmt="TSV"):
    return str(session.query(sql, fmt))


ADDED_COLUMN = re.compile(r"ALTER\s+TABLE\s+(\w+)\.(\w+)\s+ADD\s+COLUMN\s+(\w+)\s", re.I)


def holds(session, condition):
    """analytics/src/migrations.rs `holds`: TTL from 19.6 on; tables and columns that exist."""
    if condition[0] == "ttl":
        major, minor = (int(p) for p in q(session, "SELECT version()").strip().split(".")[:2])
        return (major, minor) >= (19, 6)
    database, table = condition[1].split(".")
    if condition[0] == "table":
        sql = "SELECT count() FROM system.tables WHERE database = '%s' AND name = '%s'" % (database, table)
    else:
        sql = "SELECT count() FROM system.columns WHERE database = '%s' AND table = '%s' AND name = '%s'" % (
            database, table, condition[2])
    return q(session, sql).strip() != "0"


def migrate(session):
    for sql in [read(os.path.join(MIGRATIONS, "schema_migrations.sql"))] + [read(f) for f in migration_files()]:
        for condition, statement in parse_statements(render(sql, db=DB, private=PRIVATE)):
            if condition and not holds(session, condition):
                continue
            # As analytics/src/migrations.rs: an added column that exists is skipped (18.16
            # has no ADD COLUMN IF NOT EXISTS).
            added = ADDED_COLUMN.match(statement)
            if added and q(
                session,
                "SELECT count() FROM system.columns WHERE database = '%s' AND table = '%s' AND name = '%s'"
                % added.groups(),
            ).strip() != "0":
                continue
            q(session, statement)


# results.tsv's columns that go to the private result_bodies (the sink's ResultBodyRow);
# `body` goes only there.
BODY_COLUMNS = ["request_id", "team", "status", "http_status", "body", "error_kind", "model",
                "created_at_ms", "finished_at_ms"]


def columns(header, lines, keep):
    """TSV lines cut to the columns in `keep` (TSV escapes tabs, so a tab separates)."""
    index = [header.index(c) for c in keep]
    return "".join("\t".join(line.split("\t")[i] for i in index) + "\n" for line in lines)


def load_fixture(session, table):
    with open(os.path.join(FIXTURES, table + ".tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        data = f.read()
    lines = data.splitlines()
    if table == "results":
        keep = [c for c in header if c != "body"]
        q(session, "INSERT INTO %s.results (%s) FORMAT TSV\n%s" % (DB, ", ".join(keep), columns(header, lines, keep)))
        bodies = "".join(line + "\t2099-01-01 00:00:00\n" for line in columns(header, lines, BODY_COLUMNS).splitlines())
        q(session, "INSERT INTO %s.result_bodies (%s, expires_at) FORMAT TSV\n%s" % (PRIVATE, ", ".join(BODY_COLUMNS), bodies))
    else:
        q(session, "INSERT INTO %s.%s (%s) FORMAT TSV\n%s" % (DB, table, ", ".join(header), data))
    return data.count("\n")


@pytest.fixture(scope="module")
def loaded(session):
    migrate(session)
    migrate(session)  # idempotent: IF NOT EXISTS everywhere
    rows = {table: load_fixture(session, table) for table in ("usage", "results", "audit")}
    # The whole batch again, as a redelivery after a crash before the commit would.
    for table in rows:
        load_fixture(session, table)
    for table in ("replay_results", "replay_usage"):  # twice too: a redelivered batch
        load_fixture(session, table)
        load_fixture(session, table)
    return rows


def expected(name):
    path = os.path.join(EXPECTED, name + ".tsv")
    assert os.path.exists(path), "missing expected output %s (run make_expected.py)" % path
    return read(path).splitlines()


def test_every_view_and_query_has_expected_output():
    names = {os.path.basename(p)[:-4] for p in glob.glob(os.path.join(EXPECTED, "*.tsv"))}
    assert names == set(VIEWS) | set(query_names())


def test_expected_files_are_current(tmp_path):
    """expected/ is what make_expected.py computes from the fixtures now."""
    spec = importlib.util.spec_from_file_location("make_expected", os.path.join(FIXTURES, "make_expected.py"))
    oracle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oracle)
    oracle.main(str(tmp_path))
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(os.listdir(EXPECTED))
    _, mismatch, errors = filecmp.cmpfiles(str(tmp_path), EXPECTED, names, shallow=False)
    assert not mismatch and not errors, "run analytics/tests/fixtures/make_expected.py"


def test_migrations_create_tables_and_views(session, loaded):
    tables = set(q(session, "SELECT name FROM system.tables WHERE database = '%s'" % DB).split())
    assert {"results", "usage", "audit", "schema_migrations"} | set(VIEWS) <= tables
    # Every view the migrations create is one this test checks.
    created = set(re.findall(r"VIEW IF NOT EXISTS \{db\}\.(\w+)", "".join(read(f) for f in migration_files())))
    assert created == set(VIEWS)


def test_private_database_and_retention(session, loaded):
    """0006 on current ClickHouse: bodies and batch tables in the private database, results
    without a body, and TTL on every expiring table (18.16 skips it: analytics/tests/retention.rs)."""
    assert q(session, "SELECT count() FROM system.columns WHERE database = '%s' AND table = 'results' AND name = 'body'" % DB).strip() == "0"
    private = set(q(session, "SELECT name FROM system.tables WHERE database = '%s'" % PRIVATE).split())
    assert private == {"result_bodies", "accepted_requests", "batch_files", "batch_file_lines",
                       "batches", "batch_cancels", "batch_lines", "conversation_inputs"}
    assert not {"batch_files", "batch_file_lines", "batches", "batch_cancels", "batch_lines"} & set(
        q(session, "SELECT name FROM system.tables WHERE database = '%s'" % DB).split())
    for table in ("result_bodies", "accepted_requests", "batch_files", "batch_file_lines",
                  "conversation_inputs"):
        create = q(session, "SELECT create_table_query FROM system.tables WHERE database = '%s' AND name = '%s'" % (PRIVATE, table))
        assert "TTL expires_at" in create, create


def test_duplicates_collapse_with_final(session, loaded):
    # Each fixture has a duplicate record inside it and was loaded twice.
    assert loaded == {"usage": 13, "results": 14, "audit": 30}
    for table, unique in (("usage", 12), ("results", 12), ("audit", 29)):
        stored = int(q(session, "SELECT count() FROM %s.%s" % (DB, table)))
        # Current releases collapse duplicates within one INSERT already (optimize_on_insert);
        # 18.16 does not. Either way FINAL gives one row per record.
        assert stored >= 2 * unique, table
        assert q(session, "SELECT count() FROM %s.%s FINAL" % (DB, table)).strip() == str(unique)
    # The re-processed request keeps its latest result (version = finished_at_ms).
    assert q(session, "SELECT worker, latency_ms FROM %s.results FINAL WHERE request_id = 'r05'" % DB) == "worker-2\t2100\n"


def test_derived_columns_and_escapes(session, loaded):
    row = q(
        session,
        "SELECT created_at, day FROM %s.usage FINAL WHERE request_id = 'r03'" % DB,
    )
    assert row == "2025-03-03 23:59:59\t2025-03-03\n"
    body = q(session, "SELECT body FROM %s.result_bodies FINAL WHERE request_id = 'r03'" % PRIVATE, "RawBLOB")
    assert '"content":"two\\nlines"' in body  # TSV \\n -> JSON's own \n escape, kept as text


@pytest.mark.parametrize("view", VIEWS)
def test_view_matches_expected(session, loaded, view):
    want = expected(view)
    got = q(session, "SELECT * FROM %s.%s" % (DB, view), "TSVWithNames").splitlines()
    assert got[0] == want[0], "columns of %s" % view
    assert sorted(got[1:]) == want[1:]


@pytest.mark.parametrize("name", query_names())
def test_query_matches_expected(session, loaded, name):
    sql = render(read(os.path.join(QUERIES, name + ".sql")), db=DB, today=TODAY)
    got = q(session, sql, "TSVWithNames").splitlines()
    assert got == expected(name)


GRAFANA = os.path.join(ROOT, "docs", "grafana", "dashboards", "json")
GRAFANA_FROM, GRAFANA_TO = 1735689600, 1741132800  # the fixtures' span, as analytics/tests/grafana.rs


def grafana_panels():
    panels = []
    for path in sorted(glob.glob(os.path.join(GRAFANA, "*.json"))):
        with open(path) as f:
            dashboard = json.load(f)
        for panel in dashboard["panels"]:
            # Rows only group panels; Prometheus panels are checked in tests/tests/ops/dashboard.rs.
            if (panel.get("datasource") or {}).get("type") != "grafana-clickhouse-datasource":
                continue
            for target in panel["targets"]:
                panels.append((panel["title"], target["rawSql"]))
    assert panels, "no dashboards in %s" % GRAFANA
    return panels


def expand_grafana(sql):
    """The grafana-clickhouse-datasource macros, expanded as the plugin does."""
    sql = sql.replace("${db}", DB)
    sql = sql.replace("$__fromTime", "toDateTime(%d)" % GRAFANA_FROM).replace("$__toTime", "toDateTime(%d)" % GRAFANA_TO)
    sql = re.sub(
        r"\$__timeFilter\(\s*(\w+)\s*\)",
        lambda m: "%s >= toDateTime(%d) AND %s <= toDateTime(%d)" % (m.group(1), GRAFANA_FROM, m.group(1), GRAFANA_TO),
        sql,
    )
    assert "$" not in sql, sql
    return sql


@pytest.fixture(scope="module")
def with_budget_alert(session, loaded):
    q(
        session,
        "INSERT INTO %s.budget_alerts (alert_id, scope, subject, period, period_start_ms, threshold_pct, "
        "limit_nanos, spent_nanos, occurred_at_ms, instance) VALUES ('team:acme:1740787200000:80', 'team', "
        "'acme', 'month', 1740787200000, 80, 1000000000, 800000000, 1741082400000, 'ingress-0')" % DB,
    )


@pytest.mark.parametrize("title,sql", grafana_panels())
def test_grafana_panel_runs(session, with_budget_alert, title, sql):
    rows = q(session, expand_grafana(sql))
    assert rows.strip(), "panel %s finds the fixture rows" % title
