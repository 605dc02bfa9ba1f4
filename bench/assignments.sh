#!/usr/bin/env bash
# Throughput through graygate with rules that need the Redis assignment lookup, against the
# same rules without it, side by side in one run (10,000 distinct uids, interleaved runs,
# medians). The cached path must reach at least 0.9x of the lookup-free path.
#
#   bench/assignments.sh            # or: make bench
#   DURATION=5 REPS=5 bench/assignments.sh
#   GRAYGATE_BIN=path/to/graygate bench/assignments.sh   # a binary built elsewhere
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-5}
REPS=${REPS:-5}
CONNECTIONS=${CONNECTIONS:-32}
UIDS=10000

# shellcheck source=bench/lib.sh
source bench/lib.sh   # the scripts run from the repository root
bench_setup

backend=$(free_port); redis=$(free_port)
with_lookup=$(free_port); without_lookup=$(free_port)

prio=()   # no niceness here
start_backend "$backend"
start_redis "$redis"

# Half of the uids have an assignment (to a version served by the same backend).
for ((i = 0; i < UIDS; i += 2)); do echo "SET gray:version:$i canary"; done | redis-cli -p "$redis" >/dev/null

rules() { # $1: the rule that decides
    two_version_rules "$backend" "rules:
  - { name: shield-header, when: { header: { X-Shield: \"1\" } }, version: stable }
$1"
}
wrap=()
declare -A proxy_pid
start_graygate lookup "$with_lookup" "$(free_port)" "$(rules '  - { name: assigned, version: $assigned }')" \
    "redis: { url: \"redis://127.0.0.1:$redis/0\", lookup_timeout: 20ms, cache_ttl: 1h }"
start_graygate plain "$without_lookup" "$(free_port)" "$(rules '  - { name: tail, when: { uid_tail: [0, 2, 4, 6, 8] }, version: canary }')" ""

write_uid_script "$UIDS"
run() { uid_rate "$@"; }

echo "warming up (fills the assignment cache with all $UIDS uids)"
run "$with_lookup" 3 >/dev/null
run "$without_lookup" 3 >/dev/null

with=(); without=()
for ((r = 1; r <= REPS; r++)); do
    without+=("$(run "$without_lookup" "$DURATION")")
    with+=("$(run "$with_lookup" "$DURATION")")
    echo "rep $r: without lookup ${without[-1]} req/s, with cached lookup ${with[-1]} req/s"
done
m_with=$(median "${with[@]}"); m_without=$(median "${without[@]}")
ratio=$(awk -v a="$m_with" -v b="$m_without" 'BEGIN {printf "%.3f", a / b}')
lookups=$(curl -s "http://$(grep -o '127.0.0.1:[0-9]*' "$work/lookup/graygate.yaml" | sed -n 2p)/metrics" | grep '^graygate_store_lookups_total' | grep -v ' 0$' || true)

cat <<REPORT

| path (graygate, 1 worker thread, $UIDS uids, wrk -c$CONNECTIONS, median of $REPS x ${DURATION}s) | requests/s | ratio |
| --- | --- | --- |
| rules without a store lookup | $m_without | 1.000 |
| rules with \$assigned (cached Redis lookup) | $m_with | $ratio |

store lookups during the run:
$lookups
REPORT
awk -v r="$ratio" 'BEGIN { exit !(r >= 0.9) }' || { echo "FAIL: the cached lookup path reached only ${ratio}x (target 0.9x)"; exit 1; }
echo "PASS: the cached lookup path reached ${ratio}x of the lookup-free path (target 0.9x)"
