#!/usr/bin/env bash
# graygate against nginx and the bare Pingora floor over HTTPS, side by side in one run: new
# TLS handshakes per second, HTTP/1.1 over TLS on keep-alive and HTTP/2 with several streams
# per connection, at saturation and at a fixed offered rate; writes the HTTPS section of
# docs/benchmarks.md (replaced in place, the rest of the file untouched).
#
#   bench/https.sh                        # or: make bench (after bench/compare.sh)
#   REPS=2 DURATION=3 LAT_DURATION=3 HS_SECONDS=3 bench/https.sh   # a quicker, noisier run
#   TLS12=0 bench/https.sh                # TLS 1.3 handshakes only
#   GRAYGATE_BIN=dir/graygate bench/https.sh   # binaries built elsewhere (the floor:
#                                         # dir/examples/floor or FLOOR_BIN)
#
# One nginx backend answers every request from memory, and Redis holds one assignment
# (bench/lib.sh). In front of them, on the same localhost certificate (EC P-256, made here
# with the openssl CLI), the peers of compare.sh's table, by the same letters (lib.sh's
# peer_rules and start_nginx_peer configure both scripts' peers):
#   (a) graygate, full filter chain + cached Redis lookup ($assigned, cache_ttl CACHE_TTL);
#   (b) graygate pass-through: no identity, no rules;
#   (c) nginx, map + split_clients on the cookie (no assignment lookup);
#   (d) nginx + Lua (lua-resty-redis), one Redis GET per request;
#   (e) (d) with a lua_shared_dict cache in front of Redis;
#   (f) the floor: examples/floor --tls-cert --tls-key (Pingora's own TLS listener,
#       TlsSettings::intermediate, ALPN h2 and http/1.1), no rule and no header;
#   (g) graygate, the full filter chain of (a) without the store.
# graygate: a TLS listener (`listeners: [{name: https, tls: {certificates: [...]}}]`),
# `server.threads: 1`; nginx: `listen ... ssl http2`, `worker_processes 1`. Every proxy is
# pinned to core 0; the backend, Redis and every load generator to core 1. All keep upstream
# connections alive and run OpenSSL's defaults for suites and groups.
# The traffic: one browser-like Cookie header whose uid 1234563 ends in 3 (the tail rule:
# canary) and has the assignment stable in Redis: (a), (d) and (e) route it to stable, (c)
# and (g) to canary, (b) to the default (stable); checked before measuring. Every request
# carries the same uid, so (a)'s and (e)'s lookups are cache hits, as in compare.sh once its
# 10,000 uids have been seen, and (d) asks Redis every time.
# Sessions: graygate's TLS context keeps OpenSSL's defaults (an internal server-side cache
# of 20,480 sessions for 2 h, and session tickets) and has no switch to turn them off, so
# nginx is given the same (`ssl_session_cache builtin:20480; ssl_session_timeout 2h;
# ssl_session_tickets on`). The handshake client never offers a session back, so every
# handshake is a full one in both.
# Rows, each in every repetition for every proxy of the row (order rotated):
#   handshakes: HS_CLIENTS parallel `openssl s_time -new` for HS_SECONDS, each connection
#               one full handshake and one HTTP/1.1 request with `Connection: close`
#               (h2load cannot be used here: it resumes its clients' sessions); only (g),
#               (c) and (f): the handshake is the same in every graygate and every nginx,
#               and costs ten times the request after it;
#   h1:         `h2load --h1 -c H1_CONNECTIONS -D DURATION` on keep-alive connections, then
#               LAT_CONNECTIONS connections at a fixed rate (below);
#   h2:         `h2load -c H2_CONNECTIONS -m H2_STREAMS -D DURATION` (ALPN h2), then
#               LAT_CONNECTIONS connections (up to H2_STREAMS streams each) at a fixed rate.
# The fixed rate: every connection follows the same h2load timing script, random gaps
# (exponential, mean LAT_CONNECTIONS/RATE s) for WARMUP + LAT_DURATION seconds, and the
# connections open 2 ms apart (`-r 1 --rate-period 2ms`): the requests of all arrive as a
# Poisson stream of about RATE/s, the first WARMUP seconds not counted. h2load sends a
# request up to a millisecond after its time and counts the next gap from then, so a run on
# (f) before measuring finds that delay and the script's gaps are shortened by it. Not `h2load --rps`:
# its timer ticks every 10 ms at the most and sends what is due in a burst, the connections
# opened together tick together, and a stall of h2load lines their ticks up for good, so
# the proxies got bursts of dozens of requests and the latency was the time to drain them.
# p99 at saturation: from h2load's per-request log; for handshakes, of the one request on each
# connection (time from the request's send to its response, the handshake excluded),
# measured by an h2load run with a new connection per request. p50 and p99 at RATE requests/s:
# from the log of the fixed-rate run, every proxy at the same offered load (h2load times each
# request from its send: exact as long as nothing queues, which the achieved rate shows).
# Proxy CPU: user + system time of the proxy process (graygate, the floor, or the nginx
# worker) per handshake or request. Every row is given as a ratio to (c) and to (f).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

REPS=${REPS:-3}
DURATION=${DURATION:-5}           # seconds per keep-alive run at saturation (after WARMUP)
LAT_DURATION=${LAT_DURATION:-5}   # seconds per fixed-rate run (after WARMUP)
RATE=${RATE:-5000}                # offered requests/s of the fixed-rate runs, as compare.sh's (below every proxy's capacity)
LAT_CONNECTIONS=${LAT_CONNECTIONS:-50}   # connections of the fixed-rate runs, as compare.sh's
WARMUP=${WARMUP:-1}               # seconds of h2load warm-up before each keep-alive run
HS_SECONDS=${HS_SECONDS:-5}       # seconds per handshake run
HS_CLIENTS=${HS_CLIENTS:-8}       # parallel openssl s_time processes (each one connection at a time)
H1_CONNECTIONS=${H1_CONNECTIONS:-32}
H2_CONNECTIONS=${H2_CONNECTIONS:-8}
H2_STREAMS=${H2_STREAMS:-16}
CACHE_TTL=${CACHE_TTL:-30}        # seconds: (a)'s cache_ttl and (e)'s shared-dict TTL
TLS12=${TLS12:-1}                 # 0: no TLS 1.2 handshake row
OUT=${OUT:-docs/benchmarks.md}
NICE=${NICE:--10}                 # niceness of every measured process, as in compare.sh
COOKIE="_ga=GA1.2.1234567890.1700000000; sid=0f3a9c2e7b1d4e5f; uid=1234563; tier=trial; theme=dark"

# shellcheck source=bench/lib.sh
source bench/lib.sh   # the scripts run from the repository root
bench_setup           # $bin (GRAYGATE_BIN, its commit GRAYGATE_COMMIT), $work, "${pids[@]}"
floor_binary          # $floor_bin: beside $bin, or FLOOR_BIN
measured_priority
wrap=()               # what each proxy runs under (start_graygate, start_nginx_peer): nothing

# --- the certificate: localhost, EC P-256, self-signed, valid 30 days ---
# In a directory of its own: graygate watches the certificates' directory, and the clients'
# output files written into it would wake its file watch during the runs.
mkdir "$work/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$work/tls/localhost.key" -out "$work/tls/localhost.crt" 2>/dev/null
cert=$work/tls/localhost.crt; key=$work/tls/localhost.key

# --- processes ---
proxies=(a b c d e f g)      # the h1 and h2 rows
hs_proxies=(g c f)           # the handshake rows
declare -A port proxy_pid label
for p in "${proxies[@]}"; do port[$p]=$(free_port); label[$p]=${peer_label[$p]}; done
backend=$(free_port); redis=$(free_port)
start_backend "$backend"
start_redis "$redis"
redis-cli -p "$redis" SET gray:version:1234563 stable >/dev/null

start_graygate a "${port[a]}" "$(free_port)" "$(peer_rules "$backend" assigned)" "$(peer_redis "$redis" "$CACHE_TTL")" "$cert $key"
start_graygate b "${port[b]}" "$(free_port)" "$(peer_rules "$backend" pass)" "" "$cert $key"
start_graygate g "${port[g]}" "$(free_port)" "$(peer_rules "$backend" chain)" "" "$cert $key"

nginx_tls="        ssl_certificate $cert;
        ssl_certificate_key $key;
        # nginx 1.22 still enables TLS 1.0 and 1.1 by default; graygate's default is 1.2+.
        ssl_protocols TLSv1.2 TLSv1.3;
        # What graygate's OpenSSL context does (OpenSSL's defaults): see the header.
        ssl_session_cache builtin:20480;
        ssl_session_timeout 2h;
        ssl_session_tickets on;"
start_nginx_peer c "${port[c]}" map "$nginx_tls"
start_nginx_peer d "${port[d]}" lua-redis "$nginx_tls"
start_nginx_peer e "${port[e]}" lua-dict "$nginx_tls"

"${prio[@]}" taskset -c 0 "$floor_bin" --listen "127.0.0.1:${port[f]}" --upstream "127.0.0.1:$backend" \
    --tls-cert "$cert" --tls-key "$key" 2>"$work/floor.log" & pids+=($!)
wait_port "${port[f]}" 600
proxy_pid[f]=$!

# --- checks before measuring: routing, HTTP versions, and what TLS each negotiates ---
# The version each proxy sends the test uid to (see the header); the floor adds no header, and
# the backend echoes an empty version.
declare -A want_version=([a]=stable [b]=stable [c]=canary [d]=stable [e]=stable [f]="" [g]=canary)
bad=0
for p in "${proxies[@]}"; do
    for v in --http1.1 --http2; do
        want="${want_version[$p]}
 $([[ $v == --http2 ]] && echo 2 || echo 1.1)"
        # Up to three tries: a lookup past lookup_timeout (20 ms) on a busy machine fails open
        # to the next rules, as it should; a routing error fails all three.
        for _ in 1 2 3; do
            got=$(curl -sk --max-time 5 $v -w ' %{http_version}' -H "Cookie: $COOKIE" "https://localhost:${port[$p]}/" || true)
            [[ $got == "$want" ]] && break
            sleep 0.2
        done
        [[ $got == "$want" ]] || { echo "${label[$p]} ($v) answered '$got', expected '$want'" >&2; bad=1; }
    done
done
((bad == 0)) || exit 1
echo "routing check: (a), (d) and (e) send the uid to its stored assignment (stable), (c) and (g) to canary by its tail, (b) to the default, and the floor answers, over HTTP/1.1 and HTTP/2"
declare -A negotiated
versions=(1.3); [[ "$TLS12" == 1 ]] && versions+=(1.2)
for v in "${versions[@]}"; do
    differ=""
    for p in "${proxies[@]}"; do
        # "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384" comes right after the handshake
        # (the SSL-Session block may not, in TLS 1.3, when stdin is closed at once).
        s=$(timeout 10 openssl s_client -connect "127.0.0.1:${port[$p]}" -servername localhost "-tls1_${v#1.}" </dev/null 2>/dev/null |
            awk '/^New, / {p=$2; sub(",", "", p); c=$NF} /^Server Temp Key/ {sub("^Server Temp Key: *", ""); k=$0} END {print p, c, k}')
        negotiated[$p$v]=$s
        echo "openssl s_client -tls1_${v#1.} to ${label[$p]}: $s"
    done
    for p in "${proxies[@]}"; do [[ "${negotiated[$p$v]}" == "${negotiated[g$v]}" ]] || differ+=" ($p)"; done
    [[ -z $differ ]] || echo "note: for TLS $v,$differ negotiate differently from (g)" >&2
done

# --- the measurements ---
# User + system CPU time of process $1 in clock ticks.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
cpu_us_per() { # $1 ticks, $2 count -> µs per item
    awk -v t="$1" -v hz="$(getconf CLK_TCK)" -v n="$2" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'
}
# "p50 p99 rate" of an h2load --log-file (tab-separated: start µs, status, elapsed µs): the
# latencies in ms and the requests/s, of the requests started after the first $2 seconds
# (default 0); fails on any failed request (status -1) or any status other than 200.
log_latency() { # $1 log file, $2 seconds not counted
    local rate
    awk -F'\t' '$2 != 200 { bad++ } END { exit bad > 0 }' "$1" ||
        { echo "requests failed or not 200 in $1" >&2; return 1; }
    # The latencies counted into $1.us; the rate: those requests over the time they started in.
    rm -f "$1.us"
    rate=$(sort -n "$1" | awk -F'\t' -v skip="${2:-0}" -v us="$1.us" '
        NR == 1 { t0 = $1 + skip * 1e6 }
        $1 >= t0 { if (!n++) s = $1; e = $1; print $3 > us }
        END { printf "%.1f", (e > s ? n / ((e - s) / 1e6) : 0) }')
    [[ -s "$1.us" ]] || { echo "no request in $1 after its first ${2:-0} s" >&2; return 1; }
    sort -n "$1.us" | awk -v rate="$rate" '{a[NR]=$1} END {
        for (q = 50; q <= 99; q += 49) { i = int(NR * q / 100); if (i < 1) i = 1; printf "%.3f ", a[i] / 1000 }
        print rate }'
}
# h2load (pinned to core 1) on proxy $1 with the options after it: timed (-D) after WARMUP
# seconds of warm-up, by count (-n), or at the fixed rate ("${paced[@]}", the timing script;
# its first WARMUP seconds not counted). RESULT="rate p50 p99 cpu_us_per_request", SUITE
# what was negotiated.
h2load_run() {
    local p=$1 out cpu0 done_n sampler="" skip=0 lat rate; shift
    rm -f "$work/h2load.log" "$work/cpu0"   # h2load appends to its log
    [[ " $* " != *" --timing-script-file "* ]] || skip=$WARMUP
    if [[ " $* " == *" -D "* ]]; then
        # Timed runs count only the requests after the warm-up: so does the CPU time.
        (sleep "$WARMUP"; cpu_ticks "${proxy_pid[$p]}" > "$work/cpu0") & sampler=$!
    else
        cpu_ticks "${proxy_pid[$p]}" > "$work/cpu0"
    fi
    out=$(timeout $((DURATION + LAT_DURATION + WARMUP + 60)) "${prio[@]}" taskset -c 1 h2load -t1 "$@" \
        -H "Cookie: $COOKIE" --log-file "$work/h2load.log" -B "https://localhost:${port[$p]}" "https://localhost:${port[$p]}/")
    [[ -z $sampler ]] || wait "$sampler"   # done long before h2load
    cpu0=$(cat "$work/cpu0")
    local ticks=$(($(cpu_ticks "${proxy_pid[$p]}") - cpu0))
    grep -q ' 0 failed, 0 errored, 0 timeout' <<<"$out" || { echo "$out" >&2; echo "errors from h2load on ${label[$p]}" >&2; exit 1; }
    done_n=$(awk '/^requests:/ { print $8 }' <<<"$out")
    lat=$(log_latency "$work/h2load.log" "$skip")
    # The rate: h2load's, or at the fixed rate, that of the requests counted.
    if ((skip)); then rate=${lat##* }; else rate=$(awk '/^finished in/ { print $4 }' <<<"$out"); fi
    RESULT="$rate ${lat% *} $(cpu_us_per "$ticks" "$done_n")"
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
    [hs13]="new TLS 1.3 handshakes (+ 1 request each)"
    [hs12]="new TLS 1.2 handshakes (+ 1 request each)"
    [h1]="HTTP/1.1 over TLS, keep-alive, ${H1_CONNECTIONS} connections"
    [h2]="HTTP/2, ${H2_CONNECTIONS} connections x ${H2_STREAMS} streams"
)
row_proxies() { if [[ $1 == hs* ]]; then echo "${hs_proxies[@]}"; else echo "${proxies[@]}"; fi; }
# The timing script of every connection of the fixed-rate runs (see the header), $work/paced.txt:
# the offsets in ms of its requests, gaps drawn from an exponential of mean $1 ms (the same
# draws every run), for WARMUP + LAT_DURATION seconds of requests at RATE/LAT_CONNECTIONS.
timing_script() { # $1 mean gap in ms
    awk -v n="$(awk -v r="$RATE" -v c="$LAT_CONNECTIONS" -v t=$((WARMUP + LAT_DURATION)) 'BEGIN { printf "%d", r / c * t }')" -v m="$1" \
        'BEGIN { srand(1); t = 0; for (i = 0; i < n; i++) { t += -log(1 - rand()) * m; printf "%.3f\t/\n", t } }' > "$work/paced.txt"
    (($(wc -l < "$work/paced.txt") >= 1)) || { echo "RATE, LAT_CONNECTIONS and LAT_DURATION leave no request to send" >&2; exit 2; }
}
mean_gap_ms=$(awk -v r="$RATE" -v c="$LAT_CONNECTIONS" 'BEGIN { printf "%.3f", c * 1000 / r }')
timing_script "$mean_gap_ms"
paced=(--timing-script-file "$work/paced.txt" -r 1 --rate-period 2ms)
declare -A rate p99 cpu suite busy fixed_rate fixed_p50 fixed_p99
measure() { # $1 row, $2 proxy
    local r=$1 p=$2 v l50 l99 a b c
    case $r in
        hs13 | hs12)
            v=1.${r#hs1}
            hs_run "$p" "$v"
            read -r hs_rate hs_cpu <<<"$RESULT"
            # p99 of the one request on a new connection: h2load, one request per connection
            # (its connections resume their sessions, hence not used for the rate above).
            h2load_run "$p" --h1 -c "$HS_CLIENTS" -n $((HS_CLIENTS * 200)) -H 'Connection: close'
            read -r _ _ l99 _ <<<"$RESULT"
            RESULT="$hs_rate - $l99 $hs_cpu"
            SUITE=${negotiated[$p$v]}
            ;;
        h1) h2load_run "$p" --h1 -c "$H1_CONNECTIONS" -D "$DURATION" --warm-up-time "$WARMUP" ;;
        h2) h2load_run "$p" -c "$H2_CONNECTIONS" -m "$H2_STREAMS" -D "$DURATION" --warm-up-time "$WARMUP" ;;
    esac
    read -r a _ b c <<<"$RESULT"
    rate[$r$p]+="$a "; p99[$r$p]+="$b "; cpu[$r$p]+="$c "; suite[$r$p]=$SUITE
    # The share of its core the proxy used: below 1, the clients set the pace.
    busy[$r$p]+="$(awk -v r="$a" -v c="$c" 'BEGIN { printf "%.0f", r * c / 1e4 }') "
    # A fixed offered rate: latency at equal load.
    case $r in
        h1) h2load_run "$p" --h1 -c "$LAT_CONNECTIONS" "${paced[@]}" ;;
        h2) h2load_run "$p" -c "$LAT_CONNECTIONS" -m "$H2_STREAMS" "${paced[@]}" ;;
        *) return 0 ;;
    esac
    read -r a l50 l99 _ <<<"$RESULT"
    fixed_rate[$r$p]+="$a "; fixed_p50[$r$p]+="$l50 "; fixed_p99[$r$p]+="$l99 "
}

echo "warming up"
for p in "${proxies[@]}"; do h2load_run "$p" --h1 -c "$H1_CONNECTIONS" -D 2 --warm-up-time 1; done
# h2load sends each request of a timing script when its timer fires, up to a millisecond
# late (libev on epoll), and times the next gap from then: the late part adds to every gap.
# One run on the floor measures it, and the script's gaps are shortened by as much, so that
# the rate achieved is about RATE.
h2load_run f --h1 -c "$LAT_CONNECTIONS" "${paced[@]}"
late_ms=$(awk -v c="$LAT_CONNECTIONS" -v a="${RESULT%% *}" -v m="$mean_gap_ms" 'BEGIN { l = c * 1000 / a - m; printf "%.3f", (l > 0 ? l : 0) }')
awk -v l="$late_ms" -v m="$mean_gap_ms" 'BEGIN { exit !(l < m / 2) }' ||
    { echo "h2load's timers run ${late_ms} ms late on gaps of ${mean_gap_ms} ms: fewer LAT_CONNECTIONS, or a lower RATE" >&2; exit 2; }
script_gap_ms=$(awk -v l="$late_ms" -v m="$mean_gap_ms" 'BEGIN { printf "%.3f", m - l }')
timing_script "$script_gap_ms"
echo "the fixed-rate runs: ${RESULT%% *} requests/s achieved at first, each gap of ${mean_gap_ms} ms shortened by the ${late_ms} ms h2load's timers ran late"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date +%s)
for ((rep = 1; rep <= REPS; rep++)); do
    line="rep $rep:"
    for r in "${rows[@]}"; do
        read -r -a in_row <<<"$(row_proxies "$r")"
        # Rotate which proxy runs first.
        order=("${in_row[@]:rep % ${#in_row[@]}}" "${in_row[@]:0:rep % ${#in_row[@]}}")
        for p in "${order[@]}"; do
            measure "$r" "$p"
            line+=" $r ($p) $(awk '{printf "%d", $NF}' <<<"${rate[$r$p]}")/s"
            [[ $r == hs* ]] || line+=" p99 at ${RATE}/s $(awk '{print $NF}' <<<"${fixed_p99[$r$p]}") ms"
            line+=";"
        done
    done
    echo "$line"
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
elapsed=$(($(date +%s) - started))

# --- the table and the verdicts ---
declare -A m_rate m_p99 m_cpu m_busy b_rate pair m_fixed_rate m_fixed_p50 m_fixed_p99
achieved_h1="" achieved_h2="" notes=()
# The lists of figures are split into words on purpose here and below.
# shellcheck disable=SC2086
for r in "${rows[@]}"; do
    read -r -a in_row <<<"$(row_proxies "$r")"
    for p in "${in_row[@]}"; do
        m_rate[$r$p]=$(median ${rate[$r$p]}); m_p99[$r$p]=$(median ${p99[$r$p]}); m_cpu[$r$p]=$(median ${cpu[$r$p]})
        m_busy[$r$p]=$(median ${busy[$r$p]})
        b_rate[$r$p]=$(printf '%s\n' ${rate[$r$p]} | sort -g | tail -1)
        # This proxy over (c) and over (f) within each repetition (the runs close together).
        for base in c f; do
            pair[$r$p$base]=$(paste -d' ' <(printf '%s\n' ${rate[$r$p]}) <(printf '%s\n' ${rate[$r$base]}) | awk '{ printf "%.2f ", $1 / $2 }')
        done
        [[ $r == h[12] ]] || continue
        m_fixed_rate[$r$p]=$(median ${fixed_rate[$r$p]}); m_fixed_p50[$r$p]=$(median ${fixed_p50[$r$p]}); m_fixed_p99[$r$p]=$(median ${fixed_p99[$r$p]})
        if [[ $r == h1 ]]; then achieved_h1+="${fixed_rate[$r$p]}"; else achieved_h2+="${fixed_rate[$r$p]}"; fi
    done
done
# shellcheck disable=SC2086
{ achieved_h1=$(median $achieved_h1); achieved_h2=$(median $achieved_h2); }
# A proxy well below the rate the others reached kept its requests waiting for their
# connection: its latency misses that wait, and is not at equal load.
for r in h1 h2; do
    achieved=$([[ $r == h1 ]] && echo "$achieved_h1" || echo "$achieved_h2")
    for p in "${proxies[@]}"; do
        if awk -v a="${m_fixed_rate[$r$p]}" -v o="$achieved" 'BEGIN { exit !(a < 0.95 * o) }'; then
            notes+=("NOTE: ${label[$p]} reached ${m_fixed_rate[$r$p]%.*} requests/s in the $r fixed-rate runs, the proxies' median ${achieved%.*}: it did not keep up, and its latency there is not at the same load")
        fi
    done
    if awk -v o="$achieved" -v r="$RATE" 'BEGIN { exit !(o < 0.9 * r || o > 1.1 * r) }'; then
        notes+=("NOTE: the $r fixed-rate runs reached ${achieved%.*} requests/s (median), not the $RATE offered")
    fi
done
fixed() { # $1 row, $2 proxy -> the fixed-rate columns of the table ("-" for handshakes)
    local r=$1 p=$2
    [[ $r == h[12] ]] || { echo "- | - | - | -"; return; }
    # shellcheck disable=SC2086
    echo "${m_fixed_p50[$r$p]} | ${m_fixed_p99[$r$p]} | $(ratio "${m_fixed_p99[$r$p]}" "${m_fixed_p99[${r}c]}")x, $(ratio "${m_fixed_p99[$r$p]}" "${m_fixed_p99[${r}f]}")x | $(range %s ${fixed_p99[$r$p]})"
}
table="| row | proxy | /s (median) | vs (c) | vs (f) | per repetition vs (c), vs (f) | proxy CPU µs per handshake or request | per CPU vs (c), vs (f) | proxy core busy % | p99 ms at saturation | p50 ms at $RATE/s | p99 ms at $RATE/s | p99 at $RATE/s vs (c), vs (f) | p99 ms at $RATE/s min-max | /s min-max |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
negotiated_list=()
for r in "${rows[@]}"; do
    read -r -a in_row <<<"$(row_proxies "$r")"
    first=${row_label[$r]} negotiated_note=""
    for p in "${in_row[@]}"; do
        [[ "${suite[${r}g]}" == "${suite[$r$p]}" ]] || negotiated_note+=" (($p): ${suite[$r$p]})"
        # shellcheck disable=SC2086
        table+="
| $first | ${label[$p]} | ${m_rate[$r$p]%.*} | $(ratio "${m_rate[$r$p]}" "${m_rate[${r}c]}")x | $(ratio "${m_rate[$r$p]}" "${m_rate[${r}f]}")x | $(range %.2f ${pair[${r}${p}c]}), $(range %.2f ${pair[${r}${p}f]}) | ${m_cpu[$r$p]} | $(ratio "${m_cpu[${r}c]}" "${m_cpu[$r$p]}")x, $(ratio "${m_cpu[${r}f]}" "${m_cpu[$r$p]}")x | ${m_busy[$r$p]} | ${m_p99[$r$p]} | $(fixed "$r" "$p") | $(range %d ${rate[$r$p]}) |"
        first=""
    done
    negotiated_list+=("- ${row_label[$r]}: ${suite[${r}g]}$negotiated_note")
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
    judge "TLS $v handshakes/s, (g) graygate vs (c) nginx, target at least 0.9x" \
        "$(ratio "${m_rate[${r}g]}" "${m_rate[${r}c]}")" "$(ratio "${b_rate[${r}g]}" "${b_rate[${r}c]}")" "r >= 0.9"
    # shellcheck disable=SC2086
    judge "TLS $v handshakes per second of proxy CPU, (g) vs (c), target at least 0.9x" \
        "$(ratio "${m_cpu[${r}c]}" "${m_cpu[${r}g]}")" \
        "$(ratio "$(printf '%s\n' ${cpu[${r}c]} | sort -g | head -1)" "$(printf '%s\n' ${cpu[${r}g]} | sort -g | head -1)")" "r >= 0.9"
done
judge "HTTP/2 requests/s, (g) graygate vs (c) nginx, target at least 0.7x" \
    "$(ratio "${m_rate[h2g]}" "${m_rate[h2c]}")" "$(ratio "${b_rate[h2g]}" "${b_rate[h2c]}")" "r >= 0.7"
# A proxy using under 90% of its core was not saturated: the clients' core (shared with the
# backend and any other work) set its pace, and the rate ratio does not measure the proxies.
if awk -v a="${m_busy[h2g]}" -v b="${m_busy[h2c]}" 'BEGIN { exit !(a < 90 || b < 90) }'; then
    verdicts[-1]="INCONCLUSIVE (a proxy not saturated: (g) ${m_busy[h2g]}%, (c) ${m_busy[h2c]}% of its core): ${verdicts[-1]#*: }"
    ok=0
fi
# shellcheck disable=SC2086
judge "HTTP/2 requests per second of proxy CPU, (g) vs (c), target at least 0.7x" \
    "$(ratio "${m_cpu[h2c]}" "${m_cpu[h2g]}")" \
    "$(ratio "$(printf '%s\n' ${cpu[h2c]} | sort -g | head -1)" "$(printf '%s\n' ${cpu[h2g]} | sort -g | head -1)")" "r >= 0.7"

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

$(printf '%s\n' "${verdicts[@]}" "${notes[@]+"${notes[@]}"}")

Negotiated, (g)'s (any other proxy's when it differs):
$(printf '%s\n' "${negotiated_list[@]}")

- **Peers**: those of the table above, by the same letters, over TLS: (a), (b), (g) graygate
  (\`server.threads: 1\`, one TLS listener; (a) with \`cache_ttl: ${CACHE_TTL}s\`); (c), (d), (e)
  nginx (\`worker_processes 1\`, \`listen ... ssl http2\`; (e)'s shared dict with a TTL of
  ${CACHE_TTL} s); (f) the bare Pingora floor (\`examples/floor.rs\` with \`--tls-cert/--tls-key\`:
  Pingora's own TLS listener, \`TlsSettings::intermediate\` with ALPN h2 and http/1.1, one
  worker thread, no rule and no header of its own). All pinned to core 0, in front of one
  nginx backend with upstream keep-alive; the backend, Redis and every client pinned to core
  1; loopback only; every measured process at niceness ${NICE:-0}. The handshake rows run (g),
  (c) and (f) only: the handshake is the same in every graygate and every nginx, and the
  request after it costs a tenth of it.
- **Traffic**: one browser-like \`Cookie\` header (\`_ga=...; sid=...; uid=1234563;
  tier=trial; theme=dark\`) on every request. The uid ends in 3 (the tail rule: canary) and
  has the assignment stable in Redis: (a), (d) and (e) route it to stable, (c) and (g) to
  canary, (b) to the default; each proxy's routing (the floor: its answer) and HTTP version
  are checked before measuring. One uid: (a)'s and (e)'s lookups are cache hits, as in the
  table above once its 10,000 uids have been seen, and (d) sends one Redis GET per request.
- **TLS**: the same certificate for all: localhost, EC P-256 (ECDSA), self-signed, made by
  the openssl CLI for the run. Suites, groups and versions: OpenSSL's defaults, TLS 1.2 and
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
  costs more CPU than the server's and shares core 1 with the backend, so no proxy's
  core is saturated (see "proxy core busy"): the rate compares them at the same offered
  load, the proxy CPU per handshake (and the verdicts built on it) what one core could do. p99: the
  request on a new connection (its send to its response, the handshake excluded), from
  \`h2load --h1 -c ${HS_CLIENTS} -H 'Connection: close'\` (h2load resumes sessions, so it is not used for the rate).
- **At saturation**: HTTP/1.1 \`h2load --h1 -c ${H1_CONNECTIONS} -D ${DURATION} --warm-up-time ${WARMUP}\`; HTTP/2 \`h2load -c ${H2_CONNECTIONS} -m ${H2_STREAMS} -D ${DURATION} --warm-up-time ${WARMUP}\`
  (ALPN \`h2\`). Closed loop: the rate, and a p99 (from h2load's per-request log) that is
  mostly queueing.
- **At a fixed rate**: ${LAT_CONNECTIONS} connections offered ${RATE} requests/s in all, whatever the
  proxy: \`h2load --h1 -c ${LAT_CONNECTIONS}\` and \`h2load -c ${LAT_CONNECTIONS} -m ${H2_STREAMS}\`, each connection
  following the same timing script (\`--timing-script-file\`: random gaps, exponential, for
  $((WARMUP + LAT_DURATION)) s) and opened 2 ms after the one before (\`-r 1 --rate-period 2ms\`): the proxy gets a
  Poisson stream of requests (grouped by the millisecond of h2load's timers), and the first
  ${WARMUP} s are not counted. h2load sends each request up to a millisecond late and counts the
  next gap from then: a run on (f) before measuring found it ${late_ms} ms late per gap, so the
  script's gaps average ${script_gap_ms} ms instead of ${mean_gap_ms}. Not \`h2load --rps\`: its connections send in bursts,
  every 10 ms at the most, and a stall of h2load lines them up. Achieved: median ${achieved_h1%.*}
  requests/s over HTTP/1.1, ${achieved_h2%.*} over HTTP/2. p50 and p99 from h2load's per-request log;
  h2load times a request from its send, which is exact when nothing queues (a proxy that
  cannot keep up gets a NOTE above).
- **Repetitions**: ${REPS}, every row for every proxy of the row each time (which goes first
  rotates); medians, spread in the min-max columns; "per repetition": the range of the
  proxy's rate over (c)'s and over (f)'s within one repetition (the runs close together).
  "Per CPU": requests (or handshakes) per second of proxy CPU, (c)'s CPU per request over
  the proxy's and (f)'s over the proxy's. "Proxy core busy": the proxy's CPU time over the
  run's wall time (median); well below 100, the clients, not the proxy, set the rate.
  Proxy CPU: user + system time of the proxy process (graygate, the floor, or the nginx
  worker) per handshake or request, less disturbed by other work on the machine than rates
  are. Load average $load_before before, $load_after after.
- How TLS is set up, and why OpenSSL: [tls.md](tls.md).
<!-- bench/https.sh: end -->
DOC
)
write_section https "$OUT" "$section"
echo
echo "$table"
echo
printf '%s\n' "${verdicts[@]}" "${notes[@]+"${notes[@]}"}"
echo "written to $OUT (section bench/https.sh)"
((ok)) || exit 1
