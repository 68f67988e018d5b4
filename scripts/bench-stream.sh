#!/usr/bin/env bash
# The replication stream, side by side in one run on this machine (a
# benchmark, not a test; see BENCHMARKS.md). Each round runs every workload
# with the stream (`ss --replication-stream true`, the default) and without
# it (every change through nm's jobs), alternating, ROUNDS rounds (default 5):
#
#   1. replication lag at idle: one client, 50 WRITEs/s for 4 s (200 writes);
#      the time from each ETIRW's answer until its text is in the backup's
#      file on disk, seen when the kernel reports the file renamed into
#      place (inotify; LAG_WATCH=poll reads the files every 50 µs instead,
#      as the runs before session 11 did).
#   2. replication lag at half load: the maximum write rate of 4 clients is
#      measured first (write-heavy, 3 s, same setting), then 4 clients write
#      at half of it for long enough to make at least 200 writes.
#   3. CREATE+WRITE pairs/s, one `console` session, async and sync.
#
# Prints min/median/max of each figure and of the ratios, and the load
# average before and after: figures taken with a load above ~1.4 on two
# cores are not comparable. The load during the run is mostly the run's own;
# `scripts/quiet.py` then says what else ran (steal, other processes).
#
# Every run's cluster is kept, in one folder deleted at the end (as in
# bench-compare.sh), and the script starts with `sync` and a pause (SETTLE
# seconds, default 65). On this machine's disk (ext4 without a journal) the
# inode allocator skips, and reads, every inode freed in the last 60 s (360 s
# while its inode-table block is dirty): a run that deleted its cluster,
# thousands of files, slowed the next run's first half second, when new
# servers still allocate inodes themselves (BENCHMARKS.md, session 25).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release --bins
console=target/release/console
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
# bench WORKLOAD ARGS...: `console bench`, its cluster kept in the work folder.
bench() { TMPDIR="$work" "$console" bench "$@" --keep-dir 2>&1 >&3 3>&- | { grep -v "^cluster folder (kept)" >&2 || true; } 3>&-; } 3>&1
rounds=${ROUNDS:-5}
watch=${LAG_WATCH:-inotify}

# The build leaves the load high: wait (at most two minutes) for it to fall.
for _ in $(seq 120); do
  awk '{ exit !($1 < 1.0) }' /proc/loadavg && break
  sleep 1
done
sync
sleep "${SETTLE:-65}"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
quiet="$work/quiet.json"; python3 scripts/quiet.py mark "$quiet"

field() { # a path into the JSON report on stdin, e.g. replication_lag_ms.p50
  python3 -c "
import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1].split('.'):
    value = value[key]
print(value)" "$1"
}
summary() { # label, then values: min/median/max
  python3 - "$@" <<'PY'
import statistics, sys
label, values = sys.argv[1], [float(v) for v in sys.argv[2:]]
print(f"  {label}: min {min(values):.3f}  median {statistics.median(values):.3f}  max {max(values):.3f}  ({len(values)} rounds)")
PY
}
ratio() { python3 -c "print($1 / $2)"; }

declare -A figures
add() { figures[$1]="${figures[$1]:-} $2"; }

for ((r = 1; r <= rounds; r++)); do
  for stream in true false; do
    idle=$(bench repl-lag --clients 1 --rate 50 --duration 4s --replication-stream "$stream" --lag-watch "$watch" --json)
    add "lag_idle_p50_$stream" "$(field replication_lag_ms.p50 <<<"$idle")"
    add "lag_idle_p99_$stream" "$(field replication_lag_ms.p99 <<<"$idle")"
    add "lag_idle_max_$stream" "$(field replication_lag_ms.max <<<"$idle")"
    max=$(bench write-heavy --clients 4 --duration 3s --replication-stream "$stream" --json | field ops_per_sec)
    half=$(python3 -c "print(max(1, int($max / 2)))")
    seconds=$(python3 -c "print(max(4, int(200 / $half) + 1))")
    loaded=$(bench repl-lag --clients 4 --rate "$half" --duration "${seconds}s" --replication-stream "$stream" --lag-watch "$watch" --json)
    add "max_rate_$stream" "$max"
    add "lag_half_p50_$stream" "$(field replication_lag_ms.p50 <<<"$loaded")"
    add "lag_half_p99_$stream" "$(field replication_lag_ms.p99 <<<"$loaded")"
    add "lag_half_max_$stream" "$(field replication_lag_ms.max <<<"$loaded")"
    for mode in async sync; do
      pairs=$(bench create-write --clients 1 --duration 4s --replication "$mode" --replication-stream "$stream" --json | field ops_per_sec)
      add "pairs_${mode}_$stream" "$pairs"
    done
  done
  add ratio_pairs_stream "$(ratio "$(echo ${figures[pairs_async_true]} | awk '{print $NF}')" "$(echo ${figures[pairs_async_false]} | awk '{print $NF}')")"
  add ratio_sync_async "$(ratio "$(echo ${figures[pairs_sync_true]} | awk '{print $NF}')" "$(echo ${figures[pairs_async_true]} | awk '{print $NF}')")"
  add ratio_lag_idle "$(ratio "$(echo ${figures[lag_idle_p50_true]} | awk '{print $NF}')" "$(echo ${figures[lag_idle_p50_false]} | awk '{print $NF}')")"
  echo "  round $r done (load $(cut -d' ' -f1 /proc/loadavg))"
done

for stream in true false; do
  echo "stream $stream:"
  for key in lag_idle_p50 lag_idle_p99 lag_idle_max max_rate lag_half_p50 lag_half_p99 lag_half_max pairs_async pairs_sync; do
    # shellcheck disable=SC2086
    summary "$key" ${figures[${key}_$stream]}
  done
done
echo "ratios (per round):"
# shellcheck disable=SC2086
summary "CREATE+WRITE pairs/s, stream / jobs" ${figures[ratio_pairs_stream]}
# shellcheck disable=SC2086
summary "CREATE+WRITE pairs/s with the stream, sync / async" ${figures[ratio_sync_async]}
# shellcheck disable=SC2086
summary "lag p50 at idle, stream / jobs" ${figures[ratio_lag_idle]}
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 scripts/quiet.py report "$quiet" $$
