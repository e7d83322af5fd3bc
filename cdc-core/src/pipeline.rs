//! The source-agnostic pipeline: decode, batch, fan out to every sink, isolate
//! poison records, report the offsets that are safe to commit. The Kafka
//! consumer, the replay tool and the tests drive this same code.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::catalog::SchemaCatalog;
use crate::decode::{DecodeWorker, Decoder, Prepared, RawRecord};
use crate::error::{Error, Position, Result};
use crate::event::{ChangeEvent, Record};
use crate::renames::{RenameDetection, Renames};
use crate::sink::{Batch, Offsets, Sink};

/// When to cut a batch: whichever limit is reached first.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchPolicy {
    /// Records per batch.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Bytes of record keys and values per batch.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Milliseconds since the batch's first record.
    #[serde(default = "default_max_latency_ms")]
    pub max_latency_ms: u64,
}

fn default_max_records() -> usize {
    50_000
}
fn default_max_bytes() -> usize {
    64 << 20
}
fn default_max_latency_ms() -> u64 {
    1_000
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            max_latency_ms: default_max_latency_ms(),
        }
    }
}

/// What happens to a record that cannot be decoded or applied.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Send it to the dead-letter store and go on.
    #[default]
    DeadLetter,
    /// Stop the pipeline with the error.
    FailFast,
}

/// A record that could not be decoded, or that a sink could not apply.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub position: Position,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// The sink that refused it; `None` when it could not be decoded.
    pub sink: Option<String>,
    pub error: String,
}

/// Where dead letters go (a Kafka topic, a table, memory).
#[async_trait]
pub trait DeadLetterStore: Send {
    /// Stores the record durably before returning `Ok`.
    async fn store(&mut self, letter: DeadLetter) -> Result<()>;
}

/// Dead letters kept in memory (tests, the demo).
#[derive(Debug, Default)]
pub struct MemoryDeadLetters {
    pub letters: Vec<DeadLetter>,
}

#[async_trait]
impl DeadLetterStore for MemoryDeadLetters {
    async fn store(&mut self, letter: DeadLetter) -> Result<()> {
        self.letters.push(letter);
        Ok(())
    }
}

/// Backoff for sink failures that may pass (an outage, a lost race).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default = "default_initial_ms")]
    pub initial_backoff_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Give up after this many attempts; unset retries until shutdown.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// A retriable error that is not an outage (no SQLSTATE, a conflict)
    /// and repeats identically this many times on the same batch is taken
    /// as bad data: the batch is split and the event that causes it is
    /// dead-lettered, rather than retried for ever. Outages never are.
    #[serde(default = "default_max_identical_errors")]
    pub max_identical_errors: u32,
}

fn default_initial_ms() -> u64 {
    500
}
fn default_max_backoff_ms() -> u64 {
    30_000
}
fn default_max_identical_errors() -> u32 {
    10
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff_ms: default_initial_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            max_attempts: None,
            max_identical_errors: default_max_identical_errors(),
        }
    }
}

impl RetryPolicy {
    /// How long to wait after failed attempt number `attempt` (1-based), or
    /// `None` when the policy gives up.
    pub fn wait_after(&self, attempt: u32) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| attempt >= max) {
            return None;
        }
        let wait = self.initial_backoff_ms.saturating_mul(1 << attempt.min(16).saturating_sub(1));
        Some(Duration::from_millis(wait.min(self.max_backoff_ms)))
    }
}

/// Asks a catalog, retrying a few times while it cannot be reached; then the
/// error stops the pipeline: the record is fine, only its types are missing.
async fn ask_catalog<'c, T, F>(
    catalog: &'c dyn SchemaCatalog,
    retry: &RetryPolicy,
    table: &str,
    ask: impl Fn(&'c dyn SchemaCatalog) -> F,
) -> Result<T>
where
    F: std::future::Future<Output = Result<T>>,
{
    const ATTEMPTS: u32 = 5;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match ask(catalog).await {
            Err(error) if error.is_outage() && attempt < ATTEMPTS => {
                let wait = retry.wait_after(attempt).unwrap_or(Duration::from_secs(1));
                tracing::warn!(%error, catalog = catalog.name(), table, "catalog unreachable; retrying");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Counters for progress lines and the demo's summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineStats {
    /// Change events applied, by `schema.table` and op code.
    pub events: BTreeMap<(String, &'static str), u64>,
    pub records: u64,
    pub batches: u64,
    pub dead_letters: u64,
    /// From the last batch's first record to every sink holding it.
    pub last_batch: Duration,
    /// Time spent decoding records (in [`Pipeline::push`]).
    pub decoding: Duration,
    /// Time the caller waited for the sinks to finish a batch.
    pub waiting_for_sinks: Duration,
    /// Each sink's time by stage, as of the last batch applied.
    pub sink_stages: Vec<(String, crate::sink::StageTimes)>,
}

/// A record's key and value bytes.
type RawBytes = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The dead-letter store, shared by decoding (the caller's task) and the
/// sinks' task applying a batch meanwhile.
type SharedLetters = Arc<tokio::sync::Mutex<Box<dyn DeadLetterStore>>>;

/// A batch the sinks are applying in their own task.
struct InFlight {
    task: tokio::task::JoinHandle<Applied>,
    offsets: Offsets,
    /// Change events of the batch by table and op, counted once applied.
    events: BTreeMap<(String, &'static str), u64>,
}

/// What the sinks' task hands back: the sinks themselves, and how it went.
struct Applied {
    sinks: Vec<Box<dyn Sink>>,
    result: Result<()>,
    dead_letters: u64,
    /// From the batch's first record to every sink holding it.
    took: Duration,
}

/// Decodes records, batches them, applies each batch to every sink.
pub struct Pipeline {
    /// Finishes records in the order they were pushed (see [`DecodeWorker`]).
    decoder: Decoder,
    /// One per decode thread.
    workers: Vec<DecodeWorker>,
    /// Records pushed and not decoded yet, decoded together on the threads.
    undecoded: Vec<OwnedRecord>,
    /// Empty while a batch is in flight: its task owns them.
    sinks: Vec<Box<dyn Sink>>,
    dead_letters: SharedLetters,
    /// At most one batch applies while the next is read and decoded.
    in_flight: Option<InFlight>,
    /// Offsets the sinks hold since the caller last took them.
    applied: Offsets,
    /// Why the sinks are gone (their task panicked): every later call fails.
    lost: Option<String>,
    policy: BatchPolicy,
    retry: RetryPolicy,
    on_error: OnError,
    reapply: bool,
    /// The Kafka cluster the records come from, stored with every batch's
    /// offsets and checked against what the sinks hold.
    cluster: Option<Arc<str>>,
    /// Partitions per topic, where the source knows them; stamped on batches.
    partition_counts: BTreeMap<Arc<str>, i32>,
    /// Where column types of schemaless records come from, asked in order.
    catalogs: Vec<Box<dyn SchemaCatalog>>,
    /// (table, column) a catalog was asked for and did not know, and when:
    /// not asked again for every record that carries it.
    untyped_misses: HashMap<(String, String), Instant>,
    renames: Renames,
    pending: Vec<Record>,
    /// Raw bytes of pending change events, by position, for dead letters.
    pending_raw: BTreeMap<Position, RawBytes>,
    pending_bytes: usize,
    batch_started: Option<Instant>,
    stats: PipelineStats,
}

impl Pipeline {
    pub fn new(decoder: Decoder, sinks: Vec<Box<dyn Sink>>, dead_letters: Box<dyn DeadLetterStore>) -> Pipeline {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_DECODE_THREADS);
        Pipeline {
            workers: (0..threads).map(|_| decoder.worker()).collect(),
            decoder,
            undecoded: Vec::new(),
            sinks,
            dead_letters: Arc::new(tokio::sync::Mutex::new(dead_letters)),
            in_flight: None,
            applied: Offsets::new(),
            lost: None,
            policy: BatchPolicy::default(),
            retry: RetryPolicy::default(),
            on_error: OnError::default(),
            reapply: false,
            cluster: None,
            partition_counts: BTreeMap::new(),
            catalogs: Vec::new(),
            untyped_misses: HashMap::new(),
            renames: Renames::default(),
            pending: Vec::new(),
            pending_raw: BTreeMap::new(),
            pending_bytes: 0,
            batch_started: None,
            stats: PipelineStats::default(),
        }
    }

    /// How many threads decode records (default: the machine's cores, at
    /// most 8). Records are finished in push order whatever the threads.
    pub fn with_decode_threads(mut self, threads: usize) -> Pipeline {
        self.workers = (0..threads.max(1)).map(|_| self.decoder.worker()).collect();
        self
    }

    pub fn with_policy(mut self, policy: BatchPolicy) -> Pipeline {
        self.policy = policy;
        self
    }

    /// Adds a source of column types for schemaless records (the source
    /// database's catalog): asked when a record carries a column of no known
    /// type, before the record is refused as [`Error::Untyped`]. With a
    /// catalog, records are decoded one by one as they are pushed, so that
    /// the catalog is asked as close to the record's time as it can be.
    pub fn with_catalog(mut self, catalog: Box<dyn SchemaCatalog>) -> Pipeline {
        self.catalogs.push(catalog);
        self
    }

    /// How column renames at the source are recognised (see [`crate::renames`]).
    pub fn with_rename_detection(mut self, rule: RenameDetection) -> Pipeline {
        self.renames = Renames::new(rule);
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Pipeline {
        self.retry = retry;
        self
    }

    pub fn with_on_error(mut self, on_error: OnError) -> Pipeline {
        self.on_error = on_error;
        self
    }

    /// Applies records even where the sinks hold their offsets (replaying
    /// fixed dead letters); rows still move only forward by order key.
    pub fn with_reapply(mut self, reapply: bool) -> Pipeline {
        self.reapply = reapply;
        self
    }

    /// Names the Kafka cluster (its id) the records come from: stored with the
    /// sinks' offsets, and [`resume_offsets`](Self::resume_offsets) refuses
    /// offsets a sink stored for another cluster.
    pub fn set_cluster(&mut self, cluster: &str) {
        self.cluster = Some(Arc::from(cluster));
    }

    /// How many partitions each topic has (the Kafka source tells after an
    /// assignment); sinks prune what every partition of a topic has passed.
    pub fn set_partition_counts(&mut self, counts: BTreeMap<Arc<str>, i32>) {
        self.partition_counts = counts;
    }

    /// The Kafka cluster the records come from, once known.
    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// Whether records the sinks hold are applied again ([`with_reapply`](Self::with_reapply)).
    pub fn reapplies(&self) -> bool {
        self.reapply
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// The sinks; empty while they apply a batch ([`submit`](Self::submit)).
    pub fn sinks(&self) -> &[Box<dyn Sink>] {
        &self.sinks
    }

    /// Where to resume: per partition, the lowest offset every sink holds.
    /// A partition some sink holds nothing of is absent (start from the
    /// beginning, or the group's committed offset, for it). Fails when a
    /// sink's offsets are positions in another Kafka cluster.
    pub async fn resume_offsets(&mut self) -> Result<Offsets> {
        self.settle().await?;
        let mut per_sink = Vec::new();
        for i in 0..self.sinks.len() {
            let offsets = self.durable_offsets_with_backoff(i).await?;
            self.check_same_cluster(i, &offsets)?;
            per_sink.push(offsets);
        }
        let Some((first, rest)) = per_sink.split_first() else { return Ok(Offsets::new()) };
        let mut resume = Offsets::new();
        for (topic, partition, offset) in first.iter() {
            let lowest = rest.iter().map(|o| o.get(topic, partition)).try_fold(offset, |low, o| o.map(|o| low.min(o)));
            if let Some(lowest) = lowest {
                resume.set(topic.into(), partition, lowest);
            }
        }
        Ok(resume)
    }

    /// Offsets stored for another Kafka cluster (a new docker-compose stack,
    /// a `./deltalake` reused against a real cluster) are positions in other
    /// topics: resuming from them would silently skip records. This is the
    /// one place that compares clusters.
    fn check_same_cluster(&self, i: usize, held: &Offsets) -> Result<()> {
        let (Some(stored), Some(current)) = (&held.cluster, &self.cluster) else { return Ok(()) };
        if stored == current {
            return Ok(());
        }
        let partitions: Vec<String> = held.iter().take(5).map(|(t, p, o)| format!("{t}[{p}]@{o}")).collect();
        let more = held.iter().count().saturating_sub(partitions.len());
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        Err(Error::Sink {
            sink: self.sink_name(i),
            message: format!(
                "holds offsets of Kafka cluster `{stored}` ({}{more}), but the records come from cluster \
                 `{current}`: resuming would skip records of the new cluster up to those offsets. To start \
                 over against this cluster, use a new consumer name (delta.consumer, target.consumer, \
                 datalake.consumer) or fresh sink locations",
                partitions.join(", ")
            ),
            retriable: false,
        })
    }

    /// Sink `i` (callers iterate `0..self.sinks.len()`).
    fn sink(&mut self, i: usize) -> Result<&mut Box<dyn Sink>> {
        self.sinks.get_mut(i).ok_or_else(|| Error::Sink {
            sink: "pipeline".into(),
            message: format!("no sink number {i}"),
            retriable: false,
        })
    }

    fn sink_name(&self, i: usize) -> String {
        self.sinks.get(i).map_or_else(|| format!("sink {i}"), |sink| sink.name().to_owned())
    }

    /// Reads a sink's offsets, waiting out an outage as the retry policy says
    /// (a sink down at start-up is the same outage as one mid-stream).
    async fn durable_offsets_with_backoff(&mut self, i: usize) -> Result<Offsets> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.sink(i)?.durable_offsets().await {
                Ok(offsets) => return Ok(offsets),
                Err(error) if error.is_retriable() => match self.retry.wait_after(attempt) {
                    Some(wait) => {
                        tracing::warn!(sink = %self.sink_name(i), %error, attempt, ?wait, "reading offsets failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(error),
                },
                Err(error) => return Err(error),
            }
        }
    }

    /// Takes one record into the open batch. Records are decoded together,
    /// on the decode threads, every [`DECODE_CHUNK`] records and before a
    /// batch is submitted (each as it is pushed when a source catalog is
    /// set: see [`with_catalog`](Self::with_catalog)): a record that cannot
    /// be decoded is dead-lettered then (or, fail-fast, its error is
    /// returned by that call).
    pub async fn push(&mut self, record: RawRecord<'_>) -> Result<()> {
        let (key, value) = (record.key.map(<[u8]>::to_vec), record.value.map(<[u8]>::to_vec));
        self.push_owned(record.topic, (record.partition, record.offset), key, value).await
    }

    /// [`push`](Self::push) for a record whose key and value bytes the
    /// caller owns and gives up: they are kept without a copy.
    pub async fn push_owned(
        &mut self,
        topic: &str,
        (partition, offset): (i32, i64),
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    ) -> Result<()> {
        self.batch_started.get_or_insert_with(Instant::now);
        self.pending_bytes += key.as_ref().map_or(0, Vec::len) + value.as_ref().map_or(0, Vec::len);
        self.stats.records += 1;
        let topic = match self.undecoded.last() {
            Some(last) if *last.topic == *topic => last.topic.clone(),
            _ => Arc::from(topic),
        };
        self.undecoded.push(OwnedRecord { topic, partition, offset, key, value });
        // A source catalog describes the source as it is now: asked as each
        // record is read, it is as close to the record's time as it can be.
        let chunk = if self.catalogs.is_empty() { DECODE_CHUNK } else { 1 };
        if self.undecoded.len() >= chunk {
            self.decode_undecoded().await?;
        }
        Ok(())
    }

    /// Decodes the records pushed so far into the open batch: prepared on
    /// the decode threads, then finished here in push order.
    async fn decode_undecoded(&mut self) -> Result<()> {
        if self.undecoded.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let records = std::mem::take(&mut self.undecoded);
        let prepared = prepare_on_threads(&mut self.workers, &records);
        let mut finished = Ok(());
        for (record, prepared) in records.into_iter().zip(prepared) {
            finished = self.finish_record(record, prepared).await;
            if finished.is_err() {
                break;
            }
        }
        self.stats.decoding += started.elapsed();
        finished
    }

    async fn finish_record(&mut self, record: OwnedRecord, prepared: Prepared) -> Result<()> {
        let raw = record.raw();
        let mut decoded = self.decoder.finish(raw, prepared);
        if let Err(Error::Untyped { table, column, .. }) = &decoded
            && self.learn_types(&table.clone(), &column.clone()).await?
        {
            decoded = self.decoder.decode(raw);
        }
        if let Ok(Record::Change(event)) = &mut decoded {
            self.follow_renames(event).await?;
        }
        match decoded {
            Ok(decoded) => {
                if matches!(decoded, Record::Change(_)) {
                    let position = decoded.position().clone();
                    self.pending_raw.insert(position, (record.key, record.value));
                }
                self.pending.push(decoded);
                Ok(())
            }
            Err(error) => self.dead_letter_record(raw, error).await,
        }
    }

    /// Asks the catalogs for the column types of `table`, for a record
    /// carrying `column`; whether one knew the table (its schema is then
    /// registered with the decoder). A catalog that cannot be reached is
    /// retried a few times, then the error stops the pipeline: the record is
    /// fine, only its types are missing.
    async fn learn_types(&mut self, table: &str, column: &str) -> Result<bool> {
        const MISS_REMEMBERED: Duration = Duration::from_secs(60);
        let miss = (table.to_owned(), column.to_owned());
        if self.untyped_misses.get(&miss).is_some_and(|at| at.elapsed() < MISS_REMEMBERED) {
            return Ok(false);
        }
        for catalog in &self.catalogs {
            let schema = ask_catalog(catalog.as_ref(), &self.retry, table, |c| c.table_schema(table)).await?;
            if let Some(schema) = schema.filter(|s| s.index_of(column).is_some()) {
                tracing::info!(catalog = catalog.name(), table, column, "column types read from the catalog");
                self.decoder.register_schema(table, schema);
                self.untyped_misses.retain(|(t, _), _| t != table);
                return Ok(true);
            }
        }
        // Else the types of the table a sink already holds (which keeps
        // columns dropped at the source since).
        self.settle().await?;
        for sink in &mut self.sinks {
            let schema = sink.column_types(table).await?;
            if let Some(schema) = schema.filter(|s| s.index_of(column).is_some()) {
                tracing::info!(sink = sink.name(), table, column, "column types read from the sink's table");
                self.decoder.register_schema(table, schema);
                self.untyped_misses.retain(|(t, _), _| t != table);
                return Ok(true);
            }
        }
        self.untyped_misses.insert(miss, Instant::now());
        Ok(false)
    }

    /// Applies the renames known for the event's table, learning the
    /// catalog's column numbers first where they may show a new one.
    async fn follow_renames(&mut self, event: &mut ChangeEvent) -> Result<()> {
        if !self.catalogs.is_empty() && self.renames.wants_numbers(event) {
            let table = event.table().to_string();
            for catalog in &self.catalogs {
                let numbers = ask_catalog(catalog.as_ref(), &self.retry, &table, |c| c.column_numbers(&table)).await?;
                if let Some(numbers) = numbers {
                    self.renames.learn_numbers(&table, numbers);
                    break;
                }
            }
        }
        self.renames.apply(event)
    }

    /// Takes a record that cannot be read (decoding failed, or a caller's own
    /// parsing did): dead-letters it and goes on (or, fail-fast, returns the
    /// error). Its offset still counts as consumed.
    pub async fn reject(&mut self, record: RawRecord<'_>, error: Error) -> Result<()> {
        self.decode_undecoded().await?;
        self.batch_started.get_or_insert_with(Instant::now);
        self.stats.records += 1;
        self.dead_letter_record(record, error).await
    }

    async fn dead_letter_record(&mut self, record: RawRecord<'_>, error: Error) -> Result<()> {
        if self.on_error == OnError::FailFast {
            return Err(error);
        }
        tracing::warn!(%error, "dead-lettering a record that cannot be decoded");
        self.dead_letter(DeadLetter {
            position: record.position(),
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            sink: None,
            error: error.to_string(),
        })
        .await?;
        // Later batches cover its offset.
        self.pending.push(Record::Heartbeat { position: record.position(), ts_ms: None });
        Ok(())
    }

    /// Whether the open batch reached a limit of the policy.
    pub fn due(&self) -> bool {
        self.pending() >= self.policy.max_records
            || self.pending_bytes >= self.policy.max_bytes
            || self.batch_started.is_some_and(|t| t.elapsed() >= Duration::from_millis(self.policy.max_latency_ms))
    }

    /// Records in the open batch.
    pub fn pending(&self) -> usize {
        self.pending.len() + self.undecoded.len()
    }

    /// Drops the open batch's records of `partitions` (revoked by a
    /// rebalance: their new owner reads them again).
    pub fn abandon(&mut self, partitions: &[(String, i32)]) {
        let revoked = |p: &Position| partitions.iter().any(|(t, n)| **t == *p.topic && *n == p.partition);
        self.pending.retain(|r| !revoked(r.position()));
        self.pending_raw.retain(|p, _| !revoked(p));
        self.undecoded.retain(|r| !revoked(&r.raw().position()));
        if self.pending() == 0 {
            self.pending_bytes = 0;
            self.batch_started = None;
        }
    }

    /// Applies the open batch to every sink and waits until they hold it
    /// (and the batch in flight before it); returns the offsets applied
    /// since the caller last took them (safe to commit to Kafka). Retriable
    /// sink failures are retried with backoff; a batch a sink refuses is
    /// split until the refused events are found, which are dead-lettered
    /// (per sink) before any offset moves past them.
    pub async fn flush(&mut self) -> Result<Offsets> {
        // What the batch before finished, then this one.
        let mut applied = self.submit().await?;
        self.settle().await?;
        applied.merge(&std::mem::take(&mut self.applied));
        Ok(applied)
    }

    /// Hands the open batch to the sinks and returns without waiting for
    /// them: they apply it in their own task while the caller reads and
    /// decodes the next one. One batch is in flight at a time (this first
    /// waits for the one before), so at most two batches are in memory.
    /// Returns the offsets applied since the caller last took them, as
    /// [`flush`](Self::flush) does.
    pub async fn submit(&mut self) -> Result<Offsets> {
        // Decoded while the batch before is still applying.
        self.decode_undecoded().await?;
        self.settle().await?;
        let mut records = std::mem::take(&mut self.pending);
        // A rename found after some of the batch was pushed applies to all of it.
        for record in &mut records {
            if let Record::Change(event) = record {
                self.renames.rewrite(event)?;
            }
        }
        let raw = std::mem::take(&mut self.pending_raw);
        self.pending_bytes = 0;
        let started = self.batch_started.take().unwrap_or_else(Instant::now);
        if !records.is_empty() {
            let mut batch = Batch::from_records(records);
            batch.reapply = self.reapply;
            batch.offsets.cluster.clone_from(&self.cluster);
            batch.offsets.partition_counts.clone_from(&self.partition_counts);
            self.spawn_apply(batch, raw, started);
        }
        Ok(std::mem::take(&mut self.applied))
    }

    /// The offsets of batches the sinks finished since the caller last took
    /// them, without waiting for the one in flight.
    pub async fn take_applied(&mut self) -> Result<Offsets> {
        if self.in_flight.as_ref().is_some_and(|f| f.task.is_finished()) {
            self.settle().await?;
        }
        Ok(std::mem::take(&mut self.applied))
    }

    /// Starts the sinks' task for `batch`. Every sink applies it at once, in
    /// a task of its own (so their CPU work runs on separate cores), each
    /// still seeing batches in order; all finish before its offsets count as
    /// applied, so nothing is cancelled half-way. A dead letter is stored,
    /// under the store's lock, before the sink that refused it moves its
    /// offsets past it.
    fn spawn_apply(&mut self, batch: Batch, raw: BTreeMap<Position, RawBytes>, started: Instant) {
        let mut events = BTreeMap::new();
        for event in &batch.events {
            *events.entry((event.table().to_string(), event.op.code())).or_default() += 1;
        }
        let offsets = batch.offsets.clone();
        let sinks = std::mem::take(&mut self.sinks);
        let (batch, raw, stored) = (Arc::new(batch), Arc::new(raw), Arc::new(AtomicU64::new(0)));
        let (letters, retry, on_error) = (self.dead_letters.clone(), self.retry.clone(), self.on_error);
        let task = tokio::spawn(async move {
            // Dropped with this task (the pipeline dropped mid-batch): every
            // sink's task is aborted with it, as a crash would stop them.
            let mut running = tokio::task::JoinSet::new();
            for (i, mut sink) in sinks.into_iter().enumerate() {
                let (batch, raw, stored, letters, retry) =
                    (batch.clone(), raw.clone(), stored.clone(), letters.clone(), retry.clone());
                running.spawn(async move {
                    let applier = SinkApplier {
                        sink: &mut sink,
                        retry: &retry,
                        on_error,
                        letters: &letters,
                        stored: &stored,
                        raw: &raw,
                    };
                    let result = applier.apply_isolating(&batch).await;
                    (i, sink, result)
                });
            }
            let mut done = Vec::new();
            while let Some(joined) = running.join_next().await {
                match joined {
                    Ok(finished) => done.push(finished),
                    // A sink lost mid-batch loses the pipeline (see `settle`).
                    Err(error) => std::panic::resume_unwind(error.try_into_panic().unwrap_or_else(|e| Box::new(e))),
                }
            }
            done.sort_by_key(|(i, _, _)| *i);
            let mut sinks = Vec::with_capacity(done.len());
            let mut result = Ok(());
            for (_, sink, applied) in done {
                sinks.push(sink);
                result = result.and(applied);
            }
            Applied { sinks, result, dead_letters: stored.load(Ordering::Relaxed), took: started.elapsed() }
        });
        self.in_flight = Some(InFlight { task, offsets, events });
    }

    /// Waits for the batch in flight, takes the sinks back and counts its
    /// offsets as applied. Every use of the sinks goes through here.
    async fn settle(&mut self) -> Result<()> {
        let Some(flight) = self.in_flight.as_mut() else {
            return match &self.lost {
                Some(why) => Err(Error::Sink { sink: "pipeline".into(), message: why.clone(), retriable: false }),
                None => Ok(()),
            };
        };
        // Awaited in place: if this wait is given up (a shutdown timeout
        // drops it), the batch is still in flight, for the next wait or for
        // `drop` to abort, never running on with the sinks out of reach.
        let waiting = Instant::now();
        let joined = (&mut flight.task).await;
        self.stats.waiting_for_sinks += waiting.elapsed();
        let Some(flight) = self.in_flight.take() else { return Ok(()) };
        let applied = match joined {
            Ok(applied) => applied,
            Err(error) => {
                let why = format!("the sinks' task failed applying a batch ({error}); nothing after it applies");
                self.lost = Some(why.clone());
                return Err(Error::Sink { sink: "pipeline".into(), message: why, retriable: false });
            }
        };
        self.sinks = applied.sinks;
        self.stats.dead_letters += applied.dead_letters;
        self.stats.sink_stages =
            self.sinks.iter().filter_map(|s| Some((s.name().to_owned(), s.stage_times()?.clone()))).collect();
        applied.result?;
        self.applied.merge(&flight.offsets);
        for (key, n) in flight.events {
            *self.stats.events.entry(key).or_default() += n;
        }
        self.stats.batches += 1;
        self.stats.last_batch = applied.took;
        Ok(())
    }

    async fn dead_letter(&mut self, letter: DeadLetter) -> Result<()> {
        store_letter(self.dead_letters.lock().await.as_mut(), &self.retry, letter).await?;
        self.stats.dead_letters += 1;
        Ok(())
    }
}

/// Stores a dead letter, waiting out an outage of the store as the retry
/// policy says: nothing moves past the record until it is stored.
async fn store_letter(store: &mut dyn DeadLetterStore, retry: &RetryPolicy, letter: DeadLetter) -> Result<()> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match store.store(letter.clone()).await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_retriable() => match retry.wait_after(attempt) {
                Some(wait) => {
                    tracing::warn!(%error, attempt, ?wait, position = %letter.position, "storing a dead letter failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                None => return Err(error),
            },
            Err(error) => return Err(error),
        }
    }
}

/// What applying a batch to one sink needs: sinks apply a batch
/// concurrently, each through its own applier, sharing the dead-letter store.
struct SinkApplier<'a> {
    sink: &'a mut Box<dyn Sink>,
    retry: &'a RetryPolicy,
    on_error: OnError,
    letters: &'a SharedLetters,
    /// How many letters the batch's sinks stored.
    stored: &'a AtomicU64,
    raw: &'a BTreeMap<Position, RawBytes>,
}

impl Drop for Pipeline {
    /// A batch still in flight is abandoned as a crash would: each sink
    /// applies a batch atomically, so the next run resumes from what it holds.
    fn drop(&mut self) {
        if let Some(flight) = &self.in_flight {
            flight.task.abort();
        }
    }
}

impl SinkApplier<'_> {
    /// Applies `batch` to sink `i`; on a non-retriable error, halves the
    /// events until the refused ones are isolated. A refused event is
    /// dead-lettered durably (or, fail-fast, returned as the error) *before*
    /// the sink's offsets move past it: a record's offset becomes durable
    /// only once the record is applied or its dead letter is stored.
    /// Retriable errors never isolate: an outage cannot make a good event
    /// poison.
    async fn apply_isolating(mut self, batch: &Batch) -> Result<()> {
        let mut stack = vec![(batch.events.clone(), batch.offsets.clone())];
        while let Some((events, offsets)) = stack.pop() {
            // Every part carries the batch's END records: a tracker takes
            // each once, and counts only the changes a part applied.
            let part = Batch { events, offsets, reapply: batch.reapply, transactions: batch.transactions.clone() };
            let error = match self.apply_with_backoff(&part).await {
                Ok(()) => continue,
                Err(error) if error.is_retriable() => return Err(error),
                Err(error) => error,
            };
            match <[ChangeEvent; 1]>::try_from(part.events) {
                Ok([event]) => {
                    self.refuse(&event, error).await?;
                    // Now move the offsets past it, so no sink waits on it again.
                    let past = Batch { offsets: part.offsets, transactions: part.transactions, ..Batch::default() };
                    self.apply_with_backoff(&past).await?;
                }
                Err(events) if events.len() <= 1 => return Err(error), // nothing left to blame
                Err(events) => {
                    let mid = events.len() / 2;
                    let mut first_offsets = part.offsets.empty_like();
                    for event in events.iter().take(mid) {
                        first_offsets.advance(&event.position);
                    }
                    let (first, second) = events.split_at(mid);
                    // LIFO: the first half runs first.
                    stack.push((second.to_vec(), part.offsets));
                    stack.push((first.to_vec(), first_offsets));
                }
            }
        }
        Ok(())
    }

    /// Dead-letters an event the sink refused, with its original bytes.
    async fn refuse(&mut self, event: &ChangeEvent, error: Error) -> Result<()> {
        if self.on_error == OnError::FailFast {
            return Err(error);
        }
        let sink = self.sink.name().to_owned();
        tracing::warn!(sink, %error, position = %event.position, "dead-lettering an event the sink refused");
        let (key, value) = self.raw.get(&event.position).cloned().unwrap_or_default();
        let letter =
            DeadLetter { position: event.position.clone(), key, value, sink: Some(sink), error: error.to_string() };
        store_letter(self.letters.lock().await.as_mut(), self.retry, letter).await?;
        self.stored.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Applies with backoff while the error is retriable. An error that is
    /// not an outage and repeats identically `max_identical_errors` times is
    /// returned as bad data, so the caller isolates it instead of looping.
    async fn apply_with_backoff(&mut self, batch: &Batch) -> Result<()> {
        let mut attempt = 0u32;
        let mut repeats = 0u32;
        let mut last_message = String::new();
        loop {
            attempt += 1;
            let error = match self.sink.apply(batch).await {
                Ok(()) => return Ok(()),
                Err(error) if !error.is_retriable() => return Err(error),
                Err(error) => error,
            };
            let message = error.to_string();
            repeats = if message == last_message { repeats + 1 } else { 1 };
            last_message = message;
            if !error.is_outage() && repeats >= self.retry.max_identical_errors.max(1) {
                return Err(error.into_bad_data(repeats));
            }
            let Some(wait) = self.retry.wait_after(attempt) else { return Err(error) };
            tracing::warn!(sink = %self.sink.name(), %error, attempt, ?wait, "sink failed; retrying the batch");
            tokio::time::sleep(wait).await;
        }
    }
}

/// Records decoded together on the decode threads ([`Pipeline::push`]).
pub const DECODE_CHUNK: usize = 2048;
const MAX_DECODE_THREADS: usize = 8;
/// Fewer records than this are not worth a thread.
const MIN_RECORDS_PER_THREAD: usize = 64;

/// A pushed record's bytes, kept until it is decoded (and, for a change
/// event, until its batch is applied: a sink may refuse it).
struct OwnedRecord {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

impl OwnedRecord {
    fn raw(&self) -> RawRecord<'_> {
        RawRecord {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
        }
    }
}

/// Prepares `records` on one thread per worker, a contiguous run of them
/// each; returned in the order of `records`. A worker holds only caches, so
/// which records it prepares changes no result: everything that depends on
/// the records before is done by the decoder as each is finished.
fn prepare_on_threads(workers: &mut [DecodeWorker], records: &[OwnedRecord]) -> Vec<Prepared> {
    let per_thread = records.len().div_ceil(workers.len().max(1)).max(MIN_RECORDS_PER_THREAD);
    let prepare = |worker: &mut DecodeWorker, run: &[OwnedRecord]| -> Vec<Prepared> {
        run.iter().map(|record| worker.prepare(record.raw())).collect()
    };
    let mut runs = workers.iter_mut().zip(records.chunks(per_thread));
    let Some((first_worker, first_run)) = runs.next() else { return Vec::new() };
    std::thread::scope(|scope| {
        let others: Vec<_> = runs.map(|(worker, run)| scope.spawn(move || prepare(worker, run))).collect();
        // This thread prepares the first run while the others run beside it.
        let mut prepared = prepare(first_worker, first_run);
        for other in others {
            match other.join() {
                Ok(run) => prepared.extend(run),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        prepared
    })
}

/// Counts of change events by op, for summaries.
pub fn op_counts(stats: &PipelineStats) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::new();
    for ((_, op), n) in &stats.events {
        *counts.entry(*op).or_default() += n;
    }
    counts
}
