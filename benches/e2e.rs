//! End to end, Kafka to sink commit: librdkafka's mock cluster (real Kafka
//! protocol, in process) holding the demo's real-shaped Debezium records for
//! the seed's four tables, consumed by `KafkaSource` + `Pipeline` into the
//! Delta sink, the PostgreSQL target, and both.
//!
//! - throughput: N records published first, then consumed; events/s from
//!   the consumer's start to the last sink commit;
//! - latency: records published at a steady rate while the consumer runs;
//!   per record, produce call to the commit that made it durable, p50/p99;
//! - peak memory: the process's peak RSS (VmHWM, reset between scenarios;
//!   it includes the in-process broker's copy of the records).
//!
//!   cargo bench --bench e2e                       # 71k records, 431 MiB
//!   CDC_BENCH_RATE=5000 cargo bench --bench e2e   # latency phase rate (records/s)
//!
//! Uses the PostgreSQL at CDC_TEST_PG_URL, or starts a throwaway cluster with
//! scripts/pg-cluster.sh (installing Debian's PostgreSQL if needed).
mod support;

#[path = "../examples/demo/mod.rs"]
#[allow(dead_code)] // the demo's own partitioning is replaced below
mod demo;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cdc_lakehouse::core::pipeline::{BatchPolicy, MemoryDeadLetters, Pipeline};
use cdc_lakehouse::core::{Batch, Decoder, Offsets, Position, Result, Sink};
use cdc_lakehouse::kafka::{KafkaConfig, KafkaSource, OutgoingRecord, Publisher};
use cdc_lakehouse::sinks::{DeltaConfig, DeltaSink, PgConnectionConfig, PgTargetSink};
use rdkafka::mocking::MockCluster;
use support::{database_url, fresh_database, peak_rss_mib, reset_peak_rss};

// mimalloc: glibc's malloc was a sixth of the replay profile (many short-lived
// strings per record, freed on other threads than allocated them).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// When each event's batch was committed, by position.
type Commits = Arc<Mutex<Vec<(Position, Instant)>>>;

/// A sink that notes when each event it applied became durable.
struct Timed {
    inner: Box<dyn Sink>,
    commits: Commits,
}

#[async_trait]
impl Sink for Timed {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn durable_offsets(&mut self) -> Result<Offsets> {
        self.inner.durable_offsets().await
    }
    fn status(&self) -> Option<String> {
        self.inner.status()
    }
    async fn apply(&mut self, batch: &Batch) -> Result<()> {
        self.inner.apply(batch).await?;
        let now = Instant::now();
        self.commits.lock().unwrap().extend(batch.events.iter().map(|e| (e.position.clone(), now)));
        Ok(())
    }
}

/// Which sinks a scenario feeds.
#[derive(Clone, Copy)]
enum Sinks {
    Delta,
    PgTarget,
    Both,
}

struct Scenario {
    brokers: String,
    group: String,
    delta_root: std::path::PathBuf,
    target_url: String,
}

impl Scenario {
    fn sinks(&self, which: Sinks, commits: &Commits) -> Vec<Box<dyn Sink>> {
        let delta =
            || -> Box<dyn Sink> { Box::new(DeltaSink::new(DeltaConfig::new(self.delta_root.to_str().unwrap()))) };
        let target = || -> Box<dyn Sink> { Box::new(PgTargetSink::new(PgConnectionConfig::new(&self.target_url))) };
        let inner = match which {
            Sinks::Delta => vec![delta()],
            Sinks::PgTarget => vec![target()],
            Sinks::Both => vec![delta(), target()],
        };
        inner.into_iter().map(|inner| Box::new(Timed { inner, commits: commits.clone() }) as Box<dyn Sink>).collect()
    }

    /// Consumes until `expected` events were committed by every sink.
    async fn consume(&self, which: Sinks, policy: BatchPolicy, commits: &Commits, expected: usize) -> Instant {
        let mut config = KafkaConfig::new(&self.brokers, &self.group);
        config.progress_secs = 10;
        let sinks = self.sinks(which, commits);
        let per_event = sinks.len();
        let mut pipeline =
            Pipeline::new(Decoder::new().keep_raw_json(true), sinks, Box::new(MemoryDeadLetters::default()))
                .with_policy(policy);
        let source = KafkaSource::new(&config, &mut pipeline).await.unwrap();
        let started = Instant::now();
        let commits = commits.clone();
        let done = async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            while commits.lock().unwrap().len() < expected * per_event {
                let committed = commits.lock().unwrap().len() / per_event;
                assert!(Instant::now() < deadline, "only {committed} of {expected} events committed after 5 minutes");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        source.run(&mut pipeline, done).await.unwrap();
        assert_eq!(pipeline.stats().dead_letters, 0, "every event applies");
        started
    }
}

/// librdkafka's mock cluster keeps about 5 MB per partition: spread the
/// records wider than the demo does (one key, one partition).
const PARTITIONS: i32 = 128;

fn outgoing(records: &[demo::DemoRecord]) -> Vec<OutgoingRecord> {
    let partition = |key: &[u8]| {
        use std::hash::Hasher;
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(key);
        (hasher.finish() % PARTITIONS as u64) as i32
    };
    records
        .iter()
        .map(|r| OutgoingRecord {
            topic: r.topic.clone(),
            partition: partition(&r.key),
            key: Some(r.key.clone()),
            value: r.value.clone(),
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; this is no criterion harness
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            "warn,deltalake_core=error,buoyant_kernel=off,delta_kernel=off,librdkafka=error".into()
        }))
        .init();
    let admin_url = database_url();
    let rate: f64 = std::env::var("CDC_BENCH_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000.0);
    let volume = demo::Volume { customers: 6_000, products: 1_500, orders: 18_000 };
    let records = demo::Generator::new().generate(&volume);
    let changes = records.iter().filter(|r| r.value.is_some()).count();
    let bytes: usize = records.iter().map(|r| r.key.len() + r.value.as_ref().map_or(0, Vec::len)).sum();
    println!(
        "{} records ({changes} change events, {:.0} MiB, seed tables with schemas), 2 cores\n",
        records.len(),
        bytes as f64 / (1 << 20) as f64
    );
    let work = tempfile::tempdir().unwrap();
    let policy = BatchPolicy { max_records: 20_000, max_bytes: 256 << 20, max_latency_ms: 1_000 };

    println!("throughput (pre-filled topics, {PARTITIONS} partitions per table):");
    for (n, (name, which)) in
        [("delta", Sinks::Delta), ("pg-target", Sinks::PgTarget), ("delta + pg-target", Sinks::Both)]
            .into_iter()
            .enumerate()
    {
        let cluster = MockCluster::new(1).unwrap();
        for table in demo::TABLES {
            cluster.create_topic(&format!("cdc.public.{table}"), PARTITIONS, 1).unwrap();
        }
        let publisher = Publisher::new(&cluster.bootstrap_servers()).unwrap();
        for chunk in outgoing(&records).chunks(5_000) {
            publisher.send_all(chunk).await.unwrap();
        }
        reset_peak_rss();
        let scenario = Scenario {
            brokers: cluster.bootstrap_servers(),
            group: format!("bench-{n}"),
            delta_root: work.path().join(format!("throughput-{n}")),
            target_url: fresh_database(&admin_url, &format!("bench_e2e_{n}")).await,
        };
        let commits = Commits::default();
        let started = scenario.consume(which, policy.clone(), &commits, changes).await;
        // When each event was durable in every sink: its last commit.
        let mut done: HashMap<Position, Instant> = HashMap::new();
        for (position, at) in commits.lock().unwrap().iter() {
            let entry = done.entry(position.clone()).or_insert(*at);
            *entry = (*entry).max(*at);
        }
        let (first, last) = (*done.values().min().unwrap(), *done.values().max().unwrap());
        let after_first = done.values().filter(|t| **t > first).count();
        let seconds = (last - started).as_secs_f64();
        println!(
            "  {name:<18} {:>7.0} events/s from start ({changes} events in {seconds:.1} s, group join included), \
             {:>7.0} events/s after the first batch, peak RSS {:.0} MiB",
            changes as f64 / seconds,
            after_first as f64 / (last - first).as_secs_f64(),
            peak_rss_mib()
        );
    }

    println!("\nlatency (produce call to sink commit, {rate:.0} records/s, batch latency limit 1 s):");
    let cluster = MockCluster::new(1).unwrap();
    for table in demo::TABLES {
        cluster.create_topic(&format!("cdc.public.{table}"), PARTITIONS, 1).unwrap();
    }
    let scenario = Scenario {
        brokers: cluster.bootstrap_servers(),
        group: "bench-latency".into(),
        delta_root: work.path().join("latency"),
        target_url: fresh_database(&admin_url, "bench_e2e_latency").await,
    };
    let sent: Arc<Mutex<HashMap<Position, Instant>>> = Arc::default();
    let commits = Commits::default();
    reset_peak_rss();
    let producer = {
        let (brokers, sent, records) = (scenario.brokers.clone(), sent.clone(), outgoing(&records));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await; // the consumer joins its group first
            let publisher = Publisher::new(&brokers).unwrap();
            let mut next_offset: HashMap<(String, i32), i64> = HashMap::new();
            let tick = Duration::from_millis(20);
            let per_tick = (rate * tick.as_secs_f64()).max(1.0) as usize;
            let mut interval = tokio::time::interval(tick);
            for chunk in records.chunks(per_tick) {
                interval.tick().await;
                let now = Instant::now();
                {
                    let mut sent = sent.lock().unwrap();
                    for r in chunk {
                        let offset = next_offset.entry((r.topic.clone(), r.partition)).or_default();
                        sent.insert(Position::new(r.topic.as_str(), r.partition, *offset), now);
                        *offset += 1;
                    }
                }
                publisher.send_all(chunk).await.unwrap();
            }
        })
    };
    scenario.consume(Sinks::Both, policy.clone(), &commits, changes).await;
    producer.await.unwrap();
    let sent = sent.lock().unwrap();
    let commits = commits.lock().unwrap();
    let mut by_sink: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    // Delta applies first, then the target: a position's first commit is Delta's.
    let mut seen: HashMap<&Position, usize> = HashMap::new();
    for (position, at) in commits.iter() {
        let i = seen.entry(position).or_default();
        if *i < 2 {
            by_sink[*i].push(at.duration_since(sent[position]));
        }
        *i += 1;
    }
    for (name, latencies) in ["delta", "pg-target"].iter().zip(by_sink.iter_mut()) {
        latencies.sort();
        println!(
            "  {name:<18} p50 {:>5} ms  p99 {:>5} ms  max {:>5} ms  ({} events)",
            percentile(latencies, 0.50).as_millis(),
            percentile(latencies, 0.99).as_millis(),
            latencies.last().unwrap().as_millis(),
            latencies.len()
        );
    }
    println!("  peak RSS {:.0} MiB", peak_rss_mib());
}
