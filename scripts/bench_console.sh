#!/usr/bin/env bash
# Times the console's pages (issue 21: "first page under 300 ms on the demo data") against a
# running `scripts/run.sh`, beside a direct call to the mock provider in the same run.
#
#   scripts/run.sh &                  # the demo stack (release build)
#   scripts/bench_console.sh          # seeds demo traffic, then times every page
#
# Knobs: SEED [2000] async requests submitted first (0: none), RUNS [30] timed loads per page,
# INGRESS [http://127.0.0.1:8080], CONSOLE [http://127.0.0.1:9470], MOCK [http://127.0.0.1:9100].
# Prints a markdown table (ms: median, p90, max of RUNS loads, each a new connection, as a
# browser opening the page) for docs/benchmarks.md.
set -euo pipefail

SEED="${SEED:-2000}"
RUNS="${RUNS:-30}"
INGRESS="${INGRESS:-http://127.0.0.1:8080}"
CONSOLE="${CONSOLE:-http://127.0.0.1:9470}"
MOCK="${MOCK:-http://127.0.0.1:9100}"
DEMO_KEY="sk-sluice-demo"
TEAM_B_KEY="sk-sluice-team-b"
CONSOLE_KEY="${CONSOLE_KEY:-sk-sluice-admin}"

curl -fsS -o /dev/null "$CONSOLE/console/login" || { echo "no console at $CONSOLE: start scripts/run.sh first" >&2; exit 1; }

if ((SEED > 0)); then
  echo "seeding $SEED async requests (two teams, two models)..." >&2
  # One curl config entry per request (`next` separates them); values in double quotes.
  for i in $(seq 1 "$SEED"); do
    key=$DEMO_KEY; model=gpt-4o-mini
    ((i % 3 == 0)) && key=$TEAM_B_KEY
    ((i % 2 == 0)) && model=local-llama
    ((i > 1)) && echo next
    printf 'url = "%s/v1/requests"\nheader = "Authorization: Bearer %s"\nheader = "x-sluice-priority: batch"\n' "$INGRESS" "$key"
    printf 'data = "{\\"model\\":\\"%s\\",\\"messages\\":[{\\"role\\":\\"user\\",\\"content\\":\\"console bench %s\\"}],\\"max_tokens\\":32}"\n' "$model" "$i"
    printf 'output = "/dev/null"\n'
  done > /tmp/sluice-console-seed.curl
  curl -fsS --parallel --parallel-max 32 -K /tmp/sluice-console-seed.curl
  echo "waiting for the backlog to drain..." >&2
  sleep 20
fi

jar=$(mktemp)
trap 'rm -f "$jar"' EXIT
curl -fsS -o /dev/null -c "$jar" --data-urlencode "key=$CONSOLE_KEY" "$CONSOLE/console/login"

# times URL [curl args...]: RUNS loads, prints "median p90 max" in ms.
times() {
  local url=$1; shift
  for _ in $(seq 1 "$RUNS"); do
    curl -fsS -o /dev/null -w '%{time_total}\n' "$@" "$url"
  done | sort -n | awk '{ v[NR] = $1 * 1000 } END {
    printf "%.1f %.1f %.1f\n", v[int((NR + 1) / 2)], v[int(NR * 0.9 + 0.5)], v[NR] }'
}

echo "| page | median ms | p90 ms | max ms |"
echo "|---|---:|---:|---:|"
read -r a b c < <(times "$MOCK/v1/models")
echo "| (floor) mock provider GET /v1/models, direct | $a | $b | $c |"
for page in "/console" "/console?period=30d&by=model" "/console?period=24h&by=key" \
    /console/budgets /console/latency /console/backlog /console/batches /console/audit /console/keys; do
  read -r a b c < <(times "$CONSOLE$page" -b "$jar")
  echo "| $page | $a | $b | $c |"
done
rows=$(curl -fsS "$CONSOLE/console?period=30d" -b "$jar" | grep -o 'data-name=' | wc -l)
echo
echo "($RUNS loads per page; the spend page listed $rows groups; seeded $SEED requests this run.)"
