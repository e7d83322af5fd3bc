//! The main job: consume Debezium topics from Kafka and apply them, exactly
//! once, to Delta Lake, the PostgreSQL data lake and the PostgreSQL target.
//!
//! First run, with nothing installed (an in-process Kafka, generated
//! real-shaped Debezium events, Delta tables under ./deltalake-demo):
//!
//! ```sh
//! cargo run --release --example consumer -- --demo
//! ```
//!
//! Against the docker-compose stack (Kafka on localhost:29092, both PostgreSQL
//! databases), with settings from a TOML file and/or environment variables:
//!
//! ```sh
//! cargo run --release --example consumer -- --config consumer.toml
//! CDC_BROKERS=localhost:29092 CDC_TARGET_URL=postgres://... cargo run --release --example consumer
//! ```
//!
//! Before a run, check the configuration and what it points at (brokers and
//! topics, each PostgreSQL and its privileges, the Delta root, the sinks'
//! stored offsets against the cluster); exits 1 when something needs fixing:
//!
//! ```sh
//! cargo run --release --example consumer -- --config consumer.toml --check
//! ```
mod check;
mod config;
mod demo;

use std::time::{Duration, Instant};

use anyhow::bail;
use cdc_lakehouse::core::Decoder;
use cdc_lakehouse::core::pipeline::{DeadLetterStore, MemoryDeadLetters, Pipeline, op_counts};
use cdc_lakehouse::kafka::{KafkaDeadLetters, KafkaSource, OutgoingRecord, Publisher};
use cdc_lakehouse::sinks::delta::time_travel::{self, AsOf};
use clap::Parser;
use config::Config;

// mimalloc: glibc's malloc was a sixth of the replay profile (many short-lived
// strings per record, freed on other threads than allocated them).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Consume Debezium change events and apply them to Delta Lake and PostgreSQL.
#[derive(Parser)]
struct Args {
    /// Run the embedded demo: an in-process Kafka with generated events,
    /// into Delta tables of its own (never the configured sinks).
    #[arg(long)]
    demo: bool,
    /// Where the demo writes its Delta tables.
    #[arg(long, env = "CDC_DEMO_DELTA_ROOT", default_value = "./deltalake-demo")]
    demo_root: String,
    /// TOML configuration file (see `Config`); environment variables override it.
    #[arg(long, env = "CDC_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Check the configuration and everything it points at, print what to
    /// fix, and exit (1 when something needs fixing).
    #[arg(long, conflicts_with = "demo")]
    check: bool,
    /// Stop after no record arrived for this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    stop_when_idle_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            "info,deltalake_core=error,datafusion=warn,buoyant_kernel=off,delta_kernel=off,librdkafka=error".into()
        }))
        .init();
    let args = Args::parse();
    let mut config = Config::load(args.config.as_deref())?;
    if args.demo {
        return run_demo(config, &args.demo_root).await;
    }
    if args.check {
        let findings = check::run(&config, Duration::from_secs(10)).await;
        for finding in &findings {
            println!("{finding}");
        }
        let failed = findings.iter().filter(|f| !f.ok).count();
        println!("{}", if failed == 0 { "everything checked is ready".to_owned() } else { format!("{failed} to fix") });
        std::process::exit(i32::from(failed > 0));
    }
    if config.delta.enabled as u8 + config.target.enabled as u8 + config.datalake.enabled as u8 == 0 {
        bail!("every sink is switched off: enable at least one of delta, target, datalake");
    }
    let dead_letters: Box<dyn DeadLetterStore> = match config.kafka.dlq_suffix.clone() {
        Some(suffix) => Box::new(KafkaDeadLetters::new(&config.kafka, suffix)?),
        None => Box::new(MemoryDeadLetters::default()),
    };
    let mut pipeline = config.pipeline(dead_letters);
    // Read points count each transaction's changes against its END record.
    if config.delta.enabled
        && config.delta.settings.read_points
        && !config.kafka.topics.iter().any(|t| t.contains("transaction"))
    {
        tracing::warn!(
            topics = ?config.kafka.topics,
            "delta.read_points is on but no topic names the transaction topic (cdc.transaction): \
             no read point will be recorded"
        );
    }
    config.kafka.progress_secs = config.kafka.progress_secs.max(1);
    let source = KafkaSource::new(&config.kafka, &mut pipeline).await?;
    let idle = (args.stop_when_idle_secs > 0).then(|| Duration::from_secs(args.stop_when_idle_secs));
    let summary = source.run_until(&mut pipeline, shutdown_signal(), idle).await?;
    tracing::info!(
        records = summary.records,
        batches = summary.batches,
        dead_letters = summary.dead_letters,
        "stopped cleanly"
    );
    // Everything applied is durable and the group is left. What remains to
    // drop (the dead-letter producer, the runtime's blocking pool) can wait
    // on a peer that is down, and a SIGTERM must end the process within its
    // shutdown timeout (seen in the chaos suite: >10 s after this line).
    std::process::exit(0)
}

/// The demo's Kafka group and the name its positions are stored under.
const DEMO_CONSUMER: &str = "cdc-demo";

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: flushing the open batch");
}

/// The embedded demo: librdkafka's in-process mock cluster, real-shaped
/// Debezium events, the normal consumer path into Delta tables under
/// `demo_root` (and PostgreSQL when CDC_DEMO_TARGET_URL /
/// CDC_DEMO_DATALAKE_URL are set). It never writes where the real consumer
/// does: its positions (offsets of a cluster gone when it ends) and rows
/// would make the real stream's records look already applied.
async fn run_demo(mut config: Config, demo_root: &str) -> anyhow::Result<()> {
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    let brokers = cluster.bootstrap_servers();
    println!("demo: in-process Kafka (librdkafka mock cluster) at {brokers}");
    for table in demo::TABLES {
        cluster.create_topic(&format!("cdc.public.{table}"), demo::PARTITIONS, 1)?;
    }
    let records = demo::Generator::new().generate(&demo::Volume::default());
    println!("demo: publishing {} Debezium records for {} ...", records.len(), demo::TABLES.join(", "));
    let publisher = Publisher::new(&brokers)?;
    let started = Instant::now();
    for chunk in records.chunks(5_000) {
        let batch: Vec<OutgoingRecord> = chunk
            .iter()
            .map(|r| OutgoingRecord {
                topic: r.topic.clone(),
                partition: r.partition,
                key: Some(r.key.clone()),
                value: r.value.clone(),
            })
            .collect();
        publisher.send_all(&batch).await?;
    }
    println!("demo: published in {:.1}s", started.elapsed().as_secs_f64());
    {
        use rdkafka::consumer::Consumer;
        let probe: rdkafka::consumer::BaseConsumer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
        for table in demo::TABLES {
            for p in 0..demo::PARTITIONS {
                let (low, _) = probe.fetch_watermarks(&format!("cdc.public.{table}"), p, Duration::from_secs(5))?;
                if low > 0 {
                    bail!(
                        "the mock cluster dropped the first {low} records of cdc.public.{table}[{p}]: too many for its log"
                    );
                }
            }
        }
    }

    config.kafka.brokers = brokers;
    config.kafka.group_id = DEMO_CONSUMER.into();
    config.kafka.dlq_suffix = None;
    config.kafka.progress_secs = 2;
    config.batch.max_records = 10_000;
    config.delta.enabled = true;
    config.delta.settings.root = demo_root.into();
    config.delta.settings.consumer = DEMO_CONSUMER.into();
    for (toggle, connection, variable) in [
        (&mut config.target.enabled, &mut config.target.settings.connection, "CDC_DEMO_TARGET_URL"),
        (&mut config.datalake.enabled, &mut config.datalake.settings, "CDC_DEMO_DATALAKE_URL"),
    ] {
        let url = std::env::var(variable).ok().filter(|url| !url.is_empty());
        *toggle = url.is_some();
        if let Some(url) = url {
            connection.url = cdc_lakehouse::sinks::PgUrl::new(url);
            connection.consumer = DEMO_CONSUMER.into();
            println!("demo: also into {} ({variable})", connection.url);
        }
    }
    println!("demo: Delta tables under {demo_root} (consumer name {DEMO_CONSUMER})");
    let delta_config = config.delta.settings.clone();
    let mut pipeline =
        Pipeline::new(Decoder::new().keep_raw_json(true), config.sinks(), Box::new(MemoryDeadLetters::default()))
            .with_policy(config.batch.clone());
    let source = KafkaSource::new(&config.kafka, &mut pipeline).await?;
    let started = Instant::now();
    let summary = source.run_until(&mut pipeline, shutdown_signal(), Some(Duration::from_secs(10))).await?;
    println!(
        "\ndemo: consumed {} records in {} batches, {} dead letters ({:.1} s, the last 10 s waiting for more)",
        summary.records,
        summary.batches,
        summary.dead_letters,
        started.elapsed().as_secs_f64()
    );
    println!("\nevents applied by table and op:");
    for ((table, op), n) in &pipeline.stats().events {
        println!("  {table:<22} {op}  {n:>7}");
    }
    println!("  total by op: {:?}", op_counts(pipeline.stats()));
    println!("\nDelta tables under {}:", delta_config.root);
    for table in time_travel::list_tables(&delta_config).await? {
        let history = time_travel::history(&delta_config, &table).await?;
        println!("  {table:<14} version {:>4} ({} commits)", history[0].version, history.len());
    }
    let count = |batches: Vec<cdc_lakehouse::sinks::delta::deltalake::arrow::array::RecordBatch>| {
        cdc_lakehouse::sinks::delta::deltalake::arrow::util::display::array_value_to_string(batches[0].column(0), 0)
            .unwrap_or_default()
    };
    let sql = "SELECT count(*) FROM orders WHERE status = 'pending'";
    let now = count(time_travel::query(&delta_config, sql, AsOf::Latest).await?);
    let then = count(time_travel::query(&delta_config, sql, AsOf::Version(0)).await?);
    println!("\ntime travel: `{sql}` -> {now} now, {then} at version 0");
    println!("\nthe demo wrote to {}", delta_config.root);
    println!(
        "try: cargo run --example query -- --root {} \"SELECT status, count(*) FROM orders GROUP BY status\"",
        delta_config.root
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of a table, as dotted paths.
    fn key_paths(table: &toml::Table, prefix: &str, paths: &mut std::collections::BTreeSet<String>) {
        for (key, value) in table {
            let path = format!("{prefix}{key}");
            if let toml::Value::Table(inner) = value {
                key_paths(inner, &format!("{path}."), paths);
            }
            paths.insert(path);
        }
    }

    /// The example file lists every key the consumer reads, with its default
    /// value (keys unset by default are shown commented out): a key missing
    /// from the file, one the consumer does not read, or another value fails.
    #[test]
    fn the_example_configuration_lists_every_key_with_its_default() {
        let text = include_str!("consumer.example.toml");
        let example: toml::Table = toml::from_str(text).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        let (mut listed, mut read) = (Default::default(), Default::default());
        key_paths(&example, "", &mut listed);
        key_paths(&defaults, "", &mut read);
        let missing: Vec<_> = read.difference(&listed).collect();
        let unknown: Vec<_> = listed.difference(&read).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "missing from the example: {missing:?}; not read: {unknown:?}"
        );
        assert_eq!(example, defaults);
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    }

    /// `[target.tables.<table>]` reaches the target's settings beside its
    /// connection, which keeps its defaults.
    #[test]
    fn target_tables_take_a_mode_of_their_own() {
        let config = Config::from_toml(
            "[target]\nconsumer = \"mine\"\n[target.tables.customers]\nmode = \"scd2\"\n\
             track_history_columns = [\"email\"]\n",
        )
        .unwrap();
        let customers = &config.target.settings.tables["customers"];
        assert_eq!(customers.mode, cdc_lakehouse::sinks::TableMode::Scd2);
        assert_eq!(customers.track_history_columns.as_deref(), Some(&["email".to_owned()][..]));
        assert_eq!(config.target.settings.connection.consumer, "mine");
        assert_eq!(config.target.settings.connection.url, Config::default().target.settings.connection.url);
        assert!(Config::from_toml("[target.tables.customers]\nmode = \"scd3\"\n").is_err());
    }

    /// A section names only what it changes; a switched-off sink needs no settings.
    #[test]
    fn a_section_names_only_what_it_changes() {
        let config = Config::from_toml(
            "[kafka]\ntopics = [\"cdc.public.orders\"]\n[kafka.properties]\n\"fetch.min.bytes\" = \"1\"\n\
             [datalake]\nenabled = false\n[delta]\nsoft_delete = true\n",
        )
        .unwrap();
        let defaults = Config::default();
        assert_eq!(config.kafka.topics, ["cdc.public.orders"]);
        assert_eq!(
            (&config.kafka.brokers, &config.kafka.group_id),
            (&defaults.kafka.brokers, &defaults.kafka.group_id)
        );
        assert_eq!(config.kafka.properties.get("fetch.min.bytes").map(String::as_str), Some("1"));
        assert!(!config.datalake.enabled);
        assert!(config.delta.settings.soft_delete);
        assert_eq!(config.delta.settings.root, defaults.delta.settings.root);
        assert_eq!(Config::from_toml("").unwrap(), defaults);
    }

    /// The demo's records decode to exactly the schemas real Debezium's
    /// records of the same tables have.
    #[test]
    fn demo_records_have_the_fixture_shape() {
        use cdc_lakehouse::core::{RawRecord, Record};
        let mut decoder = Decoder::new();
        let mut fixture_schemas = std::collections::BTreeMap::new();
        for line in include_str!("../tests/fixtures/debezium/schemas.jsonl").lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let topic = record["topic"].as_str().unwrap().to_owned();
            if record["value"]["payload"]["op"] != "r" || fixture_schemas.contains_key(&topic) {
                continue;
            }
            let (key, value) = (record["key"].to_string(), record["value"].to_string());
            let raw = RawRecord {
                topic: &topic,
                partition: 0,
                offset: 0,
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
            };
            if let Record::Change(event) = decoder.decode(raw).unwrap() {
                fixture_schemas.insert(topic.clone(), event.schema.clone());
            }
        }
        let records = demo::Generator::new().generate(&demo::Volume { customers: 20, products: 10, orders: 200 });
        let mut ops = std::collections::BTreeSet::new();
        for (offset, record) in records.iter().enumerate() {
            let raw = RawRecord {
                topic: &record.topic,
                partition: record.partition,
                offset: offset as i64,
                key: Some(&record.key),
                value: record.value.as_deref(),
            };
            match Decoder::new().decode(raw).unwrap() {
                Record::Change(event) => {
                    assert_eq!(*event.schema, *fixture_schemas[&record.topic], "{}", record.topic);
                    ops.insert(event.op.code());
                }
                Record::Tombstone { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(ops.into_iter().collect::<Vec<_>>(), ["c", "d", "u"]);
    }

    /// `--check` passes a ready setup, and names each broken part with what
    /// to fix: brokers nobody answers on, a database that refuses, a Delta
    /// root that cannot be written, sinks holding offsets beyond the topic.
    #[tokio::test]
    async fn the_check_names_what_to_fix() {
        use cdc_lakehouse::core::{Batch, Offsets, Sink};
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("cdc.public.customers", 2, 1).unwrap();
        let pg = std::env::var("CDC_TEST_PG_URL").expect("CDC_TEST_PG_URL (scripts/test.sh sets it)");
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.kafka.brokers = cluster.bootstrap_servers();
        config.delta.settings.root = dir.path().join("delta").to_str().unwrap().into();
        config.target.settings.connection.url = cdc_lakehouse::sinks::PgUrl::new(&pg);
        config.target.settings.connection.consumer = format!("check-test-{}", std::process::id());
        config.datalake.enabled = false;
        let findings = check::run(&config, Duration::from_secs(5)).await;
        assert!(findings.iter().all(|f| f.ok), "{findings:#?}");
        assert_eq!(findings.len(), 5, "configuration, kafka, target, delta root, offsets: {findings:#?}");

        // The sinks hold an offset the topic never reached (Kafka was reset).
        let view = cdc_lakehouse::kafka::inspect(&config.kafka, Duration::from_secs(5)).await.unwrap();
        let mut offsets = Offsets::new();
        offsets.cluster = view.cluster.as_deref().map(std::sync::Arc::from);
        offsets.set("cdc.public.customers".into(), 1, 41);
        let mut target = cdc_lakehouse::sinks::PgTargetSink::new(config.target.settings.connection.clone());
        target.apply(&Batch { offsets, ..Batch::default() }).await.unwrap();
        config.delta.enabled = false;
        let findings = check::run(&config, Duration::from_secs(5)).await;
        let failed: Vec<&check::Finding> = findings.iter().filter(|f| !f.ok).collect();
        assert_eq!(failed.len(), 1, "{findings:#?}");
        assert!(failed[0].detail.contains("cdc.public.customers[1]") && failed[0].detail.contains("41"), "{failed:#?}");

        let mut broken = Config::default();
        broken.kafka.brokers = "127.0.0.1:1".into();
        broken.kafka.topics = vec!["cdc.public.nothing".into()];
        broken.delta.settings.root = "/proc/cdc-check-cannot-write".into();
        broken.target.settings.connection.url = cdc_lakehouse::sinks::PgUrl::new(format!("{pg}_no_such_database"));
        broken.datalake.enabled = false;
        let findings = check::run(&broken, Duration::from_secs(2)).await;
        let failed: Vec<&str> = findings.iter().filter(|f| !f.ok).map(|f| f.subject.as_str()).collect();
        assert_eq!(failed.len(), 3, "{findings:#?}");
        assert!(failed[0].starts_with("kafka 127.0.0.1:1"), "{findings:#?}");
        assert!(failed[1].starts_with("target "), "{findings:#?}");
        assert!(failed[2].starts_with("delta root"), "{findings:#?}");
        assert!(findings.iter().all(|f| !f.to_string().contains("password")), "{findings:#?}");
    }

    /// Security settings reach librdkafka (from the file, from secret files
    /// and from `CDC_KAFKA_*`), and `--check` names a TLS or an
    /// authentication failure plainly, never showing the secret; an S3 root
    /// is probed with a write.
    #[tokio::test]
    async fn the_check_names_tls_and_authentication_failures() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("cdc.public.customers", 1, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("kafka-password");
        std::fs::write(&secret, "hunter2-secret\n").unwrap();
        let mut config = Config::default();
        config.kafka.brokers = cluster.bootstrap_servers();
        config.target.enabled = false;
        config.datalake.enabled = false;
        config.delta.enabled = false;

        // TLS to a broker that speaks plaintext: the handshake fails, and says so.
        config.kafka.properties.insert("security.protocol".into(), "SSL".into());
        let findings = check::run(&config, Duration::from_secs(3)).await;
        let kafka = findings.iter().find(|f| f.subject.starts_with("kafka")).unwrap();
        assert!(!kafka.ok && kafka.detail.contains("SSL"), "{findings:#?}");

        // SASL with the password from a file: the broker does not take it.
        config.kafka.properties.insert("security.protocol".into(), "SASL_PLAINTEXT".into());
        config.kafka.properties.insert("sasl.mechanisms".into(), "SCRAM-SHA-512".into());
        config.kafka.properties.insert("sasl.username".into(), "cdc".into());
        config.kafka.property_files.insert("sasl.password".into(), secret.clone());
        let findings = check::run(&config, Duration::from_secs(3)).await;
        let kafka = findings.iter().find(|f| f.subject.starts_with("kafka")).unwrap();
        assert!(!kafka.ok && kafka.detail.contains("SASL"), "{findings:#?}");
        let shown = format!("{findings:?} {:?}", config.kafka);
        assert!(!shown.contains("hunter2"), "{shown}");
        config.kafka.property_files.insert("sasl.password".into(), dir.path().join("missing"));
        let findings = check::run(&config, Duration::from_secs(3)).await;
        let kafka = findings.iter().find(|f| f.subject.starts_with("kafka")).unwrap();
        assert!(
            !kafka.ok && kafka.detail.contains("sasl.password") && kafka.detail.contains("missing"),
            "{findings:#?}"
        );

        // An S3 root takes a probe write; a wrong endpoint is named.
        let endpoint = std::env::var("CDC_TEST_S3_ENDPOINT").expect("CDC_TEST_S3_ENDPOINT (scripts/test.sh sets it)");
        let mut config = Config::default();
        config.kafka.brokers = cluster.bootstrap_servers();
        config.target.enabled = false;
        config.datalake.enabled = false;
        config.delta.settings.root = format!("s3://cdc-test/check-{}", std::process::id());
        config.delta.settings.storage_options = [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_REGION", "us-east-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let key_file = dir.path().join("s3-secret");
        std::fs::write(&key_file, "s3-secret-value\n").unwrap();
        config.delta.settings.storage_option_files.insert("AWS_SECRET_ACCESS_KEY".into(), key_file);
        let findings = check::run(&config, Duration::from_secs(3)).await;
        let root = findings.iter().find(|f| f.subject.starts_with("delta root")).unwrap();
        assert!(root.ok && root.detail.contains("writable, 0 tables"), "{findings:#?}");
        // (No Kafka: the offsets check would wait for the root too.)
        config.kafka.brokers = "127.0.0.1:1".into();
        config.delta.settings.storage_options.insert("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:1".into());
        config.delta.settings.storage_options.insert("max_retries".into(), "0".into());
        let findings = check::run(&config, Duration::from_secs(3)).await;
        let root = findings.iter().find(|f| f.subject.starts_with("delta root")).unwrap();
        assert!(!root.ok, "{findings:#?}");
        assert!(!format!("{findings:?} {:?}", config.delta.settings).contains("s3-secret-value"), "{findings:#?}");
    }

    #[test]
    fn a_wrong_key_is_named() {
        let error = Config::from_toml("[kafka]\nbroker = \"typo\"\n").unwrap_err();
        assert!(error.to_string().contains("unknown field `broker`"), "{error}");
        let error = Config::from_toml("[delta]\nsoft_delete = \"yes\"\n").unwrap_err();
        assert!(error.to_string().contains("invalid type"), "{error}");
        let error = Config::from_toml("[kafka\n").unwrap_err();
        assert!(error.to_string().contains("line 1"), "{error}");
    }
}
