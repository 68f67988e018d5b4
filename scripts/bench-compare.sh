#!/usr/bin/env bash
# Side by side, in one run, on this machine: the cluster's resyncs against
# rsync to an rsync daemon on 127.0.0.1 (same number and size of files, same
# content), bulk transfer against a plain TCP copy plus fsync, and
# create-write against the disk's own fsynced small-write rate.
# Ours and the reference alternate, ROUNDS rounds (default 5); prints
# min/median/max of each, of the per-round ratios, and the load before and
# after. A benchmark, not a test.
#
#   scripts/bench-compare.sh [small] [large] [writes]    (default: all three)
#   ROUNDS=7 scripts/bench-compare.sh small
#
# FRESH_FS=1 (the default when run as root with losetup and mkfs.ext4):
# every measured resync, ours or the reference, runs on a new, empty ext4
# (no journal, as this machine's disk) made in a loop file on the same disk,
# so no run is slowed by the inode allocator's memory of an earlier run's
# deletions (see BENCHMARKS.md, "The machine"). FRESH_FS=0: the machine's
# own file system, with a sync and a pause before each run.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v rsync >/dev/null || { apt-get update -qq && apt-get install -y -qq rsync >/dev/null; }
cargo build --quiet --release --bins
bin=target/release
work=$(mktemp -d)
fs="$work/fs" image="$work/fs.img" loop=""
cleanup() {
  kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true
  if mountpoint -q "$fs" 2>/dev/null; then umount "$fs"; fi
  [ -z "$loop" ] || losetup -d "$loop" 2>/dev/null || true
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

rsync_time() { # src dir → the empty module folder; seconds. On a fresh
  # file system the source is copied onto it first (as ours seeds the
  # primary's folder there); otherwise the copy is removed afterwards, so
  # every run, ours or rsync, starts from the same state.
  local src=$1 start end
  if [ "$fresh" = 1 ]; then
    cp -a "$src" "$fs/src"; src="$fs/src"; sync
  fi
  start=$(date +%s.%N)
  rsync -a "$src/" "rsync://127.0.0.1:$port/dst/"
  sync
  end=$(date +%s.%N)
  [ "$fresh" = 1 ] || rm -rf "$fs/dst"/*
  python3 -c "print($end - $start)"
}

# On this machine's file system (ext4 without a journal) the inode allocator
# skips every inode freed in the last few seconds (longer while its inode
# table block is still dirty), so the files one run deletes slow the next
# run's creates by up to 40x. Before each measured run: write everything
# back and let five seconds pass.
settle() { sync; sleep "${SETTLE:-6}"; }

fresh=${FRESH_FS:-}
if [ -z "$fresh" ]; then
  fresh=0
  [ "$(id -u)" = 0 ] && command -v losetup >/dev/null && command -v mkfs.ext4 >/dev/null && fresh=1
fi
if [ "$fresh" = 1 ]; then
  # Written out in full once, so no run pays for the loop file's own
  # block allocation; direct I/O, so the page cache holds one copy.
  dd if=/dev/zero of="$image" bs=16M count=$((${FS_GIB:-4} * 64)) conv=fsync status=none
  loop=$(losetup --find --show --direct-io=on "$image")
  echo "fresh file system per run: ext4 without a journal on $loop (${FS_GIB:-4} GiB)"
fi
# fresh_fs: a new, empty file system at $fs (or, with FRESH_FS=0, settle).
fresh_fs() {
  if [ "$fresh" != 1 ]; then settle; mkdir -p "$fs/dst"; return; fi
  if mountpoint -q "$fs"; then umount "$fs"; fi
  mkfs.ext4 -q -F -O ^has_journal -N 65536 -E lazy_itable_init=0,nodiscard "$loop"
  mkdir -p "$fs"; mount "$loop" "$fs"; mkdir -p "$fs/dst"
  sync; sleep 1
}

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
for what in $only; do
  ours=(); theirs=(); ratios=()
  for _ in $(seq "$rounds"); do
    case $what in
      small)
        fresh_fs; o=$(TMPDIR=$fs "$bin/console" bench resync-small --json | field seconds)
        fresh_fs; t=$(rsync_time "$work/small") ;;
      large)
        fresh_fs; j=$(TMPDIR=$fs "$bin/console" bench resync-large --json)
        o=$(field mb_per_sec <<<"$j"); large_seconds+=("$(field seconds <<<"$j")")
        fresh_fs; t=$(TMPDIR=$fs "$bin/console" bench raw-tcp --json | field mb_per_sec)
        if [ "${RSYNC_LARGE:-1}" = 1 ]; then fresh_fs; large_rsync+=("$(rsync_time "$work/large")"); fi ;;
      writes)
        settle; o=$("$bin/console" bench create-write --clients 16 --duration 5s --json | field ops_per_sec)
        settle; t=$("$bin/console" bench disk-limit --duration 5s --json | field ops_per_sec) ;;
    esac
    ours+=("$o"); theirs+=("$t"); ratios+=("$(python3 -c "print($o / $t)")")
    echo "  $what round done: ours $o, reference $t (load $(cut -d' ' -f1 /proc/loadavg))"
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
      [ ${#large_rsync[@]} -eq 0 ] || stats "rsync -a of the same file, seconds" s "${large_rsync[@]}" ;;
    writes)
      echo "create-write, 16 clients, against the disk's fsynced small writes"
      stats "ours" /s "${ours[@]}"; stats "disk-limit" /s "${theirs[@]}"
      stats "rate ratio ours/disk (target >= 0.4)" "" "${ratios[@]}" ;;
  esac
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
