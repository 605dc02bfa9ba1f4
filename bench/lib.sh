# Shared helpers of the bench/ scripts (sourced, not run).

# The start of a bench script: the packages it needs, the graygate binary in $bin
# ($GRAYGATE_BIN, a binary built elsewhere, or a release build), a scratch directory $work,
# and on exit the end of every process in "${pids[@]}" and of $work.
bench_setup() {
    bash scripts/install-deps.sh bench
    if [[ -n "${GRAYGATE_BIN:-}" ]]; then
        bin=$GRAYGATE_BIN
    else
        cargo build --release --locked --quiet
        bin=target/release/graygate
    fi
    work=$(mktemp -d)
    pids=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# The bare Pingora floor (examples/floor.rs) in $floor_bin: $FLOOR_BIN, else the one built
# beside $GRAYGATE_BIN (dir/examples/floor), else a release build of this tree's.
floor_binary() {
    if [[ -n "${FLOOR_BIN:-}" ]]; then
        floor_bin=$FLOOR_BIN
    elif [[ -n "${GRAYGATE_BIN:-}" ]]; then
        floor_bin=$(dirname "$GRAYGATE_BIN")/examples/floor
    else
        cargo build --release --locked --quiet --example floor
        local target_dir
        target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' || echo target)
        floor_bin=$target_dir/release/examples/floor
    fi
    [[ -x "$floor_bin" ]] || { echo "no floor binary at $floor_bin (cargo build --release --example floor, or FLOOR_BIN)" >&2; exit 2; }
}

# The command prefix of every measured process, in the array $prio: `nice -n $NICE` when
# $NICE is set and this user may use it, else nothing.
measured_priority() {
    prio=()
    if [[ -n "${NICE:-}" ]] && nice -n "$NICE" true 2>/dev/null; then prio=(nice -n "$NICE"); fi
}

bench_cleanup() {
    for pid in "${pids[@]+"${pids[@]}"}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}

# Rules with the versions stable and canary, both served by the backend on port $1, uids
# from X-User-Id, followed by $2 (the rules section and any other).
two_version_rules() { # $1 backend port, $2 the rest
    cat <<RULES
versions: { stable: {}, canary: {} }
default: stable
identity: { uid: [header:X-User-Id] }
services:
  web:
    hosts: ["*"]
    groups:
      stable: { peers: ["127.0.0.1:$1"] }
      canary: { peers: ["127.0.0.1:$1"] }
$2
RULES
}

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until something listens on port $1, up to $2 tenths of a second (default 100: 10 s).
wait_port() {
    for _ in $(seq "${2:-100}"); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# "lo-hi" of the values after $1, each printed with the printf format $1.
range() { # $1 printf format of one value, then the values
    local fmt=$1; shift
    printf '%s\n' "$@" | sort -g | awk -v f="$fmt" 'NR==1 {lo=$1} {hi=$1} END {printf f "-" f, lo, hi}'
}

# $1 / $2 with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# A target judged on the medians and on the best repetitions: PASS when both meet it, FAIL
# when neither does, INCONCLUSIVE (noise) otherwise. Appends to the caller's "verdicts" array
# and sets its "ok" to 0 unless PASS.
judge() { # $1 description, $2 median-based ratio, $3 best-based ratio, $4 awk test on r, $5 unit (default x)
    local on_median on_best u=${5:-x}
    on_median=$(awk -v r="$2" "BEGIN { print ($4) ? 1 : 0 }"); on_best=$(awk -v r="$3" "BEGIN { print ($4) ? 1 : 0 }")
    if ((on_median && on_best)); then verdicts+=("PASS: $1: ${2}$u on the medians, ${3}$u on the best repetitions")
    elif ((!on_median && !on_best)); then verdicts+=("FAIL: $1: ${2}$u on the medians, ${3}$u on the best repetitions"); ok=0
    else verdicts+=("INCONCLUSIVE (noise): $1: ${2}$u on the medians, ${3}$u on the best repetitions"); ok=0
    fi
}

# The median of the arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# The processes below run pinned to core 1 (the proxies measured get core 0), under the
# caller's "${prio[@]}" (nice), and are appended to "${pids[@]}" for its cleanup; $work is the
# caller's scratch directory.

# An nginx backend on port $1, answering 200 from memory with the X-Graygate-Version it was
# sent, so a routing check can read each proxy's decision.
start_backend() {
    mkdir -p "$work/backend"
    cat > "$work/backend/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/backend/nginx.pid;
error_log $work/backend/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$1 backlog=4096;
        keepalive_requests 1000000;
        location / { return 200 "\$http_x_graygate_version\n"; }
    }
}
NGINX
    "${prio[@]}" taskset -c 1 nginx -c "$work/backend/nginx.conf" -p "$work/backend" & pids+=($!)
    wait_port "$1"
}

# A throw-away redis-server on port $1: no persistence.
start_redis() {
    "${prio[@]}" taskset -c 1 redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >/dev/null & pids+=($!)
    wait_port "$1"
}

# A wrk script on $work/uids.lua sending `X-User-Id: 0..$1-1` in turn and printing
# "NON2XX n" (failed requests of every kind) at the end.
write_uid_script() {
    cat > "$work/uids.lua" <<LUA
local n = 0
request = function()
    n = (n + 1) % $1
    return wrk.format("GET", "/", { ["X-User-Id"] = tostring(n) })
end
done = function(summary, latency, requests)
    io.write(string.format("NON2XX %d\n", summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA
}

# Requests/s of wrk (pinned to core 1, -c$CONNECTIONS) on port $1 for $2 seconds with the uid
# script; a run with any failed request stops the benchmark.
uid_rate() {
    local out errors
    out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$2s" -s "$work/uids.lua" "http://127.0.0.1:$1/")
    errors=$(awk '/^NON2XX/ {print $2}' <<<"$out")
    if [[ "$errors" != "0" ]]; then echo "errors during the run on port $1: $errors" >&2; echo "$out" >&2; exit 1; fi
    awk '/^Requests\/sec/ {print $2}' <<<"$out"
}

# A graygate named $1 on port $2 (admin on $3) with the rules file $4 and extra config $5,
# one worker pinned to core 0, under the caller's "${wrap[@]}"; its pid in the caller's
# proxy_pid[$1]. With the caller's GG_TOKEN set, the admin API takes that bearer token.
start_graygate() { # $1 name, $2 port, $3 admin port, $4 rules yaml, $5 extra conf
    local token_env=""
    [[ -n "${GG_TOKEN:-}" ]] && token_env=", token_env: GG_BENCH_TOKEN"
    mkdir -p "$work/$1/rules"
    printf '%s\n' "$4" > "$work/$1/rules/rules.yaml"
    cat > "$work/$1/graygate.yaml" <<CONF
listen: ["127.0.0.1:$2"]
admin: { listen: "127.0.0.1:$3"$token_env }
rules: rules
access_log: off
server: { threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: gg.pid, upgrade_sock: gg.sock }
$5
CONF
    GG_BENCH_TOKEN=${GG_TOKEN:-} RUST_LOG=warn "${prio[@]}" taskset -c 0 "${wrap[@]}" "$bin" run -c "$work/$1/graygate.yaml" 2>"$work/$1.log" & pids+=($!)
    # A minute; ten under valgrind (10,000 rules load in minutes there, with cache simulation)
    wait_port "$2" $((${#wrap[@]} ? 6000 : 600))
    proxy_pid[$1]=$!
}

# wrk on core 1 with the script $work/$1 (which prints ERRORS and RESULT lines) against port
# $2: $3 connections for $4 seconds. Sets RESULT="rate p50 p99 p999 max requests"; any error
# ends the caller.
run_wrk() { # $1 script, $2 port, $3 connections, $4 seconds
    local out errors
    out=$(timeout $(($4 + 30)) "${prio[@]}" taskset -c 1 wrk -t1 -c"$3" -d"$4s" --timeout 5s -s "$work/$1" "http://127.0.0.1:$2/")
    errors=$(awk '/^ERRORS/ {print $2}' <<<"$out")
    if [[ "$errors" != "0" ]]; then echo "errors during the run on port $2: $errors" >&2; echo "$out" >&2; exit 1; fi
    RESULT=$(awk '/^RESULT/ {print $2, $3, $4, $5, $6, $7}' <<<"$out")
}

# Under callgrind (PROFILE=1): 10 s of warm-up on port $1 (connections, caches), then the
# instructions process $2 executes, all its threads, during PROFILE_SECONDS of `wrk -c8`
# with $work/throughput.lua, its outputs in $work/callgrind. Sets SERVED (requests) and
# PER_REQUEST (instructions per request).
callgrind_count() { # $1 port, $2 pid
    local instructions
    run_wrk throughput.lua "$1" 8 10
    callgrind_control --zero "$2" >/dev/null 2>&1
    run_wrk throughput.lua "$1" 8 "$PROFILE_SECONDS"
    read -r _ _ _ _ _ SERVED <<<"$RESULT"
    callgrind_control --dump "$2" >/dev/null 2>&1
    sleep 1
    instructions=$(awk '/^(summary|totals):/ { print $2; exit }' "$(ls -t "$work/callgrind/$2".* | head -1)")
    PER_REQUEST=$((instructions / SERVED))
}

# Replaces the section of bench/$1.sh in the file $2 by $3 (from its begin marker to its end
# marker), or appends it.
write_section() { # $1 script name, $2 file, $3 section text
    touch "$2"
    SECTION=$3 NAME=$1 python3 - "$2" <<'PY'
import os, re, sys
path = sys.argv[1]
text = open(path).read()
section, name = os.environ["SECTION"], re.escape(os.environ["NAME"])
pattern = re.compile(rf"<!-- bench/{name}.sh: begin.*?<!-- bench/{name}.sh: end -->", re.S)
if pattern.search(text):
    text = pattern.sub(lambda _: section, text)
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(text)
PY
}

# Writes $work/throughput.lua and $work/paced.lua from the wrk Lua in $work/$1 (its init and
# request functions): both get the report run_wrk reads (ERRORS and RESULT lines), paced.lua
# also a random delay() before each request, of mean $2 connections / $3 requests/s (set in
# mean_delay_ms), so that the offered load is about $3 requests/s whatever the proxy.
wrk_scripts() { # $1 Lua file in $work, $2 paced connections, $3 offered requests/s
    local report
    report=$(cat <<'LUA'
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("ERRORS %d\n", e.status + e.connect + e.read + e.write + e.timeout))
    io.write(string.format("RESULT %.1f %.3f %.3f %.3f %.3f %d\n", summary.requests / (summary.duration / 1e6),
        latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, latency.max / 1000,
        summary.requests))
end
LUA
)
    mean_delay_ms=$(awk -v c="$2" -v r="$3" 'BEGIN { printf "%d", c * 1000 / r }')
    ((mean_delay_ms >= 1)) || { echo "connections/rate of the paced runs must be at least 1 ms" >&2; exit 2; }
    printf '%s\n%s\n' "$(cat "$work/$1")" "$report" > "$work/throughput.lua"
    printf '%s\ndelay = function() return math.random(0, 2 * %d) end\n%s\n' "$(cat "$work/$1")" "$mean_delay_ms" "$report" > "$work/paced.lua"
}
