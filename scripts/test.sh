#!/usr/bin/env bash
# Runs every check and test of paynotify: formatting, clippy, the whole test
# suite. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

vectors=${PAYNOTIFY_VECTORS:-../shared/vectors}
if [ ! -f "$vectors/unionpay/MANIFEST.txt" ]; then
  echo "test.sh: the signed test vectors are not at $vectors." >&2
  echo "         Put the project's shared/ directory beside this repository, or set PAYNOTIFY_VECTORS." >&2
  exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
echo "test.sh: all checks passed"
