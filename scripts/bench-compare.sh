#!/usr/bin/env bash
# Side by side, in one run, on this machine: the cluster's resyncs against
# rsync to an rsync daemon on 127.0.0.1 (same number and size of files, same
# content), bulk transfer against a plain TCP copy plus fsync, and
# create-write against the disk's own fsynced small-write rate.
# Prints each figure and its ratio. A benchmark, not a test.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v rsync >/dev/null || { apt-get update -qq && apt-get install -y -qq rsync >/dev/null; }
cargo build --quiet --release --bins
bin=target/release
work=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

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

rsync_time() { # src dir → fresh empty module folder; seconds
  rm -rf "$work/dst"/*; sync
  local start end
  start=$(date +%s.%N)
  rsync -a "$1/" "rsync://127.0.0.1:$port/dst/"
  sync
  end=$(date +%s.%N)
  python3 -c "print($end - $start)"
}

ours_small=$("$bin/console" bench resync-small --json | field seconds)
theirs_small=$(rsync_time "$work/small")
ours_large=$("$bin/console" bench resync-large --json | field seconds)
theirs_large=$(rsync_time "$work/large")
raw_mbps=$("$bin/console" bench raw-tcp --json | field mb_per_sec)
ours_mbps=$(python3 -c "print((1<<30)/1e6/$ours_large)")
disk=$("$bin/console" bench disk-limit --duration 5s --json | field ops_per_sec)
pairs=$("$bin/console" bench create-write --clients 16 --duration 5s --json | field ops_per_sec)

python3 - <<PY
rows = [
    ("resync-small (10,000 x 4 KiB) vs rsync -a", $ours_small, $theirs_small, "s", "time ratio (target <= 0.5)"),
    ("resync-large (1 GiB) vs rsync -a", $ours_large, $theirs_large, "s", "time ratio"),
    ("resync-large MB/s vs raw TCP + fsync", $ours_mbps, $raw_mbps, "MB/s", "throughput ratio (target >= 0.7)"),
    ("create-write, 16 clients vs disk small writes", $pairs, $disk, "/s", "rate ratio (target >= 0.4)"),
]
for name, ours, ref, unit, what in rows:
    print(f"{name:48} ours {ours:10.2f} {unit:5} reference {ref:10.2f} {unit:5} {what}: {ours/ref:.2f}")
PY
