//! Several consumers of one group writing the same Delta tables on an
//! S3-protocol server (the test command's, `CDC_TEST_S3_ENDPOINT`): each
//! topic has three partitions, so every table and the history take commits
//! from several consumers at once, and partitions move as consumers join and
//! leave. Commits race through S3's conditional put (`If-None-Match: *`);
//! the tables must equal a replay of the same records into a local root, and
//! the history must hold each change once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cdc_lakehouse::core::jsonl;
use cdc_lakehouse::core::pipeline::{BatchPolicy, MemoryDeadLetters, Pipeline};
use cdc_lakehouse::core::testing::{FixtureRecord, load};
use cdc_lakehouse::core::{Batch, Decoder, Offsets, Result, Sink, StageTimes};
use cdc_lakehouse::kafka::{KafkaConfig, KafkaSource, OutgoingRecord, Publisher};
use cdc_lakehouse::sinks::delta::deltalake::arrow::util::pretty::pretty_format_batches;
use cdc_lakehouse::sinks::delta::time_travel::{self, AsOf};
use cdc_lakehouse::sinks::{ApplyStats, DeltaConfig, DeltaSink};
use rdkafka::mocking::MockCluster;

const PARTITIONS: i32 = 3;

/// A root of its own in the test server's bucket.
fn s3_config(name: &str) -> DeltaConfig {
    let endpoint = std::env::var("CDC_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "CDC_TEST_S3_ENDPOINT is not set: run the tests with scripts/test.sh, which starts a local S3 server, \
             or start one with scripts/s3-server.sh start DIR"
        )
    });
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let mut config = DeltaConfig::new(format!("s3://cdc-test/{name}-{}-{nanos}", std::process::id()));
    config.storage_options = HashMap::from(
        [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    config
}

/// The Delta sink, adding up its commit statistics where the test reads them.
struct Counted {
    sink: DeltaSink,
    stats: Arc<Mutex<ApplyStats>>,
}

#[async_trait]
impl Sink for Counted {
    fn name(&self) -> &str {
        self.sink.name()
    }
    async fn durable_offsets(&mut self) -> Result<Offsets> {
        self.sink.durable_offsets().await
    }
    async fn apply(&mut self, batch: &Batch) -> Result<()> {
        let applied = self.sink.apply(batch).await;
        let taken = self.sink.take_stats();
        let mut stats = self.stats.lock().unwrap();
        stats.commits += taken.commits;
        stats.commit_retries += taken.commit_retries;
        applied
    }
    fn stage_times(&self) -> Option<&StageTimes> {
        self.sink.stage_times()
    }
}

fn policy() -> BatchPolicy {
    // Small batches: many commits, so the consumers' commits to a table
    // and to the history overlap.
    BatchPolicy { max_records: 5, max_bytes: 1 << 30, max_latency_ms: 200 }
}

/// One consumer of the group until the stream is idle for 12 s or `leave_after` passes.
async fn consume(brokers: String, config: DeltaConfig, stats: Arc<Mutex<ApplyStats>>, leave_after: Duration) -> u64 {
    let mut kafka = KafkaConfig::new(brokers, "cdc-s3-writers");
    kafka.progress_secs = 2;
    kafka.properties.insert("session.timeout.ms".into(), "6000".into());
    kafka.properties.insert("heartbeat.interval.ms".into(), "500".into());
    let sink = Counted { sink: DeltaSink::new(config), stats };
    let mut pipeline =
        Pipeline::new(Decoder::new().keep_raw_json(true), vec![Box::new(sink)], Box::new(MemoryDeadLetters::default()))
            .with_policy(policy());
    let source = KafkaSource::new(&kafka, &mut pipeline).await.unwrap();
    let summary =
        source.run_until(&mut pipeline, tokio::time::sleep(leave_after), Some(Duration::from_secs(12))).await.unwrap();
    assert_eq!(summary.dead_letters, 0);
    summary.records
}

/// The fixture's records spread over three partitions per topic by key (a
/// key's changes stay in order), with the offsets the broker gives them.
fn partitioned(records: Vec<FixtureRecord>) -> Vec<FixtureRecord> {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    records
        .into_iter()
        .map(|mut record| {
            // FNV-1a: stable across runs and platforms.
            let key = record.key.as_deref().unwrap_or_default().bytes();
            let hash = key.fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            record.partition = (hash % PARTITIONS as u64) as i32;
            let offset = next.entry((record.topic.clone(), record.partition)).or_insert(0);
            record.offset = *offset;
            *offset += 1;
            record
        })
        .collect()
}

/// Every table but the apply time, rendered in key order.
async fn delta_state(config: &DeltaConfig) -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for table in time_travel::list_tables(config).await.unwrap() {
        let sql = if table == "cdc_events" {
            "SELECT topic, kafka_partition, kafka_offset, op, record_key, after, order_key FROM cdc_events ORDER BY 1, 2, 3".to_owned()
        } else {
            format!("SELECT * EXCEPT (_cdc_applied_at) FROM {table} ORDER BY 1")
        };
        let batches = time_travel::query(config, &sql, AsOf::Latest).await.unwrap();
        state.insert(table, pretty_format_batches(&batches).unwrap().to_string());
    }
    state
}

async fn scalar(config: &DeltaConfig, sql: &str) -> String {
    let batches = time_travel::query(config, sql, AsOf::Latest).await.unwrap();
    cdc_lakehouse::sinks::delta::deltalake::arrow::util::display::array_value_to_string(batches[0].column(0), 0)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_consumers_of_one_group_write_the_same_tables_on_s3() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let records = partitioned(load("schemas").into_iter().filter(|r| r.topic.starts_with("cdc.public.")).collect());
    let changes = records.iter().filter(|r| r.value.is_some()).count();
    let s3 = s3_config("three-writers");
    println!("Delta root: {} (kept after the test, to inspect a failure)", s3.root);

    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let topics: BTreeSet<&str> = records.iter().map(|r| r.topic.as_str()).collect();
    for topic in &topics {
        cluster.create_topic(topic, PARTITIONS, 1).unwrap();
    }
    let outgoing: Vec<OutgoingRecord> = records
        .iter()
        .map(|r| OutgoingRecord {
            topic: r.topic.clone(),
            partition: r.partition,
            key: r.key.clone().map(String::into_bytes),
            value: r.value.clone().map(String::into_bytes),
        })
        .collect();
    let publisher = Publisher::new(&brokers).unwrap();
    let half = outgoing.len() / 2;
    let stats: Vec<Arc<Mutex<ApplyStats>>> = (0..4).map(|_| Arc::default()).collect();
    let started = Instant::now();
    let writer = |n: usize, leave_after: Duration| {
        tokio::spawn(consume(brokers.clone(), s3.clone(), stats[n].clone(), leave_after))
    };
    // The first consumer starts alone; the second joins, the third joins,
    // the second leaves: partitions move three times, each time with
    // commits of the others in flight.
    publisher.send_all(&outgoing[..half]).await.unwrap();
    let first = writer(0, Duration::from_secs(600));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = writer(1, Duration::from_secs(9));
    tokio::time::sleep(Duration::from_secs(2)).await;
    publisher.send_all(&outgoing[half..]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let third = writer(2, Duration::from_secs(600));
    let mut consumed = vec![first.await.unwrap(), second.await.unwrap(), third.await.unwrap()];
    let took = started.elapsed();
    // Whatever the last rebalance left unread (a member may have gone idle
    // before it got the partitions of the one that left), a restarted
    // member reads now: nothing applied twice, nothing skipped.
    consumed.push(consume(brokers.clone(), s3.clone(), stats[3].clone(), Duration::from_secs(600)).await);
    assert!(consumed.iter().sum::<u64>() as usize >= records.len(), "every record read: {consumed:?}");
    let stats: Vec<ApplyStats> = stats.iter().map(|s| *s.lock().unwrap()).collect();
    for (n, (records, stats)) in consumed.iter().zip(&stats).enumerate() {
        // (The fourth is the restarted member.)
        println!(
            "consumer {n}: {records} records, {} commits, {} commit retries, {:.0} records/s over {:.1} s",
            stats.commits,
            stats.commit_retries,
            *records as f64 / took.as_secs_f64(),
            took.as_secs_f64()
        );
    }
    assert!(consumed[..3].iter().filter(|&&n| n > 0).count() >= 2, "several consumers took part: {consumed:?}");

    // The same records replayed into a local root.
    let work = tempfile::tempdir().unwrap();
    let local = DeltaConfig::new(work.path().to_str().unwrap());
    let lines: String = records
        .iter()
        .map(|r| {
            let line = serde_json::json!({
                "topic": r.topic, "partition": r.partition, "offset": r.offset, "key": r.key, "payload": r.value,
            });
            format!("{line}\n")
        })
        .collect();
    let mut pipeline = Pipeline::new(
        Decoder::new().keep_raw_json(true),
        vec![Box::new(DeltaSink::new(local.clone()))],
        Box::new(MemoryDeadLetters::default()),
    )
    .with_policy(policy());
    jsonl::replay(std::io::Cursor::new(lines.into_bytes()), "replay.jsonl", &mut pipeline).await.unwrap();
    assert_eq!(pipeline.stats().dead_letters, 0);

    // The tables are found by listing the bucket, and equal the replay's.
    let (on_s3, replayed) = (delta_state(&s3).await, delta_state(&local).await);
    assert!(on_s3.len() >= 5, "tables listed on S3: {:?}", on_s3.keys());
    assert_eq!(on_s3.keys().collect::<Vec<_>>(), replayed.keys().collect::<Vec<_>>());
    for (table, rendered) in &on_s3 {
        assert!(
            rendered == &replayed[table],
            "Delta table {table} on S3:\n{rendered}\nvs replay:\n{}",
            replayed[table]
        );
    }
    // Each change exactly once in the history, whichever consumer wrote it.
    let distinct = "SELECT count(*) FROM (SELECT DISTINCT topic, kafka_partition, kafka_offset FROM cdc_events)";
    assert_eq!(scalar(&s3, "SELECT count(*) FROM cdc_events").await, changes.to_string());
    assert_eq!(scalar(&s3, distinct).await, changes.to_string());

    // A new consumer resumes after everything: the offsets every table on
    // the bucket holds are the last of each partition.
    let resume = DeltaSink::new(s3.clone()).durable_offsets().await.unwrap();
    for record in &records {
        let held = resume.get(&record.topic, record.partition);
        assert!(held.is_some_and(|o| o >= record.offset), "{}[{}] resumes at {held:?}", record.topic, record.partition);
    }
}
