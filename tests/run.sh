#!/usr/bin/env bash
# skiff's whole test suite: unit, per-crate and end-to-end tests on real components. Needs root and the
# packages of tests/install-deps.sh; end-to-end tests fail (never skip) naming anything missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end tests start the real binaries; build them first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast
