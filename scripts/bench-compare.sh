#!/usr/bin/env bash
# Side by side, in one run, on this machine: the cluster's resyncs against
# rsync to an rsync daemon on 127.0.0.1 (same number and size of files, same
# content), bulk transfer against a plain TCP copy plus fsync, and
# create-write against the disk's own fsynced small-write rate.
# Ours and the reference alternate, ROUNDS rounds (default 5), ours first in
# odd rounds and last in even ones (raw TCP always between ours and rsync's
# in the large rounds); prints
# min/median/max of each, of the per-round ratios, and the load before and
# after. A benchmark, not a test.
#
#   scripts/bench-compare.sh [small] [large] [writes]    (default: all three)
#   ROUNDS=7 scripts/bench-compare.sh small
#
# Nothing a round writes is deleted before the end of the run: on this
# machine's ext4 (no journal) deletions slow the creates that follow them
# (BENCHMARKS.md, "The machine"), so each resync, ours or rsync's, writes
# into new folders, and `ss-seed`'s time (printed each round) shows whether
# the disk was in that state anyway. Run it some minutes after any mass
# deletion (a test run). FRESH_FS=1: every resync runs on a new, empty ext4
# in a loop file instead (scripts/fresh-fs.sh), immune to the allocator but
# with dearer fsyncs (the loop device's flush is an fsync of its file).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v rsync >/dev/null || { apt-get update -qq && apt-get install -y -qq rsync >/dev/null; }
cargo build --quiet --release --bins
bin=target/release
work=$(mktemp -d)
fs="$work/fs"
. scripts/fresh-fs.sh
cleanup() {
  kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true
  fresh_fs_done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

large_rsync=(); large_seconds=()
# The same content the bench writes into the primary's folder.
python3 - "$work" <<'PY'
import os, sys
work = sys.argv[1]
line = b"lorem ipsum dolor sit amet. " * 2341
os.makedirs(f"{work}/small", exist_ok=True)
for i in range(10000):
    with open(f"{work}/small/f{i:06}", "wb") as f:
        f.write((line * 1)[:4096])
os.makedirs(f"{work}/large", exist_ok=True)
with open(f"{work}/large/f000000", "wb") as f:
    left = 1 << 30
    while left:
        n = min(left, len(line)); f.write(line[:n]); left -= n
PY

port=$((20000 + RANDOM % 20000))
mkdir -p "$fs/dst"
cat > "$work/rsyncd.conf" <<CONF
use chroot = no
uid = root
gid = root
[dst]
path = $fs/dst
read only = no
CONF
rsync --daemon --no-detach --config="$work/rsyncd.conf" --port=$port --address=127.0.0.1 &
sleep 0.5

rsync_time() { # src dir → a new folder of the rsync module; seconds. On a
  # fresh file system the source is copied onto it first (as ours seeds the
  # primary's folder there).
  local src=$1 start end
  if [ "$fresh" = 1 ]; then
    cp -a "$src" "$fs/src"; src="$fs/src"; sync
  fi
  start=$(date +%s.%N)
  rsync -a "$src/" "rsync://127.0.0.1:$port/dst/$run/"
  sync
  end=$(date +%s.%N)
  python3 -c "print($end - $start)"
}

# On this machine's file system (ext4 without a journal) the inode allocator
# skips every inode freed in the last 60 s (360 s while its inode table
# block is still dirty), so the files one run deletes slow the next run's
# creates by up to 40x: this script deletes nothing until the end. Before
# each measured run: write everything back and pause.
settle() { sync; sleep "${SETTLE:-6}"; }

FRESH_FS=${FRESH_FS:-0}
fresh_fs_init "$work"
fresh=$FRESH_FS
run=0
# next_fs: where the next run writes (a new folder, or a fresh file system).
next_fs() {
  run=$((run + 1))
  if [ "$fresh" = 1 ]; then fresh_fs "$fs"; else settle; fi
  mkdir -p "$fs/runs/$run" "$fs/dst/$run"
}

# ours WORKLOAD: `console bench WORKLOAD --json` in this run's folder, kept
# (deleted with everything else at the end).
ours() { TMPDIR="$fs/runs/$run" "$bin/console" bench "$1" --keep-dir --json 2>&1 >&3 | { grep -v "^cluster folder (kept)" >&2 || true; }; } 3>&1

stats() { # label, unit, values: min/median/max
  python3 - "$@" <<'PY'
import statistics, sys
label, unit, values = sys.argv[1], sys.argv[2], [float(v) for v in sys.argv[3:]]
print(f"  {label:44} min {min(values):9.3f}  median {statistics.median(values):9.3f}  max {max(values):9.3f} {unit}  ({len(values)} rounds)")
PY
}

rounds=${ROUNDS:-5}
only=${*:-small large writes}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
quiet="$work/quiet.json"; python3 scripts/quiet.py mark "$quiet"
# One measured run each; ours set o, the references t.
run_ours_small() { next_fs; o=$(ours resync-small | field seconds); }
run_rsync_small() { next_fs; t=$(rsync_time "$work/small"); }
run_ours_large() {
  next_fs; local j; j=$(ours resync-large)
  o=$(field mb_per_sec <<<"$j"); large_seconds+=("$(field seconds <<<"$j")")
}
run_raw_large() { next_fs; t=$(ours raw-tcp | field mb_per_sec); }
run_rsync_large() {
  if [ "${RSYNC_LARGE:-1}" = 1 ]; then next_fs; large_rsync+=("$(rsync_time "$work/large")"); fi
}
run_ours_writes() { settle; o=$("$bin/console" bench create-write --clients 16 --duration 5s --json | field ops_per_sec); }
run_disk_writes() { settle; t=$("$bin/console" bench disk-limit --duration 5s --json | field ops_per_sec); }
# in_turn A B: A then B in odd rounds, B then A in even ones.
in_turn() { if ((round % 2)); then "$1"; "$2"; else "$2"; "$1"; fi; }

for what in $only; do
  ours=(); theirs=(); ratios=()
  for round in $(seq "$rounds"); do
    # Odd rounds run ours first, even rounds the references first (ABBA):
    # this disk's speed drifts by up to 4x from one minute to the next
    # (BENCHMARKS.md, "Issue 15, sessions 27–28"), and a fixed order would hand
    # that drift to one side. In the large rounds raw TCP always runs
    # between ours and rsync's.
    case $what in
      small) in_turn run_ours_small run_rsync_small ;;
      large) if ((round % 2)); then run_ours_large; run_raw_large; run_rsync_large
             else run_rsync_large; run_raw_large; run_ours_large; fi ;;
      writes) in_turn run_ours_writes run_disk_writes ;;
    esac
    ours+=("$o"); theirs+=("$t"); ratios+=("$(python3 -c "print($o / $t)")")
    extra=""
    if [ "$what" = large ]; then
      extra=", ours ${large_seconds[-1]} s"
      [ ${#large_rsync[@]} -eq 0 ] || extra="$extra against rsync -a ${large_rsync[-1]} s"
    fi
    echo "  $what round done: ours $o, reference $t$extra (load $(cut -d' ' -f1 /proc/loadavg))"
  done
  case $what in
    small)
      echo "resync-small: 10,000 x 4 KiB files to an empty backup, against rsync -a to an rsync daemon"
      stats "ours" s "${ours[@]}"; stats "rsync -a" s "${theirs[@]}"
      stats "time ratio ours/rsync (target <= 0.5)" "" "${ratios[@]}" ;;
    large)
      echo "resync-large: one 1 GiB file, against raw TCP + fsync"
      stats "ours" MB/s "${ours[@]}"; stats "raw TCP + fsync" MB/s "${theirs[@]}"
      stats "throughput ratio ours/raw (target >= 0.7)" "" "${ratios[@]}"
      stats "ours, in seconds" s "${large_seconds[@]}"
      if [ ${#large_rsync[@]} -gt 0 ]; then
        stats "rsync -a of the same file, seconds" s "${large_rsync[@]}"
        python3 - "${large_seconds[*]}" "${large_rsync[*]}" <<'PY'
import sys
ours, theirs = ([float(v) for v in a.split()] for a in sys.argv[1:3])
print(f"  ours faster than rsync -a in {sum(o < t for o, t in zip(ours, theirs))} of {len(ours)} rounds")
PY
      fi ;;
    writes)
      echo "create-write, 16 clients, against the disk's fsynced small writes"
      stats "ours" /s "${ours[@]}"; stats "disk-limit" /s "${theirs[@]}"
      stats "rate ratio ours/disk (target >= 0.4)" "" "${ratios[@]}" ;;
  esac
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 scripts/quiet.py report "$quiet" $$
