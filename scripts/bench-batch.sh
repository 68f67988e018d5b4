#!/usr/bin/env bash
# Times one `console --batch` session of N commands (CREATE, WRITE, READ in
# turn; default 1000) against a local release-built cluster of nm and two
# storage servers, fsync on. A benchmark, not a test.
#
#   scripts/bench-batch.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
cargo build --quiet --release --bins
bin=target/release
dir=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT INT TERM

head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n" > "$dir/cluster.key"
"$bin/nm" --listen 127.0.0.1:0 --data-dir "$dir/nm" --ready-file "$dir/nm.addr" --cluster-key-file "$dir/cluster.key" --quiet 2>/dev/null &
for _ in $(seq 100); do [ -s "$dir/nm.addr" ] && break; sleep 0.1; done
nm=$(cat "$dir/nm.addr")
for ss in ss1 ss2; do "$bin/ss" --nm "$nm" --username "$ss" --storage "$dir/$ss" --cluster-key-file "$dir/cluster.key" 2>/dev/null & done
for _ in $(seq 100); do
  [ "$("$bin/console" --nm "$nm" --batch --json <<<STATUS | grep -o ALIVE | wc -l)" -ge 2 ] && break
  sleep 0.1
done

script="$dir/script.batch"
for ((i = 0; i < n; i += 3)); do
  printf 'CREATE f%d.txt\nWRITE f%d.txt 0\n0 Sentence number %d of the benchmark.\nETIRW\nREAD f%d.txt\n' "$i" "$i" "$i" "$i"
done >"$script"
commands=$(grep -cE '^(CREATE|WRITE|READ)' "$script")

start=$(date +%s.%N)
"$bin/console" --nm "$nm" --user bench --batch "$script" >/dev/null
end=$(date +%s.%N)
awk -v c="$commands" -v s="$start" -v e="$end" \
  'BEGIN { t = e - s; printf "%d commands in %.3f s: %.0f commands/s, %.3f ms each\n", c, t, c / t, 1000 * t / c }'
