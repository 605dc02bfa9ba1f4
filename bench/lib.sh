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
$(web_service "$1")
$2
RULES
}

# The one service of the two-version rule sets: every host, stable and canary both on the
# backend at port $1.
web_service() { # $1 backend port
    cat <<SERVICE
services:
  web:
    hosts: ["*"]
    groups:
      stable: { peers: ["127.0.0.1:$1"] }
      canary: { peers: ["127.0.0.1:$1"] }
SERVICE
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
# proxy_pid[$1]. With $6 ("certificate key", PEM files), a TLS listener instead of a plain
# one. With the caller's GG_TOKEN set, the admin API takes that bearer token.
start_graygate() { # $1 name, $2 port, $3 admin port, $4 rules yaml, $5 extra conf, $6 TLS "cert key"
    local token_env="" listen="listen: [\"127.0.0.1:$2\"]" cert key
    [[ -n "${GG_TOKEN:-}" ]] && token_env=", token_env: GG_BENCH_TOKEN"
    if [[ -n "${6:-}" ]]; then
        read -r cert key <<<"$6"
        listen="listeners: [{ name: https, listen: \"127.0.0.1:$2\", tls: { certificates: [{ cert: \"$cert\", key: \"$key\" }] } }]"
    fi
    mkdir -p "$work/$1/rules"
    printf '%s\n' "$4" > "$work/$1/rules/rules.yaml"
    cat > "$work/$1/graygate.yaml" <<CONF
$listen
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

# What every nginx peer does to forward (bench/lib.sh start_nginx_peer, bench/threads.sh): the
# two upstreams on the backend at port $1, kept alive, for the http block; then, with
# `nginx_forwarding`, the location's proxying to the upstream named by $gg_version with the
# headers graygate adds.
nginx_upstreams() { # $1 backend port
    cat <<NGINX
    upstream stable { server 127.0.0.1:$1; keepalive 128; keepalive_requests 1000000; }
    upstream canary { server 127.0.0.1:$1; keepalive 128; keepalive_requests 1000000; }
NGINX
}
nginx_forwarding() {
    # shellcheck disable=SC2016 # nginx's variables, not the shell's
    printf '%s\n' \
        '            proxy_pass http://$gg_version;' \
        '            proxy_http_version 1.1;' \
        '            proxy_set_header Connection "";' \
        '            proxy_set_header X-Graygate-Version $gg_version;' \
        '            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;'
}

# The peers compared with nginx by compare.sh and https.sh, by the same letters in both
# tables; the Redis-backed ones look up `gray:version:<uid>`.
# shellcheck disable=SC2034 # used by the scripts that source this file
declare -A peer_label=(
    [a]="(a) graygate, full filter chain + cached Redis lookup"
    [b]="(b) graygate pass-through"
    [c]="(c) nginx, map + split_clients on the cookie"
    [d]="(d) nginx + Lua, one Redis GET per request"
    [e]="(e) nginx + Lua, shared-dict cache"
    [f]="(f) bare Pingora floor (examples/floor.rs)"
    [g]="(g) graygate, full filter chain, no store"
)

# The rules file of a graygate peer, upstream the backend on port $1:
#   pass:     (b), no identity and no rules;
#   chain:    (g), uid from the `uid` cookie (or X-User-Id), tier from the `tier` cookie, and
#             shield-paid (tier), tail-30pct (uid tail 1-3), split-10pct (uid split);
#   assigned: (a), chain with the stored assignment (`$assigned`) after the shield (the
#             Redis settings go in graygate.yaml, see peer_redis).
peer_rules() { # $1 backend port, $2 pass | chain | assigned
    local identity="" rules="rules: []" assigned=""
    # shellcheck disable=SC2016 # $assigned is graygate's, not the shell's
    [[ $2 != assigned ]] || assigned=$'\n  - { name: assigned, version: $assigned }'
    if [[ $2 != pass ]]; then
        identity="identity:
  uid: [cookie:uid, header:X-User-Id]
  tier: { sources: [cookie:tier], paid_uids: [10001, 10002], default: trial }"
        rules="rules:
  - { name: shield-paid, when: { tier: paid }, version: stable }$assigned
  - { name: tail-30pct, when: { uid_tail: [1, 2, 3] }, version: canary }
  - { name: split-10pct, split: { by: uid, weights: { canary: 10, stable: 90 } } }"
    fi
    cat <<RULES
versions: { stable: {}, canary: {} }
default: stable
$identity
$(web_service "$1")
$rules
RULES
}

# graygate.yaml's store for (a): Redis on port $1, lookups cached for $2 seconds.
peer_redis() { # $1 Redis port, $2 cache TTL in seconds
    echo "redis: { url: \"redis://127.0.0.1:$1/0\", lookup_timeout: 20ms, cache_ttl: ${2}s }"
}

# An nginx peer named $1 on port $2, one worker pinned to core 0 under the caller's
# "${wrap[@]}" (PROFILE=1: `master_process off`, for callgrind), upstream keep-alive to the
# caller's $backend; its worker's pid in proxy_pid[$1]. It decides the version by $3:
#   map:       (c), nginx's own variables: map + split_clients on the cookies (`map` evaluates
#              lazily, so the version is computed when proxy_pass asks for it);
#   lua-redis: (d), the decision of (a) in Lua, one Redis GET per request (lua-resty-redis,
#              pooled connections) to the caller's $redis;
#   lua-dict:  (e), (d) with a lua_shared_dict cache in front of Redis (TTL the caller's
#              $CACHE_TTL seconds, misses cached too).
# With $4 (server-level ssl_* directives) it listens with `ssl http2`.
start_nginx_peer() { # $1 name, $2 port, $3 map | lua-redis | lua-dict, $4 TLS directives
    local http_conf location_conf tls="" tls_conf="" lookup=""
    case $3 in
        map)
            # shellcheck disable=SC2016 # nginx's variables, not the shell's
            http_conf='    map $cookie_tier $gg_paid { paid 1; default 0; }
    map $cookie_uid $gg_tail { "~^[0-9]*([0-9])$" $1; default x; }
    split_clients "split-10pct:${cookie_uid}" $gg_split { 10% canary; * stable; }
    map "$gg_paid$gg_tail" $gg_map { "~^1" stable; "~^0[123]$" canary; default $gg_split; }'
            # shellcheck disable=SC2016
            location_conf='            set $gg_version $gg_map;'
            ;;
        lua-redis | lua-dict)
            http_conf='    init_by_lua_block { redis = require "nginx.redis" }'
            lookup="local v = redis_get(uid)"
            if [[ $3 == lua-dict ]]; then
                http_conf+=$'\n    lua_shared_dict gray 16m;'
                lookup="local cache = ngx.shared.gray
                local v = cache:get(uid)
                if v == nil then
                    v = redis_get(uid)
                    if v ~= nil then cache:set(uid, v, $CACHE_TTL) end
                end"
            fi
            location_conf=$(cat <<LUA
            rewrite_by_lua_block {
                local uid = ngx.var.cookie_uid
                if uid == nil or not string.find(uid, "^[0-9]+\$") then return end
                if ngx.var.cookie_tier == "paid" then return end
                local function redis_get(uid)
                    local red = redis:new()
                    red:set_timeout(20)
                    local ok = red:connect("127.0.0.1", $redis)
                    if not ok then return nil end
                    local v = red:get("gray:version:" .. uid)
                    red:set_keepalive(60000, 64)
                    if v == ngx.null then return "-" end
                    return v
                end
                $lookup
                if v == "canary" or v == "stable" then ngx.var.gg_version = v return end
                local tail = string.sub(uid, -1)
                if tail == "1" or tail == "2" or tail == "3" then ngx.var.gg_version = "canary" return end
                if ngx.crc32_long("split-10pct:" .. uid) % 100 < 10 then ngx.var.gg_version = "canary" end
            }
LUA
)
            ;;
        *) echo "start_nginx_peer: unknown decision '$3'" >&2; exit 2 ;;
    esac
    [[ -z "${4:-}" ]] || { tls=" ssl http2"; tls_conf=$'\n'$4; }
    mkdir -p "$work/$1"
    cat > "$work/$1/nginx.conf" <<NGINX
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1;$([[ "${PROFILE:-0}" == 1 ]] && echo " master_process off;")
daemon off;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
$(nginx_upstreams "$backend")
    lua_package_path "/usr/share/lua/5.1/?.lua;;";
$http_conf
    server {
        listen 127.0.0.1:$2$tls backlog=4096;$tls_conf
        keepalive_requests 1000000;
        location / {
            set \$gg_version stable;
$location_conf
$(nginx_forwarding)
        }
    }
}
NGINX
    "${prio[@]}" taskset -c 0 "${wrap[@]}" nginx -c "$work/$1/nginx.conf" -p "$work/$1" & pids+=($!)
    wait_port "$2" 600
    # The worker; under callgrind nginx runs as one process (master_process off), since a
    # worker that changed user cannot be reached by callgrind_control.
    if [[ "${PROFILE:-0}" == 1 ]]; then proxy_pid[$1]=$!; else proxy_pid[$1]=$(pgrep -P "$!"); fi
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
