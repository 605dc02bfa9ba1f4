#!/usr/bin/env bash
# What the access log costs: the same graygate (one worker, a uid tail rule) with
# `access_log: off`, `text` and `json`, in interleaved repetitions, wrk throughput each time.
# The log goes to a file (stderr redirected), as an operator would run it. Target: the text
# log costs under 3% of the throughput with it off (SPEC section 14), judged on the medians
# and on the best repetitions (bench/lib.sh `judge`).
#
#   bench/access_log.sh                 # or: make bench
#   REPS=3 DURATION=3 bench/access_log.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
REPS=${REPS:-5}
CONNECTIONS=${CONNECTIONS:-32}
NICE=${NICE:--10}

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_setup
measured_priority

backend=$(free_port)
start_backend "$backend"
declare -A port log_file
for f in off text json; do
    port[$f]=$(free_port); admin=$(free_port)
    mkdir -p "$work/$f/rules"
    two_version_rules "$backend" 'rules:
  - { name: tail, when: { uid_tail: [1, 2, 3] }, version: canary }' > "$work/$f/rules/rules.yaml"
    cat > "$work/$f/graygate.yaml" <<CONF
listen: ["127.0.0.1:${port[$f]}"]
admin: { listen: "127.0.0.1:$admin" }
rules: rules
access_log: $f
server: { threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: gg.pid, upgrade_sock: gg.sock }
CONF
    log_file[$f]="$work/$f.log"
    RUST_LOG=info "${prio[@]}" taskset -c 0 "$bin" run -c "$work/$f/graygate.yaml" 2>"${log_file[$f]}" & pids+=($!)
    wait_port "${port[$f]}" 600
done

cat > "$work/load.lua" <<'LUA'
local reqs, n = {}, 0
init = function(args)
    for i = 0, 9999 do reqs[i] = wrk.format("GET", "/item/" .. i, { ["X-User-Id"] = tostring(i) }) end
end
request = function() n = (n + 1) % 10000; return reqs[n] end
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("RESULT %.1f %d\n", summary.requests / (summary.duration / 1e6),
        e.status + e.connect + e.read + e.write + e.timeout))
end
LUA
run() { # $1 port -> RATE
    local out
    out=$(timeout $((DURATION + 30)) "${prio[@]}" taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s -s "$work/load.lua" "http://127.0.0.1:$1/")
    read -r RATE errors < <(awk '/^RESULT/ {print $2, $3}' <<<"$out")
    if [[ "$errors" != "0" ]]; then echo "errors on port $1: $errors" >&2; exit 1; fi
}
echo "== access log cost: graygate, 1 worker, wrk -c$CONNECTIONS, $REPS x ${DURATION}s interleaved"
for f in off text json; do run "${port[$f]}"; done   # warm-up
declare -A rates
for rep in $(seq "$REPS"); do
    for f in off text json; do
        run "${port[$f]}"
        rates[$f]+="$RATE "
        echo "   rep $rep $f: $RATE requests/s"
    done
done
verdicts=(); ok=1
declare -A med best
for f in off text json; do
    # shellcheck disable=SC2086
    med[$f]=$(median ${rates[$f]}); best[$f]=$(printf '%s\n' ${rates[$f]} | sort -g | tail -1)
done
lines=$(grep -c ' INFO  graygate::access] ' "${log_file[text]}" || true)
printf '| access_log | requests/s (median) | range | vs off |\n| --- | --- | --- | --- |\n'
for f in off text json; do
    # shellcheck disable=SC2086
    printf '| %s | %.0f | %s | %sx |\n' "$f" "${med[$f]}" "$(range '%.0f' ${rates[$f]})" "$(ratio "${med[$f]}" "${med[off]}")"
done
echo "   the text log wrote $lines lines"
judge "text access log throughput vs off, target at least 0.97x" "$(ratio "${med[text]}" "${med[off]}")" "$(ratio "${best[text]}" "${best[off]}")" "r >= 0.97"
judge "json access log throughput vs off, target at least 0.97x" "$(ratio "${med[json]}" "${med[off]}")" "$(ratio "${best[json]}" "${best[off]}")" "r >= 0.97"
printf '%s\n' "${verdicts[@]}"
((ok))
