#!/usr/bin/env bash
# airlock's "run it" command (see README.md): builds airlock and runs its demo against the
# built-in GitHub emulator. No config needed. As root it installs what container sandboxes need
# (scripts/system-deps.sh) and the demo runs every job in one; otherwise, or where containers
# cannot run, the demo says why and uses the (not isolated) process backend.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh --try
cargo build --release --bins --locked
exec ./target/release/airlock demo "$@"
