#!/usr/bin/env bash
# Installs the pinned Python tools of scripts/requirements-tools.txt into
# target/tools-venv once (again when the list changes) and prints its python.
# Usage: PYTHON=$(scripts/tools.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/tools-venv
if [ ! -x "$venv/bin/python" ] || ! cmp -s scripts/requirements-tools.txt "$venv/.requirements"; then
  echo "tools.sh: installing $(grep -v '^#' scripts/requirements-tools.txt | tr '\n' ' ')into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-tools.txt >&2
  cp scripts/requirements-tools.txt "$venv/.requirements"
fi
echo "$PWD/$venv/bin/python"
