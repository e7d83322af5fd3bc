//! Replay throughput: a generated bulk file shaped like real Debezium output
//! with schemas (`benches/support/gen_bulk.py`: a snapshot, then updates,
//! deletes and inserts with hot keys, ~4.7 KB a record) through
//! `jsonl::replay`, into Delta alone (with its `cdc_events` history) and into
//! the PostgreSQL target alone. Per sink: records/s, MB/s, the process's peak
//! RSS (VmHWM, reset between sinks) and where the time went.
//!
//!   cargo bench --bench replay                                           # 70k rows + 110k changes
//!   CDC_BENCH_ROWS=10000 CDC_BENCH_CHANGES=20000 cargo bench --bench replay   # a quick look
//!
//! `scripts/bench-vs-python.sh` runs the same file through the Python consumer
//! too. Uses the PostgreSQL at CDC_TEST_PG_URL, or a throwaway cluster.
mod support;

use std::time::Instant;

use cdc_lakehouse::core::jsonl;
use cdc_lakehouse::core::pipeline::{BatchPolicy, MemoryDeadLetters, Pipeline};
use cdc_lakehouse::core::{Decoder, Sink};
use cdc_lakehouse::sinks::{DeltaConfig, DeltaSink, PgConnectionConfig, PgTargetSink};
use support::{database_url, fresh_database, peak_rss_mib, reset_peak_rss};

// mimalloc: glibc's malloc was a sixth of the replay profile (many short-lived
// strings per record, freed on other threads than allocated them).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The bulk file, generated on first use under `.tmp/bench`.
fn bulk_file() -> std::path::PathBuf {
    let setting = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (rows, changes) = (setting("CDC_BENCH_ROWS", 70_000), setting("CDC_BENCH_CHANGES", 110_000));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join(format!(".tmp/bench/bulk-{rows}-{changes}.jsonl"));
    if !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let generated = std::process::Command::new("python3")
            .arg(root.join("benches/support/gen_bulk.py"))
            .args(["--out", path.to_str().unwrap(), "--rows", &rows.to_string(), "--changes", &changes.to_string()])
            .status()
            .expect("python3");
        assert!(generated.success(), "gen_bulk.py failed");
    }
    path
}

#[tokio::main]
async fn main() {
    let path = bulk_file();
    let bytes = std::fs::metadata(&path).unwrap().len();
    let admin_url = database_url();
    let work = tempfile::tempdir().unwrap();
    println!("{} ({:.0} MB), 2 cores\n", path.display(), bytes as f64 / 1e6);
    println!("| sink | wall | records/s | MB/s | peak RSS |\n|---|---|---|---|---|");
    let mut stage_lines = Vec::new();
    for name in ["delta", "pg-target"] {
        let sink: Box<dyn Sink> = match name {
            "delta" => Box::new(DeltaSink::new(DeltaConfig::new(work.path().join("delta").to_str().unwrap()))),
            _ => {
                Box::new(PgTargetSink::new(PgConnectionConfig::new(&fresh_database(&admin_url, "bench_replay").await)))
            }
        };
        // As `replay` runs: 10k-record batches, no latency limit.
        let policy = BatchPolicy { max_records: 10_000, max_latency_ms: u64::MAX, ..BatchPolicy::default() };
        let mut pipeline =
            Pipeline::new(Decoder::new().keep_raw_json(true), vec![sink], Box::new(MemoryDeadLetters::default()))
                .with_policy(policy);
        reset_peak_rss();
        let started = Instant::now();
        let input = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&path).unwrap());
        let summary = jsonl::replay(input, "bench", &mut pipeline).await.unwrap();
        let wall = started.elapsed().as_secs_f64();
        let stats = pipeline.stats();
        assert_eq!(stats.dead_letters, 0, "every record applies");
        println!(
            "| {name} | {wall:.1} s | {:.0} | {:.1} | {:.0} MiB |",
            summary.records as f64 / wall,
            bytes as f64 / 1e6 / wall,
            peak_rss_mib()
        );
        stage_lines.push(format!("{name}: {}", summary.describe_time(stats)));
    }
    println!("\nwhere the time went:");
    for line in stage_lines {
        println!("  {line}");
    }
}
