#!/usr/bin/env bash
# Builds the programs copied into sandbox images as static binaries, into target/standin-bin/:
# - airlock-runner: ghsim's stand-in runner (container and VM images);
# - airlock-agent: the microVM guest's init, which must be static (it runs before any libc).
# Tries the musl target; when that target cannot be installed, falls back to a glibc build of the
# runner (which runs in Debian bookworm images, the host's glibc) and skips the agent with a
# warning (VM images cannot be built then).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/standin-bin
mkdir -p "$out"
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl \
   || rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; then
  cargo build --locked -p airlock-runner -p airlock-agent --profile standin --target x86_64-unknown-linux-musl
  for b in airlock-runner airlock-agent; do
    cp target/x86_64-unknown-linux-musl/standin/$b "$out/$b"
  done
  echo "built $out/airlock-runner and $out/airlock-agent (static, musl)"
else
  echo "warning: the musl target is not available here; building the runner against glibc, and no guest agent (no VM images)" >&2
  cargo build --locked -p airlock-runner --profile standin
  cp target/standin/airlock-runner "$out/airlock-runner"
  echo "built $out/airlock-runner (dynamic, glibc)"
fi
