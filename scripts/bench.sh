#!/usr/bin/env bash
# Measures paynotify on this machine and prints one table:
#   1. ingest on the local backend at full load (every 200 fsync'd), pinned to
#      each core count in $CORES (taskset; the load generator is not pinned),
#      with the archive objects it wrote per million notifications, and a bare
#      axum handler answering 200 under the same load, as a ratio;
#   2. ingest p50/p99 at a fixed 5,000 requests/s;
#   3. ingest RSS with 1,000 concurrent connections;
#   4. worker drain of a pre-filled queue of $DRAIN_COUNT signed notifications;
#   5. receipt-to-applied p50/p99 of the whole pipeline at a steady rate;
#   6. criterion verify bench beside `openssl speed rsa2048` (one run).
# Load comes from oha (installed from crates.io into target/tools on first use).
# Usage: scripts/bench.sh            (DURATION=10s DRAIN_COUNT=100000 by default;
#        CORES="1 2 4 8 16" for the scaling rows, default: all cores once)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
DRAIN_COUNT=${DRAIN_COUNT:-100000}
STEADY_PAYMENTS_PER_S=${STEADY_PAYMENTS_PER_S:-500}
CORES=${CORES:-$(nproc)}
work=$(mktemp -d /tmp/paynotify-bench.XXXXXX)
trap 'pkill -P $$ || true; rm -rf "$work"' EXIT

cargo build --release --workspace --bins --examples >&2
if [ ! -x target/tools/bin/oha ]; then
  cargo install oha --version 1.16.0 --locked --root target/tools >&2
fi
oha=target/tools/bin/oha
bin=target/release

"$bin/paynotify" testpki --dir "$work/pki" >/dev/null
python3 - "$work" <<'PY'
import json, sys, urllib.parse
work = sys.argv[1]
vec = "../shared/vectors/unionpay/yansongda-pay/backnotify_purchase_20220908.json"
open(f"{work}/body.txt", "w").write(urllib.parse.urlencode(json.load(open(vec))))
PY
config() { # data_dir port admin_port
  cat <<EOT
[backend]
data_dir = "$1"
[ingest]
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
[worker]
admin_listen = "127.0.0.1:0"
$(sed -e "s#file:root.pem#file:$work/pki/root.pem#" -e "s#file:middle.pem#file:$work/pki/middle.pem#" "$work/pki/unionpay-source.toml")
EOT
}
load() { # url extra-args...
  local url=$1; shift
  "$oha" --no-tui --output-format json -m POST -D "$work/body.txt" \
    -H 'Content-Type: application/x-www-form-urlencoded' "$@" "$url"
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
# Each phase starts with the disk quiet: the previous phase's dirty pages are
# written back first, so they do not land in the next phase's fsyncs.
settle() { sync; sleep 2; }
wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }

objects() { find "$1/archive/raw" -type f 2>/dev/null | wc -l; }
# 1. Full load: ingest on each core count, then bare axum.
declare -A full_at objects_at
for n in $CORES; do
  settle
  config "$work/full$n" 18080 19090 > "$work/full$n.toml"
  RUST_LOG=warn taskset -c "0-$((n - 1))" "$bin/paynotify-ingest" --config "$work/full$n.toml" & ingest=$!
  wait_port 18080
  full_at[$n]=$(load http://127.0.0.1:18080/notify/unionpay -z "$DURATION" -c 64)
  kill $ingest; wait $ingest || true
  objects_at[$n]=$(objects "$work/full$n")
done
full=${full_at[$(echo $CORES | awk '{print $NF}')]}
settle
"$bin/examples/bare_axum" 127.0.0.1:18099 & bare=$!
wait_port 18099
baseline=$(load http://127.0.0.1:18099/notify/unionpay -z "$DURATION" -c 64)
kill $bare; wait $bare || true

# 2. Fixed 5,000/s; 3. RSS with 1,000 connections.
settle
config "$work/rate" 18081 19091 > "$work/rate.toml"
RUST_LOG=warn "$bin/paynotify-ingest" --config "$work/rate.toml" & ingest=$!
wait_port 18081
rate=$(load http://127.0.0.1:18081/notify/unionpay -z "$DURATION" -c 64 -q 5000 --latency-correction)
rate_objects=$(objects "$work/rate")
conns=$(load http://127.0.0.1:18081/notify/unionpay -z "$DURATION" -c 1000)
rss_kib=$(grep VmHWM /proc/$ingest/status | awk '{print $2}')
kill $ingest; wait $ingest || true

# 4. Worker drain of a pre-filled queue.
settle
config "$work/drain" 18082 19092 > "$work/drain.toml"
RUST_LOG=warn "$bin/paynotify-ingest" --config "$work/drain.toml" & ingest=$!
wait_port 18082
"$bin/paynotify" simulate --url http://127.0.0.1:18082/notify/unionpay --pki "$work/pki" \
  --count "$DRAIN_COUNT" --refunds 0 --duplicates 0 --concurrency 64 > "$work/fill.json"
depth() { curl -s http://127.0.0.1:19092/metrics | awk '/^paynotify_queue_messages\{queue="main"/{n+=$2} END{print n+0}'; }
filled=$(depth)
start=$(date +%s.%N)
RUST_LOG=warn "$bin/paynotify-worker" --config "$work/drain.toml" & worker=$!
while [ "$(depth)" != "0" ]; do sleep 0.2; done
end=$(date +%s.%N)
kill $worker $ingest; wait $worker $ingest || true
drain_rate=$(python3 -c "print(round($filled / ($end - $start)))")

settle
# 5. Steady end-to-end latency.
steady=$("$bin/paynotify" demo --count $((STEADY_PAYMENTS_PER_S * 20)) --rate "$STEADY_PAYMENTS_PER_S" --data-dir "$work/steady")

settle
# 6. Verification against openssl, one run.
verify_us=$(cargo bench -p paynotify-shared --bench verify -- --warm-up-time 1 --measurement-time 3 verify_5.1.0_chain_cached 2>/dev/null \
  | awk '/time:/{gsub(/\[/,""); print $4, $5; exit}')
openssl_vps=$(openssl speed -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048/{print $NF}')

rps() { echo "$1" | field "round(d['summary']['requestsPerSec'])"; }
pct() { echo "$1" | field "round(d['latencyPercentiles']['$2']*1000, 2)"; }
ok() { echo "$1" | field "d['statusCodeDistribution'].get('200', 0)"; }
non200() { echo "$1" | field "sum(v for k, v in d['statusCodeDistribution'].items() if k != '200')"; }

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), disk $(df -T "$work" | awk 'NR==2{print $2}'); $(date -u +%F)"
printf '%-52s %12s %10s %10s %s\n' measurement "req/s" p50_ms p99_ms notes
per_million() { python3 -c "print(round($1 * 1e6 / max($2, 1)))"; }
for n in $CORES; do
  f=${full_at[$n]}
  printf '%-52s %12s %10s %10s %s\n' "ingest, local backend, 64 connections, $n cores" "$(rps "$f")" "$(pct "$f" p50)" "$(pct "$f" p99)" \
    "non-200: $(non200 "$f"); archive objects per million: $(per_million "${objects_at[$n]}" "$(ok "$f")")"
done
printf '%-52s %12s %10s %10s %s\n' "bare axum 200, 64 connections" "$(rps "$baseline")" "$(pct "$baseline" p50)" "$(pct "$baseline" p99)" "ratio ingest/bare: $(python3 -c "print(round($(rps "$full")/$(rps "$baseline"), 3))")"
printf '%-52s %12s %10s %10s %s\n' "ingest at a fixed 5,000/s" "$(rps "$rate")" "$(pct "$rate" p50)" "$(pct "$rate" p99)" \
  "non-200: $(non200 "$rate"); archive objects per million: $(per_million "$rate_objects" "$(ok "$rate")")"
printf '%-52s %12s %10s %10s %s\n' "ingest, 1,000 connections" "$(rps "$conns")" "$(pct "$conns" p50)" "$(pct "$conns" p99)" "peak RSS $((rss_kib / 1024)) MiB"
printf '%-52s %12s %10s %10s %s\n' "worker drain of $filled queued (verify+apply+delete)" "$drain_rate" "-" "-" ""
echo "steady pipeline (demo --rate $STEADY_PAYMENTS_PER_S payments/s):"
echo "$steady" | grep -E "received|throughput|receipt -> applied" | sed 's/^/    /'
echo "verify 5.1.0 (chain cached): $verify_us per op; openssl rsa2048 verify/s: $openssl_vps;" \
  "ratio: $(python3 -c "v='$verify_us'.split(); t=float(v[0])*{'ns':1e-9,'µs':1e-6,'us':1e-6,'ms':1e-3}[v[1]]; print(round(1/t/float('$openssl_vps'), 3))")"
