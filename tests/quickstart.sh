#!/usr/bin/env bash
# The README's first quick-start command: installs the Debian packages, builds skiff, then starts a local
# registry and skiffd and runs a lazily pulled eStargz container with skiff (tests/src/bin/skiff-quickstart.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/install-deps.sh
cargo build --workspace --bins
cargo run --quiet -p skiff-tests --bin skiff-quickstart
