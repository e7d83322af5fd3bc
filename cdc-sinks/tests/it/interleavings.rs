//! The real-Debezium fixture spread over 8 partitions by record key (as
//! Kafka's partitioner does) and consumed in adversarial interleavings: one
//! partition entirely first (far ahead of the others), the partitions in
//! reverse, round robin, and seeded random merges. Within a partition the
//! order is kept, as Kafka keeps it. Every interleaving must leave the
//! PostgreSQL target equal to the source, and Delta holding the same row
//! versions as the target.
use std::collections::BTreeMap;

use cdc_core::testing::{FixtureRecord, load};
use cdc_core::{Batch, Decoder, Record, Sink};
use cdc_sinks::{PgConnectionConfig, PgTargetSink};

use crate::support::*;

const PARTITIONS: usize = 8;

/// The fixture's table records in source order, each given the partition
/// its record key hashes to, offsets renumbered per partition. Records
/// without a key (truncates) go to partition 0.
pub(crate) fn in_source_order() -> Vec<FixtureRecord> {
    spread(load("schemas").into_iter().filter(|r| r.topic.starts_with("cdc.public.")).collect())
}

/// The table records spread as [`in_source_order`], and the transaction
/// topic's records (one partition, as Debezium creates it) among them.
pub(crate) fn with_transactions_in_source_order() -> Vec<FixtureRecord> {
    let records = load("schemas");
    let keep = |r: &FixtureRecord| r.topic.starts_with("cdc.public.") || r.topic == "cdc.transaction";
    spread(records.into_iter().filter(keep).collect())
}

fn spread(source_order: Vec<FixtureRecord>) -> Vec<FixtureRecord> {
    let mut next_offset: BTreeMap<(String, usize), i64> = BTreeMap::new();
    let mut records = Vec::new();
    for record in source_order {
        let transaction_topic = record.topic == "cdc.transaction";
        let partition = record.key.as_deref().filter(|_| !transaction_topic).map_or(0, |key| {
            // FNV-1a: stable across runs, spreads keys like a partitioner.
            let hash =
                key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            (hash % PARTITIONS as u64) as usize
        });
        let offset = next_offset.entry((record.topic.clone(), partition)).or_insert(0);
        records.push(FixtureRecord { partition: partition as i32, offset: *offset, ..record });
        *offset += 1;
    }
    records
}

/// Each partition's records, in its order.
fn partitioned() -> Vec<Vec<FixtureRecord>> {
    let mut partitions: Vec<Vec<FixtureRecord>> = vec![Vec::new(); PARTITIONS];
    for record in in_source_order() {
        partitions[record.partition as usize].push(record);
    }
    partitions
}

/// Merges the partitions in the order `pick` chooses (given the partitions
/// with records left), keeping each partition's own order.
fn merge(mut partitions: Vec<Vec<FixtureRecord>>, mut pick: impl FnMut(&[usize]) -> usize) -> Vec<FixtureRecord> {
    for partition in &mut partitions {
        partition.reverse();
    }
    let mut merged = Vec::new();
    loop {
        let left: Vec<usize> = (0..PARTITIONS).filter(|&p| !partitions[p].is_empty()).collect();
        if left.is_empty() {
            return merged;
        }
        let chosen = pick(&left);
        merged.extend(partitions[chosen].pop());
    }
}

pub(crate) fn interleavings() -> Vec<(String, Vec<FixtureRecord>)> {
    let parts = partitioned();
    let busiest = (0..PARTITIONS).max_by_key(|&p| parts[p].len()).unwrap();
    let mut orders: Vec<(String, Vec<FixtureRecord>)> = vec![
        (
            "busiest partition first".into(),
            merge(parts.clone(), |left| if left.contains(&busiest) { busiest } else { left[0] }),
        ),
        ("partitions in reverse".into(), merge(parts.clone(), |left| *left.last().unwrap())),
        ("round robin".into(), {
            let mut turn = 0;
            merge(parts.clone(), move |left| {
                turn += 1;
                left[turn % left.len()]
            })
        }),
    ];
    for seed in [1u64, 2, 3] {
        let mut state = seed;
        let order = merge(parts.clone(), move |left| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            left[(state >> 33) as usize % left.len()]
        });
        orders.push((format!("random seed {seed}"), order));
    }
    orders
}

pub(crate) fn decode(records: &[FixtureRecord]) -> Vec<Record> {
    let mut decoder = Decoder::new().keep_raw_json(true);
    records.iter().map(|r| decoder.decode(r.raw()).unwrap()).collect()
}

/// `_cdc_order` by table and id, as the PostgreSQL target holds them.
async fn target_versions(client: &tokio_postgres::Client) -> BTreeMap<String, BTreeMap<i64, String>> {
    let mut versions = BTreeMap::new();
    for table in TABLES {
        let sql = format!("SELECT id::bigint, _cdc_order FROM public.{table} ORDER BY id");
        let rows = client.query(&sql, &[]).await.unwrap();
        versions.insert(table.to_owned(), rows.iter().map(|r| (r.get(0), r.get(1))).collect());
    }
    versions
}

#[tokio::test]
async fn every_interleaving_of_partitions_ends_as_the_source() {
    let source = source_database("sinks_interleavings_source").await;
    for (n, (name, order)) in interleavings().into_iter().enumerate() {
        let records = decode(&order);
        let url = fresh_database(&format!("sinks_interleavings_{n}")).await;
        let mut config = PgConnectionConfig::new(&url);
        config.backoff_ms = 20;
        let mut target = PgTargetSink::new(config);
        #[cfg(feature = "delta")]
        let delta_dir = tempfile::tempdir().unwrap();
        #[cfg(feature = "delta")]
        let mut delta = cdc_sinks::DeltaSink::new(cdc_sinks::DeltaConfig::new(delta_dir.path().to_str().unwrap()));
        for batch in records.chunks(7).map(|chunk| Batch::from_records(chunk.iter().cloned())) {
            target.apply(&batch).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            #[cfg(feature = "delta")]
            delta.apply(&batch).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let mirror = connect(&url).await;
        let differences = mirror_differences(&source, &mirror, "public", false).await;
        assert!(differences.is_empty(), "{name}:\n{}", differences.join("\n"));
        #[cfg(feature = "delta")]
        {
            let config = cdc_sinks::DeltaConfig::new(delta_dir.path().to_str().unwrap());
            let wanted = target_versions(&mirror).await;
            for (table, rows) in wanted {
                let sql = format!("SELECT CAST(id AS BIGINT) AS id, _cdc_order FROM {table} ORDER BY id");
                let batches =
                    cdc_sinks::delta::time_travel::query(&config, &sql, cdc_sinks::delta::time_travel::AsOf::Latest)
                        .await
                        .unwrap();
                let mut found = BTreeMap::new();
                let text = |batch: &cdc_sinks::delta::deltalake::arrow::array::RecordBatch,
                            column: usize,
                            row: usize| {
                    cdc_sinks::delta::deltalake::arrow::util::display::array_value_to_string(batch.column(column), row)
                        .unwrap()
                };
                for batch in &batches {
                    for row in 0..batch.num_rows() {
                        found.insert(text(batch, 0, row).parse::<i64>().unwrap(), text(batch, 1, row));
                    }
                }
                assert_eq!(found, rows, "{name}: Delta table {table} vs the PostgreSQL target");
            }
        }
    }
}
