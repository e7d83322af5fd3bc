//! The whole consumer path with real sinks: real-Debezium records through
//! librdkafka's mock cluster, two consumers of one group sharing a Delta root
//! and a PostgreSQL target (the second joins mid-stream, so partitions move),
//! against a replay of the same records from a `kcat -J` style file. Both must
//! end in exactly the same state, each change once in `cdc_events`.
//!
//! Needs CDC_TEST_PG_URL (scripts/test.sh starts a throwaway PostgreSQL).

use std::collections::BTreeMap;
use std::time::Duration;

use cdc_lakehouse::core::jsonl;
use cdc_lakehouse::core::pipeline::{BatchPolicy, MemoryDeadLetters, Pipeline};
use cdc_lakehouse::core::testing::{FixtureRecord, load};
use cdc_lakehouse::core::{Decoder, Sink};
use cdc_lakehouse::kafka::{KafkaConfig, KafkaSource, OutgoingRecord, Publisher};
use cdc_lakehouse::sinks::delta::deltalake::arrow::util::pretty::pretty_format_batches;
use cdc_lakehouse::sinks::delta::time_travel::{self, AsOf};
use cdc_lakehouse::sinks::{DeltaConfig, DeltaSink, PgConnectionConfig, PgTargetSink};
use rdkafka::mocking::MockCluster;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

fn admin_url() -> String {
    std::env::var("CDC_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "CDC_TEST_PG_URL is not set: run the tests with scripts/test.sh, which starts a throwaway \
             PostgreSQL, or point CDC_TEST_PG_URL at a PostgreSQL 13+ server you may create databases on"
        )
    })
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect to the test PostgreSQL");
    tokio::spawn(connection);
    client
}

async fn fresh_database(name: &str) -> String {
    let admin = connect(&admin_url()).await;
    let db = format!("{name}_{}", std::process::id());
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    let url = admin_url();
    format!("{}/{db}", url.rsplit_once('/').expect("URL with a database").0)
}

fn sinks(delta_root: &str, target_url: &str) -> Vec<Box<dyn Sink>> {
    vec![
        Box::new(DeltaSink::new(DeltaConfig::new(delta_root))),
        Box::new(PgTargetSink::new(PgConnectionConfig::new(target_url))),
    ]
}

fn policy() -> BatchPolicy {
    BatchPolicy { max_records: 20, max_bytes: 1 << 30, max_latency_ms: 200 }
}

async fn consume(brokers: String, delta_root: String, target_url: String) -> u64 {
    let mut config = KafkaConfig::new(brokers, "cdc-pipeline-test");
    config.progress_secs = 1;
    config.properties.insert("session.timeout.ms".into(), "6000".into());
    config.properties.insert("heartbeat.interval.ms".into(), "500".into());
    let dead_letters = Box::new(MemoryDeadLetters::default());
    let mut pipeline = Pipeline::new(Decoder::new().keep_raw_json(true), sinks(&delta_root, &target_url), dead_letters)
        .with_policy(policy());
    let source = KafkaSource::new(&config, &mut pipeline).await.unwrap();
    let idle = Some(Duration::from_secs(10));
    source.run_until(&mut pipeline, std::future::pending::<()>(), idle).await.unwrap().records
}

/// The records as `kcat -C -J` prints them: key and payload as strings.
fn kcat_lines(records: &[FixtureRecord]) -> String {
    records
        .iter()
        .map(|r| {
            serde_json::json!({
                "topic": r.topic, "partition": r.partition, "offset": r.offset,
                "tstype": "create", "ts": 0, "broker": 1, "key": r.key, "payload": r.value,
            })
            .to_string()
                + "\n"
        })
        .collect()
}

/// Every table of the target but the sync timestamp, as text, in key order.
async fn target_state(url: &str) -> BTreeMap<String, Vec<String>> {
    let client = connect(url).await;
    let tables = client
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1", &[])
        .await
        .unwrap();
    let mut state = BTreeMap::new();
    for row in tables {
        let table: String = row.get(0);
        let columns: Vec<String> = client
            .query(
                "SELECT quote_ident(column_name) FROM information_schema.columns WHERE table_schema = 'public' \
                 AND table_name = $1 AND column_name <> '_cdc_synced_at' ORDER BY ordinal_position",
                &[&table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let sql = format!("SELECT ({})::text FROM public.{table} ORDER BY 1", columns.join(", "));
        let rows = client.simple_query(&sql).await.unwrap();
        let rows = rows
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_owned()),
                _ => None,
            })
            .collect();
        state.insert(table, rows);
    }
    state
}

/// Every Delta table but the apply timestamp, rendered, in key order.
async fn delta_state(root: &str) -> BTreeMap<String, String> {
    let config = DeltaConfig::new(root);
    let mut state = BTreeMap::new();
    for table in time_travel::list_tables(&config).await.unwrap() {
        let sql = if table == "cdc_events" {
            // Ingest time differs between runs; the rest is the event.
            "SELECT topic, kafka_partition, kafka_offset, op, record_key, after, order_key FROM cdc_events ORDER BY 1, 2, 3".to_owned()
        } else {
            format!("SELECT * EXCEPT (_cdc_applied_at) FROM {table} ORDER BY 1")
        };
        let batches = time_travel::query(&config, &sql, AsOf::Latest).await.unwrap();
        state.insert(table, pretty_format_batches(&batches).unwrap().to_string());
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_with_a_rebalance_equals_a_replay_of_the_same_records() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    let records: Vec<FixtureRecord> =
        load("schemas").into_iter().filter(|r| r.topic.starts_with("cdc.public.")).collect();
    let changes = records.iter().filter(|r| r.value.is_some()).count();
    let work = tempfile::tempdir().unwrap();
    let root = |name: &str| work.path().join(name).to_str().unwrap().to_owned();

    // Through Kafka: one topic per table, the fixture's offsets.
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let topics: std::collections::BTreeSet<&str> = records.iter().map(|r| r.topic.as_str()).collect();
    for topic in &topics {
        cluster.create_topic(topic, 1, 1).unwrap();
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
    publisher.send_all(&outgoing[..half]).await.unwrap();
    let kafka_target = fresh_database("pipeline_kafka").await;
    let first = tokio::spawn(consume(brokers.clone(), root("kafka"), kafka_target.clone()));
    // The first consumer owns every partition and applies the first half
    // before the second joins and takes some of them over.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let second = tokio::spawn(consume(brokers.clone(), root("kafka"), kafka_target.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    publisher.send_all(&outgoing[half..]).await.unwrap();
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    assert!(a > 0 && b > 0, "both consumers took part: {a} and {b} records");

    // The same records from a kcat dump.
    let dump = work.path().join("dump.jsonl");
    std::fs::write(&dump, kcat_lines(&records)).unwrap();
    let replay_target = fresh_database("pipeline_replay").await;
    let mut pipeline = Pipeline::new(
        Decoder::new().keep_raw_json(true),
        sinks(&root("replay"), &replay_target),
        Box::new(MemoryDeadLetters::default()),
    )
    .with_policy(policy());
    let file = std::io::BufReader::new(std::fs::File::open(&dump).unwrap());
    let summary = jsonl::replay(file, "dump.jsonl", &mut pipeline).await.unwrap();
    assert_eq!(summary.records as usize, records.len());
    // products.stock_quantity int -> bigint with 5000000000: both sinks
    // widen the column, nothing is refused.
    assert_eq!(pipeline.stats().dead_letters, 0);

    let (kafka_pg, replay_pg) = (target_state(&kafka_target).await, target_state(&replay_target).await);
    assert!(kafka_pg.len() >= 5 && kafka_pg.values().all(|rows| !rows.is_empty()), "{:?}", kafka_pg.keys());
    assert_eq!(kafka_pg, replay_pg, "PostgreSQL target: Kafka with a rebalance vs replay");

    let (kafka_delta, replay_delta) = (delta_state(&root("kafka")).await, delta_state(&root("replay")).await);
    assert_eq!(kafka_delta.keys().collect::<Vec<_>>(), replay_delta.keys().collect::<Vec<_>>());
    for (table, rendered) in &kafka_delta {
        assert!(
            rendered == &replay_delta[table],
            "Delta table {table}:\n{rendered}\nvs replay:\n{}",
            replay_delta[table]
        );
    }
    // Each change event exactly once in the history, whichever consumer
    // applied it.
    let config = DeltaConfig::new(root("kafka"));
    let count = time_travel::query(&config, "SELECT count(*) AS n FROM cdc_events", AsOf::Latest).await.unwrap();
    let count = pretty_format_batches(&count).unwrap().to_string();
    assert!(count.contains(&format!("| {changes} ")), "{changes} events expected in cdc_events:\n{count}");

    // Rerunning the replay skips everything: the sinks hold it all.
    let mut again =
        Pipeline::new(Decoder::new(), sinks(&root("replay"), &replay_target), Box::new(MemoryDeadLetters::default()));
    let file = std::io::BufReader::new(std::fs::File::open(&dump).unwrap());
    let summary = jsonl::replay(file, "dump.jsonl", &mut again).await.unwrap();
    assert_eq!((summary.records, summary.skipped as usize), (0, records.len()));
    assert_eq!(again.stats().dead_letters, 0);
}
