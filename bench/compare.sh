#!/usr/bin/env bash
# graygate against nginx on the same traffic, side by side in one run, and the criterion
# benchmark of the decision; writes docs/benchmarks.md.
#
#   bench/compare.sh                      # or: make bench (then bench/assignments.sh)
#   REPS=3 DURATION=3 LAT_DURATION=4 bench/compare.sh      # a quicker, noisier run
#   PROFILE=1 bench/compare.sh            # instructions per request under callgrind instead
#   GRAYGATE_BIN=dir/graygate bench/compare.sh   # binaries built elsewhere (the floor: dir/examples/floor
#                                         # or FLOOR_BIN; BUILD_PROFILE describes their profile)
#                                         # (KEEP_PROFILES=dir keeps the callgrind outputs;
#                                         # PROFILE_PATHS="f b g" counts only those paths)
#
# One nginx backend answers every request from memory. The same traffic (10,000 distinct
# uids in a browser-like Cookie header, one in 20 of them paid) goes, in interleaved
# repetitions, through:
#   (a) graygate, full filter chain: cookie parse, uid tail, tier, cached assignment lookup
#       (Redis, $assigned), a uid split;
#   (b) graygate pass-through: no identity, no rules;
#   (c) nginx proxying with map + split_clients on the same cookies (no assignment lookup);
#   (d) nginx + Lua (lua-resty-redis): one Redis GET per request, the classic gray gateway;
#   (e) the same with a lua_shared_dict cache in front of Redis;
#   (f) the floor: a bare Pingora proxy (examples/floor.rs, same Pingora, release profile
#       and allocator as graygate; no rule, no header added): what Pingora alone costs;
#   (g) graygate, the full filter chain of (a) without the store: cookie parse, uid tail,
#       tier, a uid split (the decision of (c)).
# Every proxy runs one worker (graygate `server.threads: 1`, nginx `worker_processes 1`),
# pinned to core 0; the backend, Redis and the load generator are pinned to core 1. Each
# proxy keeps upstream connections alive. Throughput: wrk, CONNECTIONS connections.
# Latency: wrk paced by a Lua delay() (random, mean CONNECTIONS/RATE), so the offered load
# is about RATE requests/s whatever the proxy; p50/p99 as wrk measures them.
# Medians of REPS repetitions; every row is also given as a ratio to (c) and to (f). RSS: each
# proxy's resident memory after the runs (every one of the 10,000 uids seen many times).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}           # seconds per throughput run
LAT_DURATION=${LAT_DURATION:-6}   # seconds per fixed-rate run
REPS=${REPS:-5}
CONNECTIONS=${CONNECTIONS:-32}    # throughput runs
RATE=${RATE:-5000}                # offered requests/s of the fixed-rate runs (below every proxy's capacity)
LAT_CONNECTIONS=${LAT_CONNECTIONS:-50}
CACHE_TTL=${CACHE_TTL:-30}        # seconds: graygate's cache_ttl and the Lua shared dict's TTL
OUT=${OUT:-docs/benchmarks.md}
CRITERION=${CRITERION:-1}         # 0: skip the criterion benchmark of decide
NICE=${NICE:--10}                 # niceness of every measured process ("" to leave it): other
                                  # work on the machine (compiles) then steals less of its core
UIDS=10000
# PROFILE=1: every proxy runs under valgrind's callgrind, and instead of timing anything the
# script counts instructions per request in each proxy (the same for the same binaries and
# traffic, however busy the machine). 200 uids, so that (a)'s lookups are cache hits at
# callgrind's speed (a few hundred requests/s), as they are at full speed with 10,000.
PROFILE=${PROFILE:-0}
PROFILE_SECONDS=${PROFILE_SECONDS:-15}
PROFILE_PATHS=${PROFILE_PATHS:-a b c d e f g}   # the paths counted (the floor f is every ratio's base)
if [[ "$PROFILE" == 1 ]]; then UIDS=200; CRITERION=0; fi

bash scripts/install-deps.sh bench
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' || echo target)
if [[ -n "${GRAYGATE_BIN:-}" ]]; then
    bin=$GRAYGATE_BIN             # a binary built elsewhere (its commit: GRAYGATE_COMMIT)
else
    cargo build --release --locked --quiet --bin graygate
    bin=$target_dir/release/graygate
fi
# shellcheck source=bench/lib.sh
source bench/lib.sh   # the scripts run from the repository root
floor_binary          # beside $bin, or FLOOR_BIN

wrap=()   # what each proxy runs under

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]+"${pids[@]}"}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    # KEEP_PROFILES=dir (with PROFILE=1): the callgrind outputs are kept there, for
    # callgrind_annotate.
    if [[ -n "${KEEP_PROFILES:-}" && -d "$work/callgrind" ]]; then
        mkdir -p "$KEEP_PROFILES" && cp -a "$work/callgrind/." "$KEEP_PROFILES/" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

measured_priority

# --- the criterion benchmark of the pure decision (before any load runs) ---
decide_table=""
if [[ "$CRITERION" == 1 ]]; then
    echo "== criterion: decide on 100 rules (cargo bench --bench decide)"
    cargo bench --locked --bench decide --no-run --quiet
    "${prio[@]}" cargo bench --locked --bench decide -- --warm-up-time 1 --measurement-time 3 --noplot 2>&1 |
        grep -E '^(100-rules|\s+time:)' || true
    decide_table=$(python3 - "$target_dir/criterion/100-rules" <<'PY'
import json, os, sys
root = sys.argv[1]
rows = []
for name in ["gather", "decide-first", "decide-all-100", "gather+decide"]:
    path = os.path.join(root, name, "new", "estimates.json")
    try:
        est = json.load(open(path))
    except OSError:
        continue
    m = est["median"]
    rows.append(f"| `{name}` | {m['point_estimate']:.1f} | {m['confidence_interval']['lower_bound']:.1f}-{m['confidence_interval']['upper_bound']:.1f} |")
print("\n".join(rows))
PY
)
fi

# --- processes ---
backend=$(free_port); redis=$(free_port)
declare -A port
for p in direct a b c d e f g; do port[$p]=$(free_port); done
port[direct]=$backend
admin_a=$(free_port); admin_b=$(free_port); admin_g=$(free_port)

start_backend "$backend"
start_redis "$redis"

# Half of the uids have a stored assignment: uid % 4 == 0 -> canary, uid % 4 == 2 -> stable.
for ((i = 0; i < UIDS; i += 2)); do
    if ((i % 4 == 0)); then echo "SET gray:version:$i canary"; else echo "SET gray:version:$i stable"; fi
done | redis-cli -p "$redis" >/dev/null

declare -A proxy_pid   # per path: the process that proxies (graygate, or the nginx worker)
if [[ "$PROFILE" == 1 ]]; then
    # The nginx workers run as another user (nobody) and write their profiles here too.
    mkdir -m 1777 "$work/callgrind" && chmod 711 "$work"
    wrap=(valgrind --tool=callgrind --callgrind-out-file="$work/callgrind/%p")
fi
start_graygate a "${port[a]}" "$admin_a" "$(peer_rules "$backend" assigned)" "$(peer_redis "$redis" "$CACHE_TTL")"
start_graygate b "${port[b]}" "$admin_b" "$(peer_rules "$backend" pass)" ""
start_graygate g "${port[g]}" "$admin_g" "$(peer_rules "$backend" chain)" ""
# (f): the floor, one worker on core 0 like the others.
"${prio[@]}" taskset -c 0 "${wrap[@]}" "$floor_bin" --listen "127.0.0.1:${port[f]}" --upstream "127.0.0.1:$backend" 2>"$work/floor.log" & pids+=($!)
wait_port "${port[f]}" 600
proxy_pid[f]=$!

start_nginx_peer c "${port[c]}" map
start_nginx_peer d "${port[d]}" lua-redis
start_nginx_peer e "${port[e]}" lua-dict

# --- the traffic ---
cat > "$work/uids.lua" <<LUA
-- 10,000 distinct uids in a browser-like Cookie header; one uid in 20 is paid.
local reqs, n = {}, 0
init = function(args) -- not at load time: wrk sets the Host header only then
    for i = 0, $UIDS - 1 do
        local tier = (i % 20 == 0) and "paid" or "trial"
        reqs[i] = wrk.format("GET", "/", { ["Cookie"] = "_ga=GA1.2.1234567890.1700000000; sid=0f3a9c2e7b1d4e5f; uid=" .. i .. "; tier=" .. tier .. "; theme=dark" })
    end
end
request = function()
    n = (n + 1) % $UIDS
    return reqs[n]
end
LUA
wrk_scripts uids.lua "$LAT_CONNECTIONS" "$RATE"

# --- check that every proxy routes as intended before measuring ---
# paid -> stable; stored assignment (a, d, e only) -> it; tail 1-3 -> canary; the rest: a split.
check_routes() {
    local p uid want got bad=0
    for p in a c d e g; do
        for uid in $(seq 0 59); do
            want=""
            if ((uid % 20 == 0)); then want=stable
            elif [[ $p != [cg] ]] && ((uid % 4 == 0)); then want=canary
            elif [[ $p != [cg] ]] && ((uid % 4 == 2)); then want=stable
            elif [[ ${uid: -1} =~ [123] ]]; then want=canary
            fi
            local tier=trial; ((uid % 20 == 0)) && tier=paid
            # Up to three tries: a lookup past lookup_timeout (20 ms) on a busy machine fails
            # open to the next rules, as it should; a routing error fails all three.
            for _ in 1 2 3; do
                got=$(curl -sf --max-time 5 -H "Cookie: uid=$uid; tier=$tier" "http://127.0.0.1:${port[$p]}/" || true)
                [[ -z $want || $got == "$want" ]] && break
                sleep 0.2
            done
            if [[ -n $want && $got != "$want" ]]; then
                echo "($p) routes uid $uid to '$got', expected $want" >&2; bad=1
            fi
            if [[ $got != stable && $got != canary ]]; then echo "($p) answered '$got' for uid $uid" >&2; bad=1; fi
        done
    done
    [[ $(curl -sf --max-time 5 -H "Cookie: uid=3" "http://127.0.0.1:${port[b]}/") == stable ]] || { echo "(b) does not pass through" >&2; bad=1; }
    # The floor adds no header: the backend echoes an empty version.
    [[ $(curl -sf --max-time 5 -w '%{http_code}' -o /dev/null "http://127.0.0.1:${port[f]}/") == 200 ]] || { echo "(f) does not proxy" >&2; bad=1; }
    return $bad
}
declare -A label=([direct]="backend direct (no proxy)")
for p in "${!peer_label[@]}"; do label[$p]=${peer_label[$p]}; done
# Under callgrind a lookup can outlast lookup_timeout and fail open: no routing check there.
[[ "$PROFILE" == 1 ]] || check_routes || {
    echo "routing check failed: see above; (a)'s store lookups:" >&2
    curl -s "http://127.0.0.1:$admin_a/metrics" | grep '^graygate_store_lookups_total{kind="assignment"' >&2
    exit 1
}
[[ "$PROFILE" == 1 ]] || echo "routing check: every proxy routes the sample uids as intended"

if [[ "$PROFILE" == 1 ]]; then
    declare -A served_of per_request
    for p in $PROFILE_PATHS; do
        callgrind_count "${port[$p]}" "${proxy_pid[$p]}"
        served_of[$p]=$SERVED; per_request[$p]=$PER_REQUEST
        echo "(${p}) ${per_request[$p]} instructions per request over ${served_of[$p]} requests"
    done
    echo
    echo "| path | requests | instructions per request | vs (f) floor | vs (c) nginx map |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    for p in f b g a c d e; do
        [[ -n "${per_request[$p]:-}" ]] || continue
        vs() { if [[ -n "${per_request[$1]:-}" ]]; then echo "$(ratio "${per_request[$p]}" "${per_request[$1]}")x"; else echo -; fi; }
        echo "| ${label[$p]} | ${served_of[$p]} | ${per_request[$p]} | $(vs f) | $(vs c) |"
    done
    exit 0
fi

order=(direct a b c d e f g)
echo "warming up (fills the caches with all $UIDS uids)"
for p in "${order[@]}"; do run_wrk throughput.lua "${port[$p]}" "$CONNECTIONS" 3; done

# User + system CPU time of process $1 in clock ticks (0 without a process).
cpu_ticks() { if [[ -n "$1" ]]; then sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; else echo 0; fi; }
declare -A rps p50 p99 cpu
offered_all=""
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)
for ((r = 1; r <= REPS; r++)); do
    # Rotate the order every repetition so no proxy always runs first or last.
    rotated=("${order[@]:$((r % ${#order[@]}))}" "${order[@]:0:$((r % ${#order[@]}))}")
    line="rep $r:"
    for p in "${rotated[@]}"; do
        cpu_before=$(cpu_ticks "${proxy_pid[$p]:-}")
        run_wrk throughput.lua "${port[$p]}" "$CONNECTIONS" "$DURATION"
        read -r rate _ _ _ _ served <<<"$RESULT"
        cpu[$p]+="$(awk -v t=$(($(cpu_ticks "${proxy_pid[$p]:-}") - cpu_before)) -v hz="$(getconf CLK_TCK)" -v n="$served" \
            'BEGIN { printf "%.1f", t * 1e6 / hz / n }') "
        run_wrk paced.lua "${port[$p]}" "$LAT_CONNECTIONS" "$LAT_DURATION"
        read -r offered l50 l99 _ <<<"$RESULT"
        offered_all+="$offered "
        rps[$p]+="$rate "; p50[$p]+="$l50 "; p99[$p]+="$l99 "
        line+=" ($p) ${rate%.*} req/s p99 ${l99} ms;"
    done
    echo "$line"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - started))

# Resident memory of each proxy after every repetition (each has seen all $UIDS uids).
declare -A rss
for p in "${order[@]}"; do
    rss[$p]=$(if [[ -n "${proxy_pid[$p]:-}" ]]; then awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/${proxy_pid[$p]}/status"; else echo -; fi)
done
declare -A m_rps m_p50 m_p99 m_cpu rng_rps rng_p99
# shellcheck disable=SC2086
offered_median=$(median $offered_all)
for p in "${order[@]}"; do
    # shellcheck disable=SC2086
    m_rps[$p]=$(median ${rps[$p]}); m_p50[$p]=$(median ${p50[$p]}); m_p99[$p]=$(median ${p99[$p]})
    # shellcheck disable=SC2086
    m_cpu[$p]=$(if [[ -n "${proxy_pid[$p]:-}" ]]; then median ${cpu[$p]}; else echo -; fi)
    # shellcheck disable=SC2086
    rng_rps[$p]=$(range %d ${rps[$p]}); rng_p99[$p]=$(range %s ${p99[$p]})
done
table="| path | requests/s (median) | vs (c) | vs (f) | proxy CPU µs/request | p50 ms | p99 ms | p99 vs (c) | p99 vs (f) | RSS MiB | requests/s min-max | p99 ms min-max |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for p in "${order[@]}"; do
    table+="
| ${label[$p]} | ${m_rps[$p]%.*} | $(ratio "${m_rps[$p]}" "${m_rps[c]}")x | $(ratio "${m_rps[$p]}" "${m_rps[f]}")x | ${m_cpu[$p]} | ${m_p50[$p]} | ${m_p99[$p]} | $(ratio "${m_p99[$p]}" "${m_p99[c]}")x | $(ratio "${m_p99[$p]}" "${m_p99[f]}")x | ${rss[$p]} | ${rng_rps[$p]} | ${rng_p99[$p]} |"
done

# Each target is judged twice: on the medians, and on the best repetition of each path
# (highest throughput, lowest p99), which other work on the machine can only make worse.
# When the two disagree the noise decides, and the target is not shown: INCONCLUSIVE.
declare -A b_rps b_p99
for p in "${order[@]}"; do
    # shellcheck disable=SC2086
    b_rps[$p]=$(printf '%s\n' ${rps[$p]} | sort -g | tail -1); b_p99[$p]=$(printf '%s\n' ${p99[$p]} | sort -g | head -1)
done
verdicts=()
ok=1
judge "(a) throughput vs (c), target at least 1.0x" "$(ratio "${m_rps[a]}" "${m_rps[c]}")" "$(ratio "${b_rps[a]}" "${b_rps[c]}")" "r >= 1.0"
judge "(a) p99 at ~$RATE requests/s vs (c), target at most 1.0x" "$(ratio "${m_p99[a]}" "${m_p99[c]}")" "$(ratio "${b_p99[a]}" "${b_p99[c]}")" "r <= 1.0"
judge "(a) throughput vs (d), target at least 2x" "$(ratio "${m_rps[a]}" "${m_rps[d]}")" "$(ratio "${b_rps[a]}" "${b_rps[d]}")" "r >= 2.0"
# Issue 15's targets, against the floor.
judge "(g) full chain throughput vs (f) the floor, target at least 0.95x" "$(ratio "${m_rps[g]}" "${m_rps[f]}")" "$(ratio "${b_rps[g]}" "${b_rps[f]}")" "r >= 0.95"
judge "(a) with a Redis lookup vs (d) nginx + Lua + Redis GET, target at least 1.0x" "$(ratio "${m_rps[a]}" "${m_rps[d]}")" "$(ratio "${b_rps[a]}" "${b_rps[d]}")" "r >= 1.0"
judge "(a) with a Redis lookup vs (g) without, target at least 0.9x" "$(ratio "${m_rps[a]}" "${m_rps[g]}")" "$(ratio "${b_rps[a]}" "${b_rps[g]}")" "r >= 0.9"

# --- the report ---
commit=${GRAYGATE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
if [[ -z "${GRAYGATE_COMMIT:-}" ]] && [[ -n "$(git status --porcelain -- src 2>/dev/null)" ]]; then
    commit+=" (with uncommitted changes in src/)"
fi
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
nginx_version=$(nginx -v 2>&1 | sed 's/^nginx version: //')
lua_version=$(dpkg-query -W -f '${Version}' libnginx-mod-http-lua 2>/dev/null || echo unknown)
resty_redis_version=$(dpkg-query -W -f '${Version}' lua-nginx-redis 2>/dev/null || echo unknown)
wrk_version=$(dpkg-query -W -f '${Version}' wrk 2>/dev/null || echo unknown)
redis_version=$(redis-server --version | grep -o 'v=[^ ]*' | cut -d= -f2)
rustc_version=$(rustc -V)

mkdir -p "$(dirname "$OUT")"
# bench/https.sh and bench/scale.sh write sections of their own into the same file: keep them.
https_section=$(sed -n '/^<!-- bench\/https.sh: begin/,/^<!-- bench\/https.sh: end -->/p' "$OUT" 2>/dev/null || true)
scale_section=$(sed -n '/^<!-- bench\/scale.sh: begin/,/^<!-- bench\/scale.sh: end -->/p' "$OUT" 2>/dev/null || true)
threads_section=$(sed -n '/^<!-- bench\/threads.sh: begin/,/^<!-- bench\/threads.sh: end -->/p' "$OUT" 2>/dev/null || true)
{
    cat <<DOC
# Benchmarks

Generated by \`bench/compare.sh\` (\`make bench\`) on $(date -u +%Y-%m-%d) in ${elapsed} s of measuring.
Do not edit by hand: run \`make bench\` again.

## graygate against nginx, same traffic

$table

$(printf '%s\n' "${verdicts[@]}")

- **Traffic**: 10,000 distinct uids in a browser-like \`Cookie\` header
  (\`_ga=...; sid=...; uid=N; tier=trial|paid; theme=dark\`), one uid in 20 paid; half of the
  uids have an assignment stored in Redis. Every proxy sends \`X-Graygate-Version\` (and
  \`X-Forwarded-For\`) upstream; the backend echoes the version, and the routing of a sample of
  uids is checked before measuring.
- **(a)** rules: \`shield-paid\` (tier), \`assigned\` (\`\$assigned\`, Redis, \`cache_ttl: ${CACHE_TTL}s\`),
  \`tail-30pct\` (uid tail), \`split-10pct\` (uid split). **(b)** no identity, no rules.
  **(f)** the floor: \`examples/floor.rs\`, a Pingora proxy with no rule and no header of its
  own (same Pingora, release profile, allocator and peer timeouts as graygate; downstream
  modules off, as graygate's). **(g)** (a) without the store: its rules but \`\$assigned\`.
  **(c)** the same decision without the assignment lookup, in \`map\` and \`split_clients\`.
  **(d)** the same decision as (a) in \`rewrite_by_lua_block\` with lua-resty-redis (pooled
  connections, one \`GET\` per request). **(e)** (d) with a \`lua_shared_dict\` cache (TTL ${CACHE_TTL} s, misses cached too).
- **Setup**: one worker per proxy (graygate \`server.threads: 1\`, \`access_log: off\`; nginx
  \`worker_processes 1\`, \`access_log off\`), pinned to core 0 with \`taskset\`; the nginx
  backend, Redis and wrk pinned to core 1; upstream keep-alive everywhere; loopback only;
  every measured process at niceness ${NICE:-0}.
- **Throughput**: \`wrk -t1 -c$CONNECTIONS -d${DURATION}s\`. **Latency**: \`wrk -t1 -c$LAT_CONNECTIONS -d${LAT_DURATION}s\` with a
  Lua \`delay()\` of 0-$((2 * mean_delay_ms)) ms (mean $mean_delay_ms ms) per connection before each request: an offered
  load of about $RATE requests/s (achieved: median ${offered_median%.*} requests/s over all runs), far below every proxy's capacity (wrk2 is not packaged in
  Debian; a paced wrk measures from each request's send, which is exact when nothing queues).
- **Repetitions**: $REPS, interleaved (every repetition runs every path once, the order rotated
  each time); medians, with the spread across repetitions in the last columns.
- **RSS**: the proxying process's resident memory (\`VmRSS\`) after the last repetition,
  every one of the 10,000 uids having been seen.
- **Proxy CPU**: user + system time of the proxying process (graygate, or the nginx worker)
  during each throughput run, divided by the requests served: the cost of a request, which
  noise on the machine disturbs far less than throughput does.
- **Noise**: load average $load_before before measuring, $load_after after. Other work on
  the machine (compiles) shows up as spread across repetitions; every target is therefore
  judged on the medians and on each path's best repetition, and called inconclusive when the
  two disagree.
- **Where the time goes** (profiles, per-request CPU, proposed fixes): [performance.md](performance.md).

## The decision alone (criterion, \`benches/decide.rs\`)

100 rules using every condition kind; median time per call in ns (95% confidence interval).
DOC
    if [[ -n "$decide_table" ]]; then
        cat <<DOC

| benchmark | ns (median) | 95% CI |
| --- | ---: | ---: |
$decide_table

\`gather\`: the filter chain (\`Facts::gather\`: cookies, uid, tail, tier, internal);
\`decide-first\`: the first rule decides; \`decide-all-100\`: no rule decides (the index's candidates evaluated, then the default);
\`gather+decide\`: both, for 10,000 rotating uids and four paths (what a request pays).
DOC
    else
        printf '\n(not run: CRITERION=0)\n'
    fi
    cat <<DOC

## Machine and versions

- $(nproc) cores: $cpu; $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) memory; $(uname -sr)
- graygate $commit, built by $rustc_version (${BUILD_PROFILE:-release profile}), and the floor beside it
- nginx $nginx_version, libnginx-mod-http-lua $lua_version, lua-nginx-redis (lua-resty-redis) $resty_redis_version
- redis-server $redis_version, wrk $wrk_version
DOC
    if [[ -n "$https_section" ]]; then printf '\n%s\n' "$https_section"; fi
    if [[ -n "$scale_section" ]]; then printf '\n%s\n' "$scale_section"; fi
    if [[ -n "$threads_section" ]]; then printf '\n%s\n' "$threads_section"; fi
} > "$OUT"

echo
echo "$table"
echo
printf '%s\n' "${verdicts[@]}"
echo "written to $OUT"
((ok)) || exit 1
