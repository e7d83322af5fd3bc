//! Applies recorded Debezium records from a JSON Lines file (or stdin) to the
//! sinks given on the command line or in the consumer's configuration file,
//! through the same decoder, batching, ordering and sink code as the Kafka
//! consumer: for backfills and for reproducing an incident. Records every
//! sink already holds are skipped, so an interrupted replay can be rerun.
//!
//! Each line is a bare Debezium envelope, or a Kafka record object with
//! `topic`, optional `partition` and `offset`, and `key` and `value` (or
//! `payload`, as `kcat -J` writes it), each a JSON value, a string holding
//! serialized JSON, or null.
//!
//! ```sh
//! cargo run --example replay -- --input tests/fixtures/debezium/schemas.jsonl --delta-root ./deltalake
//! kcat -C -b localhost:29092 -t cdc.public.orders -J -e | cargo run --example replay -- --input - --target-url postgres://...
//! cargo run --example replay -- --input dump.jsonl --config consumer.toml
//! cargo run --example replay -- --input dead-letters.jsonl --reapply --config consumer.toml   # fixed dead letters
//! ```
mod config;

use anyhow::{Context, bail};
use cdc_lakehouse::core::jsonl::{self, JsonlDeadLetters};
use cdc_lakehouse::sinks::PgUrl;
use clap::Parser;
use config::Config;

// mimalloc: glibc's malloc was a sixth of the replay profile (many short-lived
// strings per record, freed on other threads than allocated them).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Replay recorded Debezium records into the sinks.
#[derive(Parser)]
struct Args {
    /// JSON Lines file, or `-` for stdin.
    #[arg(long)]
    input: String,
    /// The consumer's TOML configuration: its enabled sinks, batch and error
    /// settings. Without it, only the sinks given below are used.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// The source database, whose catalog types schemaless records
    /// (`value.converter.schemas.enable=false`); `[source] schema_url` in
    /// the configuration, or CDC_SOURCE_SCHEMA_URL.
    #[arg(long)]
    source_schema_url: Option<String>,
    /// Delta tables root.
    #[arg(long)]
    delta_root: Option<String>,
    /// PostgreSQL target URL.
    #[arg(long)]
    target_url: Option<String>,
    /// PostgreSQL data-lake URL.
    #[arg(long)]
    datalake_url: Option<String>,
    /// Where records that cannot be applied go (JSON Lines, replayable once fixed).
    #[arg(long, default_value = "dead-letters.jsonl")]
    dead_letters: std::path::PathBuf,
    /// Records per batch.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Apply the records even where the sinks hold their positions: for
    /// dead letters whose cause was fixed. Each row still moves only forward
    /// by order key, so a stale letter cannot overwrite newer data. (Delta's
    /// `cdc_events` history is left as it is.)
    #[arg(long)]
    reapply: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,deltalake_core=error,buoyant_kernel=off,delta_kernel=off".into()),
        )
        .init();
    let args = Args::parse();
    let mut config = Config::load(args.config.as_deref())?;
    if args.config.is_none() {
        // Only what the command line names.
        config.delta.enabled = false;
        config.target.enabled = false;
        config.datalake.enabled = false;
        config.batch.max_records = args.batch;
    }
    if let Some(root) = &args.delta_root {
        config.delta.enabled = true;
        config.delta.settings.root = root.clone();
    }
    for (url, enabled, connection) in [
        (&args.target_url, &mut config.target.enabled, &mut config.target.settings.connection),
        (&args.datalake_url, &mut config.datalake.enabled, &mut config.datalake.settings),
    ] {
        if let Some(url) = url {
            *enabled = true;
            connection.url = PgUrl::new(url.as_str());
        }
    }
    if let Some(url) = &args.source_schema_url {
        config.source.schema_url = Some(PgUrl::new(url.as_str()));
    }
    if !(config.delta.enabled || config.target.enabled || config.datalake.enabled) {
        bail!("give at least one sink: --delta-root, --target-url, --datalake-url or --config");
    }
    // A file has no latency: batches close by size only.
    config.batch.max_latency_ms = u64::MAX;
    let dead_letters = Box::new(JsonlDeadLetters::new(&args.dead_letters));
    let mut pipeline = config.pipeline(dead_letters).with_reapply(args.reapply);
    let summary = match args.input.as_str() {
        "-" => jsonl::replay(std::io::BufReader::new(std::io::stdin()), "stdin", &mut pipeline).await?,
        path => {
            let file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
            jsonl::replay(std::io::BufReader::with_capacity(1 << 20, file), path, &mut pipeline).await?
        }
    };
    let stats = pipeline.stats();
    println!(
        "replayed {} records ({} already held) in {} batches, {} dead letters",
        summary.records, summary.skipped, stats.batches, stats.dead_letters
    );
    for ((table, op), n) in &stats.events {
        println!("  {table:<24} {op} {n:>8}");
    }
    // Where the time went: the reader thread parses lines, this task decodes,
    // the sinks apply the batch before meanwhile.
    println!("time: {}", summary.describe_time(stats));
    if stats.dead_letters > 0 {
        bail!("{} records could not be applied: see {}", stats.dead_letters, args.dead_letters.display());
    }
    Ok(())
}
