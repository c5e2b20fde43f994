#!/usr/bin/env bash
# Runs every check and test of paynotify: formatting, clippy, the whole test
# suite, with the AWS backend tests against moto_server (installed into a venv
# under target/ and started on a free port). This is the README's test
# command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

vectors=${PAYNOTIFY_VECTORS:-../shared/vectors}
if [ ! -f "$vectors/unionpay/MANIFEST.txt" ]; then
  echo "test.sh: the signed test vectors are not at $vectors." >&2
  echo "         Put the project's shared/ directory beside this repository, or set PAYNOTIFY_VECTORS." >&2
  exit 1
fi

# Each step says when it began (seconds since the script started): CI has a
# time limit, and this shows where the time goes.
step() { echo "== $* (at ${SECONDS}s)"; }
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "layers: each crate depends only downward; below the backends, no AWS SDK (scripts/layers.sh)"
scripts/layers.sh
step "cargo doc (every intra-doc link resolves)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
step "AWS emulator (moto_server)"
eval "$(scripts/moto.sh start)"
trap 'scripts/moto.sh stop' EXIT
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
echo "   $PAYNOTIFY_TEST_AWS_ENDPOINT"
step "Python tools (DuckDB, cfn-lint, checkov)"
PAYNOTIFY_TEST_PYTHON=$(scripts/tools.sh)
export PAYNOTIFY_TEST_PYTHON
tools=$(dirname "$PAYNOTIFY_TEST_PYTHON")
echo "   $PAYNOTIFY_TEST_PYTHON"
step "CloudFormation: cfn-lint, checkov, infra/tests/test_template.py"
"$tools/cfn-lint" infra/*.yaml
# --skip-download: no calls to the vendor's API (this machine has no network);
# skipped checks are justified in the template (Metadata.checkov.skip).
BC_SKIP_MAPPING=TRUE "$tools/checkov" --quiet --compact --skip-download --framework cloudformation \
  -f infra/*.yaml
"$PAYNOTIFY_TEST_PYTHON" infra/tests/test_template.py
step "shellcheck: the scripts"
"$tools/shellcheck" -S warning scripts/*.sh .ci/run
step "Kubernetes: kubernetes-validate --strict, infra/tests/test_k8s.py (KEDA's resources)"
"$tools/kubernetes-validate" --strict --quiet infra/k8s/*.yaml
"$PAYNOTIFY_TEST_PYTHON" infra/tests/test_k8s.py
step "the read API's OpenAPI document (docs/api/openapi.json; tests/api.rs checks it is the code's)"
"$PAYNOTIFY_TEST_PYTHON" -c 'import json, sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print("openapi: valid")' docs/api/openapi.json
step "Debian's chromium for the console's browser test (tests/console.rs)"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends chromium) >/dev/null
  else
    echo "test.sh: no chromium: install Debian's chromium package (apt-get install chromium)" >&2
    exit 1
  fi
fi
PAYNOTIFY_TEST_CHROMIUM=$(command -v chromium)
export PAYNOTIFY_TEST_CHROMIUM
echo "   $("$PAYNOTIFY_TEST_CHROMIUM" --version 2>/dev/null | head -n 1)"
step "a small filesystem for tests/disk_full.rs"
small=target/small-disk
mkdir -p "$small"
if mountpoint -q "$small" || mount -t tmpfs -o size=16m tmpfs "$small" 2>/dev/null; then
  export PAYNOTIFY_TEST_SMALL_DISK="$PWD/$small"
  trap 'umount "$small" 2>/dev/null || true; scripts/moto.sh stop' EXIT
  echo "   $PAYNOTIFY_TEST_SMALL_DISK (tmpfs, 16 MiB)"
else
  export PAYNOTIFY_TEST_SMALL_DISK=unavailable
  echo "test.sh: *******************************************************************" >&2
  echo "test.sh: cannot mount a tmpfs (not root?): the disk-full test will NOT run." >&2
  echo "test.sh: *******************************************************************" >&2
fi
# One build of the tests and of the binaries tests/processes.rs runs: built
# alone, the binaries would resolve features without the dev-dependencies'
# (tokio's test-util among them) and build the whole dependency tree, the
# AWS SDK included, a second time (about 2 GB more on a disk CI has little of).
step "cargo build: the tests, and the binaries tests/processes.rs runs, in one feature resolution"
cargo build --workspace --bins --tests --locked
step "the image: hadolint, the Dockerfile's own build command, what its runtime stage copies"
image_bins=$(scripts/dockerfile_check.sh "$tools/hadolint")
step "the runtime image (or, without a container runtime, its binaries in a minimal root filesystem)"
scripts/image_check.sh "$image_bins"
# What the image check built is needed by nothing after it.
rm -rf target/release "$(dirname "$(dirname "$image_bins")")"
df -h . | tail -n 1
step "cargo test: run (each stack process's AWS calls written to target/iam-calls)"
export PAYNOTIFY_TEST_CALL_LOGS=$PWD/target/iam-calls
rm -rf "$PAYNOTIFY_TEST_CALL_LOGS"
cargo test --workspace --locked
step "IAM: every recorded AWS call against its role's policies (infra/tests/test_iam.py)"
"$PAYNOTIFY_TEST_PYTHON" infra/tests/test_iam.py "$PAYNOTIFY_TEST_CALL_LOGS"
step "docs/deploy.md: shellcheck, variables, its emulator blocks run in order (scripts/deploy_doc.py)"
DEPLOY_DOC_AWS=$PWD/target/moto-venv/bin/aws DEPLOY_DOC_SHELLCHECK="$tools/shellcheck" \
  DEPLOY_DOC_BIN=$PWD/target/debug python3 scripts/deploy_doc.py
step "fuzz (bounded)"
scripts/fuzz.sh "${PAYNOTIFY_FUZZ_SECS:-20}"
echo "test.sh: all checks passed (${SECONDS}s)"
