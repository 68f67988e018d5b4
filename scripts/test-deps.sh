#!/usr/bin/env bash
# Installs what the test suite needs beside a Rust toolchain, when missing
# (Debian/Ubuntu packages; as root, or with sudo):
#   etcd (etcd-server)          the nm high-availability tests run a real etcd
#   protoc (protobuf-compiler)  building nm with etcd (`--features nm/etcd`)
#   nft (nftables)              partitions: packets dropped between addresses
#   tmux                        the console's end-to-end test drives the TUI
set -euo pipefail
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v nft >/dev/null || need+=(nftables)
command -v tmux >/dev/null || need+=(tmux)
if ((${#need[@]})); then
  echo "test-deps: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
