#!/usr/bin/env bash
# Install the system packages graygate needs on a Debian/Ubuntu machine.
#
#   scripts/install-deps.sh run    # build + run the demo
#   scripts/install-deps.sh test   # additionally: redis-server, redis-cli, prometheus
#                                  # (promtool), python3-yaml (scripts/check-deploy.sh),
#                                  # chromium + chromium-driver (tests/browser.rs), and a
#                                  # venv with grpcio (tests/grpc.rs) in
#                                  # ${XDG_CACHE_HOME:-~/.cache}/graygate/grpc-venv
#   scripts/install-deps.sh bench  # bench/: nginx (+ Lua module, lua-resty-redis), wrk, redis,
#                                  # h2load and openssl (bench/https.sh)
#
# Idempotent: only missing commands are installed, and nothing is printed
# (and apt is not touched) when everything is already present.
set -euo pipefail

profile="${1:-run}"

case "$profile" in
run | test | bench) ;;
-h | --help)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "install-deps: unknown profile '$profile' (expected: run | test | bench)" >&2
    exit 2
    ;;
esac

# "command:debian-package" pairs.
needs=(
    "make:make"
    "cmake:cmake"
    "cc:build-essential"
    "python3:python3"
    "curl:curl"
    "pkg-config:pkg-config"
    # the demo's locally generated localhost certificate (scripts/run-demo.sh)
    "openssl:openssl"
)
# Installed without recommended packages (Debian's prometheus recommends the node exporter,
# a service of its own that the tests do not need).
lean_needs=()
if [[ "$profile" == "test" ]]; then
    needs+=(
        "redis-server:redis-server"
        "redis-cli:redis-tools"
    )
    # promtool checks and unit-tests deploy/prometheus/alerts.yml; tests/prometheus.rs starts
    # its own prometheus on a free loopback port (never the package's system service).
    # tests/browser.rs drives headless Chromium through chromedriver (WebDriver). Chromium's
    # recommends (udev, upower, a notification daemon, printing, Mesa) are for a desktop.
    lean_needs+=(
        "promtool:prometheus"
        "chromium:chromium"
        "chromedriver:chromium-driver"
    )
fi

if [[ "$profile" == "bench" ]]; then
    # bench/: nginx is the backend, the peer and the proxy compared against; wrk drives the
    # load; redis holds the assignments; callgrind counts instructions (PROFILE=1).
    needs+=(
        "redis-server:redis-server"
        "redis-cli:redis-tools"
        "nginx:nginx"
        "wrk:wrk"
        "taskset:util-linux"
        "valgrind:valgrind"
        # HTTPS rows: new handshakes and HTTP/2 requests per second
        "h2load:nghttp2-client"
    )
fi

missing=()
for pair in "${needs[@]}"; do
    cmd="${pair%%:*}"
    pkg="${pair#*:}"
    if ! command -v "$cmd" >/dev/null 2>&1; then
        # de-duplicate package names
        dup=0
        for m in "${missing[@]+"${missing[@]}"}"; do
            [[ "$m" == "$pkg" ]] && dup=1
        done
        [[ $dup -eq 0 ]] && missing+=("$pkg")
    fi
done

missing_lean=()
for pair in "${lean_needs[@]+"${lean_needs[@]}"}"; do
    if ! command -v "${pair%%:*}" >/dev/null 2>&1; then
        missing_lean+=("${pair#*:}")
    fi
done
# pingora-openssl links the system's libssl (OPENSSL_NO_VENDOR in .cargo/config.toml).
[[ -e /usr/include/openssl/ssl.h ]] || missing_lean+=("libssl-dev")
# scripts/check-deploy.sh parses YAML with python3's yaml module.
if [[ "$profile" == "test" ]] && ! python3 -c 'import yaml' >/dev/null 2>&1; then
    missing_lean+=("python3-yaml")
fi

# tests/grpc.rs runs a real gRPC server and client (tests/grpc/*.py) from a venv; Debian's
# python3 makes venvs only with python3-venv (ensurepip).
if [[ "$profile" == "test" ]] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing_lean+=("python3-venv")
fi

# bench/compare.sh also runs the classic nginx + Lua gray gateway: nginx's Lua module and
# lua-resty-redis (Debian ships it as the Lua module `nginx.redis`). Files, not commands.
if [[ "$profile" == "bench" ]]; then
    [[ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ]] || missing_lean+=("libnginx-mod-http-lua")
    [[ -e /usr/share/lua/5.1/nginx/redis.lua ]] || missing_lean+=("lua-nginx-redis")
fi

all_missing=("${missing[@]+"${missing[@]}"}" "${missing_lean[@]+"${missing_lean[@]}"}")
if ((${#all_missing[@]} > 0)); then
    sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "install-deps: missing packages (${all_missing[*]}) and not root, no sudo available" >&2
            echo "install-deps: install them manually: apt-get install ${all_missing[*]}" >&2
            exit 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install-deps: apt-get not found; please install: ${all_missing[*]}" >&2
        exit 1
    fi
    echo "install-deps: installing ${all_missing[*]}" >&2
    "${sudo[@]+"${sudo[@]}"}" apt-get update -qq
    if ((${#missing[@]} > 0)); then
        "${sudo[@]+"${sudo[@]}"}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq "${missing[@]}" </dev/null
    fi
    if ((${#missing_lean[@]} > 0)); then
        "${sudo[@]+"${sudo[@]}"}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing_lean[@]}" </dev/null
    fi
fi

# The gRPC venv: grpcio pinned, installed once into a fixed cache folder (tests/support/grpc.rs
# looks there, or at GRAYGATE_GRPC_PYTHON); nothing is done or printed when it is in place.
GRPCIO_VERSION="1.85.1"
if [[ "$profile" == "test" ]]; then
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/graygate/grpc-venv"
    if ! "$venv/bin/python" -c "import grpc, sys; sys.exit(grpc.__version__ != '$GRPCIO_VERSION')" >/dev/null 2>&1; then
        echo "install-deps: installing grpcio $GRPCIO_VERSION into $venv" >&2
        rm -rf "$venv"
        mkdir -p "$(dirname "$venv")"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            "grpcio==$GRPCIO_VERSION" </dev/null
    fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    # rustup installs into ~/.cargo/bin, which may simply not be on PATH.
    if [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
        echo "install-deps: cargo found in ${CARGO_HOME:-$HOME/.cargo}/bin but not on PATH;" >&2
        echo "install-deps: run: source \"${CARGO_HOME:-$HOME/.cargo}/env\"" >&2
    fi
    echo "install-deps: error: cargo not found; install a Rust toolchain: https://rustup.rs" >&2
    exit 1
fi
