#!/usr/bin/env bash
# The layers cargo enforces (README, Layout): the crates below the backends
# build without any AWS SDK crate, the backends build with the embedded
# backend alone, and no crate depends on a layer above its own.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
# The SDK's crates (aws-lc-rs, the cryptography, is not one of them).
sdk='^aws-(sdk-|smithy-|config |types |runtime |sigv4 |credential)'
for crate in paynotify-model paynotify-schemes paynotify-config paynotify-ports \
  paynotify-records paynotify-testkit paynotify-runtime; do
  tree=$(cargo tree --locked -p "$crate" -e normal --prefix none)
  if grep -Eq "$sdk" <<<"$tree"; then
    echo "layers.sh: $crate depends on an AWS SDK crate:" >&2
    cargo tree --locked -p "$crate" -e normal -i aws-smithy-runtime-api 2>/dev/null | head -n 20 >&2 || true
    fail=1
  fi
done
# Each layer's paynotify dependencies, lowest first; anything else is a
# wrong import.
allowed() {
  case "$1" in
    paynotify-model) echo "" ;;
    paynotify-schemes) echo "paynotify-model" ;;
    paynotify-config) echo "paynotify-model paynotify-schemes" ;;
    paynotify-ports) echo "paynotify-model paynotify-schemes" ;;
    paynotify-records) echo "paynotify-model paynotify-schemes paynotify-ports" ;;
    paynotify-testkit) echo "paynotify-model paynotify-schemes" ;;
    paynotify-backends) echo "paynotify-model paynotify-schemes paynotify-config paynotify-ports paynotify-records" ;;
    paynotify-runtime) echo "paynotify-model paynotify-schemes paynotify-config paynotify-ports" ;;
  esac
}
for crate in paynotify-model paynotify-schemes paynotify-config paynotify-ports \
  paynotify-records paynotify-testkit paynotify-backends paynotify-runtime; do
  ok=" $(allowed "$crate") $crate "
  tree=$(cargo tree --locked -p "$crate" -e normal --prefix none --format '{p}')
  for dep in $(awk '$1 ~ /^paynotify-/ {print $1}' <<<"$tree" | sort -u); do
    case "$ok" in
      *" $dep "*) ;;
      *) echo "layers.sh: $crate depends on $dep, a layer it may not use" >&2; fail=1 ;;
    esac
  done
done
[ "$fail" = 0 ] || exit 1
# The embedded backend alone: no SDK compiled, nothing behind the aws
# feature reached from outside it.
cargo clippy --locked -p paynotify-backends --all-targets --no-default-features --features local -- -D warnings
tree=$(cargo tree --locked -p paynotify-backends --no-default-features --features local -e normal --prefix none)
if grep -Eq "$sdk" <<<"$tree"; then
  echo "layers.sh: paynotify-backends with only the local feature still depends on an AWS SDK crate" >&2
  exit 1
fi
echo "layers.sh: every layer depends only downward; the model, schemes, config, ports, records, test kit and runtime build without the AWS SDK"
