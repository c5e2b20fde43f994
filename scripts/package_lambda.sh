#!/usr/bin/env bash
# Builds the Lambda packages infra/serverless.yaml and infra/events.yaml deploy:
#   target/lambda/ingest.zip, target/lambda/worker.zip, target/lambda/events.zip,
#   target/lambda/webhooks.zip
# each holding `bootstrap` (paynotify-lambda-ingest, -worker, -events or -webhooks, built by
# cargo lambda for provided.al2023: arm64 by default, --x86-64 for x86_64;
# its zig linker targets Amazon Linux's glibc) and `paynotify.toml` (the
# image's infra/docker/paynotify.toml, which the functions' environment
# completes; for events.zip and webhooks.zip, PAYNOTIFY_EVENTS_CONFIG names
# the file with the merchant's [[deliveries.sinks]] and
# [[deliveries.endpoints]], by default the same). Needs cargo-lambda (`pip install cargo-lambda`, which brings
# zig) and the Rust target (`rustup target add aarch64-unknown-linux-gnu`).
# Usage: scripts/package_lambda.sh [--x86-64]
set -euo pipefail
cd "$(dirname "$0")/.."
arch=--arm64
if [ "${1:-}" = "--x86-64" ]; then arch=--x86-64; fi
if ! cargo lambda --help >/dev/null 2>&1; then
  echo "package_lambda.sh: cargo lambda is missing: pip install cargo-lambda (or cargo install cargo-lambda)" >&2
  exit 1
fi
# Symbols stripped: the package is what a cold start downloads.
CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo lambda build --release --locked "$arch" -p paynotify-lambda
for function in ingest worker events webhooks; do
  config=infra/docker/paynotify.toml
  case $function in events | webhooks) config=${PAYNOTIFY_EVENTS_CONFIG:-$config} ;; esac
  python3 - "target/lambda/paynotify-lambda-$function/bootstrap" "$config" \
    "target/lambda/$function.zip" <<'PY'
import sys, zipfile

bootstrap, config, out = sys.argv[1:]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for path, name, mode in [(bootstrap, "bootstrap", 0o755), (config, "paynotify.toml", 0o644)]:
        info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = (0o100000 | mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        with open(path, "rb") as f:
            z.writestr(info, f.read())
PY
  echo "target/lambda/$function.zip: $(du -h "target/lambda/$function.zip" | cut -f1)"
done
