#!/usr/bin/env bash
# Installs moto (pinned in scripts/requirements-moto.txt) into target/moto-venv
# once, starts moto_server on a free loopback port, waits until it answers, and
# prints `export` lines for the tests. Usage: eval "$(scripts/moto.sh start)"; scripts/moto.sh stop
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/moto-venv
pidfile=target/moto.pid
case "${1:-start}" in
  start)
    if [ ! -x "$venv/bin/moto_server" ] || ! cmp -s scripts/requirements-moto.txt "$venv/.requirements"; then
      echo "moto.sh: installing moto into $venv" >&2
      python3 -m venv "$venv" >&2
      "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-moto.txt >&2
      cp scripts/requirements-moto.txt "$venv/.requirements"
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # moto's own server, with DynamoDB requests serialized (see moto_server.py).
    "$venv/bin/python" scripts/moto_server.py 127.0.0.1 "$port" > target/moto.log 2>&1 &
    echo $! > "$pidfile"
    for _ in $(seq 1 100); do
      if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/data.json', timeout=1)" 2>/dev/null; then
        echo "export PAYNOTIFY_TEST_AWS_ENDPOINT=http://127.0.0.1:$port"
        exit 0
      fi
      sleep 0.2
    done
    echo "moto.sh: moto_server did not start; see target/moto.log" >&2
    exit 1
    ;;
  stop)
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
    ;;
esac
