#!/usr/bin/env bash
# Times `console --batch` sessions of N commands (CREATE, WRITE, READ in turn;
# default 1000) against a local release-built cluster of nm and two storage
# servers, fsync on. With PAIRS=1 a session is N CREATE+WRITE pairs instead,
# and the rate is pairs per second. A benchmark, not a test.
#
#   scripts/bench-batch.sh [N]
#   PAIRS=1 ROUNDS=3 scripts/bench-batch.sh 3000
#   PAIRS=1 ROUNDS=3 BIN_B=/other/release scripts/bench-batch.sh 3000   # A/B, alternating
#
# ROUNDS sessions (default 1) run one after the other on the same cluster,
# each on new file names, and the median is printed. Nothing is deleted
# until the end: on this machine's ext4 (no journal) deleting thousands of
# files slows the next thousands of creates for minutes, so a clean-up
# between rounds would measure the clean-up. With BIN_B a second cluster
# runs another build's nm, ss and console, and the rounds alternate.
# BIN=folder runs the first cluster from another build.
#
# BACKUPS=1: the two storage servers are a pair (ss1 and ss1_backup) instead
# of two primaries, so every change is replicated. ENV_A / ENV_B: variables
# for the storage servers of cluster A / B, e.g. the replication stream
# against nm's jobs, alternating, on one build:
#
#   PAIRS=1 BACKUPS=1 ROUNDS=5 BIN_B=target/release ENV_B=SS_REPLICATION_STREAM=false scripts/bench-batch.sh 3000
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
rounds=${ROUNDS:-1}
[ -n "${BIN:-}" ] || cargo build --quiet --release --bins
dir=$(mktemp -d)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT INT TERM

head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n" > "$dir/cluster.key"
# start_cluster NAME BIN ENV: nm and two storage servers under $dir/NAME.
start_cluster() {
  local name=$1 bin=$2 vars=${3:-} home="$dir/$1"
  mkdir -p "$home"
  "$bin/nm" --listen 127.0.0.1:0 --data-dir "$home/nm" --ready-file "$home/nm.addr" --cluster-key-file "$dir/cluster.key" --quiet 2>/dev/null &
  for _ in $(seq 100); do [ -s "$home/nm.addr" ] && break; sleep 0.1; done
  local nm
  nm=$(cat "$home/nm.addr")
  local servers=(ss1 ss2)
  [ "${BACKUPS:-0}" = 1 ] && servers=(ss1 ss1_backup)
  # shellcheck disable=SC2086
  for ss in "${servers[@]}"; do env $vars "$bin/ss" --nm "$nm" --username "$ss" --storage "$home/$ss" --cluster-key-file "$dir/cluster.key" 2>/dev/null & done
  for _ in $(seq 100); do
    [ "$("$bin/console" --nm "$nm" --batch --json <<<STATUS | grep -o ALIVE | wc -l)" -ge 2 ] && break
    sleep 0.1
  done
  if [ "${BACKUPS:-0}" = 1 ]; then
    for _ in $(seq 100); do
      "$bin/console" --nm "$nm" --batch --json <<<STATUS | grep -q '"ACTIVE"' && break
      sleep 0.1
    done
  fi
}

# script ROUND: the session's commands, on names of its own.
script() {
  local r=$1 file="$dir/script-$1.batch" i
  if [ "${PAIRS:-0}" = 1 ]; then
    for ((i = 0; i < n; i++)); do
      printf 'CREATE r%d-f%d.txt\nWRITE r%d-f%d.txt 0\n0 Sentence number %d of the benchmark.\nETIRW\n' "$r" "$i" "$r" "$i" "$i"
    done >"$file"
  else
    for ((i = 0; i < n; i += 3)); do
      printf 'CREATE r%d-f%d.txt\nWRITE r%d-f%d.txt 0\n0 Sentence number %d of the benchmark.\nETIRW\nREAD r%d-f%d.txt\n' "$r" "$i" "$r" "$i" "$i" "$r" "$i"
    done >"$file"
  fi
  echo "$file"
}
unit=commands
[ "${PAIRS:-0}" = 1 ] && unit=pairs

# session NAME BIN ROUND: prints the rate.
session() {
  local name=$1 bin=$2 file start end count
  file=$(script "$3")
  if [ "$unit" = pairs ]; then count=$(grep -cE '^CREATE' "$file"); else count=$(grep -cE '^(CREATE|WRITE|READ)' "$file"); fi
  sync; sleep "${SETTLE:-3}"
  start=$(date +%s.%N)
  "$bin/console" --nm "$(cat "$dir/$name/nm.addr")" --user bench --batch "$file" >/dev/null
  end=$(date +%s.%N)
  awk -v c="$count" -v s="$start" -v e="$end" 'BEGIN { printf "%.0f", c / (e - s) }'
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
quiet="$dir/quiet.json"; python3 scripts/quiet.py mark "$quiet"
bin_a=${BIN:-target/release}
start_cluster a "$bin_a" "${ENV_A:-}"
[ -z "${BIN_B:-}" ] || start_cluster b "$BIN_B" "${ENV_B:-}"
rates_a=(); rates_b=()
for ((r = 0; r < rounds; r++)); do
  rate=$(session a "$bin_a" "$r"); rates_a+=("$rate")
  echo "round $((r + 1)): $rate $unit/s ($bin_a)" >&2
  if [ -n "${BIN_B:-}" ]; then
    rate=$(session b "$BIN_B" "$r"); rates_b+=("$rate")
    echo "round $((r + 1)): $rate $unit/s ($BIN_B)" >&2
  fi
done
median() { python3 -c "import statistics,sys; print(round(statistics.median(float(x) for x in sys.argv[1:])))" "$@"; }
echo "$n $unit per session, $rounds rounds: median $(median "${rates_a[@]}") $unit/s (${rates_a[*]}) with $bin_a ${ENV_A:-}"
[ -z "${BIN_B:-}" ] || echo "$n $unit per session, $rounds rounds: median $(median "${rates_b[@]}") $unit/s (${rates_b[*]}) with $BIN_B ${ENV_B:-}"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 scripts/quiet.py report "$quiet" $$
