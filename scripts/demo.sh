#!/usr/bin/env bash
# airlock's "run it" command (see README.md): builds airlock and runs its demo against the
# built-in GitHub emulator. No config, no root, no network.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins --locked
exec ./target/release/airlock demo "$@"
