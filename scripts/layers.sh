#!/usr/bin/env bash
# The layers cargo enforces (README, Layout): every crate but the backends
# (and the binaries' packages) builds without any AWS SDK crate, ingest, the
# worker and the deliverer never depend on the backends, the backends build
# with the embedded backend alone, and no crate depends on a layer above
# its own.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
# The SDK's crates (aws-lc-rs, the cryptography, is not one of them).
sdk='^aws-(sdk-|smithy-|config |types |runtime |sigv4 |credential)'
for crate in paynotify-model paynotify-schemes paynotify-config paynotify-ports \
  paynotify-records paynotify-testkit paynotify-runtime paynotify-deliver \
  paynotify-ingest paynotify-worker; do
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
    # Ingest, the worker and the deliverer receive the bundle of ports and
    # never see a backend (their binaries, which open one, are the root
    # package's: src/bin/).
    paynotify-deliver) echo "paynotify-model paynotify-schemes paynotify-config paynotify-ports paynotify-runtime" ;;
    paynotify-ingest) echo "paynotify-model paynotify-schemes paynotify-config paynotify-ports paynotify-records paynotify-runtime" ;;
    paynotify-worker) echo "paynotify-model paynotify-schemes paynotify-config paynotify-ports paynotify-records paynotify-runtime paynotify-deliver" ;;
  esac
}
for crate in paynotify-model paynotify-schemes paynotify-config paynotify-ports \
  paynotify-records paynotify-testkit paynotify-backends paynotify-runtime \
  paynotify-deliver paynotify-ingest paynotify-worker; do
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
echo "layers.sh: every layer depends only downward; the model, schemes, config, ports, records, test kit, runtime, deliverer, ingest and worker build without the AWS SDK"
