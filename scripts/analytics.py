"""Runs the DuckDB queries of docs/analytics.md.

Usage: python scripts/analytics.py docs/analytics.md KEY=VALUE...

Each ```sql block whose first line is `-- name: NAME` is a query; `${KEY}`
is replaced by the VALUE given. The block named `view` runs first; the
others' rows are printed as one JSON object, {name: [{column: value}, ...]},
each row as DuckDB's own `to_json` writes it (times as text).
"""

import json
import re
import sys

import duckdb


def blocks(markdown):
    for block in re.findall(r"```sql\n(.*?)```", markdown, re.S):
        first, _, rest = block.partition("\n")
        match = re.fullmatch(r"-- name: (\w+)", first.strip())
        if match:
            yield match.group(1), rest


def main():
    doc, *pairs = sys.argv[1:]
    values = dict(pair.split("=", 1) for pair in pairs)
    queries = {}
    for name, sql in blocks(open(doc, encoding="utf-8").read()):
        for key, value in values.items():
            sql = sql.replace("${%s}" % key, value)
        if "${" in sql:
            sys.exit(f"analytics.py: {name} has an unset variable: {sql}")
        queries[name] = sql
    con = duckdb.connect()
    con.execute(queries.pop("view"))
    out = {}
    for name, sql in queries.items():
        rows = con.execute(f"SELECT CAST(to_json(q) AS VARCHAR) FROM ({sql.strip().rstrip(';')}) q")
        out[name] = [json.loads(row[0]) for row in rows.fetchall()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
