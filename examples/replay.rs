//! Applies recorded Debezium records from a JSON Lines file (or stdin) to the
//! sinks given on the command line, through the same decoder, batching,
//! ordering and sink code as the Kafka consumer: for backfills and for
//! reproducing an incident.
//!
//! Each line is a bare Debezium envelope, or a Kafka record object with
//! `topic`, optional `partition` and `offset`, and `key` and `value` (or
//! `payload`, as `kcat -J` writes it), each a JSON value, a string holding
//! serialized JSON, or null.
//!
//! ```sh
//! cargo run --example replay -- --input tests/fixtures/debezium/schemas.jsonl --delta-root ./deltalake
//! kcat -C -b localhost:29092 -t cdc.public.orders -J -e | cargo run --example replay -- --input - --target-url postgres://...
//! ```
use std::io::BufRead;

use anyhow::{Context, bail};
use cdc_lakehouse::core::pipeline::{BatchPolicy, MemoryDeadLetters, Pipeline};
use cdc_lakehouse::core::{Decoder, RawRecord, Sink};
use cdc_lakehouse::sinks::{DeltaConfig, DeltaSink, PgConnectionConfig, PgDatalakeSink, PgTargetSink};
use clap::Parser;
use serde_json::Value;

/// Replay recorded Debezium records into the sinks.
#[derive(Parser)]
struct Args {
    /// JSON Lines file, or `-` for stdin.
    #[arg(long)]
    input: String,
    /// Delta tables root.
    #[arg(long)]
    delta_root: Option<String>,
    /// PostgreSQL target URL.
    #[arg(long)]
    target_url: Option<String>,
    /// PostgreSQL data-lake URL.
    #[arg(long)]
    datalake_url: Option<String>,
    /// Records per batch.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
}

/// One input line as a Kafka record.
struct Line {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<String>,
    value: Option<String>,
}

fn parse_line(line: &str, number: usize) -> anyhow::Result<Line> {
    let json: Value = serde_json::from_str(line).with_context(|| format!("line {number}: not JSON"))?;
    // As JSON text: strings holding JSON are taken as they are.
    let text = |v: Option<&Value>| -> Option<String> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        }
    };
    if let Some(topic) = json.get("topic").and_then(Value::as_str) {
        let value = json.get("value").or_else(|| json.get("payload"));
        let partition = json.get("partition").and_then(Value::as_i64).unwrap_or(0) as i32;
        let offset = json.get("offset").and_then(Value::as_i64).unwrap_or(number as i64);
        return Ok(Line { topic: topic.to_owned(), partition, offset, key: text(json.get("key")), value: text(value) });
    }
    // A bare envelope: the topic is the table's, the line number the offset.
    let payload = json.get("payload").unwrap_or(&json);
    let source = payload
        .get("source")
        .with_context(|| format!("line {number}: neither a Kafka record nor a Debezium envelope"))?;
    let topic = format!(
        "{}.{}.{}",
        source.get("name").and_then(Value::as_str).unwrap_or("cdc"),
        source.get("schema").and_then(Value::as_str).unwrap_or("public"),
        source.get("table").and_then(Value::as_str).unwrap_or("unknown")
    );
    Ok(Line { topic, partition: 0, offset: number as i64, key: None, value: Some(line.to_owned()) })
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
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(root) = &args.delta_root {
        sinks.push(Box::new(DeltaSink::new(DeltaConfig::new(root))));
    }
    if let Some(url) = &args.target_url {
        sinks.push(Box::new(PgTargetSink::new(PgConnectionConfig::new(url))));
    }
    if let Some(url) = &args.datalake_url {
        sinks.push(Box::new(PgDatalakeSink::new(PgConnectionConfig::new(url))));
    }
    if sinks.is_empty() {
        bail!("give at least one sink: --delta-root, --target-url or --datalake-url");
    }
    let policy = BatchPolicy { max_records: args.batch, max_bytes: 256 << 20, max_latency_ms: u64::MAX };
    let mut pipeline = Pipeline::new(Decoder::new().keep_raw_json(true), sinks, Box::new(MemoryDeadLetters::default()))
        .with_policy(policy);
    let resume = pipeline.resume_offsets().await?;
    let reader: Box<dyn BufRead> = match args.input.as_str() {
        "-" => Box::new(std::io::stdin().lock()),
        path => {
            Box::new(std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {path}"))?))
        }
    };
    let mut skipped = 0;
    for (number, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let Line { topic, partition, offset, key, value } = parse_line(&line, number)?;
        let position = cdc_lakehouse::core::Position::new(topic.as_str(), partition, offset);
        if resume.holds(&position) {
            skipped += 1;
            continue;
        }
        let record = RawRecord {
            topic: &topic,
            partition,
            offset,
            key: key.as_deref().map(str::as_bytes),
            value: value.as_deref().map(str::as_bytes),
        };
        pipeline.push(record).await?;
        if pipeline.due() {
            pipeline.flush().await?;
        }
    }
    pipeline.flush().await?;
    let stats = pipeline.stats();
    println!(
        "replayed {} records ({skipped} already held) in {} batches, {} dead letters",
        stats.records, stats.batches, stats.dead_letters
    );
    for ((table, op), n) in &stats.events {
        println!("  {table:<24} {op} {n:>8}");
    }
    Ok(())
}
