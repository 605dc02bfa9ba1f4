#!/usr/bin/env bash
# Cost at SaaS scale (issue 18), side by side in one run: the criterion curves of decide and
# of the service lookup (benches/scale.rs), proxy throughput with 10 to 10,000 rules and 10 to
# 2,000 tenant hosts on the same traffic, memory per rule, and p99 with reloads under load;
# writes the scale section of docs/benchmarks.md (replaced in place, the rest untouched).
#
#   bench/scale.sh                        # or: make bench
#   REPS=2 DURATION=3 bench/scale.sh      # a quicker, noisier run
#   CRITERION=0 bench/scale.sh            # the proxy runs only
#   PAIRED_LAUNCHES=0 bench/scale.sh      # without the paired throughput runs (see below)
#   PROFILE=1 bench/scale.sh              # instructions per request under callgrind instead
#                                         # (every rule set; KEEP_PROFILES=dir keeps the outputs)
#   GRAYGATE_BIN=... SCALE_BENCH=... bench/scale.sh   # binaries built elsewhere (the
#                                         # graygate binary, benches/scale.rs's bench binary)
#
# The rules: bench/tenants.py (the shape of benches/support/tenants.rs): per tenant a host
# rule, a tenant-header rule, a list of ten uids, a split on a host and path, a suffix host
# rule, after two rules without a key condition. One nginx backend (bench/lib.sh) behind
# every group. Each graygate runs one worker (`server.threads: 1`) pinned to core 0; the
# backend and wrk to core 1. Traffic: 4,000 requests for random tenants among 2,000 (their
# host, a `*.t.example.net` host or the shared app host with `X-Tenant`; four paths; a uid
# cookie, a tenth of them POST), the same for every rule set. The throughput runs take one
# graygate at a time; the paired ones the smallest and the largest rule set at once, sharing
# core 0 (the host's noise cancelled; see "throughput, paired").
# Memory: VmRSS of each graygate after loading and warming up, minus that of a graygate with
# no rules and one service, per rule. Reload under load: the 10,000-rule graygate at a fixed
# rate (a paced wrk, as compare.sh's latency runs), once alone and once with a new variant of
# its rules written and `POST /-/reload` every RELOAD_EVERY seconds; the difference in p99.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}           # seconds per throughput run
LAT_DURATION=${LAT_DURATION:-5}   # seconds per fixed-rate run (with and without reloads)
REPS=${REPS:-3}
CONNECTIONS=${CONNECTIONS:-32}
RATE=${RATE:-5000}                # offered requests/s of the fixed-rate runs
LAT_CONNECTIONS=${LAT_CONNECTIONS:-50}
RELOAD_EVERY=${RELOAD_EVERY:-1}   # seconds between a reload's answer and the next reload
PAIRS=${PAIRS:-8}                 # pairs of fixed-rate runs, without and with reloads
THROUGHPUT=${THROUGHPUT:-1}       # 0: skip the throughput runs (the reload pairs only)
PAIRED_LAUNCHES=${PAIRED_LAUNCHES:-4} # launches of the paired throughput runs (0: none)
PAIRED_ROUNDS=${PAIRED_ROUNDS:-6} # rounds per launch
PAIRED_DURATION=${PAIRED_DURATION:-3} # seconds per paired round
OUT=${OUT:-docs/benchmarks.md}
CRITERION=${CRITERION:-1}         # 0: skip benches/scale.rs
NICE=${NICE:--10}                 # niceness of every measured process, as in compare.sh
# rules:hosts per graygate; 10000:10 tells the rules' memory and cost from the hosts'
SIZES=${SIZES:-"10:10 100:100 1000:1000 10000:10 10000:2000"}
GG_TOKEN=scale-bench   # the admin token of every graygate (start_graygate)
# PROFILE=1: every graygate runs under valgrind's callgrind and, instead of timing anything,
# the instructions the whole process executes (workers and background tasks) are counted
# for PROFILE_SECONDS of `wrk -c8` on the same traffic, per request served: how the cost of
# a request grows with the rules and hosts, free of the machine's noise. Nothing is written.
PROFILE=${PROFILE:-0}
PROFILE_SECONDS=${PROFILE_SECONDS:-15}
# PROFILE_CACHE=1 (with PROFILE=1): callgrind simulates the caches too, with a last level of
# the size of one core's L2 here (1 MiB), so each function's data reads that miss it are
# counted (D1mr, DLmr in callgrind_annotate; KEEP_PROFILES=dir keeps the outputs): what a
# larger working set costs, which instructions alone do not show.
PROFILE_CACHE=${PROFILE_CACHE:-0}
if [[ "$PROFILE" == 1 ]]; then CRITERION=0; fi
((PAIRS >= 1)) || { echo "PAIRS must be at least 1 (the reload pairs; THROUGHPUT=0 skips the other runs)" >&2; exit 2; }

bash scripts/install-deps.sh bench
if [[ -n "${GRAYGATE_BIN:-}" ]]; then
    bin=$GRAYGATE_BIN             # a binary built elsewhere (its commit: GRAYGATE_COMMIT)
else
    cargo build --release --locked --quiet
    bin=target/release/graygate
fi
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' || echo target)

wrap=()
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]+"${pids[@]}"}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n "${KEEP_PROFILES:-}" && -d "$work/callgrind" ]]; then
        mkdir -p "$KEEP_PROFILES" && cp -a "$work/callgrind/." "$KEEP_PROFILES/" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/lib.sh
source bench/lib.sh
measured_priority

# --- criterion: the curves of decide and of the service lookup ---
criterion_table="(not run: CRITERION=0)"
loading="(not run: CRITERION=0)"
if [[ "$CRITERION" == 1 ]]; then
    echo "== criterion: benches/scale.rs"
    criterion=(cargo bench --locked --bench scale --)
    if [[ -n "${SCALE_BENCH:-}" ]]; then
        criterion=("$SCALE_BENCH" --bench)   # a bench binary built elsewhere
    else
        cargo bench --locked --bench scale --no-run --quiet
    fi
    "${prio[@]}" "${criterion[@]}" --warm-up-time 1 --measurement-time 2 --noplot 2>&1 | tee "$work/criterion.log" |
        grep -E '^(decide|gather|service|==|  *[0-9]+ rules|uid_in)|time:' || true
    loading=$(grep -E '^ *[0-9]+ rules:|^uid_in' "$work/criterion.log" | sed 's/^ */- /' || true)
    criterion_table=$(python3 - "$target_dir/criterion" <<'PY'
import json, os, sys
root = sys.argv[1]
sizes = ["10", "100", "1000", "10000"]
rows = ["| benchmark | 10 | 100 | 1,000 | 10,000 | 10,000 / 10 |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
for group in ["decide-worst", "decide-linear-worst", "decide-mixed", "gather+decide", "service-find"]:
    ns = []
    for n in sizes:
        try:
            ns.append(json.load(open(os.path.join(root, group, n, "new", "estimates.json")))["median"]["point_estimate"])
        except OSError:
            ns.append(None)
    cells = [f"{v:.1f}" if v is not None else "-" for v in ns]
    ratio = f"{ns[-1] / ns[0]:.2f}x" if ns[0] and ns[-1] else "-"
    rows.append(f"| `{group}` | " + " | ".join(cells) + f" | {ratio} |")
print("\n".join(rows))
PY
)
fi

# --- processes ---
if [[ "$PROFILE" == 1 ]]; then
    command -v valgrind >/dev/null || { echo "PROFILE=1 needs valgrind" >&2; exit 2; }
    mkdir -m 1777 "$work/callgrind" && chmod 711 "$work"
    wrap=(valgrind --tool=callgrind --callgrind-out-file="$work/callgrind/%p")
    if [[ "$PROFILE_CACHE" == 1 ]]; then wrap+=(--cache-sim=yes --LL=1048576,16,64); fi
fi
backend=$(free_port)
start_backend "$backend"
declare -A port admin proxy_pid rules_of
names=(empty)
rules_of[empty]="0:0"
for size in $SIZES; do names+=("r${size%%:*}h${size##*:}"); rules_of["r${size%%:*}h${size##*:}"]=$size; done
for name in "${names[@]}"; do
    port[$name]=$(free_port); admin[$name]=$(free_port)
    IFS=: read -r n h <<<"${rules_of[$name]}"
    start_graygate "$name" "${port[$name]}" "${admin[$name]}" "$(python3 bench/tenants.py "$n" "$h" "127.0.0.1:$backend")" ""
done
smallest=${names[1]}; largest=${names[-1]}

# --- the traffic ---
cat > "$work/tenants.lua" <<'LUA'
-- 4,000 requests for random tenants among 2,000 (a fixed seed): the same for every rule set.
local reqs, n = {}, 0
init = function(args)
    math.randomseed(18)
    local paths = { "/", "/api/orders", "/new/home", "/static/app.js" }
    for i = 1, 4000 do
        local t = math.random(0, 1999)
        local kind = math.random(0, 2)
        local host = (kind == 0 and ("t" .. t .. ".example.com")) or (kind == 1 and ("www.t" .. t .. ".example.net")) or "app.example.com"
        local uid = (math.random(0, 1) == 0) and (t .. "0000" .. math.random(0, 9)) or tostring(math.random(0, 999999))
        local method = (math.random(0, 9) == 0) and "POST" or "GET"
        reqs[i] = wrk.format(method, paths[math.random(1, 4)], {
            ["Host"] = host, ["X-Tenant"] = "t" .. t,
            ["Cookie"] = "_ga=GA1.2.1234567890.1700000000; sid=0f3a9c2e7b1d4e5f; uid=" .. uid .. "; tier=trial; theme=dark" })
    end
end
request = function()
    n = n % 4000 + 1
    return reqs[n]
end
LUA
wrk_scripts tenants.lua "$LAT_CONNECTIONS" "$RATE"

# The decisions differ by rule set, never the answers: every request is served (wrk counts
# non-2xx as errors). A spot check that the large set routes by its rules:
got=$(curl -sf --max-time 5 -H "Host: t7.example.com" -H "Cookie: uid=1231" "http://127.0.0.1:${port[$largest]}/")
[[ $got == canary ]] || { echo "($largest) routed t7's uid 1231 to '$got', expected canary (rule host7)" >&2; exit 1; }
got=$(curl -sf --max-time 5 -H "Host: app.example.com" -H "Cookie: uid=700003" "http://127.0.0.1:${port[$largest]}/")
[[ $got == beta ]] || { echo "($largest) routed uid 700003 to '$got', expected beta (rule list7)" >&2; exit 1; }

echo "warming up"
for name in "${names[@]}"; do run_wrk throughput.lua "${port[$name]}" "$CONNECTIONS" 2; done

if [[ "$PROFILE" == 1 ]]; then
    declare -A served_of per_request
    for name in "${names[@]}"; do
        callgrind_count "${port[$name]}" "${proxy_pid[$name]}"
        served_of[$name]=$SERVED; per_request[$name]=$PER_REQUEST
        echo "($name) ${per_request[$name]} instructions per request over ${served_of[$name]} requests"
    done
    echo
    echo "| rules | tenant hosts | requests | instructions per request | vs $smallest |"
    echo "| ---: | ---: | ---: | ---: | ---: |"
    for name in "${names[@]}"; do
        IFS=: read -r n h <<<"${rules_of[$name]}"
        echo "| $n | $h | ${served_of[$name]} | ${per_request[$name]} | $(ratio "${per_request[$name]}" "${per_request[$smallest]}")x |"
    done
    exit 0
fi

# --- memory ---
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
declare -A rss
for name in "${names[@]}"; do rss[$name]=$(rss_kib "${proxy_pid[$name]}"); done

# --- throughput, interleaved ---
declare -A rps
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)
count=${#names[@]}
for ((r = 1; r <= REPS * THROUGHPUT; r++)); do
    rotated=("${names[@]:$((r % count))}" "${names[@]:0:$((r % count))}")
    line="rep $r:"
    for name in "${rotated[@]}"; do
        run_wrk throughput.lua "${port[$name]}" "$CONNECTIONS" "$DURATION"
        read -r rate _ <<<"$RESULT"
        rps[$name]+="$rate "
        line+=" ($name) ${rate%.*} req/s;"
    done
    echo "$line"
done

# --- throughput, paired ---
# The runs above are taken one after another, and on this kind of machine one 5-s run of one
# graygate moves by up to 30%: the host's load changes within seconds. Two processes loaded
# at the same time on one core live through the same moments, so the ratio of their request
# rates is the ratio of their costs per request with that noise cancelled. Each process also
# draws its own luck at start (where its memory lands; a few percent either way), which runs
# of one process never average out: every launch starts a fresh pair. A launch: the smallest
# and the largest rule set, both pinned to core 0 (CFS gives each half of it), a wrk each on
# core 1, PAIRED_ROUNDS rounds of PAIRED_DURATION s; its ratio is the median of its rounds'.
# The pair shares the core's caches and TLB, which costs the larger working set more than
# running alone does: a conservative estimate. The two start in turns (the smaller first in
# odd launches, the larger in even ones): the order moved control pairs by 1-2%. A control
# launch pairs two smallest rule sets (the method's own bias, ideally 1.00).
paired_launch() { # $1 tag, $2 rules:hosts of A, $3 rules:hosts of B, $4 which starts first (a or b); sets LAUNCH_RATIO and LAUNCH_ROUNDS
    local a="$1-a" b="$1-b" r ra rb ratios="" name n h order
    local -A size_of=(["$a"]="$2" ["$b"]="$3")
    order=("$a" "$b"); [[ "$4" == a ]] || order=("$b" "$a")
    for name in "${order[@]}"; do
        IFS=: read -r n h <<<"${size_of[$name]}"
        port[$name]=$(free_port); admin[$name]=$(free_port)
        start_graygate "$name" "${port[$name]}" "${admin[$name]}" "$(python3 bench/tenants.py "$n" "$h" "127.0.0.1:$backend")" ""
    done
    run_wrk throughput.lua "${port[$a]}" "$CONNECTIONS" 2; run_wrk throughput.lua "${port[$b]}" "$CONNECTIONS" 2
    for ((r = 1; r <= PAIRED_ROUNDS; r++)); do
        (run_wrk throughput.lua "${port[$a]}" "$CONNECTIONS" "$PAIRED_DURATION" && echo "$RESULT") > "$work/paired-a" &
        local wa=$!
        (run_wrk throughput.lua "${port[$b]}" "$CONNECTIONS" "$PAIRED_DURATION" && echo "$RESULT") > "$work/paired-b" &
        local wb=$!
        if ! wait "$wa" || ! wait "$wb"; then echo "a paired run failed" >&2; exit 1; fi
        read -r ra _ < "$work/paired-a"; read -r rb _ < "$work/paired-b"
        ratios+="$(ratio "$rb" "$ra") "
    done
    kill "${proxy_pid[$a]}" "${proxy_pid[$b]}" 2>/dev/null || true
    wait "${proxy_pid[$a]}" "${proxy_pid[$b]}" 2>/dev/null || true
    # shellcheck disable=SC2086
    LAUNCH_RATIO=$(median $ratios); LAUNCH_ROUNDS=$ratios
}
paired="" paired_report="(not run: PAIRED_LAUNCHES=0 or THROUGHPUT=0)"
if ((PAIRED_LAUNCHES > 0 && THROUGHPUT)); then
    paired_report=""
    for ((l = 1; l <= PAIRED_LAUNCHES; l++)); do
        paired_launch "pair$l" "${rules_of[$smallest]}" "${rules_of[$largest]}" "$( ((l % 2)) && echo a || echo b)"
        paired+="$LAUNCH_RATIO "
        paired_report+="launch $l: ${LAUNCH_RATIO}x (rounds: ${LAUNCH_ROUNDS% }); "
        echo "paired launch $l, $largest / $smallest: ${LAUNCH_RATIO}x (rounds ${LAUNCH_ROUNDS})"
    done
    paired_launch control "${rules_of[$smallest]}" "${rules_of[$smallest]}" a
    control=$LAUNCH_RATIO
    paired_report+="control ($smallest / $smallest): ${control}x (rounds: ${LAUNCH_ROUNDS% })"
    echo "paired control, $smallest / $smallest: ${control}x (rounds ${LAUNCH_ROUNDS})"
fi

# --- reload under load ---
# PAIRS pairs of fixed-rate runs of LAT_DURATION s on the largest graygate, one without
# reloads and one with a reload started every RELOAD_EVERY s after the last one answered,
# in alternating order (quiet first in odd pairs, reloading first in even ones) so that the
# machine's drift falls on both sides alike. The two variants of the rules alternate, so
# every reload is a new generation; they are written before the runs (no generating during
# them). Reported: the median p99 of each kind and the median of the pairs' differences.
IFS=: read -r big_n big_h <<<"${rules_of[$largest]}"
for v in 1 2; do python3 bench/tenants.py "$big_n" "$big_h" "127.0.0.1:$backend" "$v" > "$work/variant$v.yaml"; done
quiet_run() {
    run_wrk paced.lua "${port[$largest]}" "$LAT_CONNECTIONS" "$LAT_DURATION"
    read -r _ q50 q99 _ <<<"$RESULT"
}
reloading_run() {
    taskset -c 1 python3 bench/reloader.py "http://127.0.0.1:${admin[$largest]}/-/reload" "$GG_TOKEN" \
        "$work/$largest/rules/rules.yaml" "$work/variant1.yaml" "$work/variant2.yaml" "$RELOAD_EVERY" "$work/reloads.txt" &
    reloader_pid=$!; pids+=("$reloader_pid")
    sleep 0.3 # its start-up done before the measured run (its first reload comes later)
    run_wrk paced.lua "${port[$largest]}" "$LAT_CONNECTIONS" "$LAT_DURATION"
    kill "$reloader_pid" 2>/dev/null || true; wait "$reloader_pid" 2>/dev/null || true
    read -r _ l50 l99 _ <<<"$RESULT"
    # let a reload still compiling finish before the next run
    sleep 2
}
declare -A p99 p50
diffs=""
for ((r = 1; r <= PAIRS; r++)); do
    if ((r % 2)); then quiet_run; reloading_run; else reloading_run; quiet_run; fi
    p99[quiet]+="$q99 "; p99[reloading]+="$l99 "; p50[quiet]+="$q50 "; p50[reloading]+="$l50 "
    diffs+="$(awk -v a="$l99" -v b="$q99" 'BEGIN { printf "%.3f", a - b }') "
    echo "pair $r: p99 $q99 ms without reloads, $l99 ms with reloads (p50 $q50 / $l50 ms)"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - started))
touch "$work/reloads.txt"
reloads=$(grep -c '^200 ' "$work/reloads.txt" || true)
generation=$(curl -s "http://127.0.0.1:${admin[$largest]}/metrics" | awk '/^graygate_rules_generation/ {print $2}')
failed_reloads=$(grep -vc '^200 ' "$work/reloads.txt" || true)
# shellcheck disable=SC2046
reload_ms=$(median $(awk '/^200 / {print $2 * 1000}' "$work/reloads.txt"))
reload_worst=$(awk '/^200 / {v = $2 * 1000; if (v > m) m = v} END {printf "%.0f", m}' "$work/reloads.txt")

# --- the report ---
if ((THROUGHPUT)); then
    # shellcheck disable=SC2086
    base_rps=$(median ${rps[$smallest]})
    table="| rules | tenant hosts | requests/s (median) | vs $smallest | requests/s min-max | RSS MiB | RSS per rule |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for name in "${names[@]}"; do
        IFS=: read -r n h <<<"${rules_of[$name]}"
        # shellcheck disable=SC2086
        m=$(median ${rps[$name]})
        per_rule="-"
        ((n > 0)) && per_rule="$(awk -v a="${rss[$name]}" -v b="${rss[empty]}" -v n="$n" 'BEGIN { printf "%.1f KiB", (a - b) / n }')"
        # shellcheck disable=SC2086
        table+="
| $n | $h | ${m%.*} | $(ratio "$m" "$base_rps")x | $(range %d ${rps[$name]}) | $(awk -v k="${rss[$name]}" 'BEGIN { printf "%.1f", k / 1024 }') | $per_rule |"
    done
else
    table="(throughput not run: THROUGHPUT=0) RSS: $(for name in "${names[@]}"; do printf '%s %.1f MiB; ' "$name" "$(awk -v k="${rss[$name]}" 'BEGIN { print k / 1024 }')"; done)"
fi
# shellcheck disable=SC2086
quiet=$(median ${p99[quiet]}); loaded=$(median ${p99[reloading]})
# shellcheck disable=SC2086
quiet50=$(median ${p50[quiet]}); loaded50=$(median ${p50[reloading]})
# shellcheck disable=SC2086
delta=$(median $diffs)
# shellcheck disable=SC2086
worse=$(printf '%s\n' $diffs | awk '$1 > 0 {n++} END {print n + 0}')
verdicts=()
ok=1
if ((THROUGHPUT)); then
    # shellcheck disable=SC2086
    best_large=$(printf '%s\n' ${rps[$largest]} | sort -g | tail -1); best_small=$(printf '%s\n' ${rps[$smallest]} | sort -g | tail -1)
    # shellcheck disable=SC2086
    judge "throughput with ${rules_of[$largest]%%:*} rules and ${rules_of[$largest]##*:} hosts vs ${rules_of[$smallest]%%:*} rules, target at least 0.95x" \
        "$(ratio "$(median ${rps[$largest]})" "$base_rps")" "$(ratio "$best_large" "$best_small")" "r >= 0.95"
fi
if [[ -n "$paired" ]]; then
    # shellcheck disable=SC2086
    paired_median=$(median $paired)
    # shellcheck disable=SC2086
    paired_range=$(range %s $paired)
    what="paired throughput with ${rules_of[$largest]%%:*} rules and ${rules_of[$largest]##*:} hosts vs ${rules_of[$smallest]%%:*} rules (both at once on one core; median of $PAIRED_LAUNCHES launches, range $paired_range; control ${control}x), target at least 0.95x"
    if awk -v r="$paired_median" 'BEGIN { exit !(r >= 0.95) }'; then verdicts+=("PASS: $what: ${paired_median}x")
    else verdicts+=("FAIL: $what: ${paired_median}x"); ok=0
    fi
fi
# shellcheck disable=SC2086
best_quiet=$(printf '%s\n' ${p99[quiet]} | sort -g | head -1); best_loaded=$(printf '%s\n' ${p99[reloading]} | sort -g | head -1)
best_delta=$(awk -v a="$best_loaded" -v b="$best_quiet" 'BEGIN { printf "%.2f", a - b }')
judge "p99 moved by reloads under load (median of $PAIRS paired differences; best against best), target below 1 ms" "$delta" "$best_delta" "r < 1.0" " ms"
[[ "$failed_reloads" == 0 ]] || { verdicts+=("FAIL: $failed_reloads reloads did not answer 200"); ok=0; }

commit=${GRAYGATE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
if [[ -z "${GRAYGATE_COMMIT:-}" ]] && [[ -n "$(git status --porcelain -- src 2>/dev/null)" ]]; then
    commit+=" (with uncommitted changes in src/)"
fi
section=$(cat <<DOC
<!-- bench/scale.sh: begin (generated, do not edit by hand) -->
## Rules and services at SaaS scale (\`bench/scale.sh\`)

Generated by \`bench/scale.sh\` (\`make bench\`) on $(date -u +%Y-%m-%d) in ${elapsed} s of measuring;
graygate $commit. The per-tenant rule set of issue 18 (\`bench/tenants.py\`, the shape of
\`benches/support/tenants.rs\`): per tenant a host rule (with a uid tail), a tenant-header rule
on \`/api\`, a list of ten uids, a split on a host and \`/new\`, a \`*.suffix\` host rule with a
method, after two rules without a key condition; one service per tenant host.

### The decision and the service lookup (criterion, \`benches/scale.rs\`)

Median ns per call by number of rules (\`service-find\`: by number of tenants, each an exact
host with two prefixes and a \`*.suffix\` host, plus \`*\`).

$criterion_table

\`decide-worst\`: a request that fits every key of tenant 0 (host, tenant header, uid list's
tenant) and that no rule decides: every candidate evaluated, then the default.
\`decide-linear-worst\`: the same with every rule tried in turn (what \`decide\` cost before the
index). \`decide-mixed\`: 1,000 requests for random tenants, hosts, paths and uids;
\`gather+decide\`: the same with \`Facts::gather\` in the loop. Loading (compile time, heap held by
the compiled rules, from a counting allocator):

$loading

### Proxy throughput and memory

$table

Paired, ${rules_of[$largest]%%:*} rules and ${rules_of[$largest]##*:} hosts against ${rules_of[$smallest]%%:*} rules loaded at the same time on one core (a fresh pair per
launch, $PAIRED_ROUNDS rounds of ${PAIRED_DURATION} s; each launch's median of its rounds' ratios): $paired_report.

Reload under load, ${rules_of[$largest]%%:*} rules and ${rules_of[$largest]##*:} services at ~$RATE requests/s ($PAIRS pairs of ${LAT_DURATION}-s runs, one without
reloads and one with a new generation written and \`POST /-/reload\` ${RELOAD_EVERY} s after the previous one
answered, in alternating order): p99 ${quiet} ms without reloads, ${loaded} ms with them (medians);
median of the pairs' differences ${delta} ms, the reloading run worse in $worse of $PAIRS pairs;
p50 ${quiet50} / ${loaded50} ms. Per-pair p99 without: ${p99[quiet]}ms; with: ${p99[reloading]}ms.
$reloads reloads, each answered in a median of ${reload_ms:-?} ms (worst ${reload_worst} ms), compiled on
the reload thread (the idle scheduling class; before f53ac2b nice +10) on the worker's core; generation ${generation:-?} serving at the end.

$(printf '%s\n' "${verdicts[@]}")

- **Setup**: every graygate with \`server.threads: 1\`, \`access_log: off\`, pinned to core 0; the nginx
  backend and wrk pinned to core 1; loopback; niceness ${NICE:-0}. Throughput: \`wrk -t1 -c$CONNECTIONS -d${DURATION}s\`,
  $REPS interleaved repetitions (order rotated), medians. The same 4,000 requests for every rule set.
  Paired: the two graygates both on core 0 and a wrk each on core 1, run at once: the host's
  noise falls on both alike, while the pair shares core 0's caches and TLB (harder on the larger
  working set than running alone: a conservative figure).
- **RSS**: VmRSS after loading and a warm-up run; per rule: minus the graygate with no rules
  and one service (${rss[empty]} KiB), divided by the rules (a row with many hosts counts its
  services in too: compare the rows of equal rules).
- **Noise**: load average $load_before before, $load_after after.
<!-- bench/scale.sh: end -->
DOC
)
write_section scale "$OUT" "$section"

echo
echo "$table"
echo
printf '%s\n' "${verdicts[@]}"
echo "written to $OUT (section bench/scale.sh)"
((ok)) || exit 1
