"""Times DuckDB's count by source and hour over N archived notifications,
laid out one object per notification (`{id}.json`, before segments) and in
segments of SEGMENT envelopes (`{first id}-{n}.ndjson`), with the envelope of
a real UnionPay notification (about 3.6 KB) spread over 24 hours.

Usage: target/tools-venv/bin/python scripts/bench_analytics.py DIR [N] [SEGMENT]
(N = 1,000,000 and SEGMENT = 1,000 by default; DIR needs about 2 x N x 3.7 KB).
"""

import json
import os
import sys
import time
import urllib.parse

import duckdb

QUERY = """
SELECT source, "date", "hour", count(*) AS notifications
FROM read_json('{glob}', format = 'newline_delimited', hive_partitioning = true,
               ignore_errors = true, columns = {{'id': 'VARCHAR', 'body_sha256': 'VARCHAR'}})
GROUP BY ALL ORDER BY ALL
"""


def envelope(i, hour, body):
    return json.dumps({
        "v": 1, "id": f"01JDEMO{i:019d}", "source": "unionpay",
        "received_at": f"2026-11-25T{hour:02}:00:00.000Z", "remote_addr": "10.0.0.1:5000",
        "method": "POST", "path": "/notify/unionpay", "query": None,
        "headers": [["content-type", "application/x-www-form-urlencoded"]],
        "body": body, "body_sha256": "0" * 64,
    }, separators=(",", ":"))


def drop_caches():
    """Empties the page cache (root only), so each layout is read from disk."""
    os.system("sync")
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def main():
    root = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    per = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000
    vec = os.path.join(os.path.dirname(__file__),
                       "../../shared/vectors/unionpay/yansongda-pay/backnotify_purchase_20220908.json")
    body = urllib.parse.urlencode(json.load(open(vec)))
    layouts = {"objects": os.path.join(root, "objects"), "segments": os.path.join(root, "segments")}
    started = time.time()
    per_hour = n // 24
    i = 0
    for hour in range(24):
        part = f"raw/source=unionpay/date=2026-11-25/hour={hour:02}"
        for d in layouts.values():
            os.makedirs(os.path.join(d, part), exist_ok=True)
        count = per_hour if hour < 23 else n - per_hour * 23
        lines = []
        for _ in range(count):
            e = envelope(i, hour, body)
            with open(os.path.join(layouts["objects"], part, f"01JDEMO{i:019d}.json"), "w") as f:
                f.write(e)
            lines.append(e)
            i += 1
        for s in range(0, len(lines), per):
            chunk = lines[s:s + per]
            first = json.loads(chunk[0])["id"]
            with open(os.path.join(layouts["segments"], part, f"{first}-{len(chunk)}.ndjson"), "w") as f:
                f.write("\n".join(chunk) + "\n")
    print(f"wrote {n} notifications twice in {time.time() - started:.0f} s", file=sys.stderr)
    os.system("sync")
    results = {}
    for name, d in layouts.items():
        files = sum(len(fs) for _, _, fs in os.walk(d))
        ext = "json" if name == "objects" else "ndjson"
        glob = os.path.join(d, "raw", "*", "*", "*", f"*.{ext}")
        con = duckdb.connect()
        cold = drop_caches()
        t = time.time()
        rows = con.execute(QUERY.format(glob=glob)).fetchall()
        elapsed = time.time() - t
        total = sum(r[3] for r in rows)
        assert total == n, (name, total)
        results[name] = {"files": files, "hours": len(rows), "notifications": total, "seconds": round(elapsed, 2),
                         "page_cache": "dropped first" if cold else "warm"}
    print(json.dumps({"duckdb": duckdb.__version__, "n": n, "segment": per, **results}, indent=2))


if __name__ == "__main__":
    main()
