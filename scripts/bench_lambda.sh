#!/usr/bin/env bash
# Cold start and warm per-record times of the Lambda bootstraps
# (paynotify-lambda-ingest, paynotify-lambda-worker), release builds, run as
# Lambda runs them (no arguments, settings in the environment, the baked
# infra/docker/paynotify.toml, certificates from Secrets Manager) against a
# stand-in Runtime API and moto_server on loopback. Prints the figures that
# BENCHMARKS.md quotes. Usage: scripts/bench_lambda.sh [COLD_STARTS]
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/moto.sh start)"
trap 'scripts/moto.sh stop' EXIT
cargo build --release --locked -p paynotify-lambda --bins
PAYNOTIFY_BENCH_COLD_STARTS="${1:-20}" cargo test --release --locked --test lambda -- \
  --ignored --nocapture --test-threads 1 measure_lambda_cold_start_and_warm_records 2>&1 \
  | grep -E 'cold start|warm|floor'
