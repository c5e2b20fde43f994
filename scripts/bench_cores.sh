#!/usr/bin/env bash
# Ingest throughput against the number of cores it may use, measured on a
# machine with more cores than the load needs (the scaling rows of
# BENCHMARKS.md). Two steps, so the measuring machine needs neither cargo nor
# the vectors beside the repo:
#
#   scripts/bench_cores.sh pack KIT   build release binaries here and put them,
#                                     stripped, with oha, a test PKI and a
#                                     UnionPay notification body into KIT
#   scripts/bench_cores.sh run KIT    measure with KIT (on the big machine)
#
# `run` starts paynotify-ingest on the local backend (every 200 durable:
# segment file fdatasync'd, directory synced, queue committed) pinned with
# taskset to cores 0..n-1 for each n in $CORES, and drives it with oha pinned
# to the other cores (on all cores when n is every core: the row says so), at
# each connection count in $CONNS, $DURATION per row. The same for a bare axum
# handler answering 200 at each n in $BARE_CORES. Rows for other segment
# settings with SETTINGS="WINDOW_MS:WRITERS ..." and other local queue shard
# counts with QUEUE_SHARDS="1 8 ..." (default "-": the backend's). With
# RATE=N, oha holds N requests/s (at most) instead of as many as the
# connections allow. Each ingest row's notes split its mean time, read from
# ingest's own histograms before and after the row: the whole request, the
# segment's put and the queue send (which run at the same time).
# With DRAIN_CORES="2 16 ...", rows of the worker's side: a local queue filled
# through ingest with $DRAIN_COUNT distinct signed notifications (`paynotify
# simulate`, ingest and it on the other cores), then paynotify-worker pinned
# to cores 0..n-1 and timed until the queue reads empty twice (workers'
# receive loops: $WORKER_CONCURRENCY, default the config's).
# It prints one table with the fdatasync latency of the disk it wrote to; with
# RESULTS=DIR it appends the table to DIR/cores.txt and keeps each row's oha
# JSON in DIR/rows-HHMMSS.tar.gz. The kit's binaries are gzipped (a device
# run carries at most 64 MiB) and unpacked into the run's work directory.
set -euo pipefail
cd "$(dirname "$0")/.."

pack() {
  local kit=$1
  cargo build --release --workspace --bins --examples >&2
  if [ ! -x target/tools/bin/oha ]; then
    cargo install oha --version 1.16.0 --locked --root target/tools >&2
  fi
  mkdir -p "$kit"
  rm -f "$kit"/paynotify-ingest "$kit"/bare_axum "$kit"/oha
  local bin
  for bin in target/release/paynotify-ingest target/release/paynotify-worker target/release/paynotify \
    target/release/examples/bare_axum target/tools/bin/oha; do
    strip -o "$kit/$(basename "$bin")" "$bin"
    gzip -f "$kit/$(basename "$bin")"
  done
  git rev-parse --short HEAD > "$kit/COMMIT"
  rm -rf "$kit/pki"
  target/release/paynotify testpki --dir "$kit/pki" >/dev/null
  python3 - "$kit" <<'PY'
import json, sys, urllib.parse
vec = "../shared/vectors/unionpay/yansongda-pay/backnotify_purchase_20220908.json"
open(f"{sys.argv[1]}/body.txt", "w").write(urllib.parse.urlencode(json.load(open(vec))))
PY
  du -sh "$kit" >&2
}

measure() {
  local kit
  kit=$(cd "$1" && pwd)
  local all=$(($(nproc) - 1))
  DURATION=${DURATION:-10s}
  CORES=${CORES:-"1 2 4 8 $(nproc)"}
  CONNS=${CONNS:-"64 256"}
  BARE_CORES=${BARE_CORES-"2 $(nproc)"}
  SETTINGS=${SETTINGS:-"-"}
  QUEUE_SHARDS=${QUEUE_SHARDS:-"-"}
  DRAIN_CORES=${DRAIN_CORES-}
  DRAIN_COUNT=${DRAIN_COUNT:-60000}
  # On the disk the repo is on: /tmp may be memory, where fdatasync is free.
  work=$(mktemp -d "$PWD/.bench-cores.XXXXXX")
  trap 'pkill -P $$ || true; rm -rf "$work"' EXIT
  local data=$kit
  kit=$work/kit
  mkdir -p "$kit"
  cp -r "$data/pki" "$data/body.txt" "$kit/"
  local gz
  for gz in "$data"/*.gz; do
    gunzip -c "$gz" > "$kit/$(basename "$gz" .gz)"
    chmod +x "$kit/$(basename "$gz" .gz)"
  done
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  command -v python3 >/dev/null || { echo "bench_cores: python3 is missing" >&2; exit 1; }
  if ! command -v taskset >/dev/null; then
    taskset() { # -c FIRST-LAST command...: the same pinning without util-linux
      local range=$2; shift 2
      python3 -c 'import os, sys; a, b = map(int, sys.argv[1].split("-")); os.sched_setaffinity(0, range(a, b + 1)); os.execvp(sys.argv[2], sys.argv[2:])' "$range" "$@"
    }
  fi

  config() { # data_dir
    cat <<EOT
[backend]
data_dir = "$1"
[ingest]
listen = "127.0.0.1:18280"
admin_listen = "127.0.0.1:19290"
[worker]
admin_listen = "127.0.0.1:0"
$(sed -e "s#file:root.pem#file:$kit/pki/root.pem#" -e "s#file:middle.pem#file:$kit/pki/middle.pem#" "$kit/pki/unionpay-source.toml")
EOT
  }
  wait_port() { for _ in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
  field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
  other_cores() { # n: the cores oha runs on
    if [ "$1" -gt "$all" ]; then echo "0-$all"; else echo "$1-$all"; fi
  }
  line() { # what rate p50 p99 non-200 notes: one line of the table, kept
    printf '%-44s %9s %8s %8s %8s %s\n' "$@" | tee -a "$work/table.txt"
  }
  row() { # label json objects
    line "$1" \
      "$(echo "$2" | field "round(d['summary']['requestsPerSec'])")" \
      "$(echo "$2" | field "round(d['latencyPercentiles']['p50']*1000, 2)")" \
      "$(echo "$2" | field "round(d['latencyPercentiles']['p99']*1000, 2)")" \
      "$(echo "$2" | field "sum(v for k, v in d['statusCodeDistribution'].items() if k != '200')")" \
      "$3"
  }
  load() { # cores conns url
    taskset -c "$(other_cores "$1")" "$kit/oha" --no-tui --output-format json -m POST -D "$kit/body.txt" \
      -H 'Content-Type: application/x-www-form-urlencoded' -z "$DURATION" -c "$2" ${RATE:+-q "$RATE"} "$3"
  }
  metrics() { curl -s http://127.0.0.1:19290/metrics; }
  split() { # metrics-before metrics-after: "mean ingest A ms (put B, send C)"
    python3 - "$1" "$2" <<'PY'
import re, sys
def sums(text):
    d = {}
    for l in text.splitlines():
        m = re.match(r'(paynotify_ingest_duration_seconds|paynotify_backend_call_duration_seconds)_(sum|count)(\{[^}]*\})? (\S+)', l)
        if not m:
            continue
        labels = m.group(3) or ""
        what = "ingest" if m.group(1).startswith("paynotify_ingest") else \
            "put" if 'operation="put"' in labels else "send" if 'operation="send"' in labels else None
        if what:
            d[(what, m.group(2))] = d.get((what, m.group(2)), 0) + float(m.group(4))
    return d
a, b = sums(sys.argv[1]), sums(sys.argv[2])
def mean(w):
    n = b.get((w, "count"), 0) - a.get((w, "count"), 0)
    return (b.get((w, "sum"), 0) - a.get((w, "sum"), 0)) * 1000 / n if n else float("nan")
print(f"mean ingest {mean('ingest'):.2f} ms (put {mean('put'):.2f}, send {mean('send'):.2f})")
PY
  }
  keep() { mkdir -p "$work/json"; echo "$2" > "$work/json/$1.json"; }

  fsync_us=$(python3 - "$work" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
times = []
for _ in range(200):
    os.write(fd, b"x" * 4096)
    t = time.perf_counter(); os.fdatasync(fd); times.append(time.perf_counter() - t)
os.close(fd); os.unlink(path)
times.sort()
print(f"p50 {times[100]*1e6:.0f} us, p99 {times[198]*1e6:.0f} us")
PY
)
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), kernel $(uname -r);" \
    "disk $(df -T "$work" | awk 'NR==2{print $2}'), fdatasync of 4 KiB: $fsync_us; $(date -u +%F); oha 1.16.0, $DURATION per row" \
    | tee "$work/table.txt"
  line "what, ingest cores, connections" "req/s" p50_ms p99_ms non-200 "notes"

  for setting in $SETTINGS; do
   for shards in $QUEUE_SHARDS; do
    local env=(RUST_LOG=warn) name="default segments"
    if [ "$setting" != "-" ]; then
      env+=(PAYNOTIFY__INGEST__SEGMENT_WINDOW_MS="${setting%%:*}" PAYNOTIFY__INGEST__SEGMENT_WRITERS="${setting##*:}")
      name="window ${setting%%:*} ms, ${setting##*:} writers"
    fi
    if [ "$shards" != "-" ]; then
      env+=(PAYNOTIFY__BACKEND__QUEUE_SHARDS="$shards")
      name="$name, $shards queue shards"
    fi
    for n in $CORES; do
      for c in $CONNS; do
        local dir="$work/run-$n-$c-${setting/:/_}-$shards"
        config "$dir" > "$dir.toml"
        sync; sleep 2
        env "${env[@]}" taskset -c "0-$((n - 1))" "$kit/paynotify-ingest" --config "$dir.toml" \
          2> "$dir.log" & local pid=$!
        wait_port 18280 || { echo "ingest did not start:" >&2; cat "$dir.log" >&2; exit 1; }
        local r m0 m1
        m0=$(metrics)
        r=$(load "$n" "$c" http://127.0.0.1:18280/notify/unionpay)
        m1=$(metrics)
        kill $pid; wait $pid || true
        keep "ingest-$n-$c-${setting/:/_}-$shards" "$r"
        local objects
        objects=$(find "$dir/archive/raw" -type f | wc -l)
        row "ingest ($name), $n, $c${RATE:+ at $RATE/s}" "$r" \
          "oha on cores $(other_cores "$n"); archive objects per million: $(echo "$r" | field "round($objects * 1e6 / max(d['statusCodeDistribution'].get('200', 0), 1))"); $(split "$m0" "$m1")"
        rm -rf "$dir"
      done
    done
   done
  done
  depth() { # the main queue's messages, as ingest's metrics count them
    curl -s http://127.0.0.1:19290/metrics | awk '/^paynotify_queue_messages\{queue="main"/{n+=$2} END{print n+0}'
  }
  for n in $DRAIN_CORES; do
    local dir="$work/drain-$n"
    config "$dir" > "$dir.toml"
    sync; sleep 2
    RUST_LOG=warn taskset -c "$(other_cores "$n")" "$kit/paynotify-ingest" --config "$dir.toml" 2> "$dir.log" &
    local ingest=$!
    wait_port 18280 || { echo "ingest did not start:" >&2; cat "$dir.log" >&2; exit 1; }
    taskset -c "$(other_cores "$n")" "$kit/paynotify" simulate --url http://127.0.0.1:18280/notify/unionpay \
      --pki "$kit/pki" --count "$DRAIN_COUNT" --refunds 0 --duplicates 0 --concurrency 64 > "$dir.fill.json"
    local filled left zeros=0 start="" from=0 end=""
    sleep 1; filled=$(depth)
    local env=(RUST_LOG=warn)
    [ -z "${WORKER_CONCURRENCY:-}" ] || env+=(PAYNOTIFY__WORKER__CONCURRENCY="$WORKER_CONCURRENCY")
    env "${env[@]}" taskset -c "0-$((n - 1))" "$kit/paynotify-worker" --config "$dir.toml" 2> "$dir.wlog" &
    local worker=$!
    # Timed from the first read below the filled depth (the worker's start-up
    # excluded) to the first of two empty reads in a row, 50 ms apart (one
    # read of 0 proves nothing).
    while [ "$zeros" -lt 2 ]; do
      sleep 0.05
      left=$(depth)
      if [ -z "$start" ] && [ "$left" -lt "$filled" ]; then start=$(date +%s.%N); from=$left; fi
      if [ "$left" = 0 ]; then
        zeros=$((zeros + 1)); [ -n "$end" ] || end=$(date +%s.%N)
      else
        zeros=0; end=""
      fi
      kill -0 $worker 2>/dev/null || { echo "worker stopped:" >&2; cat "$dir.wlog" >&2; exit 1; }
    done
    kill $worker $ingest; wait $worker $ingest || true
    [ -n "$start" ] || { echo "bench_cores: the drain ended before a read saw it start; raise DRAIN_COUNT" >&2; exit 1; }
    line "worker drain, $n, -" \
      "$(python3 -c "print(round($from / max($end - $start, 0.001)))")" - - - \
      "$filled queued, $from timed; ingest and simulate on cores $(other_cores "$n")"
    rm -rf "$dir"
  done
  for n in $BARE_CORES; do
    sync; sleep 1
    taskset -c "0-$((n - 1))" "$kit/bare_axum" 127.0.0.1:18299 & local bare=$!
    wait_port 18299
    local r
    r=$(load "$n" 64 http://127.0.0.1:18299/notify/unionpay)
    kill $bare; wait $bare || true
    keep "bare-$n" "$r"
    row "bare axum 200, $n, 64" "$r" "oha on cores $(other_cores "$n")"
  done
  if [ -n "${RESULTS:-}" ]; then
    mkdir -p "$RESULTS"
    cat "$work/table.txt" >> "$RESULTS/cores.txt"
    tar -czf "$RESULTS/rows-$(date -u +%H%M%S).tar.gz" -C "$work" json
  fi
}

case "${1:-}" in
  pack) pack "${2:?usage: bench_cores.sh pack KIT}" ;;
  run) measure "${2:?usage: bench_cores.sh run KIT}" ;;
  *) echo "usage: scripts/bench_cores.sh pack KIT | run KIT" >&2; exit 2 ;;
esac
