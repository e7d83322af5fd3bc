#!/usr/bin/env bash
# The consumer process on its own: the generated bulk file (benches/support/gen_bulk.py, as
# scripts/bench-vs-python.sh uses) published to an out-of-process Kafka-protocol broker
# (examples/kafka_broker.rs, librdkafka's mock cluster) over many partitions, then consumed by
# `consumer` into Delta and the PostgreSQL target (data lake off) until idle. Prints the
# consumer's wall time, events/s, CPU and peak RSS: the broker's memory and CPU are not counted.
#
#   scripts/bench-consumer.sh                        # 512 partitions, ~185k records
#   BENCH_PARTITIONS=128 BENCH_SINKS=delta scripts/bench-consumer.sh
#
# Environment: BENCH_DIR (default .tmp/bench), BENCH_PG_URL (default a throwaway cluster),
# BENCH_SINKS (delta, target or both; default both), BENCH_PARTITIONS (default 512; the mock
# broker keeps ~5 MiB per partition, so fewer than ~180 would drop records of this file).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${BENCH_DIR:-$root/.tmp/bench}
rows=${BENCH_ROWS:-70000}
changes=${BENCH_CHANGES:-110000}
partitions=${BENCH_PARTITIONS:-512}
sinks=${BENCH_SINKS:-both}
mkdir -p "$dir"

input=$dir/bulk-$rows-$changes.jsonl
[ -f "$input" ] || python3 "$root/benches/support/gen_bulk.py" --out "$input" --rows "$rows" --changes "$changes"
records=$(wc -l < "$input")

echo "building consumer and kafka_broker (bench profile) ..."
(cd "$root" && cargo build --quiet --profile bench --example consumer --example kafka_broker --all-features)
bin=$root/target/release/examples

pg_url=${BENCH_PG_URL:-}
if [ -z "$pg_url" ]; then
    pg_url=$("$root/scripts/pg-cluster.sh" start "$dir/pg")
fi
work=$(mktemp -d)
broker_pid=
cleanup() {
    [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null || true
    rm -rf "$work"
    [ -n "${BENCH_PG_URL:-}" ] || "$root/scripts/pg-cluster.sh" stop "$dir/pg" >/dev/null 2>&1 || true
}
trap cleanup EXIT

database=bench_consumer
psql "$pg_url" -qc "DROP DATABASE IF EXISTS $database WITH (FORCE)" -c "CREATE DATABASE $database"
target_url=${pg_url%/*}/$database

"$bin/kafka_broker" --partitions "$partitions" --address-file "$work/address" --publish-stdin \
    < "$input" 2> "$work/broker.log" &
broker_pid=$!
echo "publishing $records records over $partitions partitions ..."
until grep -q "stdin closed after" "$work/broker.log" 2>/dev/null; do
    kill -0 "$broker_pid" 2>/dev/null || { cat "$work/broker.log" >&2; exit 1; }
    sleep 1
done

# The broker's own CPU while it serves the consumer (not counted above).
broker_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.1f", ($14 + $15) / hz }' "/proc/$broker_pid/stat"; }
broker_before=$(broker_cpu)

case $sinks in
    delta) enabled=(CDC_DELTA_ENABLED=true CDC_TARGET_ENABLED=false) ;;
    target) enabled=(CDC_DELTA_ENABLED=false CDC_TARGET_ENABLED=true) ;;
    *) enabled=(CDC_DELTA_ENABLED=true CDC_TARGET_ENABLED=true) ;;
esac
echo "consuming into $sinks ..."
env CDC_BROKERS="$(cat "$work/address")" CDC_GROUP_ID=bench-consumer CDC_DELTA_ROOT="$work/delta" \
    CDC_TARGET_URL="$target_url" CDC_DATALAKE_ENABLED=false "${enabled[@]}" \
    /usr/bin/time -f "%e %U %S %M" -o "$work/time" \
    "$bin/consumer" --stop-when-idle-secs 5 > "$work/consumer.log" 2>&1 || { tail -20 "$work/consumer.log" >&2; exit 1; }
read -r wall user sys rss_kib < "$work/time"
broker_after=$(broker_cpu)
grep -E "progress|consumed|applied" "$work/consumer.log" | tail -3
# The run ends 5 s after the last record (--stop-when-idle-secs): not counted.
awk -v n="$records" -v wall="$wall" -v user="$user" -v sys="$sys" -v rss="$rss_kib" -v p="$partitions" -v s="$sinks" \
    -v broker="$(awk -v a="$broker_after" -v b="$broker_before" 'BEGIN { print a - b }')" \
    'BEGIN { busy = wall - 5; printf "consumer into %s, %d partitions: %d records in %.1f s (idle wait excluded) = %.0f records/s, CPU %.1f s user + %.1f s sys, peak RSS %.0f MiB; the broker meanwhile: %.1f s CPU\n", s, p, n, busy, n / busy, user, sys, rss / 1024, broker }'
