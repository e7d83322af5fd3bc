"""Generates a real-shaped Debezium change stream (JsonConverter with schemas,
as Debezium 3.6 writes for PostgreSQL) plus poison records, as JSON Lines in
the replay format, and the state the source ends in.

    python3 tests/chaos/generate.py --seed 7 --events 20000 --out DIR

writes DIR/stream.jsonl (what kafka_broker --publish-stdin publishes),
DIR/expected.json (per table, key -> row of the final state),
DIR/poison.json (the poison records' topic, key and why they are bad) and
DIR/stats.json (counts).
"""
import argparse
import json
import random

TABLES = ["chaos_items", "chaos_orders"]
FIELDS = [
    {"type": "int32", "optional": False, "field": "id"},
    {"type": "string", "optional": True, "field": "name"},
    {"type": "int32", "optional": True, "field": "qty"},
    {"type": "double", "optional": True, "field": "price"},
    {"type": "string", "optional": True, "field": "note"},
]


def envelope_schema(table):
    row = {"type": "struct", "fields": FIELDS, "optional": True, "name": f"cdc.public.{table}.Value"}
    source = {"type": "struct", "optional": False, "name": "io.debezium.connector.postgresql.Source", "fields": [
        {"type": "string", "optional": False, "field": "version"},
        {"type": "string", "optional": False, "field": "connector"},
        {"type": "string", "optional": False, "field": "name"},
        {"type": "int64", "optional": False, "field": "ts_ms"},
        {"type": "string", "optional": True, "field": "snapshot"},
        {"type": "string", "optional": False, "field": "db"},
        {"type": "string", "optional": True, "field": "sequence"},
        {"type": "string", "optional": False, "field": "schema"},
        {"type": "string", "optional": False, "field": "table"},
        {"type": "int64", "optional": True, "field": "txId"},
        {"type": "int64", "optional": True, "field": "lsn"},
    ]}
    return {"type": "struct", "optional": False, "name": f"cdc.public.{table}.Envelope", "fields": [
        dict(row, field="before"), dict(row, field="after"), dict(source, field="source"),
        {"type": "string", "optional": False, "field": "op"},
        {"type": "int64", "optional": True, "field": "ts_ms"},
    ]}


KEY_SCHEMA = {"type": "struct", "optional": False, "fields": [FIELDS[0]]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--keys", type=int, default=3000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    schemas = {t: envelope_schema(t) for t in TABLES}
    state = {t: {} for t in TABLES}
    lsn = 1_000_000
    lines = []

    def emit(table, op, key, before, after, snapshot=False):
        nonlocal lsn
        lsn += 16
        source = {"version": "3.6.3.Final", "connector": "postgresql", "name": "cdc", "ts_ms": 1_700_000_000_000 + lsn,
                  "snapshot": "true" if snapshot else "false", "db": "source_db",
                  "sequence": json.dumps([None if snapshot else str(lsn - 8), str(lsn)]),
                  "schema": "public", "table": table, "txId": lsn // 16, "lsn": lsn}
        payload = {"before": before, "after": after, "source": source, "op": op, "ts_ms": source["ts_ms"]}
        value = json.dumps({"schema": schemas[table], "payload": payload}, separators=(",", ":"))
        key_json = json.dumps({"schema": KEY_SCHEMA, "payload": {"id": key}}, separators=(",", ":"))
        lines.append({"topic": f"cdc.public.{table}", "key": key_json, "value": value})
        if op == "d":
            lines.append({"topic": f"cdc.public.{table}", "key": key_json, "value": None})  # tombstone

    def row(key):
        # ~1 KB rows, like a real table with some text.
        return {"id": key, "name": f"item-{key}-{rng.randrange(10**6)}", "qty": rng.randrange(1000),
                "price": round(rng.random() * 1000, 2), "note": "n" * rng.randrange(200, 900)}

    snapshot = args.events // 4
    for n in range(snapshot):  # the initial snapshot: reads
        table = TABLES[n % len(TABLES)]
        key = n // len(TABLES)
        after = row(key)
        state[table][key] = after
        emit(table, "r", key, None, after, snapshot=True)
    for _ in range(args.events - snapshot):
        table = rng.choice(TABLES)
        # Hot keys: a fifth of the changes go to 20 keys.
        key = rng.randrange(20) if rng.random() < 0.2 else rng.randrange(args.keys)
        current = state[table].get(key)
        if current is None:
            after = row(key)
            state[table][key] = after
            emit(table, "c", key, None, after)
        elif rng.random() < 0.1:
            del state[table][key]
            emit(table, "d", key, current, None)
        else:
            after = dict(current, qty=rng.randrange(1000), price=round(rng.random() * 1000, 2))
            state[table][key] = after
            emit(table, "u", key, current, after)

    # Poison, each on a key of its own, spread through the stream.
    good = json.loads(lines[0]["value"])
    wrong_type = json.loads(lines[0]["value"])
    wrong_type["payload"]["after"]["qty"] = "many"
    unknown_op = json.loads(lines[0]["value"])
    unknown_op["payload"]["op"] = "x"
    poison = [
        ("truncated JSON", json.dumps(good)[:120]),
        ("not JSON", "hello, world"),
        ("wrong value type", json.dumps(wrong_type)),
        ("unknown op", json.dumps(unknown_op)),
        ("a 2 MB value", json.dumps({"schema": None, "payload": {"blob": "x" * (2 << 20)}})),
    ]
    poison_records = []
    for i, (why, value) in enumerate(poison):
        key = json.dumps({"schema": KEY_SCHEMA, "payload": {"id": 10_000_000 + i}}, separators=(",", ":"))
        record = {"topic": "cdc.public.chaos_items", "key": key, "value": value}
        poison_records.append({"why": why, "topic": record["topic"], "key": key})
        lines.insert(rng.randrange(snapshot, len(lines)), record)
    not_json_key = {"topic": "cdc.public.chaos_items", "key": "not-json{", "value": lines[0]["value"]}
    poison_records.append({"why": "a key that is not JSON", "topic": not_json_key["topic"], "key": "not-json{"})
    lines.insert(rng.randrange(snapshot, len(lines)), not_json_key)

    with open(f"{args.out}/stream.jsonl", "w") as f:
        for line in lines:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
    with open(f"{args.out}/expected.json", "w") as f:
        json.dump({t: {str(k): v for k, v in rows.items()} for t, rows in state.items()}, f)
    with open(f"{args.out}/poison.json", "w") as f:
        json.dump(poison_records, f)
    changes = sum(1 for l in lines if l["value"] is not None) - len(poison_records)
    stats = {"records": len(lines), "changes": changes, "poison": len(poison_records)}
    with open(f"{args.out}/stats.json", "w") as f:
        json.dump(stats, f)
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
