#!/usr/bin/env bash
# What the per-notification `info` log lines cost, in instructions:
# paynotify-ingest and paynotify-worker run under callgrind with
# RUST_LOG=warn (no per-notification line) and RUST_LOG=info (one JSON line
# per notification each, to a file), first for N1 then for N2 signed
# notifications; the difference between the two runs, divided by N2 - N1,
# is what one notification costs, start-up excluded. Instruction counts do
# not drift with the machine's speed, which on this shared 2-core machine
# varies by 2x within minutes and hides a few percent in any timed A/B.
# The data directory is on tmpfs (WORKDIR, /dev/shm by default).
# Usage: scripts/bench_logs.sh        (N1=1000 N2=3000; about 2 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-1000}
N2=${N2:-3000}
command -v valgrind >/dev/null || { echo "bench_logs.sh: needs valgrind" >&2; exit 1; }
work=$(mktemp -d "${WORKDIR:-/dev/shm}/paynotify-logbench.XXXXXX")
trap 'pkill -P $$ || true; rm -rf "$work"' EXIT
cargo build --release --workspace --bins >&2
bin=target/release
"$bin/paynotify" testpki --dir "$work/pki" >/dev/null
config() { # data_dir
  printf '[backend]\ndata_dir = "%s"\n[ingest]\nlisten = "127.0.0.1:18381"\nadmin_listen = "127.0.0.1:19381"\n' "$1"
  printf '[worker]\nadmin_listen = "127.0.0.1:19382"\nconcurrency = 4\n'
  sed -e "s#file:root.pem#file:$work/pki/root.pem#" -e "s#file:middle.pem#file:$work/pki/middle.pem#" "$work/pki/unionpay-source.toml"
}
wait_port() { for _ in $(seq 1 600); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
depth() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^paynotify_queue_messages\{queue="main"/{n+=$2} END{print n+0}'; }
ir() { awk '/^summary:|^totals:/{print $2; exit}' "$1"; }
declare -A IR
for n in "$N1" "$N2"; do
  for level in warn info; do
    rm -rf "$work/d"; config "$work/d" > "$work/c.toml"
    RUST_LOG=$level PAYNOTIFY_LOG_FORMAT=json valgrind --tool=callgrind --callgrind-out-file="$work/ingest.cg" \
      "$bin/paynotify-ingest" --config "$work/c.toml" 2> "$work/ingest.log" & p=$!
    wait_port 18381
    "$bin/paynotify" simulate --url http://127.0.0.1:18381/notify/unionpay --pki "$work/pki" \
      --count "$n" --refunds 0 --duplicates 0 --voids 0 --concurrency 16 > /dev/null
    kill -TERM $p; wait $p || true
    RUST_LOG=$level PAYNOTIFY_LOG_FORMAT=json valgrind --tool=callgrind --callgrind-out-file="$work/worker.cg" \
      "$bin/paynotify-worker" --config "$work/c.toml" 2> "$work/worker.log" & p=$!
    wait_port 19382
    while [ "$(depth 19382)" != "0" ]; do sleep 0.5; done
    kill -TERM $p; wait $p || true
    IR[ingest,$level,$n]=$(ir "$work/ingest.cg")
    IR[worker,$level,$n]=$(ir "$work/worker.cg")
    echo "$n notifications, RUST_LOG=$level: ingest ${IR[ingest,$level,$n]} Ir," \
      "worker ${IR[worker,$level,$n]} Ir, $(cat "$work/ingest.log" "$work/worker.log" | wc -l) log lines" >&2
  done
done
echo "| process | instructions per notification, RUST_LOG=warn | RUST_LOG=info | the info line costs |"
echo "|---|---|---|---|"
for proc in ingest worker; do
  python3 -c "
w = (${IR[$proc,warn,$N2]} - ${IR[$proc,warn,$N1]}) / ($N2 - $N1)
i = (${IR[$proc,info,$N2]} - ${IR[$proc,info,$N1]}) / ($N2 - $N1)
print(f'| $proc | {w:,.0f} | {i:,.0f} | {i - w:,.0f} ({100 * (i - w) / w:+.1f} %) |')"
done
