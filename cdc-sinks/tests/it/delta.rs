//! The Delta Lake sink against real Delta tables on disk.
use std::collections::{BTreeMap, HashMap};

use cdc_core::memory::MemorySink;
use cdc_core::testing::changes;
use cdc_core::{Batch, ChangeEvent, Offsets, Op, Record, Sink, Value};
use cdc_sinks::delta::deltalake::DeltaTable;
use cdc_sinks::delta::deltalake::arrow::array::{Array, AsArray, RecordBatch};
use cdc_sinks::delta::deltalake::arrow::datatypes::Int64Type;
use cdc_sinks::delta::deltalake::kernel::transaction::CommitProperties;
use cdc_sinks::delta::time_travel::{self, AsOf};
use cdc_sinks::{DeltaConfig, DeltaSink};
use futures::TryStreamExt;

use crate::store::TestRoot;
use crate::support::*;

/// The fixture's change events of `customers`, as records.
fn customer_records() -> Vec<Record> {
    fixture_records("schemas")
        .into_iter()
        .filter(|r| matches!(r, Record::Change(e) if e.source.table == "customers"))
        .collect()
}

/// Applies batches like the pipeline: a batch failing with a non-retriable
/// error is applied again without the events the error names (they go to
/// the dead-letter store). Returns the dead-lettered events.
async fn apply_with_dead_letters(sink: &mut DeltaSink, batches: &[Batch]) -> Vec<ChangeEvent> {
    let mut dead = Vec::new();
    for batch in batches {
        match sink.apply(batch).await {
            Ok(()) => {}
            Err(error) => {
                assert!(!error.is_retriable(), "{error}");
                let message = error.to_string();
                // The only bad data in the fixture: products.stock_quantity int -> bigint.
                assert!(message.contains("column stock_quantity of Delta table products is Int32"), "{message}");
                let (bad, good): (Vec<_>, Vec<_>) = batch.events.iter().cloned().partition(|e| {
                    e.source.table == "products"
                        && e.schema.field("stock_quantity").is_some_and(|f| f.data_type == cdc_core::DataType::Int64)
                });
                dead.extend(bad);
                sink.apply(&Batch { events: good, offsets: batch.offsets.clone(), ..Batch::default() }).await.unwrap();
            }
        }
    }
    dead
}

/// (key, order key) of every live row, from Delta.
async fn delta_rows(config: &DeltaConfig, table: &str, as_of: AsOf) -> BTreeMap<i64, String> {
    let batches =
        time_travel::query(config, &format!("SELECT CAST(id AS BIGINT) AS id, _cdc_order FROM {table}"), as_of)
            .await
            .unwrap();
    let mut rows = BTreeMap::new();
    for batch in &batches {
        let ids = batch.column(0).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            rows.insert(ids.value(i), text(batch.column(1), i));
        }
    }
    rows
}

/// The same, from the reference model (the in-memory sink).
fn memory_rows(memory: &MemorySink, table: &str) -> BTreeMap<i64, String> {
    memory.tables[&format!("public.{table}")]
        .rows
        .values()
        .filter_map(|(order, row)| {
            let row = row.as_ref()?;
            match row["id"] {
                Value::Int(id) => Some((id, order.to_hex())),
                _ => None,
            }
        })
        .collect()
}

async fn scalar_text(config: &DeltaConfig, sql: &str) -> String {
    let batches = time_travel::query(config, sql, AsOf::Latest).await.unwrap();
    let batch: &RecordBatch = &batches[0];
    text(batch.column(0), 0)
}

/// A cell as text, whatever string or number type DataFusion returned.
fn text(array: &dyn Array, row: usize) -> String {
    cdc_sinks::delta::deltalake::arrow::util::display::array_value_to_string(array, row).unwrap()
}

/// The whole real-Debezium fixture in small batches: every table holds the
/// reference model's rows, each written by the same event.
#[tokio::test]
async fn delta_tables_follow_the_fixture() {
    let root = TestRoot::new();
    let config = root.config();
    let records = fixture_records("schemas");
    let mut sink = DeltaSink::new(config.clone());
    let dead = apply_with_dead_letters(&mut sink, &batches(&records, 9)).await;
    // products.stock_quantity int -> bigint (5000000000) arrives in a later
    // batch than the table's creation: the table is widened, nothing refused.
    assert!(dead.is_empty(), "{dead:?}");

    let mut memory = MemorySink::new();
    for event in changes(&records) {
        if !dead.iter().any(|d| d.position == event.position) {
            memory.apply_event(event);
        }
    }
    for table in TABLES {
        assert_eq!(delta_rows(&config, table, AsOf::Latest).await, memory_rows(&memory, table), "{table}");
    }
    // Values keep their types and TOAST kept the big text.
    assert_eq!(scalar_text(&config, "SELECT price FROM products WHERE id = 1").await, "1199.99");
    let toast = scalar_text(&config, "SELECT CAST(length(c_big_text) AS BIGINT) FROM all_types WHERE id = 1").await;
    assert_eq!(toast, "12804", "32*400 chars + 'tail'");
    assert_eq!(scalar_text(&config, "SELECT CAST(loyalty_points AS BIGINT) FROM customers WHERE id = 1").await, "10");
    // A column dropped at the source stays, with nulls for later writes.
    assert_eq!(scalar_text(&config, "SELECT count(*) FROM products WHERE category IS NULL").await, "1");

    // The history table holds every change event once, the one the products
    // table refused included (it happened at the source).
    let events = scalar_text(&config, "SELECT count(*) FROM cdc_events").await;
    assert_eq!(events, change_count(&records).to_string());
    let history = time_travel::history(&config, "order_items").await.unwrap();
    assert!(history.iter().any(|h| h.operation == "DELETE"), "truncate is its own commit: {history:?}");
    assert!(history.iter().any(|h| h.operation == "MERGE"));

    // A new sink instance reports the offsets every table holds, and a
    // replay of everything commits nothing.
    let mut restarted = DeltaSink::new(config.clone());
    let offsets = restarted.durable_offsets().await.unwrap();
    let last_customer = records.iter().rfind(|r| r.position().topic.as_ref() == "cdc.public.customers").unwrap();
    assert_eq!(offsets.get("cdc.public.customers", 0), Some(last_customer.position().offset));
    let before = restarted.versions();
    let _ = apply_with_dead_letters(&mut restarted, &batches(&records, 40)).await;
    let version = time_travel::history(&config, "customers").await.unwrap()[0].version;
    assert_eq!(before.get("customers"), Some(&version), "the replay committed nothing");
    assert_eq!(scalar_text(&config, "SELECT count(*) FROM cdc_events").await, events);
}

/// Time travel: an earlier version and an earlier timestamp show the state then.
#[tokio::test]
async fn time_travel_by_version_and_timestamp() {
    let root = TestRoot::new();
    let config = root.config();
    let customers = customer_records();
    let mut sink = DeltaSink::new(config.clone());
    sink.apply(&Batch::from_records(customers[..5].to_vec())).await.unwrap(); // the snapshot
    let after_snapshot = chrono::Utc::now();
    // delta-rs dates a version by its log file's modification time, which
    // S3 keeps to the second: the next commit must fall in a later second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for record in &customers[5..] {
        sink.apply(&Batch::from_records([record.clone()])).await.unwrap();
    }
    let v0 = delta_rows(&config, "customers", AsOf::Version(0)).await;
    assert_eq!(v0.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(delta_rows(&config, "customers", AsOf::Timestamp(after_snapshot)).await, v0);
    let latest = delta_rows(&config, "customers", AsOf::Latest).await;
    assert_eq!(latest.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 6, 7, 100]);
    let history = time_travel::history(&config, "customers").await.unwrap();
    assert_eq!(history.last().unwrap().version, 0);
    assert_eq!(history.last().unwrap().operation, "WRITE", "the snapshot was appended");
    assert_eq!(history.last().unwrap().rows_affected, Some(5));
}

/// An event older than the row (delivered later, from another partition)
/// does not overwrite it.
#[tokio::test]
async fn older_events_never_overwrite_newer_rows() {
    let root = TestRoot::new();
    let config = root.config();
    let records = fixture_records("schemas");
    let events = changes(&records);
    let updates: Vec<_> = events.iter().filter(|e| e.source.table == "orders" && e.op == Op::Update).collect();
    let (older, newer) = (updates[0], updates[1]);
    let mut sink = DeltaSink::new(config.clone());
    let snapshot: Vec<Record> = records
        .iter()
        .filter(|r| matches!(r, Record::Change(e) if e.op == Op::Read && e.source.table == "orders"))
        .cloned()
        .collect();
    sink.apply(&Batch::from_records(snapshot)).await.unwrap();
    sink.apply(&Batch { events: vec![moved(newer, 7, 1)], ..Batch::default() }).await.unwrap();
    sink.apply(&Batch { events: vec![moved(older, 8, 1)], ..Batch::default() }).await.unwrap();
    let id = match &newer.key.as_ref().unwrap()[0] {
        Value::Int(i) => *i,
        other => panic!("{other:?}"),
    };
    assert_eq!(delta_rows(&config, "orders", AsOf::Latest).await[&id], newer.order.to_hex());
}

/// A crash between two tables' commits of one batch: the restarted sink
/// applies what is missing and nothing twice.
#[tokio::test]
async fn restart_between_table_commits_loses_and_doubles_nothing() {
    let root = TestRoot::new();
    let mut config = root.config();
    config.checkpoint_interval = 1000; // the commits undone below have no checkpoint
    let records = fixture_records("schemas");
    let all = batches(&records, 60);
    // A batch whose events go to several tables, after one that created them.
    let tables = |b: &Batch| b.events.iter().map(|e| e.source.table.clone()).collect::<std::collections::BTreeSet<_>>();
    let k = (1..all.len()).find(|&k| tables(&all[k]).len() >= 2).expect("a batch of several tables");
    let first_table = tables(&all[k]).into_iter().next().unwrap();
    let mut first = DeltaSink::new(config.clone());
    apply_with_dead_letters(&mut first, &all[..k]).await;
    // "Crash" during batch k: the history's and the first table's commits
    // landed (tables commit in name order), the other tables' did not, so
    // their commits of batch k are taken out of their logs.
    let before = first.versions();
    apply_with_dead_letters(&mut first, &all[k..=k]).await;
    let first_version = first.versions()[&first_table];
    assert!(before.get(&first_table).is_none_or(|&v| v < first_version), "{first_table} committed in batch {k}");
    let mut undone = 0;
    for (table, version) in first.versions() {
        let previous = before.get(&table).copied();
        if table == first_table || previous == Some(version) {
            continue;
        }
        for v in previous.map_or(0, |p| p + 1)..=version {
            root.delete(&format!("{table}/_delta_log/{v:020}.json")).await;
        }
        if previous.is_none() {
            root.delete(&table).await;
        }
        undone += 1;
    }
    assert!(undone > 0, "batch {k} committed to another table too");
    drop(first);
    let mut restarted = DeltaSink::new(config.clone());
    let resume = restarted.durable_offsets().await.unwrap();
    assert!(all[k].events.iter().any(|e| !resume.holds(&e.position)), "the lost commits are offered again");
    // The pipeline resumes from the lowest offset any sink holds: with
    // another sink behind, all of batch k and on is offered again.
    for batch in &all[k..] {
        apply_with_dead_letters(&mut restarted, std::slice::from_ref(batch)).await;
        if std::ptr::eq(batch, &all[k]) {
            // The table that held its part of batch k skipped it: no new commit.
            assert_eq!(restarted.versions().get(&first_table), Some(&first_version), "{first_table} applied twice");
        }
    }
    let history_events = scalar_text(&config, "SELECT count(*) FROM cdc_events").await;
    let distinct = scalar_text(
        &config,
        "SELECT count(*) FROM (SELECT DISTINCT topic, kafka_partition, kafka_offset FROM cdc_events)",
    )
    .await;
    assert_eq!(history_events, distinct, "no event twice in the history");
    assert_eq!(history_events, changes(&records).len().to_string(), "every event in the history");
    let mut memory = MemorySink::new();
    for event in changes(&records) {
        memory.apply_event(event);
    }
    assert_eq!(delta_rows(&config, "customers", AsOf::Latest).await, memory_rows(&memory, "customers"));
    assert_eq!(delta_rows(&config, "orders", AsOf::Latest).await, memory_rows(&memory, "orders"));
}

/// Tables written here are readable by another Delta implementation: the
/// Python `deltalake` package reads the rows and the version history.
#[tokio::test]
async fn python_deltalake_reads_the_tables() {
    let root = TestRoot::new();
    let config = root.config();
    let customers = customer_records();
    let mut sink = DeltaSink::new(config.clone());
    for chunk in customers.chunks(4) {
        sink.apply(&Batch::from_records(chunk.to_vec())).await.unwrap();
    }
    let script = r#"
import json, sys
from deltalake import DeltaTable
dt = DeltaTable(sys.argv[1], storage_options=json.loads(sys.argv[2]))
rows = dt.to_pyarrow_table(columns=["id", "email"]).to_pylist()
print(json.dumps({"version": dt.version(), "ids": sorted(r["id"] for r in rows),
                  "history": len(dt.history())}), flush=True)
# The package's runtime threads can abort the interpreter at exit
# ("terminate called without an active exception"): leave before that.
import os
os._exit(0)
"#;
    let options = serde_json::to_string(&config.storage_options).unwrap();
    let seen = python_json(script, &[&root.table_url("customers"), &options]);
    let mut memory = MemorySink::new();
    for event in changes(&customers) {
        memory.apply_event(event);
    }
    let expected: Vec<i64> = memory_rows(&memory, "customers").keys().copied().collect();
    assert_eq!(seen["ids"], serde_json::json!(expected));
    let version = time_travel::history(&config, "customers").await.unwrap()[0].version;
    assert_eq!(seen["version"], serde_json::json!(version));
    assert_eq!(seen["history"], serde_json::json!(version + 1));
}

/// Soft-delete mode keeps deleted rows, flagged.
#[tokio::test]
async fn soft_delete_keeps_flagged_rows() {
    let root = TestRoot::new();
    let mut config = root.config();
    config.soft_delete = true;
    config.history = false;
    let customers = customer_records();
    let mut sink = DeltaSink::new(config.clone());
    for chunk in customers.chunks(3) {
        sink.apply(&Batch::from_records(chunk.to_vec())).await.unwrap();
    }
    let deleted = scalar_text(&config, "SELECT CAST(id AS BIGINT) FROM customers WHERE _cdc_deleted").await;
    assert_eq!(deleted, "5", "the primary-key change's old key");
    let live = scalar_text(&config, "SELECT count(*) FROM customers WHERE NOT _cdc_deleted").await;
    assert_eq!(live, "7");
}

/// Members of one group share the history: a member whose commit delta-rs
/// rebased onto another member's (an append does not conflict with it)
/// holds their data in its snapshot but not their offsets. When a partition
/// the other member wrote then moves to it (that member's last commit
/// landing after the new owner read the offsets), it must read them again
/// rather than write the partition's events into the history twice.
#[tokio::test]
async fn a_commit_rebased_onto_another_members_reads_the_offsets_again() {
    let root = TestRoot::new();
    let config = root.config();
    let records = customer_records();
    let events = changes(&records);
    let batch = |events: Vec<ChangeEvent>| Batch::from_records(events.into_iter().map(Record::Change));
    let mut a = DeltaSink::new(config.clone());
    let mut b = DeltaSink::new(config.clone());
    a.apply(&batch(vec![moved(events[0], 1, 0)])).await.unwrap();
    // b owns partition 2 and writes it; a's next commit lands on top of b's.
    let partition_2 = vec![moved(events[1], 2, 0), moved(events[2], 2, 1)];
    b.apply(&batch(partition_2.clone())).await.unwrap();
    a.apply(&batch(vec![moved(events[3], 1, 1)])).await.unwrap();
    // Partition 2 moves to a, which reads it again from where the group committed.
    a.apply(&batch(partition_2)).await.unwrap();
    let distinct = "SELECT count(*) FROM (SELECT DISTINCT topic, kafka_partition, kafka_offset FROM cdc_events)";
    assert_eq!(scalar_text(&config, "SELECT count(*) FROM cdc_events").await, "4", "each event once");
    assert_eq!(scalar_text(&config, distinct).await, "4");
}

/// Two writers (another pipeline, or maintenance) commit to the same table
/// at once: the loser re-reads the table and retries.
#[tokio::test]
async fn concurrent_writers_both_land() {
    let root = TestRoot::new();
    let config = root.config();
    let records = fixture_records("schemas");
    let products: Vec<Record> = records
        .iter()
        .filter(|r| matches!(r, Record::Change(e) if e.source.table == "products" && e.op == Op::Read))
        .cloned()
        .collect();
    let mut seed = DeltaSink::new(config.clone());
    seed.apply(&Batch::from_records(products.clone())).await.unwrap();
    let updates: Vec<&ChangeEvent> =
        changes(&records).into_iter().filter(|e| e.source.table == "products" && e.op == Op::Update).take(4).collect();
    let mut a_config = config.clone();
    a_config.consumer = "writer-a".into();
    a_config.history = false;
    let mut b_config = a_config.clone();
    b_config.consumer = "writer-b".into();
    let mut a = DeltaSink::new(a_config);
    let mut b = DeltaSink::new(b_config);
    let batch_a = Batch { events: vec![moved(updates[0], 1, 1), moved(updates[1], 1, 2)], ..Batch::default() };
    let batch_b = Batch { events: vec![moved(updates[2], 2, 1), moved(updates[3], 2, 2)], ..Batch::default() };
    let (ra, rb) = tokio::join!(a.apply(&batch_a), b.apply(&batch_b));
    ra.unwrap();
    rb.unwrap();
    let rows = delta_rows(&config, "products", AsOf::Latest).await;
    for event in &updates {
        let Value::Int(id) = event.key.as_ref().unwrap()[0] else { panic!() };
        let newest = updates.iter().filter(|u| u.key == event.key).map(|u| u.order).max().unwrap();
        assert_eq!(rows[&id], newest.to_hex());
    }
}

/// Checkpoints every `checkpoint_interval` commits; optimize, checkpoint
/// and vacuum keep the data and the history readable.
#[tokio::test]
async fn maintenance_keeps_the_tables_readable() {
    let root = TestRoot::new();
    let mut config = root.config();
    config.checkpoint_interval = 5;
    let customers = customer_records();
    let mut sink = DeltaSink::new(config.clone());
    for record in &customers {
        sink.apply(&Batch::from_records([record.clone()])).await.unwrap();
    }
    let checkpoints =
        root.files("customers/_delta_log").await.iter().filter(|path| path.contains("checkpoint")).count();
    assert!(checkpoints >= 1, "a checkpoint every 5 commits");
    let before = delta_rows(&config, "customers", AsOf::Latest).await;
    let policy = cdc_sinks::delta::maintenance::MaintenancePolicy {
        optimize_min_files: 2,
        zorder_by: vec!["id".into()],
        vacuum_retention_hours: 0,
        ..Default::default()
    };
    let reports = cdc_sinks::delta::maintenance::run(&config, &policy).await.unwrap();
    let (_, customers_report) = reports.iter().find(|(n, _)| n == "customers").unwrap();
    assert!(customers_report.files_removed >= 2, "{customers_report:?}");
    assert_eq!(delta_rows(&config, "customers", AsOf::Latest).await, before);
    // The sink goes on after maintenance committed in between.
    let mut restarted = DeltaSink::new(config.clone());
    restarted.apply(&Batch::from_records(customers.clone())).await.unwrap();
    assert_eq!(delta_rows(&config, "customers", AsOf::Latest).await, before);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3, ..ProptestConfig::default() })]

        /// Any split of the stream into batches, with any prefix applied
        /// twice, gives the same tables.
        #[test]
        fn any_split_gives_the_same_tables(size in 3usize..40, replay in 0usize..60) {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let records: Vec<Record> = fixture_records("schemas")
                    .into_iter()
                    .filter(|r| matches!(r, Record::Change(e) if e.source.table != "products"))
                    .collect();
                let (whole_root, split_root) = (TestRoot::new(), TestRoot::new());
                let mut whole = DeltaSink::new(whole_root.config());
                whole.apply(&Batch::from_records(records.clone())).await.unwrap();
                let mut split = DeltaSink::new(split_root.config());
                let replay = replay.min(records.len());
                for batch in batches(&records[..replay], size).iter().chain(&batches(&records, size)) {
                    split.apply(batch).await.unwrap();
                }
                for table in ["customers", "orders", "order_items", "all_types"] {
                    assert_eq!(
                        delta_rows(&whole_root.config(), table, AsOf::Latest).await,
                        delta_rows(&split_root.config(), table, AsOf::Latest).await,
                        "{table}"
                    );
                }
            });
        }
    }
}

/// Offsets in `txn` actions, for a table under `config`.
async fn held(config: &DeltaConfig) -> Offsets {
    DeltaSink::new(config.clone()).durable_offsets().await.unwrap()
}

/// A delete's tombstone cut into the next batch moves no table (nothing to
/// write), only the history: a restart resumes after it all the same, the
/// history knowing the table holds the partition's newest change.
#[tokio::test]
async fn a_tombstone_cut_into_the_next_batch_is_not_read_again() {
    let root = TestRoot::new();
    let config = root.config();
    let records = fixture_records("schemas");
    let customers: Vec<Record> =
        records.iter().filter(|r| r.position().topic.ends_with(".customers")).cloned().collect();
    let cut = customers.iter().position(|r| matches!(r, Record::Tombstone { .. }) && r.position().offset > 0).unwrap();
    let Record::Tombstone { position: tombstone } = &customers[cut] else { unreachable!() };
    assert!(matches!(&customers[cut - 1], Record::Change(e) if e.op == Op::Delete));
    let product = records.iter().find(|r| matches!(r, Record::Change(e) if e.source.table == "products")).unwrap();
    let mut sink = DeltaSink::new(config.clone());
    sink.apply(&Batch::from_records(customers[..cut].iter().cloned())).await.unwrap();
    sink.apply(&Batch::from_records([customers[cut].clone(), product.clone()])).await.unwrap();
    let resume = held(&config).await;
    assert_eq!(resume.get(&tombstone.topic, tombstone.partition), Some(tombstone.offset), "{resume:?}");
}

/// After a restart that resumed from a slower sink, the history is given
/// records it already holds: its commit must not write their (lower)
/// offsets, or the next restart re-appends everything in between.
#[tokio::test]
async fn history_offsets_never_move_backwards() {
    let root = TestRoot::new();
    let config = root.config();
    let records = customer_records();
    // Small batches of one partition: the second moves it further.
    let all = batches(&records, 3);
    assert!(all[0].offsets.iter().any(|(t, p, o)| all[1].offsets.get(t, p).is_some_and(|next| next > o)));
    let mut sink = DeltaSink::new(config.clone());
    sink.apply(&all[0]).await.unwrap();
    sink.apply(&all[1]).await.unwrap();
    let before = held(&config).await;
    assert!(!before.is_empty());
    // Restarted; a slower sink made the pipeline resume at batch 0 again,
    // and a new event of another partition comes with it.
    let mut restarted = DeltaSink::new(config.clone());
    restarted.durable_offsets().await.unwrap();
    let events = changes(&records);
    let fresh = events.last().expect("a customers event");
    let mut replay = all[0].clone();
    replay.events.push(moved(fresh, 9, 0));
    replay.offsets.set(fresh.position.topic.clone(), 9, 0);
    restarted.apply(&replay).await.unwrap();
    let after = held(&config).await;
    for (topic, partition, offset) in before.iter() {
        assert_eq!(after.get(topic, partition), Some(offset), "{topic}[{partition}] moved");
    }
}

/// A crash after the history commit and before a table's first commit of a
/// partition: the history's offset must not hide the table's gap.
#[tokio::test]
async fn a_table_missing_a_partition_is_not_hidden_by_the_history() {
    let root = TestRoot::new();
    let config = root.config();
    let records = customer_records();
    let mut sink = DeltaSink::new(config.clone());
    sink.apply(&Batch::from_records(records.iter().take(5).cloned())).await.unwrap();
    // The table's commits never happened (crash): only the history holds them.
    root.delete("customers").await;
    let resume = held(&config).await;
    let topic = "cdc.public.customers";
    assert_eq!(resume.get(topic, 0), None, "the table holds nothing of {topic}[0]: resume from its start");
    // Replayed from the start, the table gets every row and the history none twice.
    let mut restarted = DeltaSink::new(config.clone());
    restarted.durable_offsets().await.unwrap();
    restarted.apply(&Batch::from_records(records.iter().take(5).cloned())).await.unwrap();
    let mut memory = MemorySink::new();
    for record in records.iter().take(5) {
        if let Record::Change(event) = record {
            memory.apply_event(event);
        }
    }
    assert_eq!(delta_rows(&config, "customers", AsOf::Latest).await, memory_rows(&memory, "customers"));
    assert_eq!(scalar_text(&config, "SELECT count(*) FROM cdc_events").await, "5");
}

/// Decodes one change of table `t` keyed by a double `id`.
fn float_keyed(offset: i64, op: &str, id: f64, v: &str) -> Record {
    let schema = r#"{"type":"struct","optional":false,"fields":[
        {"type":"struct","optional":true,"field":"before","fields":[{"type":"double","optional":false,"field":"id"},{"type":"string","optional":true,"field":"v"}]},
        {"type":"struct","optional":true,"field":"after","fields":[{"type":"double","optional":false,"field":"id"},{"type":"string","optional":true,"field":"v"}]}]}"#;
    let image = format!(r#"{{"id":{id},"v":"{v}"}}"#);
    let (before, after) = if op == "d" { (image.as_str(), "null") } else { ("null", image.as_str()) };
    let value = format!(
        r#"{{"schema":{schema},"payload":{{"before":{before},"after":{after},
           "source":{{"schema":"public","table":"t","lsn":{offset},"txId":1,"sequence":"[\"{offset}\",\"{offset}\"]"}},"op":"{op}"}}}}"#
    );
    let key = format!(
        r#"{{"schema":{{"type":"struct","fields":[{{"type":"double","optional":false,"field":"id"}}]}},"payload":{{"id":{id}}}}}"#
    );
    let raw = cdc_core::RawRecord {
        topic: "cdc.public.t",
        partition: 0,
        offset,
        key: Some(key.as_bytes()),
        value: Some(value.as_bytes()),
    };
    cdc_core::Decoder::new().keep_raw_json(true).decode(raw).unwrap()
}

/// A key that is not an integer is never pruned as one: the update of 7.25
/// updates the stored 7.25 (a cast to 7 would miss it and insert a twin),
/// and its delete deletes it.
#[tokio::test]
async fn non_integer_keys_update_and_delete_their_rows() {
    let root = TestRoot::new();
    let config = root.config();
    let mut sink = DeltaSink::new(config.clone());
    sink.apply(&Batch::from_records([float_keyed(1, "c", 7.25, "a"), float_keyed(2, "c", 8.5, "b")])).await.unwrap();
    sink.apply(&Batch::from_records([float_keyed(3, "u", 7.25, "a2")])).await.unwrap();
    let rows = scalar_text(&config, "SELECT string_agg(CAST(id AS VARCHAR) || '=' || v, ',' ORDER BY id) FROM t").await;
    assert_eq!(rows, "7.25=a2,8.5=b");
    sink.apply(&Batch::from_records([float_keyed(4, "d", 8.5, "b")])).await.unwrap();
    let rows = scalar_text(&config, "SELECT string_agg(CAST(id AS VARCHAR) || '=' || v, ',' ORDER BY id) FROM t").await;
    assert_eq!(rows, "7.25=a2");
}

/// A truncate removes what is older than it, not what arrived before it: a
/// row written after the truncate (consumed first, from another partition)
/// stays, and an older row consumed after it stays out, also after a restart.
#[tokio::test]
async fn truncate_applies_by_order() {
    let root = TestRoot::new();
    let config = root.config();
    let records = fixture_records("schemas");
    let events = changes(&records);
    let truncate = events.iter().find(|e| e.op == Op::Truncate).expect("a truncate");
    let same_table = |e: &&&ChangeEvent| e.source.table == truncate.source.table && e.key.is_some();
    let after = events.iter().filter(same_table).find(|e| e.order > truncate.order).expect("a row after it");
    let before = events.iter().filter(same_table).find(|e| e.order < truncate.order && e.key != after.key).unwrap();
    let one =
        |event: &ChangeEvent, partition: i32| Batch { events: vec![moved(event, partition, 1)], ..Batch::default() };
    let mut sink = DeltaSink::new(config.clone());
    sink.apply(&one(before, 6)).await.unwrap(); // an older row already there
    sink.apply(&one(after, 7)).await.unwrap();
    sink.apply(&one(truncate, 8)).await.unwrap();
    let table = &truncate.source.table;
    let ids = |rows: BTreeMap<i64, String>| rows.into_keys().collect::<Vec<_>>();
    let key = |e: &ChangeEvent| match &e.key.as_ref().unwrap()[0] {
        Value::Int(i) => *i,
        other => panic!("{other:?}"),
    };
    assert_eq!(ids(delta_rows(&config, table, AsOf::Latest).await), vec![key(after)]);
    // The older row again, late from another partition, after a restart.
    let mut restarted = DeltaSink::new(config.clone());
    restarted.durable_offsets().await.unwrap();
    restarted.apply(&one(before, 9)).await.unwrap();
    assert_eq!(ids(delta_rows(&config, table, AsOf::Latest).await), vec![key(after)]);
}

/// The Kafka cluster a batch's offsets belong to is stored with them (the
/// pipeline refuses offsets of another cluster); a batch that names none
/// (a file replay) keeps the one stored.
#[tokio::test]
async fn the_kafka_cluster_is_stored_with_the_offsets() {
    let root = TestRoot::new();
    let config = root.config();
    let mut all = batches(&customer_records(), 3);
    all[0].offsets.cluster = Some("cluster-a".into());
    let mut sink = DeltaSink::new(config.clone());
    sink.apply(&all[0]).await.unwrap();
    assert_eq!(held(&config).await.cluster.as_deref(), Some("cluster-a"));
    sink.apply(&all[1]).await.unwrap();
    let after = held(&config).await;
    assert_eq!(after.cluster.as_deref(), Some("cluster-a"));
    assert!(all[1].offsets.iter().all(|(t, p, o)| after.get(t, p) == Some(o)), "the second batch was applied");
}

/// A re-snapshot corrects a row a streamed change wrote, and the change of a
/// transaction open when the snapshot began wins over the snapshot's read.
#[tokio::test]
async fn tables_end_as_the_source_at_snapshot_edges() {
    for one_per_record in [false, true] {
        let root = TestRoot::new();
        let config = root.config();
        let (batches, expected) = snapshot_edge_batches(one_per_record);
        let mut sink = DeltaSink::new(config.clone());
        for batch in &batches {
            sink.apply(batch).await.unwrap();
        }
        for (id, wanted) in expected {
            let email = scalar_text(&config, &format!("SELECT email FROM customers WHERE id = {id}")).await;
            assert_eq!(email, wanted, "customer {id}, one batch per record: {one_per_record}");
        }
    }
}

/// Columns widened at the source (numeric(10,2) -> numeric(14,4), varchar ->
/// text) are widened by rewriting the table in one commit: the values that
/// need the wider type are stored exactly, and the version before the
/// rewrite stays readable with its old type.
#[tokio::test]
async fn widened_columns_rewrite_the_table_with_the_wider_type() {
    for one_per_record in [false, true] {
        let root = TestRoot::new();
        let config = root.config();
        let (records, (amount, status)) = cdc_core::testing::widening_changes();
        let batches = batches(&records, if one_per_record { 1 } else { records.len() });
        let mut sink = DeltaSink::new(config.clone());
        for batch in &batches {
            sink.apply(batch).await.unwrap();
        }
        let row = scalar_text(&config, "SELECT CAST(total_amount AS VARCHAR) || '|' || status FROM orders").await;
        assert_eq!(row, format!("{amount}|{status}"), "one batch per record: {one_per_record}");
        let schema = time_travel::open(&config, "orders").await.unwrap().snapshot().unwrap().snapshot().arrow_schema();
        let amount_type = schema.field_with_name("total_amount").unwrap().data_type().clone();
        assert_eq!(amount_type.to_string(), "Decimal128(14, 4)", "one batch per record: {one_per_record}");
        if one_per_record {
            let first =
                time_travel::query(&config, "SELECT CAST(total_amount AS VARCHAR) FROM orders", AsOf::Version(0));
            assert_eq!(text(first.await.unwrap()[0].column(0), 0), "1329.98", "version 0 as it was written");
        }
    }
}

/// `ADD COLUMN loyalty_points integer DEFAULT 0` at the source fills the rows
/// it holds without emitting events: the Delta table's existing rows get the
/// default too (in the rewrite commit before the batch's), in whichever
/// batch the column first arrives.
#[tokio::test]
async fn a_column_added_with_a_default_fills_the_existing_rows() {
    for size in [9, 3, 4, 100] {
        let root = TestRoot::new();
        let config = root.config();
        let mut sink = DeltaSink::new(config.clone());
        apply_with_dead_letters(&mut sink, &batches(&customer_records(), size)).await;
        let sql = "SELECT CAST(id AS VARCHAR) || '=' || COALESCE(CAST(loyalty_points AS VARCHAR), 'null') FROM customers \
                   WHERE id IN (2, 3, 4, 6, 100) ORDER BY id";
        let rows = time_travel::query(&config, sql, AsOf::Latest).await.unwrap();
        let rendered: Vec<String> =
            rows.iter().flat_map(|b| (0..b.num_rows()).map(move |i| text(b.column(0), i))).collect();
        assert_eq!(rendered, ["2=0", "3=0", "4=0", "6=0", "100=0"], "batches of {size}");
    }
}

/// A customers event of the fixture: `op` on row `id`, from before or after
/// `ADD COLUMN loyalty_points ... DEFAULT 0`, at `partition`/`offset`.
fn customer_event(op: Op, id: i64, added: bool, (partition, offset): (i32, i64)) -> ChangeEvent {
    let records = customer_records();
    let event = changes(&records)
        .into_iter()
        .find(|e| {
            e.op == op
                && e.key.as_ref().is_some_and(|k| k[0] == Value::Int(id))
                && e.schema.field("loyalty_points").is_some() == added
        })
        .unwrap_or_else(|| panic!("no {op:?} of customer {id} in the fixture"));
    moved(event, partition, offset)
}

async fn loyalty_points(config: &DeltaConfig, id: i64) -> String {
    let sql = format!("SELECT COALESCE(CAST(loyalty_points AS VARCHAR), 'null') FROM customers WHERE id = {id}");
    scalar_text(config, &sql).await
}

fn one_batch(events: Vec<ChangeEvent>) -> Batch {
    Batch::from_records(events.into_iter().map(Record::Change))
}

/// A member whose cached source schema predates another member's `ADD
/// COLUMN ... DEFAULT` can commit last (a blind append after the rewrite):
/// its commit names the columns it knew. A member reading the log then must
/// still know the column and its default, so a row it inserts from before
/// the column existed gets the default, as PostgreSQL filled it.
#[tokio::test]
async fn a_stale_members_commit_does_not_hide_a_columns_default() {
    let root = TestRoot::new();
    let mut config = root.config();
    config.history = false;
    let mut a = DeltaSink::new(config.clone());
    a.apply(&one_batch(vec![customer_event(Op::Read, 1, false, (0, 0))])).await.unwrap();
    a.apply(&one_batch(vec![customer_event(Op::Update, 1, true, (0, 1))])).await.unwrap();
    // The stale member's commit, carrying the schema from before the column.
    let url = config.table_url("customers").unwrap();
    let table = DeltaTable::try_from_url_with_storage_options(url, config.storage_options.clone()).await.unwrap();
    let infos: Vec<_> = table.history(None).try_collect().await.unwrap();
    let before_the_column = infos.last().and_then(|info| info.info.get("cdc.schema")).unwrap().clone();
    assert!(!before_the_column.to_string().contains("loyalty_points"));
    let properties = CommitProperties::default().with_metadata([("cdc.schema".to_owned(), before_the_column)]);
    table
        .set_tbl_properties()
        .with_properties(HashMap::from([("delta.logRetentionDuration".into(), "interval 30 days".into())]))
        .with_commit_properties(properties)
        .await
        .unwrap();
    // Another member inserts row 2, read late from its partition.
    let mut b = DeltaSink::new(config.clone());
    b.apply(&one_batch(vec![customer_event(Op::Read, 2, false, (1, 0))])).await.unwrap();
    assert_eq!(loyalty_points(&config, 1).await, "10");
    assert_eq!(loyalty_points(&config, 2).await, "0", "the default PostgreSQL filled row 2 with");
}

/// A member rewrites the table to add a column with its default while
/// another member, still on the old schema, appends rows the rewriter's
/// snapshot does not hold: the rewrite must not land on top of them (they
/// would keep null), but read the table again and fill them too.
#[tokio::test]
async fn a_rewrite_never_lands_on_rows_it_did_not_read() {
    let root = TestRoot::new();
    let mut config = root.config();
    config.history = false;
    let mut a = DeltaSink::new(config.clone());
    let mut b = DeltaSink::new(config.clone());
    a.apply(&one_batch(vec![customer_event(Op::Read, 1, false, (0, 0))])).await.unwrap();
    b.apply(&one_batch(vec![customer_event(Op::Read, 2, false, (1, 0))])).await.unwrap();
    // a's snapshot predates b's row 2.
    a.apply(&one_batch(vec![customer_event(Op::Update, 1, true, (0, 1))])).await.unwrap();
    assert_eq!(loyalty_points(&config, 1).await, "10");
    assert_eq!(loyalty_points(&config, 2).await, "0", "the default PostgreSQL filled row 2 with");
}

/// A crash between the rewrite that adds a column with its default and the
/// batch's own commit: the log then ends with the rewrite. The restarted
/// sink must know the column's default from it, for rows from before the
/// column that arrive before the batch is applied again.
#[tokio::test]
async fn a_crash_after_the_rewrite_that_adds_a_column_keeps_its_default() {
    let root = TestRoot::new();
    let mut config = root.config();
    config.history = false;
    let mut sink = DeltaSink::new(config.clone());
    let old_rows = vec![customer_event(Op::Read, 1, false, (0, 0)), customer_event(Op::Read, 2, false, (0, 1))];
    sink.apply(&one_batch(old_rows)).await.unwrap();
    sink.apply(&one_batch(vec![customer_event(Op::Update, 1, true, (0, 2))])).await.unwrap();
    // Version 1 is the rewrite, version 2 the batch's MERGE: lose the MERGE.
    let url = config.table_url("customers").unwrap();
    let table = DeltaTable::try_from_url_with_storage_options(url, config.storage_options.clone()).await.unwrap();
    assert_eq!(table.version(), Some(2));
    root.delete("customers/_delta_log/00000000000000000002.json").await;
    let mut restarted = DeltaSink::new(config.clone());
    restarted.apply(&one_batch(vec![customer_event(Op::Create, 6, false, (1, 0))])).await.unwrap();
    assert_eq!(loyalty_points(&config, 2).await, "0", "filled by the rewrite");
    assert_eq!(loyalty_points(&config, 6).await, "0", "the default PostgreSQL filled row 6 with");
}

/// Parquet column chunks of a table: (column, has statistics, has a dictionary).
async fn column_chunks(root: &TestRoot, table: &str) -> Vec<(String, bool, bool)> {
    use cdc_sinks::delta::deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
    let mut chunks = Vec::new();
    for path in root.files(table).await.into_iter().filter(|p| p.ends_with(".parquet") && !p.contains("_delta_log")) {
        let reader = SerializedFileReader::new(root.read(&path).await).unwrap();
        for group in reader.metadata().row_groups() {
            chunks.extend(
                group.columns().iter().map(|c| {
                    (c.column_path().string(), c.statistics().is_some(), c.dictionary_page_offset().is_some())
                }),
            );
        }
    }
    chunks
}

/// Columns whose values rarely repeat are written without a dictionary, and
/// the history's row images and `source`, which nothing filters on, without
/// statistics (together a fifth of the sink's CPU); the columns queries and
/// the ordering guard filter on keep their statistics.
#[tokio::test]
async fn unique_and_unfiltered_columns_skip_dictionaries_and_statistics() {
    let root = TestRoot::new();
    let config = root.config();
    let records = fixture_records("schemas");
    let mut sink = DeltaSink::new(config.clone());
    apply_with_dead_letters(&mut sink, &batches(&records, 40)).await;

    let history = column_chunks(&root, "cdc_events").await;
    assert!(!history.is_empty());
    for (column, statistics, dictionary) in history {
        let json = ["before", "after", "source"].contains(&column.as_str());
        assert_eq!(statistics, !json, "history {column} statistics");
        if json || column == "record_key" || column == "order_key" {
            assert!(!dictionary, "history {column} has a dictionary");
        }
    }
    let customers = column_chunks(&root, "customers").await;
    assert!(customers.iter().any(|(c, _, dictionary)| c == "email" && *dictionary), "other columns keep theirs");
    for (column, statistics, dictionary) in customers {
        assert!(statistics, "customers {column} statistics");
        if column == "_cdc_order" {
            assert!(!dictionary, "customers {column} has a dictionary");
        }
    }
}

/// On a schedule, the sink maintains the tables it writes right after a
/// batch's commits: compaction, a checkpoint, vacuum. The tables stay exact,
/// the next batches apply over the maintained versions, and a restarted
/// sink resumes where the last batch left off.
#[tokio::test]
async fn scheduled_maintenance_runs_between_batches() {
    use cdc_sinks::delta::maintenance::MaintenancePolicy;
    let root = TestRoot::new();
    let config = root.config();
    let records = fixture_records("schemas");
    let schedule =
        MaintenancePolicy { every_commits: 3, optimize_min_files: 2, vacuum_retention_hours: 0, ..Default::default() };
    let mut sink = DeltaSink::new(config.clone()).with_maintenance(schedule);
    let all = batches(&records, 9);
    let dead = apply_with_dead_letters(&mut sink, &all).await;
    assert!(dead.is_empty(), "{dead:?}");

    let mut memory = MemorySink::new();
    for event in changes(&records) {
        memory.apply_event(event);
    }
    for table in TABLES {
        assert_eq!(delta_rows(&config, table, AsOf::Latest).await, memory_rows(&memory, table), "{table}");
    }
    for table in ["customers", "cdc_events"] {
        let history = time_travel::history(&config, table).await.unwrap();
        let optimized = history.iter().filter(|h| h.operation == "OPTIMIZE").count();
        assert!(optimized > 0, "{table} was never compacted: {history:?}");
        assert!(root.exists(&format!("{table}/_delta_log/_last_checkpoint")).await, "{table} has no checkpoint");
    }
    assert!(sink.take_stats().maintenance_runs > 0);
    assert!(sink.stage_times().unwrap().total().iter().any(|(stage, _)| *stage == "maintenance"));
    assert_eq!(scalar_text(&config, "SELECT count(*) FROM cdc_events").await, change_count(&records).to_string());

    let mut restarted = DeltaSink::new(config.clone());
    let offsets = restarted.durable_offsets().await.unwrap();
    let last_customer = records.iter().rfind(|r| r.position().topic.as_ref() == "cdc.public.customers").unwrap();
    assert_eq!(offsets.get("cdc.public.customers", 0), Some(last_customer.position().offset));
}
