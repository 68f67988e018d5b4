#!/usr/bin/env bash
# Side by side, in one run, on this machine: the cluster's resyncs against
# rsync to an rsync daemon on 127.0.0.1 (same number and size of files, same
# content), bulk transfer against a plain TCP copy plus fsync, and
# create-write against the disk's own fsynced small-write rate.
# Prints each figure and the ratio of the medians. A benchmark, not a test.
#
#   scripts/bench-compare.sh [small] [large] [writes]    (default: all three)
#   ROUNDS=5 scripts/bench-compare.sh small              (default: 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v rsync >/dev/null || { apt-get update -qq && apt-get install -y -qq rsync >/dev/null; }
cargo build --quiet --release --bins
bin=target/release
work=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

large_rsync=()
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
mkdir -p "$work/dst"
cat > "$work/rsyncd.conf" <<CONF
use chroot = no
uid = root
gid = root
[dst]
path = $work/dst
read only = no
CONF
rsync --daemon --no-detach --config="$work/rsyncd.conf" --port=$port --address=127.0.0.1 &
sleep 0.5

rsync_time() { # src dir → the empty module folder; seconds. The copy is
  # removed afterwards, so every run, ours or rsync, starts from the same state.
  local start end
  start=$(date +%s.%N)
  rsync -a "$1/" "rsync://127.0.0.1:$port/dst/"
  sync
  end=$(date +%s.%N)
  rm -rf "$work/dst"/*
  python3 -c "print($end - $start)"
}

# On this machine's file system (ext4 without a journal) the inode allocator
# skips every inode freed in the last few seconds (longer while its inode
# table block is still dirty), so the files one run deletes slow the next
# run's creates by up to 40x. Before each measured run: write everything
# back and let five seconds pass.
settle() { sync; sleep "${SETTLE:-6}"; }

median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }

# Each comparison runs $rounds times, ours and the reference alternating, and
# the medians are compared (the machine is shared: neighbours come and go).
rounds=${ROUNDS:-3}
only=${*:-small large writes}
rows=()
for what in $only; do
  ours=(); theirs=()
  for _ in $(seq "$rounds"); do
    case $what in
      small)
        settle; ours+=("$("$bin/console" bench resync-small --json | field seconds)")
        settle; theirs+=("$(rsync_time "$work/small")") ;;
      large)
        settle; ours+=("$("$bin/console" bench resync-large --json | field mb_per_sec)")
        settle; theirs+=("$("$bin/console" bench raw-tcp --json | field mb_per_sec)")
        if [ "${RSYNC_LARGE:-1}" = 1 ]; then settle; large_rsync+=("$(rsync_time "$work/large")"); fi ;;
      writes)
        settle; ours+=("$("$bin/console" bench create-write --clients 16 --duration 5s --json | field ops_per_sec)")
        settle; theirs+=("$("$bin/console" bench disk-limit --duration 5s --json | field ops_per_sec)") ;;
    esac
  done
  echo "$what: ours ${ours[*]} | reference ${theirs[*]}" >&2
  rows+=("$what $(median "${ours[@]}") $(median "${theirs[@]}")")
done

[ ${#large_rsync[@]} -eq 0 ] || echo "large: rsync -a took ${large_rsync[*]} s" >&2
printf '%s\n' "${rows[@]}" | python3 -c '
import sys
names = {
    "small": ("resync-small (10,000 x 4 KiB) vs rsync -a", "s", "time ratio (target <= 0.5)"),
    "large": ("resync-large (1 GiB) vs raw TCP + fsync", "MB/s", "throughput ratio (target >= 0.7)"),
    "writes": ("create-write, 16 clients vs disk small writes", "/s", "rate ratio (target >= 0.4)"),
}
for line in sys.stdin:
    what, ours, ref = line.split()
    name, unit, ratio = names[what]
    ours, ref = float(ours), float(ref)
    print(f"{name:48} median ours {ours:10.2f} {unit:5} reference {ref:10.2f} {unit:5} {ratio}: {ours/ref:.2f}")
'
