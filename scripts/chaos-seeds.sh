#!/usr/bin/env bash
# Runs the chaos test (both replication modes) for seeds 1..N and prints one
# summary line per seed and mode: acknowledged, lost, conflict copies,
# OFFLINE seconds, aimed faults. Usage: scripts/chaos-seeds.sh [N] [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-10}
secs=${2:-20}
cargo test -p tests --test chaos --no-run >/dev/null 2>&1
failed=0
for seed in $(seq 1 "$seeds"); do
  out=$(CHAOS_SEED=$seed CHAOS_SECS=$secs cargo test -p tests --test chaos -- --nocapture --test-threads 1 2>&1) || failed=$((failed + 1))
  grep -oE "chaos (a?sync) seed [0-9]+: .*" <<<"$out" || true
  grep -E "panicked|kept in" <<<"$out" | head -3 || true
done
echo "seeds: $seeds, runs failed: $failed"
[ "$failed" -eq 0 ]
