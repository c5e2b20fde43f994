#!/usr/bin/env bash
# Soak: ~100,000 UnionPay notifications (about 20 % duplicate deliveries, 5 %
# tampered, 5 % refunds before their purchase) through one paynotify-ingest
# and four paynotify-worker processes on one data directory, then
# `paynotify reconcile`, which must be clean. Prints the figures that go in
# BENCHMARKS.md. Usage: scripts/soak.sh [PAYMENTS] (default 56000 ≈ 100k
# notifications).
set -euo pipefail
cd "$(dirname "$0")/.."
payments=${1:-56000}
cargo build --release --workspace --bins --locked >/dev/null
bin=target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true' EXIT
"$bin/paynotify" testpki --dir "$work/pki" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
{
  printf '[backend]\ndata_dir = "data"\n'
  printf '[ingest]\nlisten = "127.0.0.1:%s"\nadmin_listen = "127.0.0.1:%s"\n' "$port" "$admin"
  printf '[worker]\nconcurrency = 8\nadmin_listen = "127.0.0.1:0"\n'
  sed 's#file:#file:pki/#' "$work/pki/unionpay-source.toml"
} > "$work/paynotify.toml"
export RUST_LOG=warn
"$bin/paynotify-ingest" --config "$work/paynotify.toml" &
for _ in 1 2 3 4; do "$bin/paynotify-worker" --config "$work/paynotify.toml" & done
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
start=$(date +%s.%N)
"$bin/paynotify" simulate --url "http://127.0.0.1:$port/notify/unionpay" --pki "$work/pki" \
  --count "$payments" --duplicates 0.04 --tamper 0.09 --refunds 0.3 --voids 0.05 \
  --early-refunds 0.3 --concurrency 64 > "$work/simulate.json"
sent=$(date +%s.%N)
while [ "$(curl -fs "http://127.0.0.1:$admin/metrics" | awk '/^paynotify_queue_messages\{queue="main"/{n+=$2} END{print n+0}')" != "0" ]; do
  sleep 0.5
done
drained=$(date +%s.%N)
set +e
"$bin/paynotify" reconcile --config "$work/paynotify.toml" > "$work/reconcile.txt"
clean=$?
set -e
python3 - "$work" "$start" "$sent" "$drained" <<'PY'
import json, sys
work, start, sent, drained = sys.argv[1], *map(float, sys.argv[2:])
r = json.load(open(f"{work}/simulate.json"))
print(f"payments {sum(r[k] for k in ('expected_paid','expected_refunded','expected_voided'))}, "
      f"notifications sent {r['sent']} (accepted {r['accepted']}, failed {r['failed']}), "
      f"duplicate deliveries {r['duplicate_deliveries']}, tampered {r['tampered']}")
print(f"sent in {sent-start:.1f} s ({r['accepted']/(sent-start):.0f}/s), all settled after {drained-start:.1f} s")
PY
tail -n 3 "$work/reconcile.txt"
[ "$clean" = 0 ] || exit "$clean"
# Then a verified purchase planted in the DLQ: the same queryId paid a
# second time (another txnTime, so another event) is a conflict there, and
# reconcile must say so.
one() { "$bin/paynotify" simulate --url "http://127.0.0.1:$port/notify/unionpay" --pki "$work/pki" --one soakplant01 --amount 100 >/dev/null; }
one; sleep 1.2; one
sleep 1
while [ "$(curl -fs "http://127.0.0.1:$admin/metrics" | awk '/^paynotify_queue_messages\{queue="main"/{n+=$2} END{print n+0}')" != "0" ]; do
  sleep 0.5
done
if "$bin/paynotify" reconcile --config "$work/paynotify.toml" > "$work/planted.txt"; then
  echo "reconcile was clean with a verified purchase in the DLQ" >&2
  exit 1
fi
grep -m1 verified_dead_lettered "$work/planted.txt"
