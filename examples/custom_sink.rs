//! Embedding the pipeline in your own program, with your own `Sink` next to
//! the built-in Delta sink. Consumes from Kafka when CDC_BROKERS is set,
//! otherwise replays the recorded real-Debezium fixture.
//!
//! ```sh
//! cargo run --example custom_sink
//! CDC_BROKERS=localhost:29092 cargo run --example custom_sink
//! ```
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cdc_lakehouse::core::pipeline::{MemoryDeadLetters, Pipeline};
use cdc_lakehouse::core::{Batch, Decoder, Offsets, Result, Sink, jsonl};
use cdc_lakehouse::kafka::{KafkaConfig, KafkaSource};
use cdc_lakehouse::sinks::{DeltaConfig, DeltaSink};

/// Counts changes per table and op. A real sink stores `offsets` with its
/// data, atomically, and reads them back in `durable_offsets`.
#[derive(Clone, Default)]
struct ChangeCounter {
    counts: Arc<Mutex<BTreeMap<(String, &'static str), u64>>>,
    offsets: Offsets,
}

#[async_trait]
impl Sink for ChangeCounter {
    fn name(&self) -> &str {
        "change-counter"
    }

    async fn durable_offsets(&mut self) -> Result<Offsets> {
        Ok(self.offsets.clone())
    }

    async fn apply(&mut self, batch: &Batch) -> Result<()> {
        let mut counts = self.counts.lock().expect("lock");
        // Events at or below what this sink holds were applied before a restart.
        for event in batch.events.iter().filter(|e| !self.offsets.holds(&e.position)) {
            *counts.entry((event.table().to_string(), event.op.code())).or_default() += 1;
        }
        self.offsets.merge(&batch.offsets);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let counter = ChangeCounter::default();
    let delta = DeltaSink::new(DeltaConfig::new("./deltalake-custom"));
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(counter.clone()), Box::new(delta)];
    // keep_raw_json: the Delta sink's cdc_events table stores the raw events.
    let mut pipeline = Pipeline::new(Decoder::new().keep_raw_json(true), sinks, Box::new(MemoryDeadLetters::default()));

    match std::env::var("CDC_BROKERS") {
        Ok(brokers) => {
            let config = KafkaConfig::new(brokers, "my-app");
            let source = KafkaSource::new(&config, &mut pipeline).await?;
            source.run(&mut pipeline, tokio::signal::ctrl_c()).await?;
        }
        Err(_) => {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/debezium/schemas.jsonl");
            let input = std::io::BufReader::new(std::fs::File::open(path)?);
            jsonl::replay(input, path, &mut pipeline).await?;
        }
    }
    for ((table, op), n) in counter.counts.lock().expect("lock").iter() {
        println!("{table:<24} {op} {n:>6}");
    }
    println!("dead letters: {}", pipeline.stats().dead_letters);
    Ok(())
}
