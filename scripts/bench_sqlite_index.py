"""What one more index on the embedded ledger's `events` table adds to a
write: 200,000 single-row transactions (BEGIN IMMEDIATE; INSERT; COMMIT)
into a table with the ledger's `events` columns and `events_by_time`
index, WAL and synchronous = NORMAL as the ledger opens it, with and
without an index on `recorded_at`, on fresh files, three runs each way.

Usage: python3 scripts/bench_sqlite_index.py [--index-first] [DIR]
(BENCHMARKS.md, "The overview's applied in the last hour").
"""

import os
import random
import sqlite3
import sys
import tempfile
import time


def run(directory, index, n=200_000):
    path = os.path.join(directory, f"events-{index}.db")
    for p in (path, path + "-wal", path + "-shm"):
        if os.path.exists(p):
            os.remove(p)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=NORMAL")
    c.execute("""CREATE TABLE events (payment_key TEXT NOT NULL, event_key TEXT NOT NULL, seq INTEGER NOT NULL,
      notification_id TEXT NOT NULL, kind TEXT NOT NULL, outcome TEXT NOT NULL, amount_minor INTEGER NOT NULL,
      currency TEXT NOT NULL, status_after TEXT, recorded_at INTEGER NOT NULL, event_json TEXT NOT NULL,
      source TEXT, psp_ms INTEGER, PRIMARY KEY (payment_key, event_key))""")
    c.execute("CREATE INDEX events_by_time ON events (source, psp_ms) WHERE psp_ms IS NOT NULL")
    if index:
        c.execute("CREATE INDEX events_by_recorded ON events (recorded_at)")
    event_json = '{"x":"' + "a" * 600 + '"}'
    base = 1_765_000_000_000
    start = time.perf_counter()
    for i in range(n):
        c.execute("BEGIN IMMEDIATE")
        c.execute(
            "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (f"unionpay#777290058167151#{random.getrandbits(64):x}", f"e{i}", 1, f"01J{i:023d}",
             "payment", "succeeded", 1000, "CNY", "PAID", base + i, event_json, "unionpay", base + i),
        )
        c.execute("COMMIT")
    elapsed = time.perf_counter() - start
    c.close()
    return elapsed / n * 1e6


def main():
    args = [a for a in sys.argv[1:] if a != "--index-first"]
    first = "--index-first" in sys.argv
    directory = args[0] if args else tempfile.mkdtemp()
    print(f"SQLite {sqlite3.sqlite_version}, files in {directory}")
    for r in range(3):
        if first:
            b, a = run(directory, True), run(directory, False)
        else:
            a, b = run(directory, False), run(directory, True)
        print(f"run {r + 1}: without {a:.1f} us per write, with the index {b:.1f} us per write")


if __name__ == "__main__":
    main()
