#!/usr/bin/env python3
"""Writes a bulk Debezium stream for throughput benches, shaped like real output.

Every record is built on a real Debezium 3.6 record of `cdc.public.orders` (schemas on,
tests/fixtures/debezium/schemas.jsonl): the same Connect schema, source block and envelope,
with generated values. The stream is a snapshot of --rows rows, then --changes streamed
changes (70% updates, 15% inserts, 15% deletes each followed by its tombstone), updates on hot
keys (80% of them on 10% of the rows). Records are spread over --partitions partitions by key,
offsets counted per partition, and written as the Kafka JSON Lines wrapper kcat writes: key and
value as JSON text inside JSON strings, ~4 KB a record (without `column.propagate.source.type`).

  benches/support/gen_bulk.py --out .tmp/bench/bulk.jsonl [--rows 70000] [--changes 110000]
"""
import argparse
import base64
import json
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests/fixtures/debezium/schemas.jsonl")
STATUSES = ["pending", "paid", "shipped", "completed", "cancelled", "returned"]


def template():
    with open(FIXTURE) as f:
        for line in f:
            record = json.loads(line)
            value = record.get("value")
            if record["topic"] == "cdc.public.orders" and isinstance(value, dict) and value["payload"]["op"] == "r":
                # The fixture propagates source column types; a default
                # connector does not (and its records are half the size).
                for image in value["schema"]["fields"][:2]:
                    for field in image["fields"]:
                        params = {k: v for k, v in field.get("parameters", {}).items() if not k.startswith("__debezium")}
                        field.pop("parameters", None)
                        if params:
                            field["parameters"] = params
                return record["key"]["schema"], value["schema"], value["payload"]["source"]
    raise SystemExit("no orders snapshot record in " + FIXTURE)


def decimal_bytes(cents):
    """Connect Decimal: big-endian two's complement of the unscaled value, base64."""
    length = max(1, (cents.bit_length() + 8) // 8)
    return base64.b64encode(cents.to_bytes(length, "big", signed=True)).decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", type=int, default=70_000, help="snapshot rows")
    ap.add_argument("--changes", type=int, default=110_000, help="streamed changes after the snapshot")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    key_schema, value_schema, source_template = template()
    topic = "cdc.public.orders"
    offsets = [0] * args.partitions
    lsn = 30_000_000
    tx = 1_000
    ts_ms = 1_795_610_667_463
    out = open(args.out, "w")
    written = 0

    def row(order_id, touched):
        address = f"{rng.randint(1, 9999)} Market St, Springfield " + "x" * rng.randint(0, 200)
        when = 1_705_759_200_000_000 + order_id * 1_000_000
        return {
            "id": order_id,
            "customer_id": rng.randint(1, 5_000),
            "order_date": when,
            "status": rng.choice(STATUSES),
            "total_amount": decimal_bytes(rng.randint(100, 10_000_000)),
            "shipping_address": address,
            "created_at": when,
            "updated_at": when + touched * 1_000_000,
        }

    def emit(order_id, value):
        nonlocal written
        partition = order_id % args.partitions
        key = {"schema": key_schema, "payload": {"id": order_id}}
        line = {
            "topic": topic,
            "partition": partition,
            "offset": offsets[partition],
            "key": json.dumps(key, separators=(",", ":")),
            "value": None if value is None else json.dumps(value, separators=(",", ":")),
        }
        offsets[partition] += 1
        out.write(json.dumps(line, separators=(",", ":")) + "\n")
        written += 1

    def envelope(op, before, after, snapshot, change_lsn, commit_lsn):
        source = dict(source_template)
        source.update(
            ts_ms=ts_ms,
            ts_us=ts_ms * 1000,
            ts_ns=ts_ms * 1_000_000,
            snapshot=snapshot,
            sequence=json.dumps([None if commit_lsn is None else str(commit_lsn), str(change_lsn)]),
            txId=tx,
            lsn=change_lsn,
        )
        payload = {
            "before": before,
            "after": after,
            "source": source,
            "transaction": None,
            "op": op,
            "ts_ms": ts_ms + 150,
            "ts_us": (ts_ms + 150) * 1000,
            "ts_ns": (ts_ms + 150) * 1_000_000,
        }
        return {"schema": value_schema, "payload": payload}

    # The snapshot: every row read at the snapshot's LSN.
    live = list(range(1, args.rows + 1))
    for i, order_id in enumerate(live):
        snapshot = "first" if i == 0 else ("last" if i == len(live) - 1 else "true")
        emit(order_id, envelope("r", None, row(order_id, 0), snapshot, lsn, None))
    hot = live[: max(1, len(live) // 10)]
    next_id = args.rows + 1
    touched = {}
    deleted = set()
    for _ in range(args.changes):
        lsn += rng.randint(100, 400)
        tx += 1
        ts_ms += rng.randint(1, 5)
        pick = rng.random()
        if pick < 0.70:
            pool = hot if rng.random() < 0.8 else live
            order_id = rng.choice(pool)
            if order_id in deleted:
                continue
            touched[order_id] = touched.get(order_id, 0) + 1
            emit(order_id, envelope("u", None, row(order_id, touched[order_id]), "false", lsn, lsn))
        elif pick < 0.85:
            order_id = next_id
            next_id += 1
            live.append(order_id)
            emit(order_id, envelope("c", None, row(order_id, 0), "false", lsn, lsn))
        else:
            order_id = rng.choice(live)
            if order_id in deleted:
                continue
            deleted.add(order_id)
            # REPLICA IDENTITY DEFAULT: the key, and fillers Debezium writes
            # for the other columns (as the fixture's deletes have them).
            before = {
                "id": order_id,
                "customer_id": 0,
                "order_date": 0,
                "status": "pending",
                "total_amount": "AA==",
                "shipping_address": None,
                "created_at": 0,
                "updated_at": 0,
            }
            emit(order_id, envelope("d", before, None, "false", lsn, lsn))
            emit(order_id, None)  # the tombstone
    out.close()
    size = os.path.getsize(args.out)
    print(f"{written} records, {size / 1e6:.0f} MB ({size / written:.0f} bytes a record) in {args.out}")


if __name__ == "__main__":
    main()
