#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 20 s; argument 1) from
# the corpus in fuzz/corpus/, new inputs going to a scratch directory so the
# committed corpus changes only by hand. Uses `cargo fuzz` from the PATH, or
# installs the pinned version under target/cargo-fuzz (about 40 s); a
# failed install, build or run fails. A crash fails.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
version=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
  root=$PWD/target/cargo-fuzz
  if ! "$root/bin/cargo-fuzz" --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz $version into $root"
    cargo install --quiet --locked --root "$root" cargo-fuzz --version "$version"
  fi
  export PATH="$root/bin:$PATH"
fi
# The stable toolchain builds libFuzzer targets without a sanitizer when
# told that nightly flags are allowed.
export RUSTC_BOOTSTRAP=1
# Build first, so that a target that no longer compiles shows its errors
# (the runs below print only their last lines).
log=$(mktemp)
if ! cargo fuzz build --sanitizer none >"$log" 2>&1; then
  grep -E -A 12 '^error(\[|:)' "$log" | head -n 80 >&2 || tail -n 60 "$log" >&2
  echo "fuzz.sh: the fuzz targets do not build" >&2
  exit 1
fi
rm -f "$log"
for target in unionpay_verify envelope; do
  scratch=$(mktemp -d)
  echo "fuzz.sh: $target for ${secs}s"
  cargo fuzz run --sanitizer none "$target" "$scratch" "fuzz/corpus/$target" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 12
  rm -rf "$scratch"
done
