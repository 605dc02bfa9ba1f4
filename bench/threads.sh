#!/usr/bin/env bash
# Thread scaling: graygate `server.threads` 1 and 2 against nginx `worker_processes` 1 and 2,
# the same rule (a uid tail on X-User-Id) and the same nginx backend, in interleaved
# repetitions; requests/s, proxy CPU µs per request (user + system of graygate, or of every
# nginx worker, over the requests served), and the connections each proxy holds open to the
# backend (`ss` on the backend port, sampled mid-run and after it). graygate's workers share
# one upstream pool; nginx's workers keep a pool each. Writes its section of
# docs/benchmarks.md (bench/lib.sh `write_section`).
#
#   bench/threads.sh                    # or: make bench
#   REPS=3 DURATION=3 bench/threads.sh
#
# One worker runs on core 0, two on cores 0 and 1; the backend and wrk always on core 1 (the
# machine has two cores: a second worker shares its core with them, which is what a
# two-worker row measures here, not a clean doubling).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
REPS=${REPS:-3}
CONNECTIONS=${CONNECTIONS:-32}
NICE=${NICE:--10}
OUT=${OUT:-docs/benchmarks.md}

# shellcheck source=bench/lib.sh
source bench/lib.sh
bench_setup
measured_priority

backend=$(free_port)
start_backend "$backend"
write_uid_script 10000

declare -A port procs
for n in 1 2; do
    # graygate with n worker threads
    p=gg$n; port[$p]=$(free_port); admin=$(free_port)
    mkdir -p "$work/$p/rules"
    two_version_rules "$backend" 'rules:
  - { name: tail, when: { uid_tail: [1, 2, 3] }, version: canary }' > "$work/$p/rules/rules.yaml"
    cat > "$work/$p/graygate.yaml" <<CONF
listen: ["127.0.0.1:${port[$p]}"]
admin: { listen: "127.0.0.1:$admin" }
rules: rules
access_log: off
server: { threads: $n, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: gg.pid, upgrade_sock: gg.sock }
CONF
    RUST_LOG=warn "${prio[@]}" taskset -c "0-$((n - 1))" "$bin" run -c "$work/$p/graygate.yaml" 2>"$work/$p.log" & pids+=($!)
    wait_port "${port[$p]}" 600
    procs[$p]=$!
    # nginx with n worker processes, the same decision in a map
    p=nginx$n; port[$p]=$(free_port)
    mkdir -p "$work/$p"
    cat > "$work/$p/nginx.conf" <<NGINX
worker_processes $n;
daemon off;
pid $work/$p/nginx.pid;
error_log $work/$p/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
$(nginx_upstreams "$backend")
    map \$http_x_user_id \$gg_version { "~[123]\$" canary; default stable; }
    server {
        listen 127.0.0.1:${port[$p]} backlog=4096;
        keepalive_requests 1000000;
        location / {
$(nginx_forwarding)
        }
    }
}
NGINX
    "${prio[@]}" taskset -c "0-$((n - 1))" nginx -c "$work/$p/nginx.conf" -p "$work/$p" & pids+=($!)
    wait_port "${port[$p]}" 600
    sleep 0.5
    procs[$p]=$(pgrep -P "$!" | tr '\n' ' ')
done

# User + system CPU ticks of the processes $@.
cpu_ticks() {
    local pid total=0
    for pid in "$@"; do total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }'))); done
    echo "$total"
}
# Established connections to the backend port held by the processes $@ (every proxy keeps
# its pool open: only its own are counted).
backend_conns() {
    local pattern
    pattern=$(printf 'pid=%s,|' "$@"); pattern=${pattern%|}
    ss -Htnp state established "( dport = :$backend )" | grep -cE "$pattern" || true
}

order=(gg1 nginx1 gg2 nginx2)
for p in "${order[@]}"; do uid_rate "${port[$p]}" 2 >/dev/null; done   # warm up
declare -A rps cpu busy idle
hz=$(getconf CLK_TCK)
for ((r = 1; r <= REPS; r++)); do
    rotated=("${order[@]:$((r % 4))}" "${order[@]:0:$((r % 4))}")
    line="rep $r:"
    for p in "${rotated[@]}"; do
        # shellcheck disable=SC2086
        before=$(cpu_ticks ${procs[$p]})
        # shellcheck disable=SC2086
        (sleep "$(awk -v d="$DURATION" 'BEGIN { print d / 2 }')"; backend_conns ${procs[$p]} > "$work/busy") &
        rate=$(uid_rate "${port[$p]}" "$DURATION")
        wait $!
        # shellcheck disable=SC2086
        after=$(cpu_ticks ${procs[$p]})
        served=$(awk -v r="$rate" -v d="$DURATION" 'BEGIN { printf "%d", r * d }')
        cpu[$p]+="$(awk -v t=$((after - before)) -v hz="$hz" -v n="$served" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }') "
        rps[$p]+="$rate "
        busy[$p]+="$(cat "$work/busy") "
        # shellcheck disable=SC2086
        idle[$p]+="$(backend_conns ${procs[$p]}) "
        line+=" ($p) ${rate%.*} req/s;"
    done
    echo "$line"
done

declare -A label=(
    [gg1]="graygate, server.threads: 1"
    [gg2]="graygate, server.threads: 2"
    [nginx1]="nginx map, worker_processes 1"
    [nginx2]="nginx map, worker_processes 2"
)
table="| proxy | requests/s (median) | vs 1 worker | proxy CPU µs/request | connections to the backend, mid-run | after the run |
| --- | ---: | ---: | ---: | ---: | ---: |"
for p in "${order[@]}"; do
    one=${p%[12]}1
    # shellcheck disable=SC2086
    m=$(median ${rps[$p]}); m1=$(median ${rps[$one]})
    # shellcheck disable=SC2086
    table+="
| ${label[$p]} | ${m%.*} | $(ratio "$m" "$m1")x | $(median ${cpu[$p]}) | $(range %d ${busy[$p]}) | $(range %d ${idle[$p]}) |"
done
echo
echo "$table"

section="<!-- bench/threads.sh: begin (generated by bench/threads.sh; do not edit) -->
## Thread scaling (\`bench/threads.sh\`)

$table

- **Traffic**: \`wrk -t1 -c$CONNECTIONS -d${DURATION}s\`, 10,000 rotating uids in \`X-User-Id\`; graygate
  and nginx decide the same uid tail rule and send \`X-Graygate-Version\` and \`X-Forwarded-For\`.
- **Workers**: one on core 0, two on cores 0-1; the nginx backend and wrk on core 1, so on
  this ${NPROC:-$(nproc)}-core machine a second worker shares a core with them.
- **CPU**: user + system time of graygate (all its threads) or of every nginx worker, over the
  requests served. **Connections**: established TCP connections to the backend port (\`ss\`),
  sampled halfway through each run and after it (the pools' idle connections), min-max over
  $REPS interleaved repetitions.
- Run on $(date -u +%Y-%m-%d), load average $(cut -d' ' -f1-3 /proc/loadavg) at the end.
<!-- bench/threads.sh: end -->"
write_section threads "$OUT" "$section"
echo "written to $OUT"
