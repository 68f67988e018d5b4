#!/usr/bin/env bash
# Runs a local cluster (nm and two primary/backup pairs) in a temp dir and drives
# it with a batch script (examples/demo.batch by default).
#
#   scripts/demo.sh [SCRIPT]     run the script, then stop the cluster
#   scripts/demo.sh --keep       start the cluster and keep it running until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."

keep=false
script=examples/demo.batch
case "${1:-}" in
  --keep) keep=true ;;
  "") ;;
  *) script=$1 ;;
esac

# The release build, as the README's quick start builds it. DEMO_PROFILE=debug
# uses the debug build instead (CI reuses its test build); DEMO_CARGO_FLAGS adds
# build flags (CI passes the test build's features).
profile=${DEMO_PROFILE:-release}
release=""
[ "$profile" = release ] && release=--release
# shellcheck disable=SC2086
cargo build --quiet --bins $release ${DEMO_CARGO_FLAGS:-}
bin=target/$profile
dir=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n" > "$dir/cluster.key"
"$bin/nm" --listen 127.0.0.1:0 --data-dir "$dir/nm" --ready-file "$dir/nm.addr" --cluster-key-file "$dir/cluster.key" \
  >"$dir/nm.out" 2>"$dir/nm.log" &
for _ in $(seq 100); do [ -s "$dir/nm.addr" ] && break; sleep 0.1; done
[ -s "$dir/nm.addr" ] || { echo "nm did not start; see $dir/nm.log" >&2; exit 1; }
nm=$(cat "$dir/nm.addr")

for ss in ss1 ss1_backup ss2 ss2_backup; do
  "$bin/ss" --nm "$nm" --username "$ss" --storage "$dir/$ss" --cluster-key-file "$dir/cluster.key" --stream-delay 20ms 2>"$dir/$ss.log" &
done
alive=0
for _ in $(seq 100); do
  alive=$("$bin/console" --nm "$nm" --user operator --batch --json <<<"STATUS" | grep -o '"state":"ALIVE"' | wc -l || true)
  [ "$alive" -ge 4 ] && break
  sleep 0.1
done
[ "$alive" -ge 4 ] || { echo "storage servers did not register; see $dir/*.log" >&2; exit 1; }
echo "cluster up: nm at $nm, pairs ss1/ss1_backup and ss2/ss2_backup (logs in $dir)"

if $keep; then
  echo "try: $bin/console --nm $nm --user alice --batch    (Ctrl-C here stops the cluster)"
  wait
else
  "$bin/console" --nm "$nm" --user alice --batch "$script"
fi
