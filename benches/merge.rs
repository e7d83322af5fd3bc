//! Delta MERGE apply: batches of 10k mixed changes (60% updates, 20%
//! deletes of recently written keys, 20% inserts of new keys: the shape of
//! an OLTP table's change stream) into a Delta table of 100k and of 1M rows,
//! against (a) one MERGE per event and (b) a naive MERGE of the whole batch
//! without the key-range predicate and the append fast path; and what an
//! SCD2 table (`mode = "scd2"`: every change a version) and the change data
//! feed (`change_data_feed`) cost on top of the current-state MERGE.
//!
//!   cargo bench --bench merge
//!   CDC_BENCH_MERGE_ROWS=100000 cargo bench --bench merge -- '(collapse_prune|scd2|change_data_feed)_10k'
//!
//! Prints the files rewritten per batch after each benchmark. Element
//! throughput is events.
mod support;

use cdc_lakehouse::core::{Batch, Sink};
use cdc_lakehouse::sinks::{DeltaConfig, DeltaSink, TableConfig, TableMode};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use support::Generator;
use tokio::runtime::Runtime;

const BATCH: usize = 10_000;
const PER_EVENT: usize = 50;
/// Changes touch the most recently written keys.
const HOT_KEYS: i64 = 20_000;

struct Setup {
    _dir: tempfile::TempDir,
    sink: DeltaSink,
    next_new: i64,
}

/// How the benchmark's table is written.
#[derive(Clone, Copy)]
enum Variant {
    /// Current state, with or without MERGE pruning.
    Current {
        pruning: bool,
    },
    Scd2,
    ChangeDataFeed,
}

fn setup(rt: &Runtime, generator: &mut Generator, rows: i64, variant: Variant) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut config = DeltaConfig::new(dir.path().to_str().unwrap());
    config.history = false;
    match variant {
        Variant::Current { pruning } => config.merge_pruning = pruning,
        Variant::Scd2 => {
            let scd2 = TableConfig { mode: TableMode::Scd2, track_history_columns: None };
            config.tables.insert("bench_items".into(), scd2);
        }
        Variant::ChangeDataFeed => config.change_data_feed = true,
    }
    let mut sink = DeltaSink::new(config);
    // The initial snapshot, in files of 100k rows clustered by key.
    for start in (1..=rows).step_by(100_000) {
        let end = (start + 100_000).min(rows + 1);
        rt.block_on(sink.apply(&generator.snapshot(start..end))).unwrap();
    }
    sink.take_stats();
    Setup { _dir: dir, sink, next_new: rows }
}

fn merge(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let mut generator = Generator::default();
    let mut group = c.benchmark_group("delta_merge");
    group.sample_size(10);
    let mut round = 0u64;
    // CDC_BENCH_MERGE_ROWS=100000 measures one table size only (each size
    // first writes its snapshot, for every variant, filtered or not).
    let sizes: Vec<i64> = match std::env::var("CDC_BENCH_MERGE_ROWS") {
        Ok(rows) => rows.split(',').filter_map(|r| r.trim().parse().ok()).collect(),
        Err(_) => vec![100_000, 1_000_000],
    };
    for rows in sizes {
        let variants = [
            ("collapse_prune", Variant::Current { pruning: true }),
            ("naive", Variant::Current { pruning: false }),
            ("scd2", Variant::Scd2),
            ("change_data_feed", Variant::ChangeDataFeed),
        ];
        for (variant, setting) in variants {
            let mut s = setup(&rt, &mut generator, rows, setting);
            group.throughput(Throughput::Elements(BATCH as u64));
            let mut batches = 0u64;
            group.bench_function(BenchmarkId::new(format!("{variant}_10k_batch"), rows), |b| {
                b.iter_batched(
                    || {
                        round += 1;
                        let hot = (s.next_new - HOT_KEYS).max(1)..s.next_new + 1;
                        generator.mixed(BATCH, hot, &mut s.next_new, round)
                    },
                    |batch: Batch| {
                        rt.block_on(s.sink.apply(&batch)).unwrap();
                        batches += 1;
                    },
                    BatchSize::PerIteration,
                )
            });
            let stats = s.sink.take_stats();
            println!(
                "delta_merge/{variant}_10k_batch/{rows}: {:.1} files rewritten per batch ({} merges, {} appends over {batches} batches)",
                stats.files_rewritten as f64 / batches.max(1) as f64,
                stats.merges,
                stats.appends
            );
        }
        let mut s = setup(&rt, &mut generator, rows, Variant::Current { pruning: true });
        group.throughput(Throughput::Elements(PER_EVENT as u64));
        group.bench_function(BenchmarkId::new(format!("per_event_merge_{PER_EVENT}_events"), rows), |b| {
            b.iter_batched(
                || {
                    round += 1;
                    let hot = (s.next_new - HOT_KEYS).max(1)..s.next_new + 1;
                    let batch = generator.mixed(PER_EVENT, hot, &mut s.next_new, round);
                    batch.events.into_iter().map(|e| Batch { events: vec![e], ..Batch::default() }).collect::<Vec<_>>()
                },
                |events: Vec<Batch>| {
                    for one in &events {
                        rt.block_on(s.sink.apply(one)).unwrap();
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, merge);
criterion_main!(benches);
