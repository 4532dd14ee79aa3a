#!/usr/bin/env bash
# The whole test run: local Kafka + ClickHouse (scripts/services.sh), `cargo test --workspace`,
# then the Python tests if tests/python exists. Used by CI (.ci/run) and by hand.
#
# Services that were already running before this script are left running; the ones it
# started are stopped on exit (KEEP_SERVICES=1 keeps them). Exit status: non-zero if any step
# fails. Extra arguments go to `cargo test` (e.g. scripts/test.sh -- --nocapture).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
# Through bash, so a checkout without exec bits still works.
services() { bash "$REPO_DIR/scripts/services.sh" "$@"; }
SLUICE_STATE="${SLUICE_STATE:-$REPO_DIR/.state}"
export SLUICE_STATE
KEEP_SERVICES="${KEEP_SERVICES:-0}"

T0=$SECONDS
step() { printf '\n==> %s  (+%ss)\n' "$*" "$((SECONDS - T0))" >&2; }

# Remember what runs now, so the exit trap stops only what this run starts.
status_before=$(services status 2>/dev/null || true)   # exits 1 when something is stopped
running() { grep -q "^$1 *running" <<<"$status_before"; }
stop_list=()
running kafka || stop_list+=(stop-kafka)
running clickhouse || stop_list+=(stop-clickhouse)
running redis || stop_list+=(stop-redis)

on_exit() {
  local rc=$?
  if [[ $KEEP_SERVICES != 1 ]] && ((${#stop_list[@]})); then
    step "stopping the services this run started"
    for s in "${stop_list[@]}"; do services "$s" || true; done
  fi
  if ((rc == 0)); then step "all tests passed"; else step "FAILED (exit $rc)"; fi
  exit "$rc"
}
trap on_exit EXIT

step "services: Kafka + ClickHouse + Redis on 127.0.0.1"
services start >/dev/null
eval "$(services env)"
printf '    SLUICE_KAFKA_BOOTSTRAP=%s\n    SLUICE_CLICKHOUSE_URL=%s\n' "$SLUICE_KAFKA_BOOTSTRAP" "$SLUICE_CLICKHOUSE_URL" >&2

# The worker-crash test runs the real worker binary as a process it can kill -9.
step "cargo build --workspace --bins"
cargo build --workspace --bins

step "cargo test --workspace $*"
cargo test --workspace "$@"

# ---- Python tests (end-to-end / analyst queries) -------------------------------------------
# Runs only once tests/python exists. The venv is kept in the state dir and reinstalled only
# when requirements.txt changes.
if [[ -d tests/python ]]; then
  step "python tests: tests/python"
  VENV="$SLUICE_STATE/venv"
  REQ=tests/python/requirements.txt
  [[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
  if [[ -f $REQ ]]; then
    want=$(sha256sum "$REQ" | cut -c1-16)
    if [[ ! -f $VENV/.requirements.sha || $(cat "$VENV/.requirements.sha") != "$want" ]]; then
      "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$REQ"  # chdb-core needs none of its declared deps here
      echo "$want" >"$VENV/.requirements.sha"
    fi
  fi
  "$VENV/bin/python" -c 'import pytest' 2>/dev/null || "$VENV/bin/pip" install --quiet --disable-pip-version-check pytest
  rc=0; "$VENV/bin/python" -m pytest -q tests/python || rc=$?
  # pytest's 5 = "no tests collected": the directory exists but its tests are still to come.
  if ((rc == 5)); then echo "    (no Python tests collected yet)" >&2; elif ((rc != 0)); then exit "$rc"; fi
fi
# ---------------------------------------------------------------------------------------------
