# Shared helpers of the bench/ scripts (sourced, not run).

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
judge() { # $1 description, $2 median-based ratio, $3 best-based ratio, $4 awk test on r
    local on_median on_best
    on_median=$(awk -v r="$2" "BEGIN { print ($4) ? 1 : 0 }"); on_best=$(awk -v r="$3" "BEGIN { print ($4) ? 1 : 0 }")
    if ((on_median && on_best)); then verdicts+=("PASS: $1: ${2}x on the medians, ${3}x on the best repetitions")
    elif ((!on_median && !on_best)); then verdicts+=("FAIL: $1: ${2}x on the medians, ${3}x on the best repetitions"); ok=0
    else verdicts+=("INCONCLUSIVE (noise): $1: ${2}x on the medians, ${3}x on the best repetitions"); ok=0
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
