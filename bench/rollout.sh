#!/usr/bin/env bash
# The request-path cost of counting for a rollout: throughput through graygate with a
# `rollout:` rule against the same traffic through a plain `split:` rule at the same weight,
# side by side in one run (interleaved runs, medians and best runs). Target: the rollout rule
# costs under 2% (ratio at least 0.98).
#
#   bench/rollout.sh            # or: make bench
#   DURATION=5 REPS=5 bench/rollout.sh
#   GRAYGATE_BIN=path/to/graygate bench/rollout.sh   # a binary built elsewhere
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
REPS=${REPS:-5}
CONNECTIONS=${CONNECTIONS:-32}
UIDS=10000

# shellcheck source=bench/lib.sh
source bench/lib.sh   # the scripts run from the repository root
bench_setup

backend=$(free_port); split_port=$(free_port); rollout_port=$(free_port)
prio=()
start_backend "$backend"

wrap=()
declare -A proxy_pid
rules() { two_version_rules "$backend" "$1"; }   # $1: the deciding rule, any rollouts
start_graygate split "$split_port" "$(free_port)" "$(rules 'rules:
  - { name: ramp, split: { by: uid, weights: { canary: 20, stable: 80 } } }')" "state: { dir: state }"
# min_requests out of reach: the rollout is judged every second but never moves, so both
# proxies split 20/80 for the whole run.
start_graygate rollout "$rollout_port" "$(free_port)" "$(rules 'rollouts:
  ramp: { version: canary, steps: [20, 100], step_duration: 1h, analysis: { interval: 1s, window: 10s, min_requests: 100000000 } }
rules:
  - { name: ramp, rollout: ramp }')" "state: { dir: state }"

write_uid_script "$UIDS"
run() { uid_rate "$@"; }

echo "warming up"
run "$split_port" 2 >/dev/null
run "$rollout_port" 2 >/dev/null

split=(); rollout=()
for ((r = 1; r <= REPS; r++)); do
    split+=("$(run "$split_port" "$DURATION")")
    rollout+=("$(run "$rollout_port" "$DURATION")")
    echo "rep $r: split ${split[-1]} req/s, rollout ${rollout[-1]} req/s"
done
m_split=$(median "${split[@]}"); m_rollout=$(median "${rollout[@]}")
best_split=$(printf '%s\n' "${split[@]}" | sort -g | tail -1)
best_rollout=$(printf '%s\n' "${rollout[@]}" | sort -g | tail -1)
on_median=$(awk -v a="$m_rollout" -v b="$m_split" 'BEGIN {printf "%.3f", a / b}')
on_best=$(awk -v a="$best_rollout" -v b="$best_split" 'BEGIN {printf "%.3f", a / b}')
checks=$(curl -s "http://$(grep -o '127.0.0.1:[0-9]*' "$work/rollout/graygate.yaml" | sed -n 2p)/metrics" | grep '^graygate_rollout_checks_total' || true)

cat <<REPORT

| rule (graygate, 1 worker thread, $UIDS uids, wrk -c$CONNECTIONS, median of $REPS x ${DURATION}s) | requests/s | ratio |
| --- | --- | --- |
| \`split\` 20/80 | $m_split | 1.000 |
| \`rollout\` at 20% (per-arm counting, checks every second) | $m_rollout | $on_median |

best runs: split $best_split, rollout $best_rollout ($on_best)
rollout checks during the run:
$checks
REPORT
verdicts=(); ok=1
judge "the rollout rule against the plain split (target at least 0.98x)" "$on_median" "$on_best" "r >= 0.98"
printf '%s\n' "${verdicts[@]}"
((ok))
