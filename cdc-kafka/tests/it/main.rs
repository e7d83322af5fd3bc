//! The Kafka source against librdkafka's mock cluster (the real Kafka
//! protocol, in process), fed with the real-Debezium fixture records.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cdc_core::memory::MemorySink;
use cdc_core::pipeline::{BatchPolicy, Pipeline};
use cdc_core::testing::{changes, decode_with, load};
use cdc_core::{Batch, Decoder, Offsets, Position, Result, Sink};
use cdc_kafka::{KafkaConfig, KafkaDeadLetters, KafkaSource, OutgoingRecord, Publisher};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;

/// A memory sink shared with the test, recording every event it applied.
#[derive(Clone, Default)]
struct Recording {
    state: Arc<Mutex<(MemorySink, Vec<Position>)>>,
    stages: cdc_core::StageTimes,
}

#[async_trait]
impl Sink for Recording {
    fn name(&self) -> &str {
        "recording"
    }
    fn stage_times(&self) -> Option<&cdc_core::StageTimes> {
        Some(&self.stages)
    }
    async fn durable_offsets(&mut self) -> Result<Offsets> {
        Ok(self.state.lock().unwrap().0.offsets.clone())
    }
    async fn apply(&mut self, batch: &Batch) -> Result<()> {
        self.stages.start_batch();
        self.stages.add("record", Duration::from_millis(250));
        let mut state = self.state.lock().unwrap();
        let (memory, applied) = &mut *state;
        for event in &batch.events {
            if !memory.offsets.holds(&event.position) {
                memory.apply_event(event);
                applied.push(event.position.clone());
            }
        }
        memory.offsets.merge(&batch.offsets);
        Ok(())
    }
}

fn fixture_records() -> Vec<OutgoingRecord> {
    load("schemas")
        .into_iter()
        .filter(|r| r.topic.starts_with("cdc.public."))
        .map(|r| OutgoingRecord {
            topic: r.topic,
            partition: r.partition,
            key: r.key.map(String::into_bytes),
            value: r.value.map(String::into_bytes),
        })
        .collect()
}

/// librdkafka's in-process cluster with one single-partition topic per
/// fixture topic, and a publisher for it.
fn kafka_with_topics(
    records: &[OutgoingRecord],
) -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, String, Publisher) {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    for topic in records.iter().map(|r| r.topic.clone()).collect::<std::collections::BTreeSet<_>>() {
        cluster.create_topic(&topic, 1, 1).unwrap();
    }
    let publisher = Publisher::new(&brokers).unwrap();
    (cluster, brokers, publisher)
}

/// Every change event of the fixture was applied, none twice.
fn assert_each_event_once(applied: &[Position], decoded: &[cdc_core::Record]) {
    let mut distinct = applied.to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), applied.len(), "no event applied twice");
    assert_eq!(applied.len(), changes(decoded).len(), "no event lost");
}

async fn consume(brokers: &str, sink: &Recording, dlq: bool) -> u64 {
    let mut config = KafkaConfig::new(brokers, "cdc-test");
    config.progress_secs = 1;
    // A restarted consumer should not wait long for the old member's session.
    config.properties.insert("session.timeout.ms".into(), "6000".into());
    config.properties.insert("heartbeat.interval.ms".into(), "500".into());
    let letters: Box<dyn cdc_core::pipeline::DeadLetterStore> = if dlq {
        Box::new(KafkaDeadLetters::new(&config, ".dlq").unwrap())
    } else {
        Box::new(cdc_core::pipeline::MemoryDeadLetters::default())
    };
    let mut pipeline = Pipeline::new(Decoder::new(), vec![Box::new(sink.clone())], letters).with_policy(BatchPolicy {
        max_records: 25,
        max_bytes: 1 << 30,
        max_latency_ms: 200,
    });
    let source = KafkaSource::new(&config, &mut pipeline).await.unwrap();
    let summary =
        source.run_until(&mut pipeline, std::future::pending::<()>(), Some(Duration::from_secs(3))).await.unwrap();
    summary.records
}

/// Real Debezium records through Kafka end in the sink exactly as when
/// applied directly; a consumer stopped half-way and restarted loses and
/// doubles nothing; a poison record lands in the dead-letter topic with its
/// position in the headers while the rest applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_through_kafka_with_restart_and_poison() {
    let records = fixture_records();
    let (_cluster, brokers, publisher) = kafka_with_topics(&records);
    let half = records.len() / 2;
    publisher.send_all(&records[..half]).await.unwrap();
    let poison = publisher.send("cdc.public.customers", 0, Some(b"{\"id\":1}"), Some(b"{\"op\":\"c\"")).await.unwrap();
    // Bigger than the dead-letter producer may send (1 MB by default).
    let huge = vec![b'x'; 2 << 20];
    let huge_offset = publisher.send("cdc.public.customers", 0, Some(b"{\"id\":2}"), Some(&huge)).await.unwrap();

    let sink = Recording::default();
    let first = consume(&brokers, &sink, true).await;
    assert_eq!(first as usize, half + 2);

    // The rest arrives while nobody consumes; a new consumer picks up.
    publisher.send_all(&records[half..]).await.unwrap();
    let second = consume(&brokers, &sink, true).await;
    // Exactly the rest: not the dead letters (`<topic>.dlq` matches the
    // default pattern too) and nothing applied before.
    assert_eq!(second as usize, records.len() - half, "the restarted consumer read the rest, and only that");

    // Same state as applying the fixture directly, each event once.
    let mut expected = MemorySink::new();
    let decoded = decode_with(&mut Decoder::new(), "schemas");
    for event in changes(&decoded) {
        expected.apply_event(event);
    }
    let state = sink.state.lock().unwrap();
    // Rows by key (order keys differ: the poison record shifted later offsets).
    let rows = |memory: &MemorySink| -> Vec<String> {
        memory
            .tables
            .iter()
            .flat_map(|(t, table)| table.rows.iter().map(move |(k, (_, row))| format!("{t} {k} {row:?}")))
            .collect()
    };
    let (actual, wanted) = (rows(&state.0), rows(&expected));
    assert_eq!(actual.len(), wanted.len());
    assert!(actual == wanted, "the state through Kafka differs from applying the fixture directly");
    assert_each_event_once(&state.1, &decoded);
    drop(state);

    // The poison record is in cdc.public.customers.dlq with its position.
    let dlq: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&["cdc.public.customers.dlq"]).unwrap();
    // Two letters; the topic may have several partitions, so in any order.
    let letters: Vec<_> = (0..2)
        .map(|_| {
            (0..100).find_map(|_| dlq.poll(Duration::from_millis(200)).and_then(|m| m.ok())).expect("a dead letter")
        })
        .collect();
    let header = |message: &rdkafka::message::BorrowedMessage<'_>, name: &str| {
        let headers = message.headers()?;
        headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let letter = |offset: i64| {
        letters.iter().find(|m| header(m, "cdc.offset") == Some(offset.to_string())).expect("the letter of that offset")
    };
    let message = letter(poison);
    assert_eq!(message.payload(), Some(&b"{\"op\":\"c\""[..]));
    assert_eq!(header(message, "cdc.topic").as_deref(), Some("cdc.public.customers"));
    assert!(header(message, "cdc.error").unwrap().contains(&format!("cdc.public.customers[0]@{poison}")));
    // The oversized one is stored as a reference to the original record.
    let message = letter(huge_offset);
    assert_eq!(header(message, "cdc.omitted").as_deref(), Some(format!("key=8 value={}", huge.len()).as_str()));
    assert_eq!(message.payload(), None);
    // Nothing read the dead letters back.
    let topics = dlq.fetch_metadata(None, Duration::from_secs(5)).unwrap();
    let names: Vec<&str> = topics.topics().iter().map(|t| t.name()).collect();
    assert!(!names.iter().any(|t| t.ends_with(".dlq.dlq")), "{names:?}");
}

/// A second consumer joins the group mid-stream: partitions move between
/// them, and every event still ends in the sink exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_consumer_joining_loses_and_doubles_nothing() {
    let records = fixture_records();
    let (_cluster, brokers, publisher) = kafka_with_topics(&records);
    let half = records.len() / 2;
    publisher.send_all(&records[..half]).await.unwrap();
    let sink = Recording::default();
    let first = {
        let (brokers, sink) = (brokers.clone(), sink.clone());
        tokio::spawn(async move { consume(&brokers, &sink, false).await })
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    let second = {
        let (brokers, sink) = (brokers.clone(), sink.clone());
        tokio::spawn(async move { consume(&brokers, &sink, false).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    publisher.send_all(&records[half..]).await.unwrap();
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    assert!(a > 0 && b > 0, "both consumers took part: {a} and {b} records");

    let decoded = decode_with(&mut Decoder::new(), "schemas");
    assert_each_event_once(&sink.state.lock().unwrap().1, &decoded);
}

/// The Prometheus endpoint serves what the run did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_the_run() {
    let records = fixture_records();
    let (_cluster, brokers, publisher) = kafka_with_topics(&records);
    publisher.send_all(&records).await.unwrap();
    let mut config = KafkaConfig::new(&brokers, "cdc-metrics-test");
    config.metrics_listen = Some("127.0.0.1:0".into());
    let sink = Recording::default();
    let mut pipeline = Pipeline::new(
        Decoder::new(),
        vec![Box::new(sink.clone())],
        Box::new(cdc_core::pipeline::MemoryDeadLetters::default()),
    );
    let source = KafkaSource::new(&config, &mut pipeline).await.unwrap();
    let address = source.metrics_address().expect("metrics served");
    let summary =
        source.run_until(&mut pipeline, std::future::pending::<()>(), Some(Duration::from_secs(3))).await.unwrap();

    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains(&format!("cdc_records_total {}\n", summary.records)), "{body}");
    let customers_snapshot = changes(&decode_with(&mut Decoder::new(), "schemas"))
        .iter()
        .filter(|e| e.table().to_string() == "public.customers" && e.op.code() == "r")
        .count();
    assert!(
        body.contains(&format!("cdc_events_total{{table=\"public.customers\",op=\"r\"}} {customers_snapshot}\n")),
        "{body}"
    );
    assert!(body.contains("cdc_dead_letters_total 0\n"), "{body}");
    // Each sink's stage times (the test sink says each batch took 250 ms recording).
    let recorded = 0.25 * summary.batches as f64;
    assert!(
        body.contains(&format!("cdc_sink_stage_seconds_total{{sink=\"recording\",stage=\"record\"}} {recorded}")),
        "{body}"
    );
}

/// A sink that is down for good.
struct Down;

#[async_trait]
impl Sink for Down {
    fn name(&self) -> &str {
        "down"
    }
    async fn durable_offsets(&mut self) -> Result<Offsets> {
        Ok(Offsets::new())
    }
    async fn apply(&mut self, _: &Batch) -> Result<()> {
        Err(cdc_core::Error::Unavailable { sink: "down".into(), message: "connection refused".into() })
    }
}

/// SIGTERM while a batch retries through an outage (retries are unbounded
/// by default): the consumer stops within its shutdown timeout, committing
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_an_outage_is_bounded() {
    let records = fixture_records();
    let (_cluster, brokers, publisher) = kafka_with_topics(&records);
    publisher.send_all(&records[..20]).await.unwrap();
    let mut config = KafkaConfig::new(&brokers, "cdc-test-outage");
    config.shutdown_timeout_secs = 2;
    let retry = cdc_core::pipeline::RetryPolicy { initial_backoff_ms: 50, max_backoff_ms: 200, ..Default::default() };
    let mut pipeline =
        Pipeline::new(Decoder::new(), vec![Box::new(Down)], Box::new(cdc_core::pipeline::MemoryDeadLetters::default()))
            .with_retry(retry)
            .with_policy(BatchPolicy { max_records: 5, max_bytes: 1 << 30, max_latency_ms: 100 });
    let source = KafkaSource::new(&config, &mut pipeline).await.unwrap();
    let started = std::time::Instant::now();
    let shutdown = tokio::time::sleep(Duration::from_secs(5));
    let run = source.run_until(&mut pipeline, shutdown, None);
    let summary = tokio::time::timeout(Duration::from_secs(30), run).await.expect("stopped in time").unwrap();
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert_eq!(summary.batches, 0, "nothing applied, nothing committed");
}

/// Runs a consumer into `sink` that must stop with an error within a minute.
async fn run_to_error(config: &KafkaConfig, sink: &Recording) -> cdc_core::Error {
    let mut pipeline = Pipeline::new(
        Decoder::new(),
        vec![Box::new(sink.clone())],
        Box::new(cdc_core::pipeline::MemoryDeadLetters::default()),
    );
    let source = KafkaSource::new(config, &mut pipeline).await.unwrap();
    let run = source.run_until(&mut pipeline, std::future::pending::<()>(), Some(Duration::from_secs(3)));
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("stopped").unwrap_err()
}

/// The sinks hold offsets beyond a partition's end (the topics were
/// recreated, or this is another cluster): the consumer stops with an error
/// naming the partition instead of skipping every record up to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_ahead_of_a_recreated_topic_stop_the_consumer() {
    let records = fixture_records();
    let (_cluster, brokers, publisher) = kafka_with_topics(&records);
    publisher.send_all(&records[..20]).await.unwrap();
    let sink = Recording::default();
    sink.state.lock().unwrap().0.offsets.set("cdc.public.customers".into(), 0, 5_000);
    let message = run_to_error(&KafkaConfig::new(&brokers, "cdc-test-reset"), &sink).await.to_string();
    assert!(message.contains("cdc.public.customers[0]") && message.contains("5000"), "{message}");
    assert!(sink.state.lock().unwrap().1.iter().all(|p| &*p.topic != "cdc.public.customers"), "nothing of it applied");
}

/// The sinks were fed by one Kafka cluster; the consumer now reads another
/// (a fresh docker-compose stack) whose partitions are already longer than
/// the offsets held, so the end-of-partition check cannot tell: the cluster
/// id stored with the offsets does, before anything is skipped or applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_another_kafka_cluster_stop_the_consumer() {
    let records = fixture_records();
    let sink = Recording::default();
    // Kept alive: a mock cluster's id derives from its address, which the
    // next one could reuse.
    let (_first, brokers, publisher) = kafka_with_topics(&records);
    publisher.send_all(&records[..20]).await.unwrap();
    assert_eq!(consume(&brokers, &sink, false).await, 20);
    let stored = sink.state.lock().unwrap().0.offsets.cluster.clone().expect("the cluster id stored with the offsets");

    let (_second, brokers, publisher) = kafka_with_topics(&records);
    publisher.send_all(&records).await.unwrap();
    let applied_before = sink.state.lock().unwrap().1.len();
    let mut config = KafkaConfig::new(&brokers, "cdc-test");
    config.progress_secs = 1;
    let message = run_to_error(&config, &sink).await.to_string();
    assert!(message.contains(&*stored) && message.contains("new consumer name"), "{message}");
    assert_eq!(sink.state.lock().unwrap().1.len(), applied_before, "nothing of the new cluster applied");
}

/// A sink that answers at start-up, then goes down for good.
#[derive(Default)]
struct DownAfterStart(std::sync::atomic::AtomicU32);

#[async_trait]
impl Sink for DownAfterStart {
    fn name(&self) -> &str {
        "down-after-start"
    }
    async fn durable_offsets(&mut self) -> Result<Offsets> {
        match self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Ok(Offsets::new()),
            _ => Err(cdc_core::Error::Unavailable { sink: "down".into(), message: "connection refused".into() }),
        }
    }
    async fn apply(&mut self, _: &Batch) -> Result<()> {
        Ok(())
    }
}

/// SIGTERM while the consumer waits out an outage reading the sinks' offsets
/// after an assignment (found by the chaos suite): bounded like a flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_reading_offsets_in_an_outage_is_bounded() {
    let records = fixture_records();
    let (_cluster, brokers, publisher) = kafka_with_topics(&records);
    publisher.send_all(&records[..20]).await.unwrap();
    let mut config = KafkaConfig::new(&brokers, "cdc-test-outage-offsets");
    config.shutdown_timeout_secs = 2;
    let retry = cdc_core::pipeline::RetryPolicy { initial_backoff_ms: 50, max_backoff_ms: 200, ..Default::default() };
    let letters = Box::new(cdc_core::pipeline::MemoryDeadLetters::default());
    let mut pipeline =
        Pipeline::new(Decoder::new(), vec![Box::new(DownAfterStart::default())], letters).with_retry(retry);
    let source = KafkaSource::new(&config, &mut pipeline).await.unwrap();
    let started = std::time::Instant::now();
    let run = source.run_until(&mut pipeline, tokio::time::sleep(Duration::from_secs(8)), None);
    tokio::time::timeout(Duration::from_secs(40), run).await.expect("stopped in time").unwrap();
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
}

/// A record whose letter was stored before the consumer died (its offset not
/// yet durable) is refused again by the restarted consumer: the dead-letter
/// topic still holds one letter for it. Another sink refusing the same
/// record is another letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_redone_after_a_crash_is_dead_lettered_once() {
    use cdc_core::pipeline::{DeadLetter, DeadLetterStore};
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("cdc.public.customers.dlq", 3, 1).unwrap();
    let config = KafkaConfig::new(cluster.bootstrap_servers(), "cdc-test-dlq-once");
    let letter = |offset: i64, sink: Option<&str>| DeadLetter {
        position: Position::new("cdc.public.customers", 0, offset),
        key: Some(b"{\"id\":1}".to_vec()),
        value: Some(b"{\"op\":".to_vec()),
        sink: sink.map(str::to_owned),
        error: "truncated JSON".into(),
    };
    let mut before_the_crash = KafkaDeadLetters::new(&config, ".dlq").unwrap();
    before_the_crash.store(letter(7, None)).await.unwrap();
    before_the_crash.store(letter(8, Some("pg-target"))).await.unwrap();
    drop(before_the_crash);
    let mut restarted = KafkaDeadLetters::new(&config, ".dlq").unwrap();
    restarted.store(letter(7, None)).await.unwrap();
    restarted.store(letter(8, Some("pg-target"))).await.unwrap();
    restarted.store(letter(8, Some("delta"))).await.unwrap();
    restarted.store(letter(9, None)).await.unwrap();

    let reader: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "dlq-count")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&["cdc.public.customers.dlq"]).unwrap();
    // Everything stored, counted by the partitions' ends; then read which.
    let stored: i64 = (0..3)
        .map(|p| {
            let (low, high) = reader.fetch_watermarks("cdc.public.customers.dlq", p, Duration::from_secs(5)).unwrap();
            high - low
        })
        .sum();
    let mut letters = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (letters.len() as i64) < stored && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) {
            let header = |name: &str| {
                let headers = message.headers()?;
                headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| v.to_vec())
            };
            letters.push((header("cdc.offset"), header("cdc.sink")));
        }
    }
    assert_eq!(letters.len() as i64, stored, "every stored letter read");
    letters.sort();
    let expected = vec![
        (Some(b"7".to_vec()), None),
        (Some(b"8".to_vec()), Some(b"delta".to_vec())),
        (Some(b"8".to_vec()), Some(b"pg-target".to_vec())),
        (Some(b"9".to_vec()), None),
    ];
    assert_eq!(letters, expected);
}
