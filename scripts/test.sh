#!/usr/bin/env bash
# The whole test suite: installs what it needs when missing
# (scripts/test-deps.sh), then runs every test of the workspace with every
# feature, the nm high-availability tests (tests/tests/ha.rs) included.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p tests --test ha`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
exec cargo test --workspace --all-features "$@"
