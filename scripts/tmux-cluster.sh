#!/usr/bin/env bash
# Each daemon in its own tmux pane, and the console in the last one.
# Kill a storage server's pane (Ctrl-C in it, or `tmux kill-pane`) and watch
# the console show the failure and the failover; run the same command again
# in a new pane to bring it back.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release --bins
bin=$PWD/target/release
dir=$(mktemp -d)
port=${NM_PORT:-5000}
session=${SESSION:-docs}
head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n" > "$dir/cluster.key"
fast="--heartbeat-interval 100ms --cluster-key-file $dir/cluster.key"
ss() { echo "$bin/ss --nm 127.0.0.1:$port --username $1 --storage $dir/$1 $fast --log-format pretty"; }

tmux new-session -d -s "$session" -x 200 -y 50 \
  "$bin/nm --listen 127.0.0.1:$port --data-dir $dir/nm --heartbeat-timeout 1s --cluster-key-file $dir/cluster.key --log-format pretty"
for name in ss1 ss1_backup ss2 ss2_backup; do
  tmux split-window -t "$session" "$(ss $name)"
  tmux select-layout -t "$session" tiled >/dev/null
done
tmux split-window -t "$session" "sleep 1; $bin/console --nm 127.0.0.1:$port --user operator"
tmux select-layout -t "$session" tiled >/dev/null
echo "tmux session '$session': attach with: tmux attach -t $session   (data in $dir)"
echo
echo "A killed daemon comes back with the same command in a new pane:"
echo "  tmux split-window -t $session \"$bin/nm --listen 127.0.0.1:$port --data-dir $dir/nm --heartbeat-timeout 1s --cluster-key-file $dir/cluster.key --log-format pretty\""
for name in ss1 ss1_backup ss2 ss2_backup; do
  echo "  tmux split-window -t $session \"$(ss $name)\""
done
echo "(then: tmux select-layout -t $session tiled)"
