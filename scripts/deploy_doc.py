"""docs/deploy.md runs: its command blocks, in order, against the emulator.

Every ```sh block of the page follows a marker comment:
  <!-- deploy-doc: emulator -->          run here, as written
  <!-- deploy-doc: built: WHY -->         stands for building paynotify; the
                                          tests' own build is on PATH instead
  <!-- deploy-doc: account: WHAT -->      needs a real account (WHAT); not run,
                                          a stand-in below does its part
A block without a marker fails the check. Then:

1. shellcheck (warnings and errors) on all blocks together, in page order;
2. every variable a block uses is assigned by the page before it (or in it),
   so a reader who runs the page top to bottom never meets an unset one;
3. the emulator blocks run in one bash, in order, in a scratch directory
   (the repository's infra/ and scripts/ linked in), with the AWS CLI and
   paynotify pointed at the emulator (AWS_ENDPOINT_URL and
   PAYNOTIFY__BACKEND__AWS__ENDPOINT_URL: the only difference from an
   account). Stand-ins do what the emulator or an account block would:
   - the user's files: UnionPay's CA certificates and a notification signed
     under them come from a test PKI (`paynotify testpki`, `simulate --write`);
   - moto's CloudFormation has no model for AWS::SecretsManager::Secret: the
     two secrets the data stack makes are created by their names after it;
   - the service stack (account): paynotify-ingest and paynotify-worker start
     on the data stack as its task definitions start them (the image's baked
     configuration and the stack's environment, from the stack's outputs),
     and INGEST_URL names them;
   then, after the page: a tampered notification reaches the DLQ, whose
   visible count is the DLQ alarm's metric.

Usage (scripts/test.sh): python3 scripts/deploy_doc.py   with
PAYNOTIFY_TEST_AWS_ENDPOINT, DEPLOY_DOC_AWS (the AWS CLI),
DEPLOY_DOC_SHELLCHECK and DEPLOY_DOC_BIN (paynotify's binaries) set.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "deploy.md"
# Set by bash or the environment every step runs in, not by the page.
GIVEN = {"HOME", "PATH", "RANDOM", "SECONDS", "PWD"}


def blocks():
    text = PAGE.read_text()
    out = []
    for m in re.finditer(r"(?:<!-- deploy-doc: ([^>]*?) -->\n)?```sh\n(.*?)```", text, re.S):
        line = text[: m.start()].count("\n") + 1
        marker = m.group(1)
        if marker is None:
            sys.exit(f"deploy_doc.py: docs/deploy.md:{line}: a command block without a deploy-doc marker")
        kind = marker.split(":", 1)[0].strip()
        if kind not in ("emulator", "built", "account"):
            sys.exit(f"deploy_doc.py: docs/deploy.md:{line}: unknown marker {marker!r}")
        out.append((line, kind, marker, m.group(2)))
    return out


def shellcheck(found):
    script = "#!/usr/bin/env bash\n" + "".join(f"# docs/deploy.md:{line}\n{code}" for line, _, _, code in found)
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(script)
    r = subprocess.run([os.environ["DEPLOY_DOC_SHELLCHECK"], "-S", "warning", "-s", "bash", f.name],
                       capture_output=True, text=True)
    os.unlink(f.name)
    if r.returncode != 0:
        sys.exit(f"deploy_doc.py: shellcheck on docs/deploy.md's blocks:\n{r.stdout}{r.stderr}")
    print(f"deploy_doc.py: shellcheck: {len(found)} blocks clean")


def assigned(code):
    names = set(re.findall(r"(?:^|[\s;(])([A-Za-z_][A-Za-z0-9_]*)=", code))
    names |= set(re.findall(r"\bfor ([A-Za-z_][A-Za-z0-9_]*) in", code))
    names |= set(re.findall(r"\bread (?:-r )?([A-Za-z_][A-Za-z0-9_]*)", code))
    return names


def used(code):
    # Single-quoted text is not expanded by the shell.
    code = re.sub(r"'[^']*'", "''", code)
    names = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", code))
    return {n for n in names if not n.isdigit()}


def variables(found):
    known, missing = set(GIVEN), []
    for line, _, _, code in found:
        functions = set(re.findall(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\(\) \{", code, re.M))
        known |= assigned(code) | functions
        # Positional parameters of a function defined in the block.
        for name in used(code) - known:
            missing.append(f"docs/deploy.md:{line}: ${name} is used but never set before")
    if missing:
        sys.exit("deploy_doc.py:\n" + "\n".join(missing))
    print("deploy_doc.py: every variable is set before it is used")


STANDIN_FILES = r"""
# Stand-in: the files a user brings (UnionPay's CA certificates, a
# notification signed under them), from a test PKI.
paynotify testpki --dir pki >/dev/null
cp pki/root.pem acp_prod_root.pem
cp pki/middle.pem acp_prod_middle.pem
paynotify simulate --pki pki --one "doc$(date +%s)$RANDOM" --amount 4200 --write notification.txt
"""

STANDIN_SECRETS = r"""
# Stand-in: moto's CloudFormation has no model for AWS::SecretsManager::Secret;
# the data stack's two secrets, by the names it gives them.
aws secretsmanager create-secret --name "$NAME/unionpay-certificates" --secret-string '{}' >/dev/null
aws secretsmanager create-secret --name "$NAME/unionpay-signing-key" --secret-string '{}' >/dev/null
"""

STANDIN_SERVICES = r"""
# Stand-in for the service stack: its two processes as its task definitions
# start them, on the data stack's outputs.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stack_env() { # run in the background: exec, so that $! is the process itself
  exec env PAYNOTIFY__BACKEND__AWS__REGION="$AWS_REGION" \
    PAYNOTIFY__BACKEND__AWS__BUCKET="$(output Bucket)" \
    PAYNOTIFY__BACKEND__AWS__KMS_KEY_ID="$(output KeyArn)" \
    PAYNOTIFY__BACKEND__AWS__QUEUE="$(output Queue)" \
    PAYNOTIFY__BACKEND__AWS__DEAD_LETTER_QUEUE="$(output DeadLetterQueue)" \
    PAYNOTIFY__BACKEND__AWS__TABLE="$(output Table)" \
    PAYNOTIFY__BACKEND__VISIBILITY_TIMEOUT_SECS="$(output VisibilityTimeout)" \
    PAYNOTIFY__BACKEND__MAX_RECEIVES="$(output MaxReceives)" \
    PAYNOTIFY__SOURCES__UNIONPAY__MERCHANTS="[\"$MERCHANTS\"]" \
    PAYNOTIFY__SOURCES__UNIONPAY__UNIONPAY__ROOT_CERT="secretsmanager:$SECRET#root" \
    PAYNOTIFY__SOURCES__UNIONPAY__UNIONPAY__MIDDLE_CERT="secretsmanager:$SECRET#middle" \
    PAYNOTIFY__INGEST__LISTEN="127.0.0.1:$port" PAYNOTIFY__INGEST__ADMIN_LISTEN=127.0.0.1:0 \
    PAYNOTIFY__WORKER__ADMIN_LISTEN=127.0.0.1:0 RUST_LOG=warn "$@"
}
stack_env paynotify-ingest --config "$BAKED" >ingest.log 2>&1 &
ingest_pid=$!
stack_env paynotify-worker --config "$BAKED" >worker.log 2>&1 &
worker_pid=$!
trap 'kill "$ingest_pid" "$worker_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
INGEST_URL="http://127.0.0.1:$port/notify/unionpay"
"""

EPILOGUE = r"""
# After the page: a tampered notification is dead-lettered, and the DLQ's
# visible count (the DLQ alarm's metric) shows it.
sed 's/txnAmt=4200/txnAmt=4201/' notification.txt > tampered.txt
curl -fsS -o /dev/null -X POST --data-binary @tampered.txt "$INGEST_URL"
for _ in $(seq 150); do
  dead=$(paynotify dlq list --config paynotify.toml --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
  [ "$dead" -gt 0 ] && break
  sleep 0.2
done
[ "$dead" -gt 0 ] || { echo "deploy_doc.py: the tampered notification never reached the DLQ" >&2; exit 1; }
# The metric the DlqNotEmptyAlarm watches, as SQS reports it.
dlq_url=$(aws sqs get-queue-url --endpoint-url "$AWS_ENDPOINT_URL" --queue-name "$(output DeadLetterQueue)" \
  --query QueueUrl --output text)
visible=$(aws sqs get-queue-attributes --endpoint-url "$AWS_ENDPOINT_URL" --queue-url "$dlq_url" \
  --attribute-names ApproximateNumberOfMessages --query Attributes.ApproximateNumberOfMessages --output text)
[ "$visible" -gt 0 ] || { echo "deploy_doc.py: the DLQ's ApproximateNumberOfMessagesVisible is $visible" >&2; exit 1; }
echo "deploy_doc.py: the DLQ holds $visible: its alarm's metric (ApproximateNumberOfMessagesVisible) is above 0"
echo "deploy_doc.py: docs/deploy.md ran against the emulator"
"""


def run(found):
    work = pathlib.Path(tempfile.mkdtemp(prefix="deploy-doc."))
    for name in ["infra", "scripts", "docs"]:
        (work / name).symlink_to(ROOT / name)
    parts = ["set -euo pipefail", STANDIN_FILES]
    ran = []
    for line, kind, marker, code in found:
        if kind == "emulator":
            parts.append(f"echo '== docs/deploy.md:{line}'\n{code}")
            ran.append(line)
            if "NAME=paynotify" in code:
                # A name of this run's own: the emulator may hold an earlier one.
                parts.append('NAME="${DEPLOY_DOC_NAME:-$NAME}"')
            if 'aws cloudformation deploy --stack-name "$NAME-data"' in code:
                parts.append(STANDIN_SECRETS)
        elif kind == "account" and "service stack" in marker:
            parts.append(STANDIN_SERVICES)
        else:
            parts.append(f"echo '-- docs/deploy.md:{line}: not run here ({marker})'")
    parts.append(EPILOGUE)
    script = work / "deploy.sh"
    script.write_text("\n".join(parts))
    endpoint = os.environ["PAYNOTIFY_TEST_AWS_ENDPOINT"]
    env = dict(
        os.environ,
        PATH=f"{os.environ['DEPLOY_DOC_BIN']}:{pathlib.Path(os.environ['DEPLOY_DOC_AWS']).parent}:{os.environ['PATH']}",
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        PAYNOTIFY__BACKEND__AWS__ENDPOINT_URL=endpoint,
        DEPLOY_DOC_NAME=f"doc{os.getpid()}",
        BAKED=str(ROOT / "infra" / "docker" / "paynotify.toml"),
        PAYNOTIFY=str(pathlib.Path(os.environ["DEPLOY_DOC_BIN"]) / "paynotify"),
        SMOKE_WAIT_SECS="60",
    )
    r = subprocess.run(["bash", str(script)], cwd=work, env=env)
    if r.returncode != 0:
        for log in ["ingest.log", "worker.log"]:
            if (work / log).exists():
                print(f"--- {log}\n" + (work / log).read_text()[-4000:], file=sys.stderr)
        sys.exit(f"deploy_doc.py: the page failed against the emulator (script: {script})")
    print(f"deploy_doc.py: ran the emulator blocks at lines {ran}")


if __name__ == "__main__":
    found = blocks()
    shellcheck(found)
    variables(found)
    run(found)
