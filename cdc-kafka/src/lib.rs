// No input may panic the library: errors name the record instead (tests may panic).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented,
        clippy::indexing_slicing
    )
)]
//! Kafka source for the pipeline: a consumer group subscribed to the
//! Debezium topics, partitions started right after the offsets every sink
//! durably holds, Kafka offsets committed only after every sink applied a
//! batch, a dead-letter topic for poison records, clean shutdown.
//!
//! ```no_run
//! # async fn run(pipeline: &mut cdc_core::pipeline::Pipeline) -> cdc_core::Result<()> {
//! use cdc_kafka::{KafkaConfig, KafkaSource};
//!
//! let config = KafkaConfig::new("localhost:29092", "cdc-rust-consumer");
//! let source = KafkaSource::new(&config, pipeline).await?;
//! let summary = source.run(pipeline, tokio::signal::ctrl_c()).await?;
//! println!("{} records", summary.records);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

mod dead_letters;
mod metrics;

pub use dead_letters::KafkaDeadLetters;
pub use metrics::Metrics;

use cdc_core::pipeline::Pipeline;
use cdc_core::{Error, Offsets, RawRecord, Result};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use serde::{Deserialize, Serialize};

/// Where and what to consume. `Debug` hides the values of secret
/// properties (passwords, keys); serialization keeps them, as the
/// configuration file holds them.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Consumer group.
    pub group_id: String,
    /// Topics or, starting with `^`, regular expressions.
    #[serde(default = "default_topics")]
    pub topics: Vec<String>,
    /// Dead-letter topic name: the source topic plus this suffix. Unset keeps
    /// dead letters in the log only (and in memory).
    #[serde(default = "default_dlq_suffix")]
    pub dlq_suffix: Option<String>,
    /// Seconds between progress lines.
    #[serde(default = "default_progress")]
    pub progress_secs: u64,
    /// Extra librdkafka settings (security, timeouts).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka settings whose values are read from files, for secrets
    /// (`sasl.password`, `ssl.key.password`) kept out of the configuration:
    /// `{ "sasl.password" = "/run/secrets/kafka-password" }`. A trailing
    /// newline is not part of the value.
    #[serde(default)]
    pub property_files: BTreeMap<String, std::path::PathBuf>,
    /// Serve Prometheus metrics on this address (`0.0.0.0:9464`); unset: off.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// On shutdown, how long the batch in flight (or its retries during an
    /// outage) may still take before it is abandoned, uncommitted.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
}

fn default_topics() -> Vec<String> {
    vec![r"^cdc\.public\..*".into()]
}
fn default_dlq_suffix() -> Option<String> {
    Some(".dlq".into())
}
fn default_progress() -> u64 {
    10
}
fn default_shutdown_timeout() -> u64 {
    30
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(key, value)| (key.as_str(), if is_secret(key) { "***" } else { value.as_str() }))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("dlq_suffix", &self.dlq_suffix)
            .field("progress_secs", &self.progress_secs)
            .field("properties", &properties)
            .field("property_files", &self.property_files)
            .field("metrics_listen", &self.metrics_listen)
            .field("shutdown_timeout_secs", &self.shutdown_timeout_secs)
            .finish()
    }
}

/// Whether a librdkafka property holds a secret (`sasl.password`,
/// `ssl.key.password`, `ssl.key.pem`, `sasl.oauthbearer.client.secret`, ...).
pub fn is_secret(property: &str) -> bool {
    ["password", "secret", "key.pem", "jaas", "oauthbearer.config"].iter().any(|word| property.contains(word))
}

impl KafkaConfig {
    pub fn new(brokers: impl Into<String>, group_id: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            group_id: group_id.into(),
            topics: default_topics(),
            dlq_suffix: default_dlq_suffix(),
            progress_secs: default_progress(),
            properties: BTreeMap::new(),
            property_files: BTreeMap::new(),
            metrics_listen: None,
            shutdown_timeout_secs: default_shutdown_timeout(),
        }
    }

    /// The topics to subscribe to, from the broker's topic list: the names
    /// given, and the names the regexes match, never a dead-letter topic
    /// (a pattern like `^cdc\.public\..*` also matches `<topic>.dlq`; reading
    /// those back would dead-letter dead letters, `.dlq.dlq`, for ever).
    fn resolve_topics(&self, existing: &[String]) -> Result<Vec<String>> {
        let mut topics = std::collections::BTreeSet::new();
        for wanted in &self.topics {
            if wanted.starts_with('^') {
                let pattern = regex::Regex::new(wanted).map_err(|e| Error::Sink {
                    sink: "kafka".into(),
                    message: format!("topic pattern {wanted:?} is not a regular expression: {e}"),
                    retriable: false,
                })?;
                topics.extend(existing.iter().filter(|t| pattern.is_match(t)).cloned());
            } else {
                topics.insert(wanted.clone());
            }
        }
        if let Some(suffix) = self.dlq_suffix.as_deref().filter(|s| !s.is_empty()) {
            topics.retain(|t| !t.ends_with(suffix) || self.topics.contains(t));
        }
        Ok(topics.into_iter().collect())
    }

    fn client(&self) -> Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        for (key, path) in &self.property_files {
            let value = std::fs::read_to_string(path).map_err(|e| Error::Sink {
                sink: "kafka".into(),
                message: format!("reading kafka.property_files.{key:?} ({}): {e}", path.display()),
                retriable: false,
            })?;
            config.set(key, value.trim_end_matches(['\n', '\r']));
        }
        Ok(config)
    }
}

/// Keeps the distinct reasons of librdkafka's error events (the first few),
/// which name what a request's own error does not: "SSL handshake failed",
/// "SASL authentication error".
#[derive(Default)]
struct ErrorReasons(Mutex<Vec<String>>);

impl ClientContext for ErrorReasons {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka error event");
        let mut reasons = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if reasons.len() < 3 && !reasons.iter().any(|r| r == reason) {
            reasons.push(reason.to_owned());
        }
    }
}

impl ConsumerContext for ErrorReasons {}

/// What the brokers say, for a configuration check (`consumer --check`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    /// The cluster's id, the one the sinks store with their offsets.
    pub cluster: Option<String>,
    /// Every topic on the cluster.
    pub existing: Vec<String>,
    /// The topics the configuration selects, with each partition's end (high watermark).
    pub selected: BTreeMap<String, Vec<i64>>,
}

/// Asks the brokers `config` names (with its librdkafka properties, so TLS
/// and authentication take part) for the cluster id, the topics and the end
/// of each selected partition. Fails when they cannot be reached in `wait`,
/// with librdkafka's reason (TLS, authentication, resolution, refusal).
pub async fn inspect(config: &KafkaConfig, wait: Duration) -> Result<ClusterView> {
    let consumer: BaseConsumer<ErrorReasons> =
        config.client()?.create_with_context(ErrorReasons::default()).map_err(kafka_error)?;
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(None, wait).map_err(|error| {
            // The request's error says only "transport failure"; the reason
            // (an SSL handshake, SASL authentication) came in an error
            // event, which a poll delivers.
            for _ in 0..5 {
                let _ = consumer.poll(Duration::from_millis(20));
            }
            let reasons = consumer.context().0.lock().unwrap_or_else(PoisonError::into_inner).join("; ");
            match kafka_error(error) {
                Error::Unavailable { sink, message } if !reasons.is_empty() => {
                    Error::Unavailable { sink, message: format!("{message}: {reasons}") }
                }
                other => other,
            }
        })?;
        let existing: Vec<String> = metadata.topics().iter().map(|t| t.name().to_owned()).collect();
        let mut selected = BTreeMap::new();
        for topic in config.resolve_topics(&existing)? {
            let partitions = metadata.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
            let ends = (0..partitions as i32)
                .map(|partition| consumer.fetch_watermarks(&topic, partition, wait).map(|(_, end)| end))
                .collect::<std::result::Result<Vec<i64>, _>>()
                .map_err(kafka_error)?;
            selected.insert(topic, ends);
        }
        let cluster = consumer.client().fetch_cluster_id(wait);
        Ok(ClusterView { cluster, existing, selected })
    })
    .await
    .map_err(|e| Error::Sink { sink: "kafka".into(), message: e.to_string(), retriable: false })?
}

/// A sink offset at or beyond its partition's end (`end`, the high
/// watermark) was stored for another incarnation of the topic (recreated, or
/// a new Kafka cluster such as a fresh docker-compose stack): resuming would
/// silently skip every record up to it. The error says so and what to do.
pub fn beyond_partition_end(topic: &str, partition: i32, offset: i64, end: i64) -> Option<Error> {
    (offset >= end).then(|| Error::Sink {
        sink: "kafka".into(),
        message: format!(
            "{topic}[{partition}]: the sinks hold offset {offset} but the partition ends at {end}: the topic \
             was recreated or this is another Kafka cluster, and resuming would skip every record up to \
             {offset}. Start over with a new consumer name (delta.consumer, target.consumer, \
             datalake.consumer) and fresh tables, or delete this consumer's offsets from the sinks"
        ),
        retriable: false,
    })
}

pub(crate) fn kafka_error(error: rdkafka::error::KafkaError) -> Error {
    Error::Unavailable { sink: "kafka".into(), message: error.to_string() }
}

/// Shared between the consumer's rebalance callback and the run loop.
#[derive(Default)]
struct Shared {
    /// Where each partition resumes: after the offset every sink holds.
    resume: Offsets,
    /// Partitions revoked since the loop last looked.
    revoked: Vec<(String, i32)>,
    /// Partitions assigned since the loop last looked.
    newly_assigned: Vec<(String, i32)>,
    assigned: Vec<(String, i32)>,
    /// Per partition: records not yet durably applied (from librdkafka's
    /// statistics: high watermark minus the committed offset).
    lag: BTreeMap<(String, i32), i64>,
    /// Counts rebalance events; the reader tags each message with it.
    generation: u64,
    /// The generation at which each assigned partition was assigned: a
    /// message tagged earlier was fetched under an older assignment (and
    /// may be ahead of where the partition restarts, or belong to another
    /// member now), so it is dropped.
    assigned_at: BTreeMap<(String, i32), u64>,
}

impl Shared {
    /// Whether a message read at `generation` belongs to the current assignment.
    fn current(&self, topic: &str, partition: i32, generation: u64) -> bool {
        self.assigned_at.get(&(topic.to_owned(), partition)).is_some_and(|&since| generation >= since)
    }
}

/// Starts assigned partitions right after what the sinks hold.
struct Context {
    shared: Arc<Mutex<Shared>>,
}

impl ClientContext for Context {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        for (topic, stats) in statistics.topics {
            for (partition, p) in stats.partitions {
                // Partition -1 is librdkafka's internal queue; -1 lag is unknown.
                if partition >= 0 && p.consumer_lag >= 0 {
                    shared.lag.insert((topic.clone(), partition), p.consumer_lag);
                }
            }
        }
        let assigned = shared.assigned.clone();
        shared.lag.retain(|tp, _| assigned.contains(tp));
    }
}

impl ConsumerContext for Context {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let elements: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
                for (topic, partition) in &elements {
                    if let Some(held) = shared.resume.get(topic, *partition) {
                        let _ = tpl.set_partition_offset(topic, *partition, Offset::Offset(held + 1));
                    }
                }
                tracing::info!(partitions = %summarize(&elements), "assigned");
                shared.generation += 1;
                let generation = shared.generation;
                shared.assigned_at.extend(elements.iter().map(|tp| (tp.clone(), generation)));
                shared.assigned.extend(elements.iter().cloned());
                shared.newly_assigned.extend(elements);
                if let Err(error) = consumer.assign(tpl) {
                    tracing::error!(%error, "assigning partitions failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let elements: Vec<(String, i32)> =
                    tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
                tracing::info!(partitions = %summarize(&elements), "revoked");
                shared.generation += 1;
                for tp in &elements {
                    shared.assigned_at.remove(tp);
                }
                shared.assigned.retain(|p| !elements.contains(p));
                shared.revoked.extend(elements);
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "unassigning partitions failed");
                }
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

/// `topic[p,q,...]` per topic: readable even with hundreds of partitions.
fn summarize(partitions: &[(String, i32)]) -> String {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic.entry(topic).or_default().push(*partition);
    }
    let topics: Vec<String> = by_topic
        .into_iter()
        .map(|(topic, mut ps)| {
            ps.sort_unstable();
            let listed: Vec<String> = ps.iter().take(8).map(i32::to_string).collect();
            let more = if ps.len() > 8 { format!(",... {} in all", ps.len()) } else { String::new() };
            format!("{topic}[{}{more}]", listed.join(","))
        })
        .collect();
    topics.join(" ")
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    pub records: u64,
    pub batches: u64,
    pub dead_letters: u64,
}

/// The Kafka consumer feeding a [`Pipeline`].
pub struct KafkaSource {
    consumer: Arc<StreamConsumer<Context>>,
    shared: Arc<Mutex<Shared>>,
    config: KafkaConfig,
    /// The topic names subscribed to (resolved from the patterns).
    subscribed: Vec<String>,
    progress: Duration,
    metrics: Option<(Arc<Metrics>, std::net::SocketAddr)>,
}

/// How often the topic patterns are matched against the broker's topics.
const TOPIC_REFRESH: Duration = Duration::from_secs(5);

impl KafkaSource {
    /// Creates the consumer (no auto-commit, earliest offset for partitions
    /// no sink holds) and subscribes; partitions start after the offsets the
    /// pipeline's sinks hold.
    pub async fn new(config: &KafkaConfig, pipeline: &mut Pipeline) -> Result<KafkaSource> {
        let resume = pipeline.resume_offsets().await?;
        let shared = Arc::new(Mutex::new(Shared { resume, ..Shared::default() }));
        let mut client = config.client()?;
        if !config.properties.contains_key("partition.assignment.strategy") {
            // Debezium writes one topic per table, often of one partition: the
            // default range assignor would give every such topic to one member.
            client.set("partition.assignment.strategy", "roundrobin");
        }
        client
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("topic.metadata.refresh.interval.ms", "5000")
            .set("statistics.interval.ms", (config.progress_secs.max(1) * 1000).to_string());
        let consumer: StreamConsumer<Context> =
            client.create_with_context(Context { shared: shared.clone() }).map_err(kafka_error)?;
        let metrics = match &config.metrics_listen {
            Some(listen) => {
                let metrics = Arc::new(Metrics::default());
                Some((metrics.clone(), metrics.serve(listen).await?))
            }
            None => None,
        };
        let mut source = KafkaSource {
            consumer: Arc::new(consumer),
            shared,
            config: config.clone(),
            subscribed: Vec::new(),
            progress: Duration::from_secs(config.progress_secs.max(1)),
            metrics,
        };
        source.refresh_subscription().await?;
        Ok(source)
    }

    /// Subscribes to the topics the configured names and patterns select
    /// now (dead-letter topics excluded); a new matching topic joins at the
    /// next refresh.
    async fn refresh_subscription(&mut self) -> Result<()> {
        let existing = if self.config.topics.iter().any(|t| t.starts_with('^')) {
            let consumer = self.consumer.clone();
            let metadata = tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, Duration::from_secs(10)))
                .await
                .map_err(|e| Error::Sink { sink: "kafka".into(), message: e.to_string(), retriable: false })?;
            match metadata {
                Ok(metadata) => metadata.topics().iter().map(|t| t.name().to_owned()).collect(),
                Err(error) => {
                    // The broker is away: keep what we have, try again later.
                    tracing::warn!(%error, "listing topics failed");
                    return Ok(());
                }
            }
        } else {
            Vec::new()
        };
        let topics = self.config.resolve_topics(&existing)?;
        if topics != self.subscribed && !topics.is_empty() {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            self.consumer.subscribe(&names).map_err(kafka_error)?;
            tracing::info!(topics = names.len(), "subscribed");
            self.subscribed = topics;
        }
        Ok(())
    }

    /// Where the Prometheus metrics are served, when `metrics_listen` is set.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|(_, address)| *address)
    }

    fn update_metrics(&self, pipeline: &Pipeline) {
        if let Some((metrics, _)) = &self.metrics {
            let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            metrics.update(pipeline.stats(), shared.assigned.len(), &shared.lag);
        }
    }

    /// Consumes until `shutdown` completes: batches by the pipeline's policy,
    /// commits to Kafka after every sink applied a batch, flushes and commits
    /// the open batch on shutdown.
    pub async fn run(self, pipeline: &mut Pipeline, shutdown: impl std::future::Future) -> Result<RunSummary> {
        self.run_until(pipeline, shutdown, None).await
    }

    /// Like [`run`](Self::run), and also stops once no record arrived for
    /// `idle` after the first one (a backfill, the demo), or when none
    /// arrived within a minute.
    pub async fn run_until(
        mut self,
        pipeline: &mut Pipeline,
        shutdown: impl std::future::Future,
        idle: Option<Duration>,
    ) -> Result<RunSummary> {
        let shutdown = futures::FutureExt::fuse(shutdown);
        tokio::pin!(shutdown);
        let mut last_refresh = Instant::now();
        let started = Instant::now();
        let mut last_message: Option<Instant> = None;
        let mut last_progress = Instant::now();
        let mut last_records = 0;
        let tick = Duration::from_millis(100);
        // A reader task keeps librdkafka's queue drained (and its rebalance
        // callbacks served) while the sinks apply a batch.
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<(OwnedMessage, u64)>(20_000);
        let consumer = self.consumer.clone();
        let shared = self.shared.clone();
        let reader = tokio::spawn(async move {
            loop {
                match consumer.recv().await {
                    Ok(message) => {
                        // Rebalance callbacks run inside recv(): the generation
                        // read now is the one this message was fetched under.
                        let generation = shared.lock().map(|s| s.generation).unwrap_or_default();
                        if sender.send((message.detach(), generation)).await.is_err() {
                            break;
                        }
                    }
                    Err(error) => tracing::warn!(%error, "Kafka consumer error"),
                }
            }
        });
        loop {
            let message = tokio::select! {
                _ = &mut shutdown => break,
                message = tokio::time::timeout(tick, receiver.recv()) => message,
            };
            let (revoked, assigned) = {
                let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
                (std::mem::take(&mut shared.revoked), std::mem::take(&mut shared.newly_assigned))
            };
            if !revoked.is_empty() {
                pipeline.abandon(&revoked);
            }
            if !assigned.is_empty() {
                // Reading the sinks' offsets waits out an outage: bounded by shutdown too.
                let catch_up = self.catch_up(pipeline, assigned);
                match self.until_shutdown(catch_up, &mut shutdown).await? {
                    Flushed::Done => {}
                    Flushed::Stopping => break,
                    Flushed::Abandoned => return self.abandoned(reader, pipeline).await,
                }
            }
            match message {
                Ok(Some((message, generation))) => {
                    last_message = Some(Instant::now());
                    let current = {
                        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
                        shared.current(message.topic(), message.partition(), generation)
                    };
                    if !current {
                        continue; // fetched before a rebalance: its new owner (or our restart) reads it again
                    }
                    let record = RawRecord {
                        topic: message.topic(),
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key(),
                        value: message.payload(),
                    };
                    pipeline.push(record).await?;
                }
                Ok(None) => break,
                Err(_) => {} // no message within the tick: check the latency limit
            }
            let quiet = match last_message {
                Some(last) => idle.is_some_and(|idle| last.elapsed() >= idle),
                None => idle.is_some() && started.elapsed() >= Duration::from_secs(60),
            };
            if quiet {
                break;
            }
            if pipeline.pending() > 0 && pipeline.due() {
                // The sinks apply it while the next batch is read and decoded.
                let flush = self.commit_applied(pipeline, Applying::InBackground);
                match self.until_shutdown(flush, &mut shutdown).await? {
                    Flushed::Done => {}
                    Flushed::Stopping => break,
                    Flushed::Abandoned => return self.abandoned(reader, pipeline).await,
                }
            } else {
                // A batch that finished meanwhile is committed now, not with the next one.
                self.commit_applied(pipeline, Applying::Nothing).await?;
            }
            if last_refresh.elapsed() >= TOPIC_REFRESH {
                self.refresh_subscription().await?;
                last_refresh = Instant::now();
            }
            if last_progress.elapsed() >= self.progress {
                let records = pipeline.stats().records;
                self.update_metrics(pipeline);
                self.log_progress(pipeline, (records - last_records) as f64 / last_progress.elapsed().as_secs_f64());
                last_progress = Instant::now();
                last_records = records;
            }
        }
        reader.abort();
        let _ = reader.await; // releases its handle on the consumer, which leaves the group when dropped
        let limit = Duration::from_secs(self.config.shutdown_timeout_secs);
        if tokio::time::timeout(limit, self.commit_applied(pipeline, Applying::Wait)).await.is_err() {
            tracing::warn!(?limit, "shutdown: the last batch did not finish in time; abandoned, nothing committed");
        }
        Ok(summary(pipeline))
    }

    /// Runs work that talks to the sinks (a flush, reading their offsets),
    /// and if shutdown is asked for meanwhile, lets it go on for at most
    /// `shutdown_timeout_secs`: work retrying through an outage would
    /// otherwise hold the process for ever. Abandoned work commits nothing:
    /// sinks are atomic per batch, so the next run starts from what they hold.
    async fn until_shutdown<W, S>(
        &self,
        work: W,
        shutdown: &mut std::pin::Pin<&mut futures::future::Fuse<S>>,
    ) -> Result<Flushed>
    where
        W: std::future::Future<Output = Result<()>>,
        S: std::future::Future,
    {
        tokio::pin!(work);
        tokio::select! {
            result = &mut work => return result.map(|()| Flushed::Done),
            _ = shutdown.as_mut() => {}
        }
        let limit = Duration::from_secs(self.config.shutdown_timeout_secs);
        tracing::info!(?limit, "shutdown asked for while the sinks work; giving them time to finish");
        match tokio::time::timeout(limit, &mut work).await {
            Ok(result) => result.map(|()| Flushed::Stopping),
            Err(_) => {
                tracing::warn!(?limit, "shutdown: the sinks did not finish in time; abandoned, nothing committed");
                Ok(Flushed::Abandoned)
            }
        }
    }

    async fn abandoned(self, reader: tokio::task::JoinHandle<()>, pipeline: &mut Pipeline) -> Result<RunSummary> {
        reader.abort();
        let _ = reader.await;
        Ok(summary(pipeline))
    }

    /// Partitions that moved here may have advanced under their previous
    /// owner (the sinks are shared): re-read what the sinks hold now and skip
    /// ahead, rather than have the sinks skip a stretch already applied.
    async fn catch_up(&self, pipeline: &mut Pipeline, assigned: Vec<(String, i32)>) -> Result<()> {
        if pipeline.cluster().is_none() {
            // Asked here, not at start-up: with partitions assigned the
            // broker is reachable, and nothing was applied yet.
            let consumer = self.consumer.clone();
            match tokio::task::spawn_blocking(move || consumer.client().fetch_cluster_id(Duration::from_secs(10))).await
            {
                Ok(Some(cluster)) => pipeline.set_cluster(&cluster),
                _ => tracing::warn!("the Kafka cluster id is unknown; offsets are stored without it"),
            }
        }
        let consumer = self.consumer.clone();
        let subscribed = self.subscribed.clone();
        let counts = tokio::task::spawn_blocking(move || {
            let metadata = consumer.fetch_metadata(None, Duration::from_secs(10)).ok()?;
            let counts: BTreeMap<Arc<str>, i32> = metadata
                .topics()
                .iter()
                .filter(|t| subscribed.iter().any(|s| s == t.name()))
                .map(|t| (Arc::from(t.name()), i32::try_from(t.partitions().len()).unwrap_or(i32::MAX)))
                .collect();
            Some(counts)
        })
        .await;
        match counts {
            Ok(Some(counts)) => pipeline.set_partition_counts(counts),
            _ => tracing::debug!("partition counts unknown; nothing is pruned"),
        }
        // Fails if a sink's offsets belong to another Kafka cluster.
        let held = pipeline.resume_offsets().await?;
        self.check_not_reset(&held, &assigned).await?;
        let mut seeks = Vec::new();
        {
            let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            for (topic, partition) in assigned {
                let Some(offset) = held.get(&topic, partition) else { continue };
                if shared.resume.get(&topic, partition).is_none_or(|known| known < offset) {
                    shared.resume.set(topic.as_str().into(), partition, offset);
                    seeks.push((topic, partition, offset + 1));
                }
            }
        }
        if seeks.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || {
            for (topic, partition, offset) in seeks {
                // A failed seek costs time, not correctness: the sinks skip what they hold.
                match consumer.seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(5)) {
                    Ok(()) => tracing::info!(topic, partition, offset, "skipped ahead to what the sinks hold"),
                    Err(error) => tracing::debug!(topic, partition, %error, "seek after assignment failed"),
                }
            }
        })
        .await
        .map_err(|e| Error::Sink { sink: "kafka".into(), message: e.to_string(), retriable: false })
    }

    /// Sinks that hold an offset at or beyond a partition's end were fed by
    /// another incarnation of the topic (recreated, or a new Kafka cluster
    /// such as a fresh docker-compose stack): resuming would silently skip
    /// every record up to that offset. Stop with an error that says so.
    async fn check_not_reset(&self, held: &Offsets, assigned: &[(String, i32)]) -> Result<()> {
        let checks: Vec<(String, i32, i64)> =
            assigned.iter().filter_map(|(t, p)| Some((t.clone(), *p, held.get(t, *p)?))).collect();
        if checks.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let beyond = tokio::task::spawn_blocking(move || {
            checks.into_iter().find_map(|(topic, partition, offset)| {
                match consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10)) {
                    Ok((_, end)) => beyond_partition_end(&topic, partition, offset, end),
                    Err(error) => {
                        tracing::warn!(topic, partition, %error, "reading the partition's end failed");
                        None
                    }
                }
            })
        })
        .await
        .map_err(|e| Error::Sink { sink: "kafka".into(), message: e.to_string(), retriable: false })?;
        beyond.map_or(Ok(()), Err)
    }

    fn log_progress(&self, pipeline: &Pipeline, rate: f64) {
        let stats = pipeline.stats();
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let lag_total: i64 = shared.lag.values().sum();
        // The five partitions furthest behind; the metrics endpoint has them all.
        let mut behind: Vec<(&(String, i32), &i64)> = shared.lag.iter().filter(|(_, lag)| **lag > 0).collect();
        behind.sort_by_key(|(_, lag)| std::cmp::Reverse(**lag));
        let mut lagging: Vec<String> = behind.iter().take(5).map(|((t, p), lag)| format!("{t}[{p}]={lag}")).collect();
        if behind.len() > 5 {
            lagging.push(format!("+{} more", behind.len() - 5));
        }
        let sinks: Vec<String> =
            pipeline.sinks().iter().filter_map(|s| Some(format!("{}: {}", s.name(), s.status()?))).collect();
        // Where the last batch's time went, per sink.
        let stages: Vec<String> = stats
            .sink_stages
            .iter()
            .map(|(sink, stages)| format!("{sink}: {}", cdc_core::StageTimes::describe(stages.last())))
            .collect();
        tracing::info!(
            records = stats.records,
            rate = format!("{rate:.0}/s"),
            batches = stats.batches,
            last_batch_ms = stats.last_batch.as_millis() as u64,
            last_batch_stages = stages.join("; "),
            decoding_ms = stats.decoding.as_millis() as u64,
            waiting_for_sinks_ms = stats.waiting_for_sinks.as_millis() as u64,
            assigned = shared.assigned.len(),
            lag = lag_total,
            lagging = lagging.join(" "),
            sinks = sinks.join("; "),
            dead_letters = stats.dead_letters,
            "progress"
        );
    }

    /// Hands the open batch to the sinks (waiting for them, or not) and
    /// commits to Kafka what they applied meanwhile.
    async fn commit_applied(&self, pipeline: &mut Pipeline, applying: Applying) -> Result<()> {
        let applied = match applying {
            Applying::InBackground => pipeline.submit().await?,
            Applying::Wait => pipeline.flush().await?,
            Applying::Nothing => pipeline.take_applied().await?,
        };
        self.update_metrics(pipeline);
        if applied.is_empty() {
            return Ok(());
        }
        // The sinks hold it now: a later rebalance resumes after it.
        let mut commit = TopicPartitionList::new();
        {
            let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.resume.merge(&applied);
            for (topic, partition, offset) in applied.iter() {
                if shared.assigned.iter().any(|(t, p)| t == topic && *p == partition) {
                    let _ = commit.add_partition_offset(topic, partition, Offset::Offset(offset + 1));
                }
            }
        }
        // Group offsets serve monitoring; the sinks' offsets are the truth.
        if commit.count() > 0
            && let Err(error) = self.consumer.commit(&commit, CommitMode::Async)
        {
            tracing::warn!(%error, "committing offsets to Kafka failed");
        }
        Ok(())
    }
}

/// What [`KafkaSource::commit_applied`] does with the open batch.
enum Applying {
    /// Submits it; the sinks apply it while the next batch is read.
    InBackground,
    /// Applies it and waits for every batch in flight.
    Wait,
    /// Leaves it open: only commits what finished meanwhile.
    Nothing,
}

/// How sink work that raced a shutdown ended.
enum Flushed {
    Done,
    /// Finished after shutdown was asked for: stop now.
    Stopping,
    /// Did not finish within the shutdown timeout: dropped, uncommitted.
    Abandoned,
}

fn summary(pipeline: &Pipeline) -> RunSummary {
    let stats = pipeline.stats();
    RunSummary { records: stats.records, batches: stats.batches, dead_letters: stats.dead_letters }
}

/// A record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    pub topic: String,
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Publishes records (for the demo, tests and benchmarks).
pub struct Publisher {
    producer: FutureProducer,
}

impl Publisher {
    pub fn new(brokers: &str) -> Result<Publisher> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .set("message.max.bytes", "10000000")
            .create()
            .map_err(kafka_error)?;
        Ok(Publisher { producer })
    }

    /// Sends one record to a partition and waits for it to be stored.
    pub async fn send(&self, topic: &str, partition: i32, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<i64> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).partition(partition);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        let delivery = self.producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| kafka_error(e))?;
        Ok(delivery.offset)
    }

    /// Sends many records, waiting for all of them.
    pub async fn send_all(&self, records: &[OutgoingRecord]) -> Result<()> {
        let sends = records.iter().map(|r| self.send(&r.topic, r.partition, r.key.as_deref(), r.value.as_deref()));
        for result in futures::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{KafkaConfig, Shared, summarize};

    #[test]
    fn patterns_never_select_dead_letter_topics() {
        let config = KafkaConfig::new("localhost:9092", "g");
        let existing: Vec<String> =
            ["cdc.public.orders", "cdc.public.orders.dlq", "cdc.public.orders.dlq.dlq", "other.public.x"]
                .map(String::from)
                .to_vec();
        assert_eq!(config.resolve_topics(&existing).unwrap(), vec!["cdc.public.orders".to_owned()]);
    }

    #[test]
    fn messages_read_before_an_assignment_are_not_current() {
        let mut shared = Shared::default();
        let tp = ("cdc.public.orders".to_owned(), 0);
        shared.generation = 3;
        shared.assigned_at.insert(tp.clone(), 3);
        assert!(shared.current(&tp.0, 0, 3));
        assert!(!shared.current(&tp.0, 0, 2), "read under the previous assignment");
        shared.assigned_at.remove(&tp);
        assert!(!shared.current(&tp.0, 0, 4), "revoked");
    }

    #[test]
    fn partition_lists_stay_short() {
        let mut partitions: Vec<(String, i32)> = (0..10).rev().map(|p| ("cdc.public.orders".to_owned(), p)).collect();
        partitions.push(("cdc.public.customers".into(), 3));
        assert_eq!(summarize(&partitions), "cdc.public.customers[3] cdc.public.orders[0,1,2,3,4,5,6,7,... 10 in all]");
    }
}
