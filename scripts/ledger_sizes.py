"""Sizes of the ledger's DynamoDB items as DynamoDB bills them, and the write
units their writes cost: every write of an item is billed ceil(size / 1 KB)
WRU at the larger of its size before and after, so a payment item written
once per event costs, over its life, the sum over its events of the size it
had after each. Reads the table through the emulator (or AWS) that the
environment points at.

Usage: target/moto-venv/bin/python scripts/ledger_sizes.py TABLE [ENDPOINT]
"""

import json
import math
import sys

import boto3


def size(value):
    """DynamoDB's item size rules: names and strings in UTF-8 bytes, numbers
    about one byte per two digits plus one, sets and lists 3 bytes plus
    their elements plus one per element."""
    (kind, v), = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return math.ceil(len(v.lstrip("-").replace(".", "")) / 2) + 1
    if kind in ("SS",):
        return 3 + sum(len(x.encode()) + 1 for x in v)
    if kind == "L":
        return 3 + sum(size(x) + 1 for x in v)
    if kind == "M":
        return 3 + sum(len(k.encode()) + size(x) + 1 for k, x in v.items())
    if kind == "BOOL" or kind == "NULL":
        return 1
    return len(json.dumps(v))


def item_size(item):
    return sum(len(k.encode()) + size(v) for k, v in item.items())


def main():
    table = sys.argv[1]
    kwargs = {"endpoint_url": sys.argv[2]} if len(sys.argv) > 2 else {}
    db = boto3.client("dynamodb", **kwargs)
    items = []
    for page in db.get_paginator("scan").paginate(TableName=table):
        items.extend(page["Items"])
    payments = [i for i in items if i["sk"]["S"] == "STATE" and "version" in i]
    wru, events, sizes = 0, 0, []
    for p in payments:
        total = item_size(p)
        sizes.append(total)
        inline = p.get("events", {}).get("L", [])
        keys = p.get("keys", {}).get("SS", [])
        # The item as it was after each of its inline events.
        growth = [size(e) + 1 + len(k.encode()) + 1 for e, k in zip(inline, keys)]
        base = total - sum(growth)
        for j in range(1, len(growth) + 1):
            wru += math.ceil((base + sum(growth[:j])) / 1024)
        events += len(growth)
    largest = max(payments, key=item_size, default=None)
    sizes.sort()
    pct = lambda q: sizes[min(len(sizes) - 1, int(q * len(sizes)))] if sizes else 0
    print(json.dumps({
        "payment_items": len(payments),
        "inline_events": events,
        "overflow_items": sum(1 for i in items if i["sk"]["S"].startswith("EVENTS#")),
        "parked_items": sum(1 for i in items if i["sk"]["S"].startswith("PARKED#")),
        "item_bytes_p50": pct(0.5), "item_bytes_p90": pct(0.9), "item_bytes_max": pct(1.0),
        "wru_for_inline_events": wru,
        "wru_per_event": round(wru / max(events, 1), 3),
        "largest": {k: size(v) for k, v in (largest or {}).items()},
        "largest_events": [e["S"] for e in (largest or {}).get("events", {}).get("L", [])],
    }, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
