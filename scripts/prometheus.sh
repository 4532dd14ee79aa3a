#!/usr/bin/env bash
# A Prometheus of Sluice's own (Debian's `prometheus` package, run as a plain process, never
# its system service) scraping the services' ops listeners, with deploy/prometheus/alerts.yml
# loaded. Used by scripts/run.sh; by hand:
#
#   scripts/prometheus.sh install   apt-get install prometheus (+ promtool) if missing
#   scripts/prometheus.sh start     render the config, start, wait until ready
#   scripts/prometheus.sh stop | status | config (print the rendered config)
#
# Knobs [defaults]:
#   SLUICE_STATE         data, config, log, pid under $SLUICE_STATE/prometheus  [<repo>/.state]
#   PROM_PORT [19090]    PROM_SCRAPE_INTERVAL [5s]   PROM_RETENTION [2d]
#   PROM_INGRESS_TARGETS [127.0.0.1:9464]   PROM_WORKER_TARGETS [127.0.0.1:9465 127.0.0.1:9467]
#   PROM_ANALYTICS_TARGETS [127.0.0.1:9466]  (space-separated host:port)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
SLUICE_STATE="${SLUICE_STATE:-$REPO_DIR/.state}"
PROM_DIR="$SLUICE_STATE/prometheus"
PROM_PORT="${PROM_PORT:-19090}"
PROM_SCRAPE_INTERVAL="${PROM_SCRAPE_INTERVAL:-5s}"
PROM_RETENTION="${PROM_RETENTION:-2d}"
PROM_INGRESS_TARGETS="${PROM_INGRESS_TARGETS:-127.0.0.1:9464}"
PROM_WORKER_TARGETS="${PROM_WORKER_TARGETS:-127.0.0.1:9465 127.0.0.1:9467}"
PROM_ANALYTICS_TARGETS="${PROM_ANALYTICS_TARGETS:-127.0.0.1:9466}"

LOG_TAG=prometheus
# shellcheck source=scripts/lib.sh
source "$SCRIPT_DIR/lib.sh"  # log, die, alive
as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Debian's postinst starts its own prometheus service (port 9090, /var/lib/prometheus) where
# invoke-rc.d may: a policy-rc.d that says 101 ("action forbidden") for the install keeps it
# from starting on a machine without one; with systemd, the unit is stopped and disabled.
cmd_install() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null && return 0
  log "apt-get install prometheus"
  local policy=/usr/sbin/policy-rc.d made=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"; made=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if ((made)); then as_root rm -f "$policy"; fi
  if [[ -d /run/systemd/system ]]; then as_root systemctl disable --now prometheus >/dev/null 2>&1 || true; fi
}

yaml_list() { # host:port... -> ["a", "b"]
  local out="" t
  for t in "$@"; do out+="${out:+, }\"$t\""; done
  printf '[%s]' "$out"
}
cmd_config() {
  local t
  t=$(<"$REPO_DIR/deploy/prometheus/prometheus.yml.tmpl")
  # shellcheck disable=SC2086  # the target lists are space-separated on purpose
  {
    t=${t//'${SCRAPE_INTERVAL}'/$PROM_SCRAPE_INTERVAL}
    t=${t//'${INGRESS_TARGETS}'/$(yaml_list $PROM_INGRESS_TARGETS)}
    t=${t//'${WORKER_TARGETS}'/$(yaml_list $PROM_WORKER_TARGETS)}
    t=${t//'${ANALYTICS_TARGETS}'/$(yaml_list $PROM_ANALYTICS_TARGETS)}
    t=${t//'${RULE_FILES}'/$(yaml_list "$REPO_DIR/deploy/prometheus/alerts.yml")}
  }
  printf '%s\n' "$t"
}

pid_alive() { [[ -s $PROM_DIR/prometheus.pid ]] && alive "$(cat "$PROM_DIR/prometheus.pid")"; }

cmd_start() {
  if pid_alive; then log "already running (pid $(cat "$PROM_DIR/prometheus.pid"))"; return 0; fi
  command -v prometheus >/dev/null || cmd_install
  mkdir -p "$PROM_DIR/data"
  cmd_config >"$PROM_DIR/prometheus.yml"
  promtool check config "$PROM_DIR/prometheus.yml" >/dev/null || die "invalid config $PROM_DIR/prometheus.yml"
  setsid nohup prometheus --config.file="$PROM_DIR/prometheus.yml" --storage.tsdb.path="$PROM_DIR/data" \
    --storage.tsdb.retention.time="$PROM_RETENTION" --web.listen-address="127.0.0.1:$PROM_PORT" \
    --web.enable-lifecycle </dev/null >"$PROM_DIR/prometheus.log" 2>&1 &
  echo $! >"$PROM_DIR/prometheus.pid"
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "http://127.0.0.1:$PROM_PORT/-/ready" 2>/dev/null; then
      log "ready on http://127.0.0.1:$PROM_PORT (pid $(cat "$PROM_DIR/prometheus.pid"), data $PROM_DIR/data)"
      return 0
    fi
    pid_alive || { tail -n 20 "$PROM_DIR/prometheus.log" >&2; die "exited during startup"; }
    sleep 0.1
  done
  die "not ready on 127.0.0.1:$PROM_PORT after 10s (log $PROM_DIR/prometheus.log)"
}
cmd_stop() {
  pid_alive || { rm -f "$PROM_DIR/prometheus.pid"; return 0; }
  local pid; pid=$(cat "$PROM_DIR/prometheus.pid")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
  alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PROM_DIR/prometheus.pid"
  log "stopped (pid $pid)"
}
cmd_status() {
  if pid_alive; then echo "prometheus running pid $(cat "$PROM_DIR/prometheus.pid") http://127.0.0.1:$PROM_PORT data $PROM_DIR/data"
  else echo "prometheus stopped ($PROM_DIR)"; return 1; fi
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  config) cmd_config ;;
  *) echo "usage: $0 {install|start|stop|status|config}" >&2; exit 2 ;;
esac
