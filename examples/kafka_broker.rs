//! A Kafka-protocol broker for local runs without Docker: librdkafka's mock
//! cluster, served on a localhost port that other processes (the consumer,
//! kcat, any librdkafka client) can use. Optionally publishes JSON Lines
//! records read from stdin (the `replay` format, e.g. Debezium's output from
//! tests/e2e/DebeziumStream.java), creating each topic on first sight and
//! choosing the partition from a hash of the key, as Kafka producers do.
//!
//! ```sh
//! cargo run --example kafka_broker -- --address-file /tmp/kafka.addr
//! java ... DebeziumStream connector.properties | cargo run --example kafka_broker -- --publish-stdin
//! ```
//!
//! Runs until SIGINT/SIGTERM. Kafka's Java 4.x clients cannot talk to it.
use std::collections::BTreeSet;
use std::hash::Hasher;
use std::io::BufRead;

use anyhow::Context;
use cdc_lakehouse::core::jsonl;
use cdc_lakehouse::kafka::{OutgoingRecord, Publisher};
use clap::Parser;
use rdkafka::mocking::MockCluster;

/// Serve a Kafka-protocol broker on localhost.
#[derive(Parser)]
struct Args {
    /// Write the bootstrap address here once the broker listens.
    #[arg(long)]
    address_file: Option<std::path::PathBuf>,
    /// Partitions of each topic created for published records.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Topics to create up front (comma separated).
    #[arg(long, value_delimiter = ',')]
    topics: Vec<String>,
    /// Publish the JSON Lines records read from stdin.
    #[arg(long)]
    publish_stdin: bool,
}

/// The same in every run of one build, so one key always lands on one partition.
fn partition_of(key: Option<&str>, partitions: i32) -> i32 {
    let Some(key) = key else { return 0 };
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(key.as_bytes());
    (hasher.finish() % partitions as u64) as i32
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let cluster = MockCluster::new(1)?;
    let brokers = cluster.bootstrap_servers();
    let mut topics = BTreeSet::new();
    for topic in &args.topics {
        cluster.create_topic(topic, args.partitions, 1)?;
        topics.insert(topic.clone());
    }
    if let Some(path) = &args.address_file {
        std::fs::write(path, &brokers).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("kafka_broker: serving the Kafka protocol at {brokers}");

    if args.publish_stdin {
        let publisher = Publisher::new(&brokers)?;
        let (lines, mut receiver) = tokio::sync::mpsc::channel::<(u64, String)>(1024);
        std::thread::spawn(move || {
            for (number, line) in std::io::stdin().lock().lines().enumerate() {
                let Ok(line) = line else { break };
                if lines.blocking_send((number as u64, line)).is_err() {
                    break;
                }
            }
        });
        let mut published = 0u64;
        let mut parser = jsonl::LineParser::new();
        while let Some(first) = receiver.recv().await {
            // What has arrived meanwhile goes in one round trip, in order.
            let mut lines = vec![first];
            while lines.len() < 5_000 {
                match receiver.try_recv() {
                    Ok(line) => lines.push(line),
                    Err(_) => break,
                }
            }
            let mut batch = Vec::with_capacity(lines.len());
            for (number, line) in lines.iter().filter(|(_, l)| !l.trim().is_empty()) {
                let record = parser.parse(line, "stdin", *number)?;
                if topics.insert(record.topic.clone()) {
                    cluster.create_topic(&record.topic, args.partitions, 1)?;
                }
                let partition = partition_of(record.key.as_deref(), args.partitions);
                let (key, value) = (record.key.map(String::into_bytes), record.value.map(String::into_bytes));
                batch.push(OutgoingRecord { topic: record.topic, partition, key, value });
            }
            publisher.send_all(&batch).await?;
            published += batch.len() as u64;
            eprintln!("kafka_broker: {published} records published");
        }
        eprintln!("kafka_broker: stdin closed after {published} records; still serving");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
    Ok(())
}
