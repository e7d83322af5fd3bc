//! Transaction-consistent read points (`read_points = true`): the real
//! fixture with its transaction topic, its partitions interleaved, applied
//! while a reader keeps reading the newest read point. Every read point must
//! show `orders` and `order_items` exactly as the source was when its
//! boundary transaction committed: never an order without its items.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cdc_core::memory::MemorySink;
use cdc_core::testing::FixtureRecord;
use cdc_core::{Batch, Record, Sink, TransactionStatus, Value};
use cdc_sinks::delta::consistency::{self, PointAt, ReadPoint};
use cdc_sinks::delta::deltalake::arrow::util::display::array_value_to_string;
use cdc_sinks::{DeltaConfig, DeltaSink};

use crate::interleavings::{decode, with_transactions_in_source_order};
use crate::store::TestRoot;

const TABLES: [&str; 2] = ["orders", "order_items"];

type State = BTreeMap<&'static str, BTreeMap<i64, String>>;

/// The source's state of `TABLES` as each transaction's END passed (by END
/// id), replaying the records in source order.
fn source_states(records: &[Record]) -> BTreeMap<String, State> {
    let mut memory = MemorySink::new();
    let mut states = BTreeMap::new();
    for record in records {
        match record {
            Record::Change(event) => memory.apply_event(event),
            Record::Transaction(end) if end.status == TransactionStatus::End => {
                let mut state = State::new();
                for table in TABLES {
                    let rows = memory.tables.get(&format!("public.{table}")).map(|t| {
                        t.rows
                            .values()
                            .filter_map(|(order, row)| match row.as_ref()?.get("id")? {
                                Value::Int(id) => Some((*id, order.to_hex())),
                                _ => None,
                            })
                            .collect()
                    });
                    state.insert(table, rows.unwrap_or_default());
                }
                states.insert(end.id.clone(), state);
            }
            _ => {}
        }
    }
    states
}

async fn read(config: &DeltaConfig, point: &ReadPoint) -> State {
    let mut state = State::new();
    for table in TABLES {
        let mut rows = BTreeMap::new();
        if point.versions.contains_key(table) {
            let sql = format!("SELECT CAST(id AS BIGINT) AS row_id, _cdc_order FROM {table}");
            for batch in consistency::query(config, &sql, point).await.unwrap() {
                for row in 0..batch.num_rows() {
                    let text = |c: usize| array_value_to_string(batch.column(c), row).unwrap();
                    rows.insert(text(0).parse().unwrap(), text(1));
                }
            }
        }
        state.insert(table, rows);
    }
    state
}

/// The partitions (each kept in order) interleaved: mostly in source order,
/// as a consumer keeping up reads them, but every `skew`th pick a seeded
/// random partition races ahead (`skew` 1: every pick random).
fn interleaved(records: &[FixtureRecord], seed: u64, skew: u64) -> Vec<FixtureRecord> {
    let mut partitions: BTreeMap<(String, i32), Vec<(usize, FixtureRecord)>> = BTreeMap::new();
    for (index, record) in records.iter().enumerate() {
        partitions.entry((record.topic.clone(), record.partition)).or_default().push((index, record.clone()));
    }
    let mut partitions: Vec<Vec<(usize, FixtureRecord)>> = partitions
        .into_values()
        .map(|mut p| {
            p.reverse();
            p
        })
        .collect();
    let mut state = seed;
    let mut merged = Vec::new();
    for turn in 0u64.. {
        let left: Vec<usize> = (0..partitions.len()).filter(|&p| !partitions[p].is_empty()).collect();
        let Some(&first) = left.first() else { break };
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let chosen = if turn % skew == 0 {
            left.get((state >> 33) as usize % left.len()).copied().unwrap_or(first)
        } else {
            // The partition whose next record came first at the source.
            left.iter().copied().min_by_key(|&p| partitions[p].last().map(|(i, _)| *i)).unwrap_or(first)
        };
        merged.extend(partitions[chosen].pop().map(|(_, r)| r));
    }
    merged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_point_shows_the_source_at_one_transaction_boundary() {
    let source = with_transactions_in_source_order();
    let source_records = decode(&source);
    let states = source_states(&source_records);
    let last_end = source_records
        .iter()
        .rev()
        .find_map(|r| match r {
            Record::Transaction(end) if end.status == TransactionStatus::End => Some(end.id.clone()),
            _ => None,
        })
        .unwrap();
    // (seed, skew): nearly in source order, a little and very skewed.
    for (seed, skew) in [(1u64, 1000u64), (2, 8), (3, 1)] {
        let root = TestRoot::new();
        let mut config = root.config();
        config.read_points = true;
        // The capture's marker table is counted by the transaction topic but not in the fixture.
        config.read_points_ignore = vec!["public.capture_marker".into()];
        let records = decode(&interleaved(&source, seed, skew));
        let done = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn({
            let (config, states, done) = (config.clone(), states.clone(), done.clone());
            async move {
                let mut checked = Vec::new();
                while !done.load(Ordering::Acquire) {
                    if let Some(point) = consistency::latest(&config).await.unwrap()
                        && checked.last() != Some(&point.boundary.id)
                    {
                        let wanted = states.get(&point.boundary.id).expect("a boundary of the source");
                        assert_eq!(&read(&config, &point).await, wanted, "read point {:?}", point.boundary);
                        checked.push(point.boundary.id.clone());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                checked
            }
        });
        let mut sink = DeltaSink::new(config.clone());
        for chunk in records.chunks(5) {
            sink.apply(&Batch::from_records(chunk.iter().cloned())).await.unwrap();
        }
        done.store(true, Ordering::Release);
        let checked = reader.await.unwrap();
        // The stream ends quiet: the last read point is the last transaction.
        let last = consistency::latest(&config).await.unwrap().expect("a read point at the end");
        assert_eq!(last.boundary.id, last_end, "seed {seed}");
        assert_eq!(states.get(&last.boundary.id), Some(&read(&config, &last).await));
        let by_lsn = consistency::as_of(&config, PointAt::Lsn(last.boundary.lsn.unwrap())).await.unwrap();
        assert_eq!(by_lsn.as_ref(), Some(&last));
        // Read points are exact cuts: where partitions race ahead of each
        // other few batches end on one; nearly in order most do.
        if skew > 100 {
            assert!(checked.len() >= 3, "seed {seed}: the reader saw only {} read points", checked.len());
        }
    }
}

/// Scheduled maintenance compacts the read points table too (a small file
/// per batch), without Z-ordering it by the tables' key, and the newest
/// read point stays readable.
#[tokio::test]
async fn maintenance_compacts_the_read_points() {
    use cdc_sinks::delta::maintenance::MaintenancePolicy;
    let source = with_transactions_in_source_order();
    let records = decode(&source);
    let states = source_states(&records);
    let root = TestRoot::new();
    let mut config = root.config();
    config.read_points = true;
    config.read_points_ignore = vec!["public.capture_marker".into()];
    let schedule = MaintenancePolicy {
        every_commits: 3,
        optimize_min_files: 2,
        zorder_by: vec!["id".into()],
        ..Default::default()
    };
    let mut sink = DeltaSink::new(config.clone()).with_maintenance(schedule);
    for chunk in records.chunks(9) {
        sink.apply(&Batch::from_records(chunk.iter().cloned())).await.unwrap();
    }
    let history = cdc_sinks::delta::time_travel::history(&config, consistency::TABLE).await.unwrap();
    assert!(history.iter().any(|h| h.operation == "OPTIMIZE"), "never compacted: {history:?}");
    let point = consistency::latest(&config).await.unwrap().expect("a read point");
    assert_eq!(states.get(&point.boundary.id), Some(&read(&config, &point).await));
}
