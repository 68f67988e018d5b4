#!/usr/bin/env bash
# What one CREATE+WRITE pair costs each daemon, counted rather than timed
# (a benchmark, not a test; see BENCHMARKS.md, session 21): syscalls,
# context switches, futex calls and fdatasyncs of the console session, nm,
# the primary and the backup (`perf stat` on each), and block requests of the whole disk
# (/proc/diskstats), over one `console --batch` session of N pairs (default
# 2000) on a fresh nm + ss1 + ss1_backup. Counts barely depend on the
# machine's speed, so they compare builds where pairs/s cannot.
#
#   scripts/bench-counts.sh [N]                  the release build
#   BIN=dir BIN_B=dir ROUNDS=3 scripts/bench-counts.sh 2000   two builds, alternating
#
# Needs `perf` (linux-tools) and permission to trace (root, or
# kernel.perf_event_paranoid <= 1); DISK names the block device (default:
# the one holding the temp folder).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
rounds=${ROUNDS:-1}
command -v perf >/dev/null || { echo "bench-counts: perf is not installed (linux-tools)" >&2; exit 1; }
[ -n "${BIN:-}" ] || cargo build --quiet --release --bins
dir=$(mktemp -d)
disk=${DISK:-$(basename "$(df --output=source "$dir" | tail -1)")}
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT INT TERM
head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n" >"$dir/cluster.key"
for ((i = 0; i < n; i++)); do
  printf 'CREATE c-f%d.txt\nWRITE c-f%d.txt 0\n0 Sentence number %d of the benchmark.\nETIRW\n' "$i" "$i" "$i"
done >"$dir/script.batch"

count() { # build folder: one fresh cluster, one session, the counts per pair
  local bin=$1 home="$dir/run" pids=() names=(nm ss1 ss1_backup) i
  rm -rf "$home"; mkdir -p "$home"
  "$bin/nm" --listen 127.0.0.1:0 --data-dir "$home/nm" --ready-file "$home/nm.addr" --cluster-key-file "$dir/cluster.key" --quiet 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do [ -s "$home/nm.addr" ] && break; sleep 0.1; done
  local nm; nm=$(cat "$home/nm.addr")
  for ss in ss1 ss1_backup; do
    "$bin/ss" --nm "$nm" --username "$ss" --storage "$home/$ss" --cluster-key-file "$dir/cluster.key" 2>/dev/null &
    pids+=($!)
  done
  for _ in $(seq 100); do
    "$bin/console" --nm "$nm" --batch --json <<<STATUS | grep -q '"ACTIVE"' && break
    sleep 0.1
  done
  local perfs=()
  for i in 0 1 2; do
    perf stat -x, -o "$home/perf.${names[$i]}" -p "${pids[$i]}" \
      -e raw_syscalls:sys_enter,context-switches,syscalls:sys_enter_futex,syscalls:sys_enter_fdatasync &
    perfs+=($!)
  done
  sleep 0.5
  local before after
  before=$(awk -v d="$disk" '$3 == d { print $4 + $8 }' /proc/diskstats)
  perf stat -x, -o "$home/perf.console" \
    -e raw_syscalls:sys_enter,context-switches,syscalls:sys_enter_futex,syscalls:sys_enter_fdatasync \
    "$bin/console" --nm "$nm" --user bench --batch "$dir/script.batch" >/dev/null
  after=$(awk -v d="$disk" '$3 == d { print $4 + $8 }' /proc/diskstats)
  kill -INT "${perfs[@]}"; wait "${perfs[@]}" 2>/dev/null || true
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  python3 - "$n" "$home" "$((after - before))" "$bin" <<'PY'
import sys
n, home, blocks, bin = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
print(f"{bin}: {n} pairs; block requests per pair {blocks / n:.2f}")
for name in ["console", "nm", "ss1", "ss1_backup"]:
    counts = {}
    for line in open(f"{home}/perf.{name}"):
        fields = line.strip().split(",")
        if len(fields) > 2 and fields[0].replace(".", "").isdigit():
            counts[fields[2]] = float(fields[0])
    per = lambda event: counts.get(event, 0) / n
    print(f"  {name:<10} per pair: syscalls {per('raw_syscalls:sys_enter'):5.1f}  context switches {per('context-switches'):5.1f}"
          f"  futex {per('syscalls:sys_enter_futex'):5.1f}  fdatasync {per('syscalls:sys_enter_fdatasync'):4.2f}")
PY
}

for ((r = 1; r <= rounds; r++)); do
  echo "round $r (load $(cut -d' ' -f1 /proc/loadavg))"
  count "${BIN:-target/release}"
  [ -z "${BIN_B:-}" ] || count "$BIN_B"
done
