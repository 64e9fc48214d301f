#!/usr/bin/env bash
# The test command: set-up, build, then every test (unit tests of each
# crate and the end-to-end tests in tests/, which checkpoint, kill and
# restart real programs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast "$@"
