#!/usr/bin/env python3
"""Checks a chaos run (scripts/chaos.sh) against the generated stream.

  check.py WORK_DIR BROKERS TARGET_URL DATALAKE_URL DELTA_ROOT

- every sink equals the source's final state (tests/chaos/generate.py's
  expected.json): the PostgreSQL target, the data lake's live processed
  rows, the Delta tables;
- both histories (cdc_raw.cdc_events, Delta cdc_events) hold every change
  event exactly once, by (topic, partition, offset);
- every poison record is in its dead-letter topic once, with its reason, and no
  good record is.
Prints one JSON line of counts; exits 1 with the differences otherwise.
"""
import csv
import io
import json
import subprocess
import sys

COLUMNS = ["id", "name", "qty", "price", "note"]


def query(url, sql):
    out = subprocess.run(["psql", "-X", "-q", "--csv", url, "-c", sql], check=True, capture_output=True, text=True)
    return list(csv.DictReader(io.StringIO(out.stdout)))


def normal(row):
    """A row as comparable text, whatever store it came from."""
    return (int(row["id"]), row["name"], int(row["qty"]), float(row["price"]), row["note"])


def main():
    work, brokers, target_url, datalake_url, delta_root = sys.argv[1:6]
    expected = json.load(open(f"{work}/expected.json"))
    poison = json.load(open(f"{work}/poison.json"))
    stats = json.load(open(f"{work}/stats.json"))
    problems = []
    counts = {"changes": stats["changes"], "poison": len(poison)}

    from deltalake import DeltaTable
    for table, rows in expected.items():
        want = sorted(normal(r) for r in rows.values())
        cols = ", ".join(COLUMNS)
        target = sorted(normal(r) for r in query(target_url, f"SELECT {cols} FROM public.{table}"))
        lake = sorted(normal(r) for r in query(
            datalake_url, f"SELECT {cols} FROM cdc_processed.{table} WHERE NOT _cdc_deleted"))
        delta = sorted(normal(r) for r in DeltaTable(f"{delta_root}/{table}").to_pyarrow_table(columns=COLUMNS).to_pylist())
        for name, got in [("pg-target", target), ("pg-datalake", lake), ("delta", delta)]:
            if got != want:
                missing = set(want) - set(got)
                extra = set(got) - set(want)
                problems.append(f"{name} {table}: {len(got)} rows, want {len(want)}; "
                                f"{len(missing)} missing/stale (e.g. {sorted(missing)[:2]}), {len(extra)} extra (e.g. {sorted(extra)[:2]})")

    raw = query(datalake_url, "SELECT count(*) AS n, count(DISTINCT (topic, kafka_partition, kafka_offset)) AS d "
                              "FROM cdc_raw.cdc_events")[0]
    history = DeltaTable(f"{delta_root}/cdc_events").to_pyarrow_table(columns=["topic", "kafka_partition", "kafka_offset"])
    positions = list(zip(*(history.column(c).to_pylist() for c in ["topic", "kafka_partition", "kafka_offset"])))
    for name, total, distinct in [("cdc_raw.cdc_events", int(raw["n"]), int(raw["d"])),
                                  ("delta cdc_events", len(positions), len(set(positions)))]:
        counts[name] = total
        if total != distinct:
            problems.append(f"{name}: {total - distinct} duplicated events")
        if distinct != stats["changes"]:
            problems.append(f"{name}: {distinct} distinct events, want {stats['changes']} ({stats['changes'] - distinct} lost)")

    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "chaos-check", "enable.auto.commit": False})
    metadata = consumer.list_topics(timeout=10)
    topics = [t for t in metadata.topics if t.endswith(".dlq")]
    # Read every dead-letter partition from its start to its end (no group join).
    ends = {}
    for topic in topics:
        for partition in metadata.topics[topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[(topic, partition)] = high
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
    letters = []
    read = {tp: -1 for tp in ends}
    deadline = 200
    while any(read[tp] < end - 1 for tp, end in ends.items()) and deadline > 0:
        message = consumer.poll(0.5)
        deadline -= 1
        if message is None:
            continue
        if message.error():
            raise KafkaException(message.error())
        read[(message.topic(), message.partition())] = message.offset()
        headers = {k: (v.decode() if v else None) for k, v in (message.headers() or [])}
        letters.append((message.topic(), message.key().decode(errors="replace") if message.key() else None, headers))
    consumer.close()
    cascaded = [t for t in topics if t.endswith(".dlq.dlq")]
    if cascaded:
        problems.append(f"dead letters were consumed again: {cascaded}")
    by_position = {}
    for topic, key, headers in letters:
        position = (headers.get("cdc.topic"), headers.get("cdc.partition"), headers.get("cdc.offset"))
        by_position.setdefault(position, []).append((key, headers))
    counts["dead letters"] = len(letters)
    counts["dead-lettered positions"] = len(by_position)
    poison_keys = {p["key"]: p["why"] for p in poison}
    for position, copies in by_position.items():
        key, headers = copies[0]
        if key not in poison_keys and not headers.get("cdc.omitted"):
            problems.append(f"a good record was dead-lettered: {position} key {key}: {headers.get('cdc.error')}")
        if not headers.get("cdc.error"):
            problems.append(f"dead letter {position} has no reason")
    # The oversized one is stored as a reference (no key or value).
    stored_keys = {copies[0][0] for copies in by_position.values()}
    references = sum(1 for copies in by_position.values() if copies[0][1].get("cdc.omitted"))
    for key, why in poison_keys.items():
        if key not in stored_keys and not (why.startswith("a 2 MB") and references == 1):
            problems.append(f"poison record ({why}) is not in the dead-letter topic")
    if len(by_position) != len(poison):
        problems.append(f"{len(by_position)} dead-lettered positions, want {len(poison)}")
    # Each (position, refusing sink) once: a record redone after a kill or a
    # rebalance must not be dead-lettered again.
    distinct = {(position, headers.get("cdc.sink")) for position, copies in by_position.items() for _, headers in copies}
    counts["dead letters stored twice"] = len(letters) - len(distinct)
    if len(letters) != len(distinct):
        problems.append(f"{len(letters) - len(distinct)} dead letters stored twice")

    print(json.dumps(counts))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
