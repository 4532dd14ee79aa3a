# The figures of a scripts/bench.sh run as markdown: sourced by bench.sh, which calls
# bench_report once its steps are done. It reads what the steps left: the loadgen JSON,
# steps.tsv, cpu.tsv, cpu_ms.tsv, gc.tsv, hwm.tsv, stream-mem.tsv and the *.traffic files in $OUT, the results rows in
# ClickHouse ($CH, $DB, CH_AUTH), and bench.sh's settings and figures (STEP, WARMUP,
# SYNC_RATES, STREAM_*, SERIAL_*, STREAM_CONNECTIONS, serial_ran, PROCS, backlog, drained, soak_backlog, soak_log, cancel_json, mem_base,
# mem_hwm, want, want_streams).
# shellcheck shell=bash disable=SC2154

# One row of the streaming table from the loadgen JSON in $OUT: the direct and the through
# step's labels, the first cell, and 1 when the steps ran closed loop (the cell then gives
# the streams/s each achieved).
stream_row() {
  jq -rs --arg d "$1" --arg t "$2" --arg cell "$3" --arg closed "$4" '
    def r3: . * 1000 | round / 1000;
    (map(select(.label == $d))[0]) as $a | (map(select(.label == $t))[0]) as $b |
    (if $closed == "1" then "\($cell): \($a.achieved_rps | round) direct, **\($b.achieved_rps | round) through**/s" else $cell end) as $first |
    "| \($first) | \($a.ttft_p50_ms) / \($a.ttft_p99_ms) | \($b.ttft_p50_ms) / \($b.ttft_p99_ms) | **\(($b.ttft_p50_ms - $a.ttft_p50_ms) | r3) / \(($b.ttft_p99_ms - $a.ttft_p99_ms) | r3)** | \($a.total_p50_ms) / \($a.total_p99_ms) | \($b.total_p50_ms) / \($b.total_p99_ms) | \(($b.total_p50_ms - $a.total_p50_ms) | r3) / \(($b.total_p99_ms - $a.total_p99_ms) | r3) |"' "$OUT"/*.json
}

bench_report() {
  echo "## Sluice benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB;" \
    "mock latency ${MOCK_LATENCY_MS} ms; steps ${STEP} after ${WARMUP} warmup; load average at the end $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "### Load steps (latency of successful answers, ms, measured from each request's scheduled send time)"
  echo
  echo "Open-loop steps schedule request i at start + i/rate; \"send lag p99\" is how late the load"
  echo "generator itself sent them (included in the latencies: it is CPU starvation, not the stack)."
  echo
  echo "| scenario | sent | ok | errors | achieved req/s | p50 | p90 | p99 | p99.9 | max | send lag p99 | loadgen CPU s |"
  echo "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  jq -rs '.[] | select(.mode != "e2e") |
    "| \(.label) | \(.sent) | \(.ok) | \(.errors_by_status | to_entries | map("\(.key): \(.value)") | join(", ") | if . == "" then "-" else . end) | \(.achieved_rps | floor) | \(.p50_ms) | \(.p90_ms) | \(.p99_ms) | \(.p999_ms) | \(.max_ms) | \(.send_lag_p99_ms // "-") | \(.loadgen_cpu_s) |"' "$OUT"/*.json
  echo
  if [[ -n $SYNC_RATES ]]; then
    echo "### Sync added latency (through the ingress minus straight to the mock; difference of percentiles, ms)"
    echo
    echo "Kafka floor = kafka-floor's bare round trip (produce -> consume -> produce -> consume, the"
    echo "services' client settings, no HTTP) at the same rate on the same broker, right after the"
    echo "pair. Over floor = added minus the floor: what Sluice adds beyond the two Kafka hops."
    echo
    echo "| rate | direct p50 / p99 | through p50 / p99 | **added p50 / p99** | Kafka floor p50 / p99 | over floor p50 / p99 | added / floor p50, p99 |"
    echo "|---:|---:|---:|---:|---:|---:|---:|"
    for rate in $SYNC_RATES; do
      jq -rs --arg d "sync direct ${rate}/s" --arg t "sync ingress ${rate}/s" --arg k "kafka floor ${rate}/s" --arg r "$rate" '
        def r3: . * 1000 | round / 1000;
        def r1: . * 10 | round / 10;
        (map(select(.label == $d))[0]) as $a | (map(select(.label == $t))[0]) as $b |
        (map(select(.label == $k))[0]) as $f |
        (($b.p50_ms - $a.p50_ms) | r3) as $a50 | (($b.p99_ms - $a.p99_ms) | r3) as $a99 |
        "| \($r)/s | \($a.p50_ms) / \($a.p99_ms) | \($b.p50_ms) / \($b.p99_ms) | **\($a50) / \($a99)** | " +
        (if $f then "\($f.p50_ms) / \($f.p99_ms) | \(($a50 - $f.p50_ms) | r3) / \(($a99 - $f.p99_ms) | r3) | \(($a50 / $f.p50_ms) | r1)x, \(($a99 / $f.p99_ms) | r1)x |"
         else "- | - | - |" end)' "$OUT"/*.json
    done
    echo
  fi
  if ((serial_ran)); then
    echo "### Serial streams: each chunk from the mock to the client ($SERIAL_SAMPLES streams one at a time, $SERIAL_CHUNKS content chunks ${SERIAL_DELAY_MS} ms apart, ms)"
    echo
    echo "delay = loadgen's relay in front of the mock read the chunk -> the client read it (one clock)."
    echo "gap = between successive content chunks at the client (the mock sends one every ${SERIAL_DELAY_MS} ms)."
    echo
    echo "| path | streams ok | chunks | delay p50 | delay p90 | delay p99 | delay max | gap p50 | gap p99 | gap max | whole stream p50 / p99 | first chunk p50 |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    jq -rs '.[] | select(.mode == "serial") |
      "| \(.label) | \(.ok)/\(.sent) | \(.chunks) | \(.chunk_delay_p50_ms) | \(.chunk_delay_p90_ms) | \(.chunk_delay_p99_ms) | \(.chunk_delay_max_ms) | \(.chunk_gap_p50_ms) | \(.chunk_gap_p99_ms) | \(.chunk_gap_max_ms) | \(.total_p50_ms) / \(.total_p99_ms) | \(.ttft_p50_ms) |"' "$OUT"/*.json
    echo
  fi
  if want e2e; then
    echo "### Accept -> usage row visible in ClickHouse ($E2E_SAMPLES requests one at a time, ClickHouse polled every 20 ms, ms)"
    echo
    echo "| stage | p50 | p99 |"
    echo "|---|---:|---:|"
    jq -rs '.[] | select(.mode == "e2e") |
      "| POST /v1/requests -> 202 | \(.accept_p50_ms) | \(.accept_p99_ms) |",
      "| accepted -> worker started (Kafka) | \(.worker_start_p50_ms) | \(.worker_start_p99_ms) |",
      "| accepted -> worker finished (+ mock call) | \(.worker_done_p50_ms) | \(.worker_done_p99_ms) |",
      "| **POST -> usage row visible** (ok \(.ok)/\(.sent), max \(.max_ms)) | **\(.p50_ms)** | **\(.p99_ms)** |"' "$OUT"/*.json
    echo
  fi
  if want async; then echo "Async backlog: $backlog."; echo; fi
  if want backlog; then echo "Backlog drain (one worker, provider ${BACKLOG_LATENCY_MS} ms): $drained."; echo; fi
  if want soak; then
    echo "Async soak, answers/s in each second of $SOAK on one fresh ingress (closed loop, $ASYNC_CONNECTIONS connections):"
    echo
    echo "    $(awk '$1 ~ /^[0-9]+s$/ && $3 == "answers/s" { print $2 }' "$soak_log" | paste -sd' ')"
    echo
    echo "Soak backlog: $soak_backlog."
    echo
  fi
  if ((want_streams)); then
    echo "### Streaming: time to first token and whole stream (direct to the mock vs through Sluice, ms)"
    echo
    echo "Open loop, new streams/s; each stream $STREAM_CHUNKS content chunks ${STREAM_DELAY_MS} ms apart. TTFT = scheduled send ->"
    echo "first SSE event with non-empty delta.content; total = -> data: [DONE]. Added = difference of percentiles."
    echo
    echo "| rate | TTFT direct p50 / p99 | TTFT through p50 / p99 | **TTFT added p50 / p99** | total direct p50 / p99 | total through p50 / p99 | total added p50 / p99 |"
    echo "|---:|---:|---:|---:|---:|---:|---:|"
    for rate in $STREAM_RATES; do
      stream_row "stream direct ${rate}/s" "stream ingress ${rate}/s" "${rate}/s" 0
    done
    if ((STREAM_CONNECTIONS > 0)); then
      stream_row "stream direct closed x${STREAM_CONNECTIONS}" "stream ingress closed x${STREAM_CONNECTIONS}" "closed x${STREAM_CONNECTIONS}" 1
    fi
    echo
    [[ -n ${cancel_json:-} ]] && jq -r '"Client disconnect (after \(.disconnect_after) SSE events, \(.sent) streams one at a time) -> the worker closed its provider connection (seen by loadgen'"'"'s relay): p50 \(.p50_ms) ms, p90 \(.p90_ms) ms, p99 \(.p99_ms) ms, max \(.max_ms) ms; ok \(.ok)/\(.sent), errors \(.errors_by_status); \(.relay_connections) provider connections for \(.sent) streams."' "$cancel_json"
    echo
    if ((STREAM_OPEN > 0)); then
      read -r b_in b_wk b_kf <<<"$mem_base"
      read -r h_in h_wk <<<"$mem_hwm"
      awk -F'\t' -v b_in="$b_in" -v b_wk="$b_wk" -v b_kf="$b_kf" -v h_in="$h_in" -v h_wk="$h_wk" -v n="$STREAM_OPEN" '
        { if ($5 > conns) conns = $5; if ($2 > in_) in_ = $2; if ($3 > wk) wk = $3; if ($4 > kf) kf = $4 }
        END { printf "%d streams opened at once (chunks every '"$STREAM_SLOW_DELAY_MS"' ms), at most %d client connections to the ingress at one sample. " \
                "Resident memory, MB, before -> peak sample (VmHWM): ingress %.0f -> %.0f (%.0f), %.1f KB per open stream; " \
                "worker %.0f -> %.0f (%.0f since it started); Kafka %.0f -> %.0f.\n",
                n, conns, b_in / 1024, in_ / 1024, h_in / 1024, (in_ - b_in) / n, b_wk / 1024, wk / 1024, h_wk / 1024, b_kf / 1024, kf / 1024 }' "$OUT/stream-mem.tsv"
      echo
    fi
  fi
  echo "### Where the time goes: the results rows of each step's requests (ClickHouse, ms resolution)"
  echo
  echo "created = the ingress stamped the request (before its Kafka produce); started / finished ="
  echo "the worker began / ended the provider call. p50 / p99, ms."
  echo
  echo "| scenario | rows | created -> worker started | provider call | created -> worker finished |"
  echo "|---|---:|---:|---:|---:|"
  while IFS=$'\t' read -r label from_ms to_ms; do
    [[ $label == *ingress* ]] || continue
    curl -sf "${CH_AUTH[@]}" "$CH" --data-binary "SELECT count(),
        quantilesExact(0.5, 0.99)(started_at_ms - created_at_ms),
        quantilesExact(0.5, 0.99)(toInt64(finished_at_ms) - started_at_ms),
        quantilesExact(0.5, 0.99)(toInt64(finished_at_ms) - created_at_ms)
      FROM $DB.results FINAL WHERE created_at_ms >= $from_ms AND created_at_ms < $to_ms FORMAT TabSeparated" |
      awk -F'\t' -v l="$label" '{ for (i = 2; i <= 4; i++) { gsub(/[][]/, "", $i); sub(/,/, " / ", $i) }
                                   printf "| %s | %s | %s | %s | %s |\n", l, $1, $2, $3, $4 }'
  done <"$OUT/steps.tsv"
  echo
  if compgen -G "$OUT/*.traffic" >/dev/null; then
    echo "### Kafka messages and bytes per request, by topic (steps through the ingress)"
    echo
    echo "High watermarks before and after each step (warmup included) divided by the step's requests;"
    echo "bytes = key + value + headers of up to 2,000 records read back per partition, scaled (no"
    echo "batch framing). Records a step leaves to the worker and sink after it ends count in the next step."
    echo
    echo "| scenario | requests | topic | messages / request | bytes / request |"
    echo "|---|---:|---|---:|---:|"
    jq -rs '.[] | .label as $l | .requests as $n | (.topics | to_entries | map(select(.value.messages > 0))) as $t |
      ($t[] | "| \($l) | \($n) | \(.key | sub("^[^.]*\\."; "")) | \((.value.messages / $n) * 100 | round / 100) | \((.value.bytes / $n) | round) |"),
      "| \($l) | \($n) | **all** | **\(([$t[].value.messages] | add // 0) / $n * 100 | round / 100)** | **\(([$t[].value.bytes] | add // 0) / $n | round)** |"' "$OUT"/*.traffic
    echo
  fi
  echo "### CPU per request (ms of CPU per request sent, warmup included, per process)"
  echo
  echo "utime + stime of each process over the step (/proc/<pid>/stat) divided by the requests the"
  echo "step sent; Kafka's and ClickHouse's include whatever else used them (shared)."
  echo
  printf '| scenario | requests |'; printf ' %s |' "${PROCS[@]}" "stack total"; echo
  printf '|---|---:|'; printf -- '---:|%.0s' "${PROCS[@]}" total; echo
  jq -r '"\(.label)\t\(.sent_total // .sent)"' "$OUT"/*.json >"$OUT/requests.tsv"
  awk -F'\t' -v procs="${PROCS[*]}" '
    FILENAME ~ /requests/ { n[$1] = $2; next }
    { if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 } v[$1, $2] = $3 }
    END { np = split(procs, p, " ")
          for (i = 1; i <= k; i++) { s = order[i]; if (!(s in n) || n[s] == 0) continue
            line = "| " s " | " n[s] " |"; tot = 0
            for (j = 1; j <= np; j++) { x = v[s, p[j]] / n[s]; tot += x; line = line sprintf(" %.3f |", x) }
            print line sprintf(" **%.3f** |", tot) } }' "$OUT/requests.tsv" "$OUT/cpu_ms.tsv"
  echo
  echo "### CPU per process (% of one core, over each step)"
  echo
  echo "cpu wait = share of the step's time during which some runnable task waited for a core"
  echo "(/proc/pressure/cpu), from this stack, the load generator or anything else on the machine."
  echo
  printf '| scenario |'; printf ' %s |' "${PROCS[@]}" "cpu wait %"; echo
  printf '|---|'; printf -- '---:|%.0s' "${PROCS[@]}" wait; echo
  awk -F'\t' -v procs="${PROCS[*]} wait" '
    { if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } v[$1, $2] = $3 }
    END { np = split(procs, p, " ")
          for (i = 1; i <= n; i++) { line = "| " order[i] " |"; for (j = 1; j <= np; j++) line = line " " v[order[i], p[j]] " |"; print line } }' "$OUT/cpu.tsv"
  echo
  echo "### Kafka JVM stop-the-world GC pauses per step (jstat)"
  echo
  echo "| scenario | pauses | total ms | mean ms |"
  echo "|---|---:|---:|---:|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }' "$OUT/gc.tsv"
  echo
  echo "### Memory at the end (MB): resident now / peak resident (VmHWM)"
  echo
  printf '|'; printf ' %s |' "${PROCS[@]}"; echo
  printf '|'; printf -- '---:|%.0s' "${PROCS[@]}"; echo
  awk -F'\t' '{ line = line " " int($2 / 1024) " / " int($3 / 1024) " |" } END { print "|" line }' "$OUT/hwm.tsv"
}
