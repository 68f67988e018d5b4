# Sourced by the benchmark scripts: a new, empty file system on demand, so
# that no measured run is slowed by the inode allocator's memory of an
# earlier run's deletions (BENCHMARKS.md, "The machine").
#
# FRESH_FS=1 (as root, with losetup and mkfs.ext4; the scripts default to
# 0): `fresh_fs_init DIR` writes out a loop file of FS_GIB GiB (default 4) under
# DIR once; every `fresh_fs DIR/fs` then makes a new ext4 on it (no journal,
# as this machine's disk; inode tables written in full, so no lazy
# initialisation runs during a measurement) and mounts it there. The loop
# file is on the same disk and opened with direct I/O, so the page cache
# holds one copy. FRESH_FS=0: `fresh_fs` only syncs, pauses SETTLE seconds
# (default 6) and makes the folder. `fresh_fs_done` unmounts and detaches.

fresh_fs_loop=""
fresh_fs_mounted=""

fresh_fs_init() {
  FRESH_FS=${FRESH_FS:-0}
  [ "$FRESH_FS" = 1 ] || return 0
  if [ "$(id -u)" != 0 ] || ! command -v losetup >/dev/null || ! command -v mkfs.ext4 >/dev/null; then
    echo "FRESH_FS=1 needs root, losetup and mkfs.ext4" >&2
    return 1
  fi
  local image="$1/fs.img"
  dd if=/dev/zero of="$image" bs=16M count=$((${FS_GIB:-4} * 64)) conv=fsync status=none
  fresh_fs_loop=$(losetup --find --show --direct-io=on "$image")
  echo "fresh file system per run: ext4 without a journal on $fresh_fs_loop (${FS_GIB:-4} GiB)" >&2
}

fresh_fs() {
  local at=$1
  if [ "$FRESH_FS" != 1 ]; then
    sync; sleep "${SETTLE:-6}"; mkdir -p "$at"; return 0
  fi
  if [ -n "$fresh_fs_mounted" ]; then umount "$fresh_fs_mounted"; fi
  mkfs.ext4 -q -F -O ^has_journal -N 262144 -E lazy_itable_init=0,nodiscard "$fresh_fs_loop"
  mkdir -p "$at"; mount "$fresh_fs_loop" "$at"; fresh_fs_mounted=$at
  sync; sleep 1
}

fresh_fs_done() {
  if [ -n "$fresh_fs_mounted" ]; then umount "$fresh_fs_mounted" 2>/dev/null || true; fi
  if [ -n "$fresh_fs_loop" ]; then losetup -d "$fresh_fs_loop" 2>/dev/null || true; fi
  fresh_fs_mounted=""; fresh_fs_loop=""
}
