#!/usr/bin/env bash
# airlock's test command (see README.md). Installs everything the tests need, builds every
# binary, and runs every test. Needs: the Rust toolchain, Node.js with npm, /bin/sh, and root
# (container sandboxes, image builds) with apt-get for the Debian packages below.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the container tests drive (runc, crun, mmdebstrap, nftables, ...).
bash scripts/system-deps.sh

echo "==> npm packages for the GitHub conformance tests (pinned by tests/openapi/package-lock.json)"
npm ci --prefix tests/openapi --no-audit --no-fund --loglevel=error
echo "==> npm packages for the VMM API conformance tests (pinned by tests/vmm-api/package-lock.json)"
npm ci --prefix tests/vmm-api --no-audit --no-fund --loglevel=error

echo "==> cargo build --workspace --bins (airlock, airlock-ghsim, airlock-runner)"
cargo build --workspace --bins --locked

echo "==> the stand-in runner as a static binary (scripts/build-standin.sh)"
bash scripts/build-standin.sh

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

echo "==> rustfmt and clippy"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings

echo "==> cargo nextest run --workspace"
cargo nextest run --workspace --locked --profile ci
