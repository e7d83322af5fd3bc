#!/usr/bin/env python3
"""Checks that every sink equals the source, row for row (scripts/e2e-local.sh).

  check.py SOURCE_URL TARGET_URL DATALAKE_URL DELTA_ROOT DEBEZIUM_JSONL|- [--wait SECONDS]

Source vs PostgreSQL target (public.<table>) and vs the data lake's live
processed rows (cdc_processed.<table>): equal as PostgreSQL renders them.
Source vs Delta (<root>/<table>): equal value by value (numbers, timestamps
parsed). cdc_events (Delta) and cdc_raw.cdc_events hold exactly the change
events Debezium emitted (given its records as JSON Lines; with `-`, the two
histories hold the same number of events). Retries until equal or --wait runs out, then prints
the differences and exits 1.
"""
import csv
import io
import json
import subprocess
import sys
import time
from datetime import datetime
from decimal import Decimal

TABLES = ["customers", "products", "orders", "order_items"]


def query(url, sql):
    out = subprocess.run(["psql", "-X", "-q", "--csv", url, "-c", sql], check=True, capture_output=True, text=True)
    return list(csv.DictReader(io.StringIO(out.stdout)))


def columns(url, table):
    rows = query(url, f"SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                      f"AND table_name = '{table}' ORDER BY ordinal_position")
    return [r["column_name"] for r in rows]


def same(text, value):
    """A source value as psql prints it vs a value read from Delta."""
    if value is None:
        return text == ""
    if isinstance(value, Decimal):
        return Decimal(text) == value
    if isinstance(value, datetime):
        return datetime.fromisoformat(text) == value.replace(tzinfo=None)
    if isinstance(value, bool):
        return text == ("t" if value else "f")
    if isinstance(value, int):
        return int(text) == value
    return str(value) == text


def differences(source_url, target_url, datalake_url, delta_root, changes):
    from deltalake import DeltaTable
    problems = []
    for table in TABLES:
        cols = columns(source_url, table)
        select = ", ".join(f'"{c}"' for c in cols)
        source = query(source_url, f"SELECT {select} FROM public.{table} ORDER BY id")
        target = query(target_url, f"SELECT {select} FROM public.{table} ORDER BY id")
        if source != target:
            problems.append(f"target {table}: {len(target)} rows vs {len(source)} in the source; "
                            f"first difference {next(((s, t) for s, t in zip(source, target) if s != t), None)}")
        processed = query(datalake_url, f"SELECT {select} FROM cdc_processed.{table} WHERE NOT _cdc_deleted ORDER BY id")
        if source != processed:
            problems.append(f"cdc_processed.{table}: {len(processed)} live rows vs {len(source)} in the source")
        try:
            delta = sorted(DeltaTable(f"{delta_root}/{table}").to_pyarrow_table().to_pylist(), key=lambda r: r["id"])
        except Exception as e:  # not created yet
            problems.append(f"Delta {table}: {e}")
            continue
        if len(delta) != len(source):
            problems.append(f"Delta {table}: {len(delta)} rows vs {len(source)} in the source")
            continue
        for s, d in zip(source, delta):
            bad = [c for c in cols if not same(s[c], d.get(c))]
            if bad:
                problems.append(f"Delta {table} id {s['id']}: {[(c, s[c], d.get(c)) for c in bad]}")
                break
    raw = int(query(datalake_url, "SELECT count(*) AS n FROM cdc_raw.cdc_events")[0]["n"])
    try:
        history = DeltaTable(f"{delta_root}/cdc_events").to_pyarrow_table(columns=["topic"]).num_rows
    except Exception as e:
        history = f"unreadable ({e})"
    if changes is None:
        if raw != history:
            problems.append(f"cdc_raw.cdc_events holds {raw} events, Delta cdc_events {history}")
        return problems
    if raw != changes:
        problems.append(f"cdc_raw.cdc_events holds {raw} events, Debezium emitted {changes}")
    if history != changes:
        problems.append(f"Delta cdc_events holds {history} events, Debezium emitted {changes}")
    return problems


def main():
    args = sys.argv[1:]
    wait = 0
    if "--wait" in args:
        i = args.index("--wait")
        wait = float(args[i + 1])
        del args[i:i + 2]
    source_url, target_url, datalake_url, delta_root, debezium = args
    deadline = time.time() + wait
    while True:
        changes = None
        if debezium != "-":
            with open(debezium) as f:
                records = [json.loads(line) for line in f if line.strip()]
            changes = sum(1 for r in records if r["topic"].startswith("cdc.public.") and r["value"] is not None)
        try:
            problems = differences(source_url, target_url, datalake_url, delta_root, changes)
        except subprocess.CalledProcessError as e:  # a sink's table does not exist yet
            problems = [f"{e.cmd[-1]}: {e.stderr.strip()}"]
        if not problems:
            counts = {t: len(query(source_url, f"SELECT id FROM public.{t}")) for t in TABLES}
            print(f"every sink equals the source (rows: {counts}); histories complete")
            return 0
        if time.time() >= deadline:
            print("the sinks differ from the source:", *problems, sep="\n  ", file=sys.stderr)
            return 1
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
