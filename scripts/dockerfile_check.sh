#!/usr/bin/env bash
# The image builds what it ships, checked without a container runtime:
#   1. hadolint on the Dockerfile;
#   2. the build stage's own `RUN … cargo build …` instruction, read out of
#      the Dockerfile (continuation lines joined, `--mount` flags dropped,
#      /out moved under a temporary directory), run here as it is;
#   3. every path a later stage copies `--from=build` exists in what it
#      built, and every path copied from the context exists in the repo.
# It prints the directory the binaries are in (OUT/bin), for
# scripts/image_check.sh to run them in a minimal root filesystem.
# The release profile is built at opt-level 0 without debug info
# (CARGO_PROFILE_RELEASE_*: half the disk, and CI has little):
# what this checks is which packages and files the command produces, not
# their speed, and CI has 2 cores.
# The binaries a build left in target/release are removed first, so only
# what this command builds can pass. DOCKERFILE names another file to check
# (default Dockerfile).
# Usage: OUT=$(scripts/dockerfile_check.sh HADOLINT)
set -euo pipefail
cd "$(dirname "$0")/.."
hadolint=${1:?usage: dockerfile_check.sh HADOLINT}
dockerfile=${DOCKERFILE:-Dockerfile}

"$hadolint" "$dockerfile" >&2
echo "dockerfile_check.sh: hadolint: no findings" >&2

out=$(mktemp -d "${TMPDIR:-/tmp}/paynotify-image.XXXXXX")
command=$(python3 - "$out" "$dockerfile" <<'PY'
import re, sys
out = sys.argv[1]
text = open(sys.argv[2]).read().replace("\\\n", " ")
stage, runs = None, []
for line in text.splitlines():
    words = line.split()
    if not words or words[0].startswith("#"):
        continue
    if words[0] == "FROM":
        stage = words[3] if len(words) > 3 and words[2].upper() == "AS" else None
    elif words[0] == "RUN" and stage == "build" and "cargo build" in line:
        runs.append(line)
if len(runs) != 1:
    sys.exit(f"dockerfile_check.sh: expected one RUN with cargo build in the build stage, found {len(runs)}")
run = re.sub(r"^RUN\s+", "", runs[0])
run = re.sub(r"--mount=\S+\s*", "", run)
print(re.sub(r"(?<![\w.])/out(?=/|\s|$)", out + "/out", run))
PY
)
echo "dockerfile_check.sh: running the Dockerfile's build command:" >&2
echo "   $command" >&2
if [ -d target/release ]; then
  find target/release -maxdepth 1 -type f -executable -delete
fi
CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_DEBUG=0 \
  bash -o pipefail -c "$command" >&2

python3 - "$out" "$dockerfile" <<'PY' >&2
import os, re, sys
out = sys.argv[1]
text = open(sys.argv[2]).read().replace("\\\n", " ")
missing, checked = [], 0
for line in text.splitlines():
    words = line.split()
    if not words or words[0] != "COPY":
        continue
    args = [w for w in words[1:] if not w.startswith("--")]
    from_build = any(w == "--from=build" for w in words[1:])
    if any(w.startswith("--from=") for w in words[1:]) and not from_build:
        continue  # copies between later stages: checked through build's
    if args == [".", "."]:
        continue  # the whole context
    for src in args[:-1]:
        path = out + src if from_build else src
        checked += 1
        if not os.path.exists(path):
            missing.append((line.strip(), path))
        elif from_build and os.path.isdir(path) and not os.listdir(path):
            missing.append((line.strip(), path + " (empty)"))
for line, path in missing:
    print(f"dockerfile_check.sh: {line}: {path} does not exist")
if missing:
    sys.exit(1)
print(f"dockerfile_check.sh: every one of {checked} copied paths exists")
PY
# What the image and the stacks start must be among what it built.
started=$( (grep -o '^CMD \["[a-z-]*"' "$dockerfile" | grep -o '"[a-z-]*"'
  grep -o 'Command: \[[a-z-]*' infra/paynotify.yaml | awk '{print $2}' | tr -d '['
  grep -o 'args: \[[a-z-]*' infra/k8s/paynotify.yaml | awk '{print $2}' | tr -d '[') | tr -d '"' | sort -u)
for b in $started; do
  test -x "$out/out/bin/$b" || { echo "dockerfile_check.sh: $b is started but was not built" >&2; exit 1; }
done
echo "dockerfile_check.sh: the image holds what is started: $(tr "\n" " " <<<"$started")" >&2
echo "$out/out/bin"
