#!/usr/bin/env bash
# Builds ghsim's stand-in runner, `airlock-runner`, as a static binary that can be copied as it is
# into container and VM images: target/standin-bin/airlock-runner.
# Tries the musl target (static: the image needs no libc at all); when that target cannot be
# installed, falls back to a glibc build, which runs in Debian bookworm images (the host's glibc).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/standin-bin
mkdir -p "$out"
if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl \
   || rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1; then
  cargo build --locked -p airlock-runner --profile standin --target x86_64-unknown-linux-musl
  cp target/x86_64-unknown-linux-musl/standin/airlock-runner "$out/airlock-runner"
  echo "built $out/airlock-runner (static, musl)"
else
  echo "warning: the musl target is not available here; building against glibc instead" >&2
  cargo build --locked -p airlock-runner --profile standin
  cp target/standin/airlock-runner "$out/airlock-runner"
  echo "built $out/airlock-runner (dynamic, glibc)"
fi
