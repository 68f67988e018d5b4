#!/usr/bin/env bash
# nm high availability, side by side in one run on this machine (a benchmark,
# not a test; see BENCHMARKS.md):
#
#   1. CREATE+WRITE pairs/s with nm as a group of three on etcd (`--etcd`)
#      against one nm on its embedded journal, one session and 16 clients,
#      alternating the two, ROUNDS rounds (default 5) of DURATION each
#      (default 5s): min/median/max of each and of the ratio etcd/journal.
#   2. nm failover: kill -9 of the leader to the first successful READ and
#      CREATE through nm, and the longest gap between acknowledged WRITEs of a
#      client writing all along (FAILOVERS rounds, default 10), default
#      settings (2 s leader lease, 3 s heartbeat timeout, 1 s heartbeats).
#   3. The same failover with FILES files (default 1,000,000; 0 skips it):
#      the files are written into both storage folders and etcd first (about
#      7 minutes here), and each round waits until every standby is warm.
#
# The load average is printed before and after: figures taken with a load
# above ~1.4 on two cores are not comparable.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
cargo build --quiet --release --bins --features nm/etcd
console=target/release/console
rounds=${ROUNDS:-5}
duration=${DURATION:-5s}
failovers=${FAILOVERS:-10}
files=${FILES:-1000000}

# The build leaves the load high: wait (at most two minutes) for it to fall.
for _ in $(seq 120); do
  awk '{ exit !($1 < 1.0) }' /proc/loadavg && break
  sleep 1
done
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
summary() { # label, then values: min/median/max
  python3 - "$@" <<'PY'
import statistics, sys
label, values = sys.argv[1], [float(v) for v in sys.argv[2:]]
print(f"  {label}: min {min(values):.2f}  median {statistics.median(values):.2f}  max {max(values):.2f}  ({len(values)} rounds)")
PY
}
rate() { python3 -c "import json,sys; print(json.load(sys.stdin)['ops_per_sec'])"; }

for clients in 1 16; do
  journal=(); etcd=(); ratio=()
  for ((r = 1; r <= rounds; r++)); do
    j=$($console bench create-write --clients "$clients" --duration "$duration" --json | rate)
    e=$($console bench create-write --clients "$clients" --duration "$duration" --etcd --json | rate)
    [ -n "$j" ] && [ -n "$e" ] || { echo "a run failed" >&2; exit 1; }
    journal+=("$j"); etcd+=("$e")
    ratio+=("$(python3 -c "print($e / $j)")")
    echo "  round $r, $clients client(s): journal $j/s, etcd $e/s"
  done
  echo "CREATE+WRITE, $clients client(s):"
  summary "journal pairs/s" "${journal[@]}"
  summary "etcd pairs/s" "${etcd[@]}"
  summary "ratio etcd/journal" "${ratio[@]}"
done

echo "nm failover ($failovers rounds):"
$console bench nm-failover --rounds "$failovers"
if ((files > 0)); then
  echo "nm failover with $files files ($failovers rounds):"
  $console bench nm-failover --files "$files" --rounds "$failovers"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
