#!/usr/bin/env bash
# Ingest on the local backend with each segment setting in $SETTINGS
# (WINDOW_MS:WRITERS, e.g. "0:2 2:16"), on
# each core count in $CORES (ingest pinned with taskset; oha not pinned):
# full load at 64 connections and a fixed 5,000 req/s, with the archive
# objects written per million notifications. With BASELINE=path/to/an older
# paynotify-ingest (one without segments), the same rows for it first.
# Usage: SETTINGS="0:2 0:4 2:16" CORES="1 2" [BASELINE=bin] scripts/bench_segments.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
SETTINGS=${SETTINGS:-"0:1 0:2 0:4 2:4 2:16 5:16"}
CORES=${CORES:-$(nproc)}
work=$(mktemp -d /tmp/paynotify-bench-seg.XXXXXX)
trap 'pkill -P $$ || true; rm -rf "$work"' EXIT

[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p paynotify >&2
if [ ! -x target/tools/bin/oha ]; then
  cargo install oha --version 1.16.0 --locked --root target/tools >&2
fi
oha=target/tools/bin/oha
bin=target/release
"$bin/paynotify" testpki --dir "$work/pki" >/dev/null
python3 - "$work" <<'PY'
import json, sys, urllib.parse
vec = "../shared/vectors/unionpay/yansongda-pay/backnotify_purchase_20220908.json"
open(f"{sys.argv[1]}/body.txt", "w").write(urllib.parse.urlencode(json.load(open(vec))))
PY
config() { # data_dir
  cat <<EOT
[backend]
data_dir = "$1"
[ingest]
listen = "127.0.0.1:18180"
admin_listen = "127.0.0.1:19190"
$(sed -e "s#file:root.pem#file:$work/pki/root.pem#" -e "s#file:middle.pem#file:$work/pki/middle.pem#" "$work/pki/unionpay-source.toml")
EOT
}
load() {
  "$oha" --no-tui --output-format json -m POST -D "$work/body.txt" \
    -H 'Content-Type: application/x-www-form-urlencoded' "$@" http://127.0.0.1:18180/notify/unionpay
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
row() { # label result objects
  local r=$2
  printf '%-34s %9s %8s %8s %9s %s\n' "$1" "$(echo "$r" | field "round(d['summary']['requestsPerSec'])")" \
    "$(echo "$r" | field "round(d['latencyPercentiles']['p50']*1000, 2)")" \
    "$(echo "$r" | field "round(d['latencyPercentiles']['p99']*1000, 2)")" \
    "$(echo "$r" | field "sum(v for k, v in d['statusCodeDistribution'].items() if k != '200')")" \
    "$(echo "$r" | field "round($3 * 1e6 / max(d['statusCodeDistribution'].get('200', 0), 1))")"
}
run() { # label binary cores window:writers (- for none)
  local dir="$work/run$RANDOM" env=()
  [ "$4" != "-" ] && env=(PAYNOTIFY__INGEST__SEGMENT_WINDOW_MS="${4%%:*}" PAYNOTIFY__INGEST__SEGMENT_WRITERS="${4##*:}")
  config "$dir" > "$dir.toml"
  for phase in full rate; do
    sync; sleep 2
    rm -rf "$dir"
    env RUST_LOG=warn "${env[@]}" taskset -c "0-$(($3 - 1))" "$2" --config "$dir.toml" & local pid=$!
    wait_port 18180
    if [ $phase = full ]; then r=$(load -z "$DURATION" -c 64); else r=$(load -z "$DURATION" -c 64 -q 5000 --latency-correction); fi
    kill $pid; wait $pid || true
    row "$1, $3 cores, $phase" "$r" "$(find "$dir/archive/raw" -type f | wc -l)"
  done
}
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F); oha 1.16.0, $DURATION per row"
printf '%-34s %9s %8s %8s %9s %s\n' "binary, cores, load" "req/s" p50_ms p99_ms non-200 objects/million
for n in $CORES; do
  if [ -n "${BASELINE:-}" ]; then run "baseline" "$BASELINE" "$n" -; fi
  for w in $SETTINGS; do run "window ${w%%:*} ms, ${w##*:} writers" "$bin/paynotify-ingest" "$n" "$w"; done
done
