#!/usr/bin/env bash
# The fault suite (make faults): graygate under failures and hostile clients, one PASS/FAIL
# line per row; exits 1 when a row fails. The rows are described in bench/faults.py.
#
#   bench/faults.sh                     # every row
#   bench/faults.sh --only corpus -v    # one row, with a line per corpus request
#   GRAYGATE_BIN=path/to/graygate bench/faults.sh   # a binary built elsewhere
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh bench
if [[ -n "${GRAYGATE_BIN:-}" ]]; then
    bin=$GRAYGATE_BIN
else
    cargo build --release --locked --quiet
    bin=target/release/graygate
fi
# Bounded: the driver stops itself after 290 s; timeout is the backstop.
exec timeout --signal=TERM --kill-after=10 300 python3 bench/faults.py --bin "$bin" "$@"
