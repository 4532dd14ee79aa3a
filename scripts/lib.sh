# Helpers the scripts share; sourced, not run: `source "$REPO_DIR/scripts/lib.sh"`.
# Set LOG_TAG (e.g. bench) before logging; set LOG_T0 (a value of $SECONDS) to print the
# seconds since then, as in "[bench +12s] message".

# A line on stderr: "[tag] message" or "[tag +Ns] message".
log() {
  if [[ -n ${LOG_T0-} ]]; then
    printf '[%s +%ss] %s\n' "${LOG_TAG:-script}" "$((SECONDS - LOG_T0))" "$*" >&2
  else
    printf '[%s] %s\n' "${LOG_TAG:-script}" "$*" >&2
  fi
}

# Logs an error and exits 1.
die() { log "ERROR: $*"; exit 1; }

# Whether process $1 runs (exists and is not a zombie).
alive() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) && [[ ${s##*) } != Z* ]]; }
