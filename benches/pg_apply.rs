//! Applying batches of 10k mixed changes (60% updates of existing rows, 20%
//! inserts, 20% deletes) to a PostgreSQL target table of 1M rows: the
//! PgTargetSink (binary COPY + set-based statements, one transaction) against
//! per-row `INSERT ... ON CONFLICT` / `DELETE` statements in one transaction,
//! and the sink keeping the table as SCD type 2 (`mode = "scd2"`: every
//! change a version).
//!
//!   cargo bench --bench pg_apply --no-default-features --features postgres
//!
//! Uses the PostgreSQL at CDC_TEST_PG_URL, or starts a throwaway cluster with
//! scripts/pg-cluster.sh (installing Debian's PostgreSQL if needed).
mod support;

use std::process::Command;

use cdc_lakehouse::core::{Batch, Sink};
use cdc_lakehouse::sinks::{PgConnectionConfig, PgTargetSink, TableConfig, TableMode};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use support::Generator;
use tokio::runtime::Runtime;
use tokio_postgres::{Client, NoTls};

const TABLE_ROWS: i64 = 1_000_000;
const BATCH: usize = 10_000;

fn database_url() -> (String, Option<String>) {
    if let Ok(url) = std::env::var("CDC_TEST_PG_URL") {
        return (url, None);
    }
    let dir = std::env::temp_dir().join(format!("cdc-bench-pg-{}", std::process::id()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-cluster.sh");
    let out = Command::new("bash").arg(script).arg("start").arg(&dir).output().expect("scripts/pg-cluster.sh");
    assert!(out.status.success(), "starting PostgreSQL failed: {}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8(out.stdout).unwrap().trim().to_owned(), Some(dir.display().to_string()))
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Creates the table through the sink (so it has the sink's layout), then
/// fills it to TABLE_ROWS rows with one INSERT ... SELECT.
async fn prepare(url: &str, table_schema: &str, generator: &mut Generator, mode: TableMode) -> PgTargetSink {
    let admin = connect(url).await;
    // A fresh table, and no offsets from an earlier run (they would make the sink skip everything).
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {table_schema} CASCADE; CREATE SCHEMA IF NOT EXISTS cdc_meta; \
             CREATE TABLE IF NOT EXISTS cdc_meta.offsets (consumer text, topic text, kafka_partition int, \
             kafka_offset bigint, updated_at timestamptz DEFAULT now(), PRIMARY KEY (consumer, topic, kafka_partition)); \
             DELETE FROM cdc_meta.offsets WHERE consumer = '{table_schema}'"
        ))
        .await
        .unwrap();
    let mut config = PgConnectionConfig::new(url);
    config.consumer = table_schema.into();
    let tables = [("bench_items".to_owned(), TableConfig { mode, track_history_columns: None })].into();
    let mut sink = PgTargetSink::new(config).with_schema(table_schema).with_tables(tables);
    sink.apply(&generator.snapshot(1..2)).await.unwrap();
    // An SCD2 table starts with one current version per row.
    let (version_columns, version_values) = match mode {
        TableMode::Scd2 => (", __start_order, __start_at, __is_current", ", lpad('0', 48, '0'), now(), true"),
        TableMode::Current => ("", ""),
    };
    admin
        .batch_execute(&format!(
            "TRUNCATE {table_schema}.bench_items; \
             INSERT INTO {table_schema}.bench_items (id, name, price, quantity, updated_at, _cdc_op, _cdc_order\
             {version_columns}) \
             SELECT g, 'item ' || g, (g % 100000) / 100.0, g % 50, now(), 'r', lpad('0', 48, '0'){version_values} \
             FROM generate_series(1, {TABLE_ROWS}) g; ANALYZE {table_schema}.bench_items"
        ))
        .await
        .unwrap();
    sink
}

/// The baseline: one statement per event, in one transaction.
async fn apply_per_row(client: &mut Client, table: &str, batch: &Batch) {
    let tx = client.transaction().await.unwrap();
    let upsert = tx
        .prepare(&format!(
            "INSERT INTO {table} (id, name, price, quantity, updated_at, _cdc_op, _cdc_order, _cdc_synced_at) \
             VALUES ($1, $2, $3::text::numeric, $4, to_timestamp($5::double precision / 1e6), $6, $7, now()) \
             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, price = EXCLUDED.price, quantity = EXCLUDED.quantity, \
             updated_at = EXCLUDED.updated_at, _cdc_op = EXCLUDED._cdc_op, _cdc_order = EXCLUDED._cdc_order, \
             _cdc_synced_at = now() WHERE {table}._cdc_order < EXCLUDED._cdc_order"
        ))
        .await
        .unwrap();
    let delete = tx.prepare(&format!("DELETE FROM {table} WHERE id = $1 AND _cdc_order < $2")).await.unwrap();
    use cdc_lakehouse::core::Value;
    for event in &batch.events {
        let order = event.order.to_hex();
        let id = match &event.key.as_ref().unwrap()[0] {
            Value::Int(i) => *i,
            _ => unreachable!(),
        };
        match &event.after {
            None => {
                tx.execute(&delete, &[&id, &order]).await.unwrap();
            }
            Some(row) => {
                let name = match &row[1] {
                    Value::String(s) => s.to_string(),
                    _ => unreachable!(),
                };
                let price = match &row[2] {
                    Value::Decimal(d) => d.to_string(),
                    _ => unreachable!(),
                };
                let quantity = match row[3] {
                    Value::Int(q) => q as i32,
                    _ => unreachable!(),
                };
                let updated = match row[4] {
                    Value::Timestamp(t) => t as f64,
                    _ => unreachable!(),
                };
                tx.execute(&upsert, &[&id, &name, &price, &quantity, &updated, &event.op.code(), &order])
                    .await
                    .unwrap();
            }
        }
    }
    tx.commit().await.unwrap();
}

fn pg_apply(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let (url, cluster) = database_url();
    let mut generator = Generator::default();
    let mut group = c.benchmark_group("pg_apply_10k_mixed_into_1m_rows");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH as u64));

    let mut sink = rt.block_on(prepare(&url, "bench_sink", &mut generator, TableMode::Current));
    let mut next_id = 2 * TABLE_ROWS;
    let mut round = 0;
    group.bench_function("pg_target_sink_copy_set_based", |b| {
        b.iter_batched(
            || {
                round += 1;
                generator.mixed(BATCH, 1..TABLE_ROWS + 1, &mut next_id, round)
            },
            |batch| rt.block_on(sink.apply(&batch)).unwrap(),
            BatchSize::PerIteration,
        )
    });

    let mut scd2 = rt.block_on(prepare(&url, "bench_scd2", &mut generator, TableMode::Scd2));
    let mut next_id = 2 * TABLE_ROWS;
    group.bench_function("pg_target_sink_scd2", |b| {
        b.iter_batched(
            || {
                round += 1;
                generator.mixed(BATCH, 1..TABLE_ROWS + 1, &mut next_id, round)
            },
            |batch| rt.block_on(scd2.apply(&batch)).unwrap(),
            BatchSize::PerIteration,
        )
    });

    rt.block_on(prepare(&url, "bench_per_row", &mut generator, TableMode::Current));
    let mut client = rt.block_on(connect(&url));
    let mut next_id = 2 * TABLE_ROWS;
    group.bench_function("baseline_per_row_statements", |b| {
        b.iter_batched(
            || {
                round += 1;
                generator.mixed(BATCH, 1..TABLE_ROWS + 1, &mut next_id, round)
            },
            |batch| rt.block_on(apply_per_row(&mut client, "bench_per_row.bench_items", &batch)),
            BatchSize::PerIteration,
        )
    });
    group.finish();
    if let Some(dir) = cluster {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-cluster.sh");
        let _ = Command::new("bash").arg(script).arg("stop").arg(&dir).status();
    }
}

criterion_group!(benches, pg_apply);
criterion_main!(benches);
