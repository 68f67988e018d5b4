#!/usr/bin/env bash
# Times one `console --batch` session of N commands (CREATE, WRITE, READ in
# turn; default 1000) against a local release-built cluster of nm and two
# storage servers, fsync on. With PAIRS=1 the session is N CREATE+WRITE pairs
# instead, and the rate is pairs per second. A benchmark, not a test.
#
#   scripts/bench-batch.sh [N]
#   PAIRS=1 scripts/bench-batch.sh 2000
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
[ -n "${BIN:-}" ] || cargo build --quiet --release --bins
bin=${BIN:-target/release}  # BIN=folder times other builds of nm, ss and console
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
if [ "${PAIRS:-0}" = 1 ]; then
  for ((i = 0; i < n; i++)); do
    printf 'CREATE f%d.txt\nWRITE f%d.txt 0\n0 Sentence number %d of the benchmark.\nETIRW\n' "$i" "$i" "$i"
  done >"$script"
  commands=$(grep -cE '^CREATE' "$script")
  unit=pairs
else
  for ((i = 0; i < n; i += 3)); do
    printf 'CREATE f%d.txt\nWRITE f%d.txt 0\n0 Sentence number %d of the benchmark.\nETIRW\nREAD f%d.txt\n' "$i" "$i" "$i" "$i"
  done >"$script"
  commands=$(grep -cE '^(CREATE|WRITE|READ)' "$script")
  unit=commands
fi

start=$(date +%s.%N)
"$bin/console" --nm "$nm" --user bench --batch "$script" >/dev/null
end=$(date +%s.%N)
awk -v c="$commands" -v s="$start" -v e="$end" -v u="$unit" \
  'BEGIN { t = e - s; printf "%d %s in %.3f s: %.0f %s/s, %.3f ms each\n", c, u, t, c / t, u, 1000 * t / c }'
