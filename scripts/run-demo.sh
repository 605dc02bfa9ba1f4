#!/usr/bin/env bash
# Local gray-release demo:
#   stable backend  127.0.0.1:18001  (serves demo/stable)
#   canary backend  127.0.0.1:18002  (serves demo/canary)
#   graygate        127.0.0.1:8080   HTTP/1.1 and h2c (admin/metrics on 127.0.0.1:9901)
#                   127.0.0.1:8443   HTTPS, HTTP/2 by ALPN, with a certificate for localhost
#                                    generated here (openssl) into $LOG_DIR/tls
#
# GRAYGATE_BIN overrides the binary (default: target/release/graygate).
# GRAYGATE_CONFIG overrides the config (default: conf/graygate.yaml plus the two listeners
# above, written to $LOG_DIR/graygate.yaml).
# Ctrl-C stops everything.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN="${GRAYGATE_BIN:-target/release/graygate}"
CONFIG="${GRAYGATE_CONFIG:-conf/graygate.yaml}"
STABLE_PORT=18001
CANARY_PORT=18002
PROXY_PORT=8080
HTTPS_PORT=8443
ADMIN_PORT=9901
LOG_DIR="${TMPDIR:-/tmp}/graygate-demo"

die() {
    echo "run-demo: error: $*" >&2
    exit 1
}

pids=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#pids[@]} > 0)); then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        # give them a moment, then make sure
        for _ in $(seq 1 20); do
            local alive=0
            for p in "${pids[@]}"; do
                kill -0 "$p" 2>/dev/null && alive=1
            done
            ((alive == 0)) && break
            sleep 0.1
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
        wait 2>/dev/null || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v python3 >/dev/null 2>&1 || die "python3 not found (run: make deps-run)"
[[ -x "$BIN" ]] || die "graygate binary '$BIN' not found or not executable (run: make build)"
[[ -f "$CONFIG" ]] || die "config '$CONFIG' not found"
command -v openssl >/dev/null 2>&1 || die "openssl not found (run: make deps-run)"
[[ -d demo/stable && -d demo/canary ]] || die "demo/stable or demo/canary missing"

# Is something already bound to 127.0.0.1:PORT (or the wildcard address)?
port_in_use() {
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)   # in use
finally:
    s.close()
sys.exit(1)       # free
PY
}

for port in "$STABLE_PORT" "$CANARY_PORT" "$PROXY_PORT" "$HTTPS_PORT" "$ADMIN_PORT"; do
    if port_in_use "$port"; then
        die "port $port on 127.0.0.1 is already in use (another demo running? check: ss -ltnp 'sport = :$port')"
    fi
done

mkdir -p "$LOG_DIR"

# A self-signed certificate for localhost (EC P-256, 30 days), renewed when it expires
# within a day.
TLS_DIR="$LOG_DIR/tls"
mkdir -p "$TLS_DIR"
if ! openssl x509 -checkend 86400 -noout -in "$TLS_DIR/localhost.crt" >/dev/null 2>&1; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$TLS_DIR/localhost.key" -out "$TLS_DIR/localhost.crt" >/dev/null 2>&1 ||
        die "openssl could not make the demo certificate in $TLS_DIR"
fi

# The demo config: the shipped one with an h2c listener and an HTTPS listener instead of
# its `listen:` line (GRAYGATE_CONFIG set: used as it is).
if [[ -z "${GRAYGATE_CONFIG:-}" ]]; then
    demo_config="$LOG_DIR/graygate.yaml"
    {
        cat <<YAML
# Written by scripts/run-demo.sh from $CONFIG.
listeners:
  - { name: http, listen: "127.0.0.1:$PROXY_PORT", h2c: true }
  - name: https
    listen: "127.0.0.1:$HTTPS_PORT"
    tls:
      certificates:
        - { cert: "$TLS_DIR/localhost.crt", key: "$TLS_DIR/localhost.key" }
YAML
        # The demo keeps its rollout state beside its logs (the shipped /var/lib/graygate
        # needs root).
        grep -v '^listen:' "$CONFIG" | sed "s#^rules: *\([^ ]*\)#rules: $PWD/conf/\1#; s#^  dir: /var/lib/graygate#  dir: $LOG_DIR/state#"
    } >"$demo_config"
    CONFIG="$demo_config"
fi

start_backend() {
    local name=$1 port=$2
    python3 -m http.server --bind 127.0.0.1 "$port" --directory "demo/$name" \
        >"$LOG_DIR/$name.log" 2>&1 </dev/null &
    pids+=("$!")
}

wait_backend() {
    local name=$1 port=$2 pid=$3
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || die "$name backend exited; see $LOG_DIR/$name.log"
        if python3 - "$port" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/healthz" % sys.argv[1], timeout=1).read()
PY
            return 0
        fi
        sleep 0.1
    done
    die "$name backend did not come up on 127.0.0.1:$port; see $LOG_DIR/$name.log"
}

start_backend stable "$STABLE_PORT"
start_backend canary "$CANARY_PORT"
wait_backend stable "$STABLE_PORT" "${pids[0]}"
wait_backend canary "$CANARY_PORT" "${pids[1]}"

cat <<BANNER

  graygate demo
  -------------
  stable backend  http://127.0.0.1:$STABLE_PORT   (demo/stable)
  canary backend  http://127.0.0.1:$CANARY_PORT   (demo/canary)
  graygate        http://127.0.0.1:$PROXY_PORT    admin http://127.0.0.1:$ADMIN_PORT
                  https://localhost:$HTTPS_PORT  (certificate: $TLS_DIR/localhost.crt)
  backend logs    $LOG_DIR/{stable,canary}.log

  Try, in another terminal:

    curl -s localhost:8080/ -H 'X-User-Id: 13'       # uid tail 3 -> canary
    curl -s --http2 --cacert $TLS_DIR/localhost.crt https://localhost:$HTTPS_PORT/ -H 'X-User-Id: 13'
    curl -s --http2-prior-knowledge localhost:8080/ -H 'X-User-Id: 13'   # h2c
    curl -s localhost:8080/ -H 'X-User-Id: 15'       # uid tail 5 -> stable
    curl -s localhost:8080/ -H 'Cookie: uid=10001'   # paid user -> always stable
    curl -s localhost:8080/api/ -H 'X-User-Id: 13'   # same decision for the api service
    curl -s 'localhost:8080/.graygate/address?service=api&uid=13'   # mobile address API
    open http://localhost:8080/.canary-deployment in a browser to pick a channel
    $BIN explain -c $CONFIG --uid 13 --host localhost --path /
    curl -s 127.0.0.1:9901/metrics | grep graygate_

  Ctrl-C stops graygate and both backends.

BANNER

# Run graygate in the background and wait for it, so that the traps above
# fire promptly on INT/TERM and take the backends down with it.
"$BIN" run -c "$CONFIG" </dev/null &
gg_pid=$!
pids+=("$gg_pid")
set +e
wait "$gg_pid"
status=$?
set -e
exit "$status"
