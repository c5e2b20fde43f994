#!/usr/bin/env bash
# What to run right after a deployment (docs/deploy.md, step 4): one signed
# notification through the public URL, then, as an operator:
#   - ingest answered 200 (archived and enqueued);
#   - the payment is in the ledger (`paynotify txn get`), applied by a worker;
#   - no new dead letter (`paynotify dlq list`), and the queue drained
#     (`paynotify reconcile` of the last hour: queue_depth 0).
#
# The notification is either signed here with a test PKI the deployment
# trusts (a staging deployment, or the emulator in CI: --pki, from
# `paynotify testpki`), or a body the PSP sent and you kept (--body; it is
# applied again as a duplicate, which is also what a working deployment
# does with it).
#
# Usage:
#   scripts/smoke_aws.sh --url https://HOST/notify/unionpay --config paynotify.toml --pki DIR [--merchant MERID]
#   scripts/smoke_aws.sh --url https://HOST/notify/unionpay --config paynotify.toml --body notification.txt
# The config is an operator's (the data stack's BackendConfig output and
# the source's [sources.unionpay]); PAYNOTIFY names the binary (default
# `paynotify` on PATH); SMOKE_WAIT_SECS bounds each wait (default 120).
# Exit 0 when every check passed; 1 with the one that did not.
set -euo pipefail

url="" config="" pki="" body="" merchant=777290058167151
while [ $# -gt 0 ]; do
  case "$1" in
    --url) url=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --pki) pki=$2; shift 2 ;;
    --body) body=$2; shift 2 ;;
    --merchant) merchant=$2; shift 2 ;;
    *) echo "smoke_aws.sh: unknown argument $1 (see the usage at the top of the script)" >&2; exit 2 ;;
  esac
done
if [ -z "$url" ] || [ -z "$config" ] || { [ -z "$pki" ] && [ -z "$body" ]; }; then
  echo "smoke_aws.sh: --url, --config and one of --pki or --body are needed" >&2
  exit 2
fi
paynotify=${PAYNOTIFY:-paynotify}
wait_secs=${SMOKE_WAIT_SECS:-120}
fail() { echo "smoke_aws.sh: FAIL: $*" >&2; exit 1; }
step() { echo "smoke_aws.sh: $*" >&2; }
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)'"$1"')'; }

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
dead_before=$("$paynotify" dlq list --config "$config" --json | field '.__len__()')

if [ -n "$pki" ]; then
  query_id="smoke$(date -u +%Y%m%d%H%M%S)$RANDOM"
  step "posting a purchase signed with $pki/signer.key.pem, queryId $query_id"
  "$paynotify" simulate --url "$url" --pki "$pki" --merchant "$merchant" --one "$query_id" >/dev/null \
    || fail "ingest did not answer 200 to the signed notification"
else
  query_id=$(python3 -c 'import sys, urllib.parse; print(dict(urllib.parse.parse_qsl(open(sys.argv[1]).read().strip()))["queryId"])' "$body")
  merchant=$(python3 -c 'import sys, urllib.parse; print(dict(urllib.parse.parse_qsl(open(sys.argv[1]).read().strip()))["merId"])' "$body")
  step "posting $body (queryId $query_id, merId $merchant)"
  status=$(curl -sS -o /dev/null -w '%{http_code}' -X POST \
    -H 'Content-Type: application/x-www-form-urlencoded' --data-binary "@$body" "$url")
  [ "$status" = 200 ] || fail "ingest answered $status, not 200"
fi
step "ingest answered 200"

deadline=$((SECONDS + wait_secs))
until state=$("$paynotify" txn get --config "$config" unionpay "$merchant" "$query_id" --json 2>/dev/null) \
    && [ "$(echo "$state" | field '.get("state") is not None')" = True ]; do
  [ $SECONDS -lt $deadline ] || fail "payment $query_id is not in the ledger after ${wait_secs}s (dlq list, worker logs)"
  sleep 2
done
step "applied: $(echo "$state" | field '["state"]["status"]')"

dead_after=$("$paynotify" dlq list --config "$config" --json | field '.__len__()')
[ "$dead_after" -le "$dead_before" ] || fail "$((dead_after - dead_before)) new dead letter(s): paynotify dlq list"
step "no new dead letter ($dead_after in the DLQ)"

while :; do
  # Exit 1 is a report with discrepancies (older ones may be there); 2 an error.
  report=$("$paynotify" reconcile --config "$config" --from "$started" --json) || [ $? -eq 1 ] \
    || fail "reconcile could not run"
  [ "$(echo "$report" | field '["queue_depth"]')" = 0 ] && break
  [ $SECONDS -lt $deadline ] || fail "the queue still holds $(echo "$report" | field '["queue_depth"]') message(s)"
  sleep 2
done
step "the queue drained; reconcile of the hour: $(echo "$report" | field '["discrepancies"].__len__()') discrepancies"
echo "smoke_aws.sh: the deployment works"
