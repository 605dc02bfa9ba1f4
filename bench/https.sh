#!/usr/bin/env bash
# graygate against nginx over HTTPS, side by side in one run: new TLS handshakes per second,
# HTTP/1.1 over TLS on keep-alive, HTTP/2 with several streams per connection; writes the
# HTTPS section of docs/benchmarks.md (replaced in place, the rest of the file untouched).
# The bare Pingora floor (examples/floor.rs over Pingora's own TLS listener) runs every row
# too: what Pingora alone costs over TLS and HTTP/2 (issue 15).
#
#   bench/https.sh                        # or: make bench (after bench/compare.sh)
#   REPS=2 DURATION=3 HS_SECONDS=3 bench/https.sh          # a quicker, noisier run
#   TLS12=0 bench/https.sh                # TLS 1.3 handshakes only
#
# One nginx backend answers every request from memory (bench/lib.sh). In front of it, on the
# same localhost certificate (EC P-256, made here with the openssl CLI) and with the same
# rules as compare.sh's (c) (a tier shield, a uid tail, a uid split; no Redis):
#   graygate: a TLS listener (`listeners: [{name: https, tls: {certificates: [...]}}]`),
#             `server.threads: 1`;
#   nginx:    `listen ... ssl http2`, `worker_processes 1`, map + split_clients;
#   floor:    `examples/floor --tls-cert --tls-key` (TlsSettings::intermediate, ALPN h2 and
#             http/1.1), one worker thread, no rule and no header.
# All three proxies are pinned to core 0; the backend and every load generator to core 1. Both
# keep upstream connections alive and run OpenSSL's defaults for suites and groups.
# Sessions: graygate's TLS context keeps OpenSSL's defaults (an internal server-side cache
# of 20,480 sessions for 2 h, and session tickets) and has no switch to turn them off, so
# nginx is given the same (`ssl_session_cache builtin:20480; ssl_session_timeout 2h;
# ssl_session_tickets on`). The handshake client never offers a session back, so every
# handshake is a full one in both.
# Rows, each in every repetition for every proxy (order rotated):
#   handshakes: HS_CLIENTS parallel `openssl s_time -new` for HS_SECONDS, each connection
#               one full handshake and one HTTP/1.1 request with `Connection: close`
#               (h2load cannot be used here: it resumes its clients' sessions);
#   h1:         `h2load --h1 -c H1_CONNECTIONS -D DURATION` on keep-alive connections;
#   h2:         `h2load -c H2_CONNECTIONS -m H2_STREAMS -D DURATION` (ALPN h2).
# p99: from h2load's per-request log; for handshakes, of the one request on each connection
# (time from the request's send to its response, the handshake excluded), measured by an
# h2load run with a new connection per request. Proxy CPU: user + system time of the proxy
# process (graygate, or the nginx worker) per handshake or request.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

REPS=${REPS:-3}
DURATION=${DURATION:-5}           # seconds per keep-alive run (after WARMUP)
WARMUP=${WARMUP:-1}               # seconds of h2load warm-up before each keep-alive run
HS_SECONDS=${HS_SECONDS:-5}       # seconds per handshake run
HS_CLIENTS=${HS_CLIENTS:-8}       # parallel openssl s_time processes (each one connection at a time)
H1_CONNECTIONS=${H1_CONNECTIONS:-32}
H2_CONNECTIONS=${H2_CONNECTIONS:-8}
H2_STREAMS=${H2_STREAMS:-16}
TLS12=${TLS12:-1}                 # 0: no TLS 1.2 handshake row
OUT=${OUT:-docs/benchmarks.md}
NICE=${NICE:--10}                 # niceness of every measured process, as in compare.sh
COOKIE="_ga=GA1.2.1234567890.1700000000; sid=0f3a9c2e7b1d4e5f; uid=1234563; tier=trial; theme=dark"
# uid 1234563 ends in 3: the tail rule sends it to canary in both proxies (checked below).

# shellcheck source=bench/lib.sh
source bench/lib.sh   # the scripts run from the repository root
bench_setup           # $bin (GRAYGATE_BIN, its commit GRAYGATE_COMMIT), $work, "${pids[@]}"
floor_binary          # $floor_bin: beside $bin, or FLOOR_BIN
measured_priority

# --- the certificate: localhost, EC P-256, self-signed, valid 30 days ---
# In a directory of its own: graygate watches the certificates' directory, and the clients'
# output files written into it would wake its file watch during the runs.
mkdir "$work/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$work/tls/localhost.key" -out "$work/tls/localhost.crt" 2>/dev/null
cert=$work/tls/localhost.crt; key=$work/tls/localhost.key

# --- processes ---
backend=$(free_port); gg_port=$(free_port); gg_admin=$(free_port); nginx_port=$(free_port)
floor_port=$(free_port)
start_backend "$backend"

proxies=(gg nginx floor)
declare -A port=([gg]=$gg_port [nginx]=$nginx_port [floor]=$floor_port) proxy_pid
mkdir -p "$work/gg/rules"
cat > "$work/gg/rules/rules.yaml" <<RULES
versions: { stable: {}, canary: {} }
default: stable
identity:
  uid: [cookie:uid, header:X-User-Id]
  tier: { sources: [cookie:tier], paid_uids: [10001, 10002], default: trial }
services:
  web:
    hosts: ["*"]
    groups:
      stable: { peers: ["127.0.0.1:$backend"] }
      canary: { peers: ["127.0.0.1:$backend"] }
rules:
  - { name: shield-paid, when: { tier: paid }, version: stable }
  - { name: tail-30pct, when: { uid_tail: [1, 2, 3] }, version: canary }
  - { name: split-10pct, split: { by: uid, weights: { canary: 10, stable: 90 } } }
RULES
cat > "$work/gg/graygate.yaml" <<CONF
listeners:
  - name: https
    listen: "127.0.0.1:$gg_port"
    tls: { certificates: [{ cert: "$cert", key: "$key" }] }
admin: { listen: "127.0.0.1:$gg_admin" }
rules: rules
access_log: off
server: { threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1, pid_file: gg.pid, upgrade_sock: gg.sock }
CONF
RUST_LOG=warn "${prio[@]}" taskset -c 0 "$bin" run -c "$work/gg/graygate.yaml" 2>"$work/gg.log" & pids+=($!)
wait_port "$gg_port" 600
proxy_pid[gg]=$!

mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream stable { server 127.0.0.1:$backend; keepalive 128; keepalive_requests 1000000; }
    upstream canary { server 127.0.0.1:$backend; keepalive 128; keepalive_requests 1000000; }
    map \$cookie_tier \$gg_paid { paid 1; default 0; }
    map \$cookie_uid \$gg_tail { "~^[0-9]*([0-9])\$" \$1; default x; }
    split_clients "split-10pct:\${cookie_uid}" \$gg_split { 10% canary; * stable; }
    map "\$gg_paid\$gg_tail" \$gg_version { "~^1" stable; "~^0[123]\$" canary; default \$gg_split; }
    server {
        listen 127.0.0.1:$nginx_port ssl http2 backlog=4096;
        ssl_certificate $cert;
        ssl_certificate_key $key;
        # nginx 1.22 still enables TLS 1.0 and 1.1 by default; graygate's default is 1.2+.
        ssl_protocols TLSv1.2 TLSv1.3;
        # What graygate's OpenSSL context does (OpenSSL's defaults): see the header.
        ssl_session_cache builtin:20480;
        ssl_session_timeout 2h;
        ssl_session_tickets on;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://\$gg_version;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Graygate-Version \$gg_version;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
NGINX
"${prio[@]}" taskset -c 0 nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" & pids+=($!)
wait_port "$nginx_port" 600
proxy_pid[nginx]=$(pgrep -P "$!")

"${prio[@]}" taskset -c 0 "$floor_bin" --listen "127.0.0.1:$floor_port" --upstream "127.0.0.1:$backend" \
    --tls-cert "$cert" --tls-key "$key" 2>"$work/floor.log" & pids+=($!)
wait_port "$floor_port" 600
proxy_pid[floor]=$!
declare -A label=([gg]="graygate" [nginx]="nginx" [floor]="floor")

# --- checks before measuring: routing, HTTP versions, and what TLS each negotiates ---
bad=0
for p in "${proxies[@]}"; do
    for v in --http1.1 --http2; do
        got=$(curl -sk --max-time 5 $v -w ' %{http_version}' -H "Cookie: $COOKIE" "https://localhost:${port[$p]}/" || true)
        # The floor adds no header: the backend echoes an empty version.
        want="$([[ $p == floor ]] || echo canary)
 $([[ $v == --http2 ]] && echo 2 || echo 1.1)"
        [[ $got == "$want" ]] || { echo "${label[$p]} ($v) answered '$got', expected '$want'" >&2; bad=1; }
    done
done
((bad == 0)) || exit 1
echo "routing check: graygate and nginx send the uid to canary, and the floor answers, over HTTP/1.1 and HTTP/2"
declare -A negotiated
versions=(1.3); [[ "$TLS12" == 1 ]] && versions+=(1.2)
for v in "${versions[@]}"; do
    for p in "${proxies[@]}"; do
        # "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384" comes right after the handshake
        # (the SSL-Session block may not, in TLS 1.3, when stdin is closed at once).
        s=$(timeout 10 openssl s_client -connect "127.0.0.1:${port[$p]}" -servername localhost "-tls1_${v#1.}" </dev/null 2>/dev/null |
            awk '/^New, / {p=$2; sub(",", "", p); c=$NF} /^Server Temp Key/ {sub("^Server Temp Key: *", ""); k=$0} END {print p, c, k}')
        negotiated[$p$v]=$s
        echo "openssl s_client -tls1_${v#1.} to ${label[$p]}: $s"
    done
    [[ "${negotiated[gg$v]}" == "${negotiated[nginx$v]}" && "${negotiated[gg$v]}" == "${negotiated[floor$v]}" ]] ||
        echo "note: the proxies negotiate differently for TLS $v" >&2
done

# --- the measurements ---
# User + system CPU time of process $1 in clock ticks.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
cpu_us_per() { # $1 ticks, $2 count -> µs per item
    awk -v t="$1" -v hz="$(getconf CLK_TCK)" -v n="$2" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'
}
# p99 in ms of an h2load --log-file (tab-separated: start µs, status, elapsed µs); fails on
# any failed request (status -1) or any status other than 200.
log_p99() {
    awk -F'\t' '$2 != 200 { bad++ } { print $3 > "/dev/stderr" } END { exit bad > 0 }' "$1" 2>"$1.us" ||
        { echo "requests failed or not 200 in $1" >&2; return 1; }
    sort -n "$1.us" | awk '{a[NR]=$1} END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f", a[i] / 1000 }'
}
h2load_run() { # $1 proxy, then h2load options -> RESULT="rate p99 cpu_us_per_request suite"
    local p=$1 out cpu0 done_n sampler=""; shift
    rm -f "$work/h2load.log" "$work/cpu0"   # h2load appends to its log
    if [[ " $* " == *" -D "* ]]; then
        # Timed runs count only the requests after the warm-up: so does the CPU time.
        (sleep "$WARMUP"; cpu_ticks "${proxy_pid[$p]}" > "$work/cpu0") & sampler=$!
    else
        cpu_ticks "${proxy_pid[$p]}" > "$work/cpu0"
    fi
    out=$(timeout $((DURATION + WARMUP + 60)) "${prio[@]}" taskset -c 1 h2load -t1 "$@" \
        -H "Cookie: $COOKIE" --log-file "$work/h2load.log" "https://localhost:${port[$p]}/")
    [[ -z $sampler ]] || wait "$sampler"   # done long before h2load
    cpu0=$(cat "$work/cpu0")
    local ticks=$(($(cpu_ticks "${proxy_pid[$p]}") - cpu0))
    grep -q ' 0 failed, 0 errored, 0 timeout' <<<"$out" || { echo "$out" >&2; echo "errors from h2load on ${label[$p]}" >&2; exit 1; }
    done_n=$(awk '/^requests:/ { print $8 }' <<<"$out")
    RESULT="$(awk '/^finished in/ { print $4 }' <<<"$out") $(log_p99 "$work/h2load.log") $(cpu_us_per "$ticks" "$done_n")"
    SUITE="$(awk -F': ' '/^TLS Protocol/ {p=$2} /^Cipher/ {c=$2} /^Server Temp Key/ {k=$2} /^Application protocol/ {a=$2} END {print p, c, k, a}' <<<"$out")"
}
# HS_CLIENTS parallel `openssl s_time -new` for HS_SECONDS: full handshakes, each followed by
# one request on its connection -> RESULT="handshakes/s cpu_us_per_handshake"
hs_run() { # $1 proxy, $2 TLS version (1.2 | 1.3)
    local p=$1 v=$2 cpu0 t0 t1 total=0 i n bytes clients=()
    local request=$'/ HTTP/1.1\r\nHost: localhost\r\nCookie: '"$COOKIE"$'\r\nConnection: close\r\nX-Pad:'
    # s_time sends "GET <path> HTTP/1.0\r\n\r\n": the path above turns it into an HTTP/1.1
    # request with Host, the cookie and Connection: close (the "HTTP/1.0" ends in X-Pad).
    cpu0=$(cpu_ticks "${proxy_pid[$p]}")
    t0=$(date +%s.%N)
    for ((i = 0; i < HS_CLIENTS; i++)); do
        timeout $((HS_SECONDS + 30)) "${prio[@]}" taskset -c 1 openssl s_time -new "-tls1_${v#1.}" \
            -connect "127.0.0.1:${port[$p]}" -www "$request" -time "$HS_SECONDS" >"$work/s_time.$i" 2>&1 & clients+=($!)
    done
    wait "${clients[@]}"
    t1=$(date +%s.%N)
    local ticks=$(($(cpu_ticks "${proxy_pid[$p]}") - cpu0))
    for ((i = 0; i < HS_CLIENTS; i++)); do
        n=$(awk '/connections in .* real seconds/ { print $1 }' "$work/s_time.$i")
        bytes=$(awk '/bytes read per connection/ { print $(NF-4) }' "$work/s_time.$i")
        if [[ -z $n ]] || ((bytes < 100)); then cat "$work/s_time.$i" >&2; echo "s_time failed on ${label[$p]}" >&2; exit 1; fi
        total=$((total + n))
    done
    RESULT="$(awk -v n="$total" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }') $(cpu_us_per "$ticks" "$total")"
}

rows=(hs13); [[ "$TLS12" == 1 ]] && rows+=(hs12); rows+=(h1 h2)
declare -A row_label=(
    [hs13]="new TLS 1.3 handshakes/s (+ 1 request each)"
    [hs12]="new TLS 1.2 handshakes/s (+ 1 request each)"
    [h1]="HTTP/1.1 over TLS, keep-alive, ${H1_CONNECTIONS} connections: requests/s"
    [h2]="HTTP/2, ${H2_CONNECTIONS} connections x ${H2_STREAMS} streams: requests/s"
)
declare -A rate p99 cpu suite busy
measure() { # $1 row, $2 proxy
    local r=$1 p=$2 v
    case $r in
        hs13 | hs12)
            v=1.${r#hs1}
            hs_run "$p" "$v"
            read -r hs_rate hs_cpu <<<"$RESULT"
            # p99 of the one request on a new connection: h2load, one request per connection
            # (its connections resume their sessions, hence not used for the rate above).
            h2load_run "$p" --h1 -c "$HS_CLIENTS" -n $((HS_CLIENTS * 200)) -H 'Connection: close'
            read -r _ l99 _ <<<"$RESULT"
            RESULT="$hs_rate $l99 $hs_cpu"
            SUITE=${negotiated[$p$v]}
            ;;
        h1) h2load_run "$p" --h1 -c "$H1_CONNECTIONS" -D "$DURATION" --warm-up-time "$WARMUP" ;;
        h2) h2load_run "$p" -c "$H2_CONNECTIONS" -m "$H2_STREAMS" -D "$DURATION" --warm-up-time "$WARMUP" ;;
    esac
    read -r a b c <<<"$RESULT"
    rate[$r$p]+="$a "; p99[$r$p]+="$b "; cpu[$r$p]+="$c "; suite[$r$p]=$SUITE
    # The share of its core the proxy used: below 1, the clients set the pace.
    busy[$r$p]+="$(awk -v r="$a" -v c="$c" 'BEGIN { printf "%.0f", r * c / 1e4 }') "
}

echo "warming up"
for p in "${proxies[@]}"; do h2load_run "$p" --h1 -c "$H1_CONNECTIONS" -D 2 --warm-up-time 1; done
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)
for ((rep = 1; rep <= REPS; rep++)); do
    line="rep $rep:"
    for r in "${rows[@]}"; do
        # Rotate which proxy runs first.
        order=("${proxies[@]:rep % ${#proxies[@]}}" "${proxies[@]:0:rep % ${#proxies[@]}}")
        for p in "${order[@]}"; do
            measure "$r" "$p"
            line+=" $r ${label[$p]} $(awk '{printf "%d", $NF}' <<<"${rate[$r$p]}")/s p99 $(awk '{print $NF}' <<<"${p99[$r$p]}") ms;"
        done
    done
    echo "$line"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - started))

# --- the table and the verdicts ---
declare -A m_rate m_p99 m_cpu m_busy b_rate pair
for r in "${rows[@]}"; do
    for p in "${proxies[@]}"; do
        # shellcheck disable=SC2086
        m_rate[$r$p]=$(median ${rate[$r$p]}); m_p99[$r$p]=$(median ${p99[$r$p]}); m_cpu[$r$p]=$(median ${cpu[$r$p]})
        # shellcheck disable=SC2086
        m_busy[$r$p]=$(median ${busy[$r$p]})
        # shellcheck disable=SC2086
        b_rate[$r$p]=$(printf '%s\n' ${rate[$r$p]} | sort -g | tail -1)
    done
    # graygate/nginx and graygate/floor within each repetition (the runs back to back).
    # shellcheck disable=SC2086
    pair[${r}nginx]=$(paste -d' ' <(printf '%s\n' ${rate[${r}gg]}) <(printf '%s\n' ${rate[${r}nginx]}) | awk '{ printf "%.2f ", $1 / $2 }')
    # shellcheck disable=SC2086
    pair[${r}floor]=$(paste -d' ' <(printf '%s\n' ${rate[${r}gg]}) <(printf '%s\n' ${rate[${r}floor]}) | awk '{ printf "%.2f ", $1 / $2 }')
done
table="| row | graygate /s | nginx /s | floor /s | graygate/nginx | graygate/floor | per repetition vs nginx, vs floor | p99 ms graygate / nginx / floor | proxy CPU µs graygate / nginx / floor | per CPU vs nginx, vs floor | proxy core busy % | graygate /s min-max | nginx /s min-max | floor /s min-max | negotiated |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
for r in "${rows[@]}"; do
    negotiated_note=""
    for p in nginx floor; do
        [[ "${suite[${r}gg]}" == "${suite[$r$p]}" ]] || negotiated_note+=" ($p: ${suite[$r$p]})"
    done
    # shellcheck disable=SC2086
    table+="
| ${row_label[$r]} | ${m_rate[${r}gg]%.*} | ${m_rate[${r}nginx]%.*} | ${m_rate[${r}floor]%.*} | $(ratio "${m_rate[${r}gg]}" "${m_rate[${r}nginx]}")x | $(ratio "${m_rate[${r}gg]}" "${m_rate[${r}floor]}")x | $(range %.2f ${pair[${r}nginx]}), $(range %.2f ${pair[${r}floor]}) | ${m_p99[${r}gg]} / ${m_p99[${r}nginx]} / ${m_p99[${r}floor]} | ${m_cpu[${r}gg]} / ${m_cpu[${r}nginx]} / ${m_cpu[${r}floor]} | $(ratio "${m_cpu[${r}nginx]}" "${m_cpu[${r}gg]}")x, $(ratio "${m_cpu[${r}floor]}" "${m_cpu[${r}gg]}")x | ${m_busy[${r}gg]} / ${m_busy[${r}nginx]} / ${m_busy[${r}floor]} | $(range %d ${rate[${r}gg]}) | $(range %d ${rate[${r}nginx]}) | $(range %d ${rate[${r}floor]}) | ${suite[${r}gg]}$negotiated_note |"
done

# As in compare.sh: each target on the medians and on the best repetitions; INCONCLUSIVE
# when the two disagree. Each target is also judged on proxy CPU per handshake or request
# (what one saturated core would reach): the handshake clients cost more CPU than the
# proxies and cannot saturate them from one core, and other work on the machine moves
# rates more than CPU per request.
verdicts=()
ok=1
for r in hs13 hs12; do
    [[ " ${rows[*]} " == *" $r "* ]] || continue
    v=1.${r#hs1}
    judge "TLS $v handshakes/s vs nginx, target at least 0.9x" \
        "$(ratio "${m_rate[${r}gg]}" "${m_rate[${r}nginx]}")" "$(ratio "${b_rate[${r}gg]}" "${b_rate[${r}nginx]}")" "r >= 0.9"
    # shellcheck disable=SC2086
    judge "TLS $v handshakes per second of proxy CPU vs nginx, target at least 0.9x" \
        "$(ratio "${m_cpu[${r}nginx]}" "${m_cpu[${r}gg]}")" \
        "$(ratio "$(printf '%s\n' ${cpu[${r}nginx]} | sort -g | head -1)" "$(printf '%s\n' ${cpu[${r}gg]} | sort -g | head -1)")" "r >= 0.9"
done
judge "HTTP/2 requests/s vs nginx, target at least 0.7x" \
    "$(ratio "${m_rate[h2gg]}" "${m_rate[h2nginx]}")" "$(ratio "${b_rate[h2gg]}" "${b_rate[h2nginx]}")" "r >= 0.7"
# A proxy using under 90% of its core was not saturated: the clients' core (shared with the
# backend and any other work) set its pace, and the rate ratio does not measure the proxies.
if awk -v a="${m_busy[h2gg]}" -v b="${m_busy[h2nginx]}" 'BEGIN { exit !(a < 90 || b < 90) }'; then
    verdicts[-1]="INCONCLUSIVE (a proxy not saturated: graygate ${m_busy[h2gg]}%, nginx ${m_busy[h2nginx]}% of its core): ${verdicts[-1]#*: }"
    ok=0
fi
# shellcheck disable=SC2086
judge "HTTP/2 requests per second of proxy CPU vs nginx, target at least 0.7x" \
    "$(ratio "${m_cpu[h2nginx]}" "${m_cpu[h2gg]}")" \
    "$(ratio "$(printf '%s\n' ${cpu[h2nginx]} | sort -g | head -1)" "$(printf '%s\n' ${cpu[h2gg]} | sort -g | head -1)")" "r >= 0.7"

# --- the report: the section between the markers in $OUT ---
commit=${GRAYGATE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
if [[ -z "${GRAYGATE_COMMIT:-}" ]] && [[ -n "$(git status --porcelain -- src 2>/dev/null)" ]]; then
    commit+=" (with uncommitted changes in src/)"
fi
section=$(cat <<DOC
<!-- bench/https.sh: begin (generated, do not edit by hand) -->
## HTTPS: graygate against nginx and the Pingora floor (\`bench/https.sh\`)

Generated by \`bench/https.sh\` (\`make bench\`) on $(date -u +%Y-%m-%d) in ${elapsed} s of measuring;
graygate $commit, nginx $(nginx -v 2>&1 | sed 's/^nginx version: nginx\///'), $(openssl version | cut -d' ' -f1-2) (both link the system's libssl),
h2load $(h2load --version | awk '{print $2}' | sed 's/^nghttp2\///').

$table

$(printf '%s\n' "${verdicts[@]}")

- **Setup**: graygate (\`server.threads: 1\`, one TLS listener), nginx (\`worker_processes 1\`,
  \`listen ... ssl http2\`) and the bare Pingora floor (\`examples/floor.rs\` with
  \`--tls-cert/--tls-key\`: Pingora's own TLS listener, \`TlsSettings::intermediate\` with
  ALPN h2 and http/1.1, one worker thread, no rule and no header of its own) pinned to
  core 0, in front of one nginx backend with upstream keep-alive; the backend and every client pinned to core 1; loopback only; every measured
  process at niceness ${NICE:-0}. The same certificate for all three: localhost, EC P-256 (ECDSA),
  self-signed, made by the openssl CLI for the run. The same rules as compare.sh's (c)
  (tier shield, uid tail, uid split) on a browser-like \`Cookie\` header; the routing of both
  is checked before measuring (the floor's answer and HTTP version only). Suites, groups and versions: OpenSSL's defaults, TLS 1.2 and
  1.3 (nginx told \`ssl_protocols TLSv1.2 TLSv1.3\`, its 1.22 default still has 1.0 and 1.1).
  No server imposes its suite order, so the client's decides: AES-256-GCM with s_time
  (OpenSSL's default order), AES-128-GCM with h2load (its own).
- **Sessions**: graygate keeps OpenSSL's defaults (internal server cache of 20,480 sessions
  for 2 h, session tickets; no switch turns them off) and nginx is given the same
  (\`ssl_session_cache builtin:20480; ssl_session_timeout 2h; ssl_session_tickets on\`). The
  handshake client never offers a session, so every handshake is full; each server still
  issues its tickets (two per TLS 1.3 handshake) and, in TLS 1.2, caches each session.
- **Handshakes**: ${HS_CLIENTS} parallel \`openssl s_time -new -tls1_3|-tls1_2 -time ${HS_SECONDS}\`, each connection one
  full handshake and one HTTP/1.1 request with \`Connection: close\`; the rate is every
  connection of the ${HS_CLIENTS} clients over the wall time. s_time sends no SNI: graygate serves
  its first (here, only) certificate, its server-name callback still running and still
  moving the connection to that pair's context. The client's side of a handshake
  (key exchange, checking the server's ECDSA signature, OpenSSL 3.0's per-connection setup)
  costs more CPU than the server's and shares core 1 with the backend, so neither proxy's
  core is saturated (see "proxy core busy"): the rate compares the two at the same offered
  load, the proxy CPU per handshake (and the verdict built on it) what one core could do. p99: the
  request on a new connection (its send to its response, the handshake excluded), from
  \`h2load --h1 -c ${HS_CLIENTS} -H 'Connection: close'\` (h2load resumes sessions, so it is not used for the rate).
- **HTTP/1.1**: \`h2load --h1 -c ${H1_CONNECTIONS} -D ${DURATION} --warm-up-time ${WARMUP}\`. **HTTP/2**: \`h2load -c ${H2_CONNECTIONS} -m ${H2_STREAMS} -D ${DURATION} --warm-up-time ${WARMUP}\`
  (ALPN \`h2\`). Closed loop: p99 (from h2load's per-request log) is at saturation.
- **Repetitions**: ${REPS}, every row for every proxy each time (which goes first rotates);
  medians, spread in the min-max columns; "per repetition": the range of graygate/nginx
  and of graygate/floor within one repetition (the runs back to back). "Per CPU": requests
  (or handshakes) per second of proxy CPU, graygate's over nginx's and over the floor's. "Proxy core busy": the proxy's CPU time
  over the run's wall time (median); well below 100, the clients, not the proxy, set the rate.
  Proxy CPU: user + system time of the proxy process (graygate, the floor, or the nginx worker) per
  handshake or request, less disturbed by other work on the machine than rates are. Load
  average $load_before before, $load_after after.
- How TLS is set up, and why OpenSSL: [tls.md](tls.md).
<!-- bench/https.sh: end -->
DOC
)
write_section https "$OUT" "$section"
echo
echo "$table"
echo
printf '%s\n' "${verdicts[@]}"
echo "written to $OUT (section bench/https.sh)"
((ok)) || exit 1
