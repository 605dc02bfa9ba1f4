#!/usr/bin/env bash
# The soak (make soak): graygate for SOAK_SECONDS (default 600) under HTTP/1.1, HTTP/2 and
# WebSocket load while rules reload, Redis restarts, a canary peer flaps and 500 slow clients
# trickle headers; one PASS/FAIL line per row; exits 1 when a row fails. The rows are
# described in bench/soak.py. CI runs it only with SOAK=1 (.ci/run).
#
#   bench/soak.sh                        # 10 minutes
#   SOAK_SECONDS=120 bench/soak.sh -v    # a shorter run, with a line per event
#   GRAYGATE_BIN=path/to/graygate bench/soak.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh bench
if [[ -n "${GRAYGATE_BIN:-}" ]]; then
    bin=$GRAYGATE_BIN
else
    cargo build --release --locked --quiet
    bin=target/release/graygate
fi
seconds=${SOAK_SECONDS:-600}
# Bounded: the driver ends itself after the soak; timeout is the backstop.
exec timeout --signal=TERM --kill-after=10 $((seconds + 240)) python3 bench/soak.py --bin "$bin" --seconds "$seconds" "$@"
