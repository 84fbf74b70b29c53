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

echo "==> each fuzz target for 10 s (fuzz/, README.md \"Fuzzing\"; the corpus replays in nextest)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
# fuzz/ is a workspace of its own with its own Cargo.lock; cargo-fuzz has no --locked, so the
# fetch checks it (README.md, "Fuzzing", says how to refresh it from airlock's).
if ! cargo fetch --locked --manifest-path fuzz/Cargo.toml --target x86_64-unknown-linux-gnu; then
  echo "fuzz/Cargo.lock is out of date: refresh it from Cargo.lock (README.md, \"Fuzzing\")" >&2
  exit 1
fi
# cargo-fuzz passes nightly-only flags, which the stable toolchain takes with RUSTC_BOOTSTRAP=1.
# Its default build is optimised with debug assertions and overflow checks on: about 50 times
# the runs per second of a --dev build, for a minute more of building (both about 1.5-2.5 min
# on 2 CPUs). No sanitizer: airlock has no unsafe code. All four targets are built at once;
# new inputs go to a scratch directory, so the saved corpus changes only by hand.
fuzz_flags=(--sanitizer none)
(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build "${fuzz_flags[@]}")
fuzz_scratch=$(mktemp -d)
for t in webhook config jit github_responses; do
  mkdir "$fuzz_scratch/$t"
  dirs=("$fuzz_scratch/$t" "corpus/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("regressions/$t")
  if ! (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "${fuzz_flags[@]}" "$t" "${dirs[@]}" \
        -- -max_total_time=10 -print_final_stats=1) >"$fuzz_scratch/$t.log" 2>&1; then
    # libFuzzer's report ends with the input (in base64 when small): CI's clone is thrown away.
    tail -n 80 "$fuzz_scratch/$t.log"
    echo "fuzz target $t failed: the input is in fuzz/artifacts/$t/ (README.md, \"Fuzzing\")" >&2
    exit 1
  fi
  echo "$t: $(grep -m1 -o 'Done [0-9]* runs in [0-9]* second(s)' "$fuzz_scratch/$t.log")"
done
rm -rf "$fuzz_scratch"

echo "==> cargo nextest run --workspace"
cargo nextest run --workspace --locked --profile ci
