//! The Delta Lake sink: one current-state table per source table, plus the
//! append-only `cdc_events` history table; offsets stored in the same commit
//! as the data (Delta `txn` actions), so a restart resumes exactly once.
//!
//! All deltalake calls of the workspace live in this folder: the deltalake
//! API moves fast, and one folder absorbs a version bump.

pub mod consistency;
mod convert;
mod history;
pub mod maintenance;
mod owed;
pub mod scd2;
pub mod time_travel;
mod widen;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cdc_core::{Batch, ChangeEvent, Error, Offsets, Op, Result, RowChange, Sink, TableChange, Value};
use deltalake::arrow::array::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

pub use crate::tables::{TableConfig, TableMode};
/// The Arrow batch a Delta table gets for a converted batch (for tests of
/// the type mapping; the sink calls it itself).
#[doc(hidden)]
pub use convert::for_delta;
pub use deltalake;
pub use scd2::{END_AT, END_ORDER, IS_CURRENT, START_AT, START_ORDER};

const NAME: &str = "delta";
/// Commit metadata key holding every offset the table holds (cumulative),
/// so a restart can enumerate the `txn` app ids to read back.
const OFFSETS_METADATA: &str = "cdc.offsets";
/// How many commits back a restart looks for the offsets metadata (past
/// maintenance commits).
const OFFSETS_LOOKBACK: usize = 1000;
/// Truncate commit metadata: the truncate's order key (hex).
const TRUNCATED_METADATA: &str = "cdc.truncated_below";
/// Truncate commit metadata: the truncate's source commit time (µs), where
/// SCD2 tables close the versions of rows read late.
const TRUNCATED_AT_METADATA: &str = "cdc.truncated_at";
/// Commit metadata: the source table's schema as Connect schema JSON with
/// its key (`cdc_core::connect`), every column the table holds, so that
/// schemaless records can be typed from it (`Sink::column_types`).
const SCHEMA_METADATA: &str = "cdc.schema";
/// Commit metadata: the Kafka cluster id the commit's offsets are offsets in.
const CLUSTER_METADATA: &str = "cdc.kafka_cluster";
/// History commit metadata naming the tables the commit's events go to, so
/// a restart finds every table even where the root cannot be listed.
const TABLES_METADATA: &str = "cdc.tables";
/// History commit metadata: per partition, the offset of the newest change
/// event the history holds (cumulative). A table holds no offset past its
/// partition's last change event when the records after it (a tombstone cut
/// into the next batch) reach only the history; with this, a restart sees
/// that such a table lacks nothing the history holds.
const LAST_EVENTS_METADATA: &str = "cdc.last_events";

/// Where and how the Delta tables are written.
///
/// `Debug` hides the values of secret storage options; serialization keeps
/// them, as the configuration file holds them.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeltaConfig {
    /// Root of the tables: a local path or an object-store URL (`s3://`,
    /// `az://`, `gs://` need deltalake's storage features).
    pub root: String,
    /// Table name template: `{table}` (default) or, when several source
    /// schemas are captured, `{schema}_{table}`.
    #[serde(default = "default_naming")]
    pub table_name: String,
    /// Keep deleted rows flagged (`_cdc_deleted = true`) instead of removing them.
    #[serde(default)]
    pub soft_delete: bool,
    /// Write every event to the append-only `cdc_events` table.
    #[serde(default = "default_true")]
    pub history: bool,
    /// Names this consumer's `txn` app ids, so several pipelines can write one table.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Create a checkpoint every this many commits (`delta.checkpointInterval`).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
    /// Attempts for a commit that fails with a retriable error (a concurrent
    /// writer, an object-store hiccup) before giving up.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Storage options passed to deltalake (credentials, endpoints).
    #[serde(default)]
    pub storage_options: HashMap<String, String>,
    /// Storage options whose values are read from files when a table is
    /// opened, for secrets kept out of the configuration:
    /// `{ AWS_SECRET_ACCESS_KEY = "/run/secrets/s3-secret" }`. A trailing
    /// newline is not part of the value.
    #[serde(default)]
    pub storage_option_files: HashMap<String, std::path::PathBuf>,
    /// Give each MERGE the batch's key range as a target predicate (files
    /// outside it are neither read nor rewritten), and append batches that
    /// cannot touch existing rows. Turn off only to measure what it saves.
    #[serde(default = "default_true")]
    pub merge_pruning: bool,
    /// Create tables with `delta.enableChangeDataFeed = true`, so readers
    /// get row-level changes (`insert`, `update_preimage`/`postimage`,
    /// `delete`) from the log (`load_cdf`, `table_changes`). Tables created
    /// before it was turned on keep their properties.
    #[serde(default)]
    pub change_data_feed: bool,
    /// Record transaction-consistent read points in `cdc_consistency` (see
    /// `delta/consistency.rs`): needs Debezium's transaction metadata, so
    /// the consumer subscribes to the `<prefix>.transaction` topic too.
    #[serde(default)]
    pub read_points: bool,
    /// Tables (`schema.table`) the transaction topic counts but this
    /// consumer does not consume: their changes never arrive.
    #[serde(default)]
    pub read_points_ignore: Vec<String>,
    /// Per-table settings, by Delta table name (`[delta.tables.orders]`).
    #[serde(default)]
    pub tables: BTreeMap<String, TableConfig>,
}

impl std::fmt::Debug for DeltaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: std::collections::BTreeMap<&str, &str> = self
            .storage_options
            .iter()
            .map(|(key, value)| (key.as_str(), if is_secret_option(key) { "***" } else { value.as_str() }))
            .collect();
        f.debug_struct("DeltaConfig")
            .field("root", &self.root)
            .field("table_name", &self.table_name)
            .field("soft_delete", &self.soft_delete)
            .field("history", &self.history)
            .field("consumer", &self.consumer)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("max_attempts", &self.max_attempts)
            .field("storage_options", &options)
            .field("storage_option_files", &self.storage_option_files)
            .field("merge_pruning", &self.merge_pruning)
            .field("change_data_feed", &self.change_data_feed)
            .field("read_points", &self.read_points)
            .field("read_points_ignore", &self.read_points_ignore)
            .field("tables", &self.tables)
            .finish()
    }
}

/// Whether a storage option holds a secret (`AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AZURE_STORAGE_ACCOUNT_KEY`, a SAS token, a service
/// account key, ...).
pub fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "token", "password", "account_key", "access_key", "sas", "service_account_key", "credential"]
        .iter()
        .any(|word| key.contains(word))
}

fn default_naming() -> String {
    "{table}".into()
}
fn default_true() -> bool {
    true
}
fn default_consumer() -> String {
    "cdc-lakehouse".into()
}
fn default_checkpoint_interval() -> u64 {
    10
}
fn default_attempts() -> u32 {
    6
}

impl DeltaConfig {
    pub fn new(root: impl Into<String>) -> DeltaConfig {
        DeltaConfig {
            root: root.into(),
            table_name: default_naming(),
            soft_delete: false,
            history: true,
            consumer: default_consumer(),
            checkpoint_interval: default_checkpoint_interval(),
            max_attempts: default_attempts(),
            storage_options: HashMap::new(),
            storage_option_files: HashMap::new(),
            merge_pruning: true,
            change_data_feed: false,
            read_points: false,
            read_points_ignore: Vec::new(),
            tables: BTreeMap::new(),
        }
    }

    /// The settings of a Delta table (defaults where it has none).
    pub fn table(&self, name: &str) -> TableConfig {
        crate::tables::table_config(&self.tables, &[name])
    }

    /// The table properties a table this sink creates starts with.
    pub(crate) fn new_table_properties(&self) -> Vec<(&'static str, Option<String>)> {
        let mut properties =
            vec![(deltalake::TableProperty::CheckpointInterval.as_ref(), Some(self.checkpoint_interval.to_string()))];
        if self.change_data_feed {
            properties.push((deltalake::TableProperty::EnableChangeDataFeed.as_ref(), Some("true".into())));
        }
        properties
    }

    /// The Delta table name of a source table.
    pub fn table_name(&self, schema: &str, table: &str) -> String {
        self.table_name.replace("{schema}", schema).replace("{table}", table)
    }

    /// The URL of a table under the root.
    pub fn table_url(&self, name: &str) -> Result<url::Url> {
        let root = self.root.trim_end_matches('/');
        deltalake::ensure_table_uri(format!("{root}/{name}")).map_err(|e| delta_error(&e))
    }

    /// The storage options with the files' values read in: what deltalake
    /// is given. Read at each open, so a rotated secret is picked up.
    pub fn resolved_storage_options(&self) -> Result<HashMap<String, String>> {
        let mut options = self.storage_options.clone();
        for (key, path) in &self.storage_option_files {
            let value = std::fs::read_to_string(path).map_err(|e| Error::Unavailable {
                sink: NAME.into(),
                message: format!("reading delta.storage_option_files.{key} ({}): {e}", path.display()),
            })?;
            options.insert(key.clone(), value.trim_end_matches(['\n', '\r']).to_owned());
        }
        Ok(options)
    }

    fn app_id(&self, topic: &str, partition: i32) -> String {
        format!("{}:{topic}:{partition}", self.consumer)
    }
}

/// Applies batches to Delta tables; see the module docs.
///
/// Per batch and source table: the events are collapsed to the newest change
/// per key, converted to Arrow, and applied with one MERGE (upserts that never
/// overwrite a newer row, deletes, unchanged-TOAST columns kept) whose target
/// predicate prunes files to the batch's key range; a batch that cannot touch
/// existing rows (a new table, or keys above every stored key) is appended
/// instead. Truncate empties the table in its own commit. Every commit carries
/// `txn` actions with the last offset per topic-partition it makes durable.
pub struct DeltaSink {
    config: DeltaConfig,
    tables: HashMap<String, TableState>,
    history: Option<TableState>,
    read_points: Option<consistency::Recorder>,
    meter: Meter,
    maintenance: Option<maintenance::MaintenancePolicy>,
    due: maintenance::Due,
}

/// What the sink measures as it applies: counts, and time by stage.
#[derive(Default)]
struct Meter {
    counts: ApplyStats,
    stages: cdc_core::StageTimes,
}

impl Meter {
    /// Adds what another meter measured in this batch.
    fn absorb(&mut self, other: &Meter) {
        for (stage, took) in other.stages.last() {
            self.stages.add(stage, *took);
        }
        let (mine, theirs) = (&mut self.counts, &other.counts);
        mine.commits += theirs.commits;
        mine.merges += theirs.merges;
        mine.appends += theirs.appends;
        mine.files_rewritten += theirs.files_rewritten;
        mine.files_added += theirs.files_added;
        mine.commit_retries += theirs.commit_retries;
    }
}

/// What the sink's commits did since [`DeltaSink::take_stats`] was last called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub commits: u64,
    pub merges: u64,
    pub appends: u64,
    /// Data files a MERGE rewrote (removed and replaced).
    pub files_rewritten: u64,
    pub files_added: u64,
    /// Tables maintained on the schedule ([`DeltaSink::with_maintenance`]).
    pub maintenance_runs: u64,
    /// Table commits tried again after another writer (a consumer of the
    /// same group, maintenance) committed first or the store failed.
    pub commit_retries: u64,
}

/// An open table and the offsets it durably holds.
struct TableState {
    table: DeltaTable,
    held: Offsets,
    /// The order key (hex) of the newest truncate applied: rows older than
    /// it that arrive later (from another partition) stay out.
    truncated_below: Option<String>,
    /// That truncate's source commit time (µs).
    truncated_at: Option<i64>,
    /// Tables the recent commits name (`cdc.tables`; the history's commits
    /// write it), read with the offsets from the same log history.
    tables_named: BTreeSet<String>,
    /// The source schema of every column the table holds, as the recent
    /// commits carrying `cdc.schema` say, updated with each commit.
    schema: Option<cdc_core::TableSchema>,
    /// The history's `cdc.last_events` (empty for other tables).
    last_events: Offsets,
}

impl DeltaSink {
    pub fn new(config: DeltaConfig) -> DeltaSink {
        DeltaSink {
            config,
            tables: HashMap::new(),
            history: None,
            read_points: None,
            meter: Meter::default(),
            maintenance: None,
            due: maintenance::Due::default(),
        }
    }

    /// Maintains the tables this sink writes on the policy's schedule,
    /// right after a batch's commits and before the next batch's (never
    /// racing them). Its time is the `maintenance` stage of the batch it
    /// follows.
    pub fn with_maintenance(mut self, policy: maintenance::MaintenancePolicy) -> DeltaSink {
        self.maintenance = Some(policy);
        self
    }

    /// Maintains the tables `written` by the batch just applied that the
    /// schedule says are due. A failure is logged and retried at the next
    /// batch: the batch's data is committed whatever happens here.
    async fn maintain_due(&mut self, written: impl Iterator<Item = String>) {
        let Some(policy) = &self.maintenance else { return };
        let due: Vec<String> = written.filter(|table| self.due.committed(policy, table)).collect();
        if due.is_empty() {
            return;
        }
        let started = Instant::now();
        for table in due {
            match maintenance::maintain(&self.config, &table, policy).await {
                Ok(report) => {
                    tracing::info!(
                        table,
                        compacted = report.files_removed,
                        into = report.files_added,
                        checkpoint = report.checkpoint_version,
                        logs_deleted = report.logs_deleted,
                        vacuumed = report.files_vacuumed,
                        "maintained"
                    );
                    self.due.maintained(&table);
                    self.meter.counts.maintenance_runs += 1;
                }
                Err(error) => tracing::warn!(table, %error, "maintenance failed; retried after the next batch"),
            }
            // Its commits moved the table on: read it again before writing.
            if table == history::TABLE {
                self.history = None;
            } else if table == consistency::TABLE {
                self.read_points = None;
            } else {
                self.tables.remove(&table);
            }
        }
        self.meter.stages.add("maintenance", started.elapsed());
    }

    pub fn config(&self) -> &DeltaConfig {
        &self.config
    }

    /// The commit statistics gathered so far, resetting them.
    pub fn take_stats(&mut self) -> ApplyStats {
        std::mem::take(&mut self.meter.counts)
    }

    /// The latest version of each table this sink has written or opened.
    pub fn versions(&self) -> BTreeMap<String, u64> {
        self.tables.iter().filter_map(|(name, state)| Some((name.clone(), state.table.version()?))).collect()
    }

    /// The version of every table this sink knows (those it opened at
    /// start-up, and `written`) and of the history: what a read point
    /// recorded now reads.
    async fn versions_after(&mut self, written: impl Iterator<Item = &String>) -> Result<BTreeMap<String, u64>> {
        let mut names: BTreeSet<String> = self.tables.keys().cloned().collect();
        names.extend(written.cloned());
        let mut versions = BTreeMap::new();
        for name in names {
            if let Some(version) = self.state(&name).await?.table.version() {
                versions.insert(name, version);
            }
        }
        if self.config.history
            && let Some(version) = history::state(&self.config, &mut self.history).await?.table.version()
        {
            versions.insert(history::TABLE.to_owned(), version);
        }
        Ok(versions)
    }

    async fn state(&mut self, name: &str) -> Result<&mut TableState> {
        match self.tables.entry(name.to_owned()) {
            std::collections::hash_map::Entry::Occupied(entry) => Ok(entry.into_mut()),
            std::collections::hash_map::Entry::Vacant(entry) => Ok(entry.insert(open_state(&self.config, name).await?)),
        }
    }
}

/// Applies a batch's share of one table, retrying what may pass; gives back
/// the table's state (none after an error: it is read again). `history` is
/// the history table as of the batches before (for owed TOAST values).
async fn apply_table(
    config: &DeltaConfig,
    mut state: Option<TableState>,
    meter: &mut Meter,
    history: Option<&DeltaTable>,
    (name, events): (&str, &[&ChangeEvent]),
    batch: &Batch,
) -> (Option<TableState>, Result<()>) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut current = match state.take() {
            Some(current) => current,
            None => match open_state(config, name).await {
                Ok(opened) => opened,
                Err(error) => return (None, Err(error)),
            },
        };
        // The batch's rule (skip what the table holds, unless reapplying),
        // for this table's share of its events.
        let pending: Vec<&ChangeEvent> =
            events.iter().copied().filter(|e| batch.must_apply(&current.held, e)).collect();
        if pending.is_empty() {
            return (Some(current), Ok(()));
        }
        let read = current.table.version();
        match apply_events(config, name, &mut current, &pending, (&batch.offsets, history), meter).await {
            Ok(()) if cache_still_valid(read, current.table.version()) => return (Some(current), Ok(())),
            Ok(()) => return (None, Ok(())),
            Err(error) if error.is_retriable() && attempt < config.max_attempts => {
                // Another writer (or maintenance) committed first, or the
                // store hiccuped: re-read the table, then retry what it
                // does not hold yet.
                tracing::warn!(table = name, %error, attempt, "retrying the Delta commit");
                meter.counts.commit_retries += 1;
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(8))).await;
            }
            Err(error) => return (None, Err(error)),
        }
    }
}

/// Whether a table's cached state (offsets, truncate, schema) still
/// describes the log after this sink's commits took it from version `read`
/// to `now`. Not when another writer's commit landed in between: delta-rs
/// rebases a commit that lost its version onto winners it does not conflict
/// with, so their data enters the snapshot but their offsets never enter the
/// cache, and the next batch would redo what they wrote (the history would
/// hold it twice). One commit that moved the table by one version was
/// alone; after several (a rewrite, a truncate) the state is read again too.
fn cache_still_valid(read: Option<deltalake::kernel::Version>, now: Option<deltalake::kernel::Version>) -> bool {
    match (read, now) {
        (Some(read), Some(now)) => now <= read + 1,
        (None, Some(now)) => now == 0,
        (_, None) => true,
    }
}

async fn open_state(config: &DeltaConfig, name: &str) -> Result<TableState> {
    let url = config.table_url(name)?;
    let table = DeltaTable::try_from_url_with_storage_options(url, config.resolved_storage_options()?)
        .await
        .map_err(|e| delta_error(&e))?;
    read_log_state(config, table).await
}

/// What a table's log says of it: the offsets it holds (the app ids listed
/// in its recent commits' metadata, read back from the `txn` actions, and
/// the Kafka cluster the newest commit naming one named), and
/// the newest truncate's order key, the tables its commits name, the
/// source schema of every column its recent commits stored, and the newest
/// change event per partition they list.
async fn read_log_state(config: &DeltaConfig, table: DeltaTable) -> Result<TableState> {
    let mut offsets = Offsets::new();
    if table.version().is_none() {
        let (truncated_below, truncated_at, tables_named, schema, last_events) =
            (None, None, BTreeSet::new(), None, Offsets::new());
        return Ok(TableState {
            table,
            held: offsets,
            truncated_below,
            truncated_at,
            tables_named,
            schema,
            last_events,
        });
    }
    let infos: Vec<_> = table.history(Some(OFFSETS_LOOKBACK)).try_collect().await.map_err(|e| delta_error(&e))?;
    // The union of what the recent commits stored, newest first: with
    // several writers the newest commit may come from a member whose cached
    // schema predates another's `ADD COLUMN ... DEFAULT`, and taking its
    // schema alone would forget that column's default.
    let stored: Vec<cdc_core::TableSchema> = infos
        .iter()
        .filter_map(|info| info.info.get(SCHEMA_METADATA))
        .filter_map(|json| match cdc_core::connect::schema_from_json(json) {
            Ok(schema) => Some(schema),
            Err(error) => {
                tracing::warn!(%error, "the stored source schema does not read back; not used");
                None
            }
        })
        .collect();
    let schema = match stored.is_empty() {
        true => None,
        false => Some(cdc_core::TableSchema::union(&stored)?),
    };
    let (truncated_below, truncated_at) = infos
        .iter()
        .filter_map(|info| {
            let below = info.info.get(TRUNCATED_METADATA)?.as_str()?.to_owned();
            Some((below, info.info.get(TRUNCATED_AT_METADATA).and_then(serde_json::Value::as_i64)))
        })
        .max()
        .unzip();
    let truncated_at = truncated_at.flatten();
    let tables_named = infos
        .iter()
        .filter_map(|info| serde_json::from_value::<Vec<String>>(info.info.get(TABLES_METADATA)?.clone()).ok())
        .flatten()
        .collect();
    // Concurrent writers (consumers of one group) each list what they know:
    // the union of recent lists names every partition.
    offsets.cluster = infos
        .iter()
        .filter_map(|info| Some((info.timestamp, info.info.get(CLUSTER_METADATA)?.as_str()?)))
        .max_by_key(|(timestamp, _)| *timestamp)
        .map(|(_, cluster)| Arc::from(cluster));
    let mut listed = std::collections::BTreeSet::new();
    for info in &infos {
        listed.extend(offsets_list(info, OFFSETS_METADATA)?.map(|(topic, partition, _)| (topic, partition)));
    }
    // Each writer lists what it knew; the newest event is the highest listed.
    let mut last_events = Offsets::new();
    for info in &infos {
        for (topic, partition, offset) in offsets_list(info, LAST_EVENTS_METADATA)? {
            last_events.set(Arc::from(topic), partition, offset);
        }
    }
    let snapshot = table.snapshot().map_err(|e| delta_error(&e))?;
    for (topic, partition) in listed {
        let version = snapshot
            .transaction_version(table.log_store().as_ref(), config.app_id(&topic, partition))
            .await
            .map_err(|e| delta_error(&e))?;
        if let Some(version) = version {
            offsets.set(Arc::from(topic), partition, version);
        }
    }
    Ok(TableState { table, held: offsets, truncated_below, truncated_at, tables_named, schema, last_events })
}

/// A `[[topic, partition, offset], ...]` list of a commit's metadata (none
/// when the commit has no such key).
fn offsets_list(
    info: &deltalake::kernel::CommitInfo,
    key: &str,
) -> Result<impl Iterator<Item = (String, i32, i64)> + use<>> {
    let list: Vec<(String, i32, i64)> = match info.info.get(key) {
        Some(value) => serde_json::from_value(value.clone()).map_err(|e| Error::Sink {
            sink: NAME.into(),
            message: format!("commit metadata {key} is not readable: {e}"),
            retriable: false,
        })?,
        None => Vec::new(),
    };
    Ok(list.into_iter())
}

/// The one place offsets reach a Delta log. `txn` actions for the
/// partitions this commit moves forward (a partition at or below what the
/// table holds is left out: offsets never go backwards), and the table's
/// cumulative offsets as metadata (plus `extra` metadata). Returns the
/// properties and the offsets the table holds once the commit lands.
///
/// The stored offsets are checked inside the commit itself: delta-rs fails
/// a commit with a conflict when a commit since the snapshot it read wrote
/// one of its `txn` app ids, so a stale writer (a consumer that lost the
/// partition in a rebalance) re-reads the table and skips what it holds.
fn offsets_commit(
    config: &DeltaConfig,
    held: &Offsets,
    this_commit: &Offsets,
    extra: Vec<(&str, serde_json::Value)>,
) -> (CommitProperties, Offsets) {
    let now = chrono::Utc::now().timestamp_millis();
    let txns: Vec<Transaction> = this_commit
        .iter()
        .filter(|(topic, partition, offset)| held.get(topic, *partition).is_none_or(|held| held < *offset))
        .map(|(topic, partition, offset)| {
            Transaction::new_with_last_update(config.app_id(topic, partition), offset, Some(now))
        })
        .collect();
    let mut cumulative = held.clone();
    cumulative.merge(this_commit);
    let mut metadata = vec![offsets_metadata(&cumulative)];
    if let Some(cluster) = &cumulative.cluster {
        metadata.push((CLUSTER_METADATA.to_owned(), serde_json::json!(cluster)));
    }
    metadata.extend(extra.into_iter().map(|(key, value)| (key.to_owned(), value)));
    let properties = CommitProperties::default().with_application_transactions(txns).with_metadata(metadata);
    (properties, cumulative)
}

/// `cdc.offsets`: every offset the table holds once the commit lands.
fn offsets_metadata(held: &Offsets) -> (String, serde_json::Value) {
    (OFFSETS_METADATA.to_owned(), offsets_json(held))
}

/// Offsets as the `[[topic, partition, offset], ...]` list commits store.
fn offsets_json(offsets: &Offsets) -> serde_json::Value {
    let listed: Vec<(String, i32, i64)> = offsets.iter().map(|(t, p, o)| (t.to_owned(), p, o)).collect();
    serde_json::json!(listed)
}

/// Properties for a commit that moves no offset but must lose to any
/// concurrent writer of `partitions` (a table rewrite): `txn` actions at the
/// versions the table holds, unchanged, so delta-rs fails the commit with a
/// conflict when another commit wrote one of those app ids since the
/// snapshot it read; the stale writer re-reads and tries again. The source
/// schema goes with it: a rewrite adds columns (with defaults), and whoever
/// reads the log after it (another member, or this one after a crash before
/// the batch's own commit) must know them.
fn offsets_guard(
    config: &DeltaConfig,
    held: &Offsets,
    partitions: &Offsets,
    schema: Option<&serde_json::Value>,
) -> CommitProperties {
    let now = chrono::Utc::now().timestamp_millis();
    let txns: Vec<Transaction> = partitions
        .iter()
        .filter_map(|(topic, partition, _)| {
            let version = held.get(topic, partition)?;
            Some(Transaction::new_with_last_update(config.app_id(topic, partition), version, Some(now)))
        })
        .collect();
    let schema = schema.map(|json| (SCHEMA_METADATA.to_owned(), json.clone()));
    CommitProperties::default()
        .with_application_transactions(txns)
        .with_metadata(std::iter::once(offsets_metadata(held)).chain(schema))
}

/// Applies one table's pending events: truncates in their own commits, runs
/// of rows in one MERGE or append each.
async fn apply_events(
    config: &DeltaConfig,
    name: &str,
    state: &mut TableState,
    events: &[&ChangeEvent],
    (batch_offsets, history): (&Offsets, Option<&DeltaTable>),
    meter: &mut Meter,
) -> Result<()> {
    // Runs of rows between truncates, and each truncate on its own.
    let mut segments = Vec::new();
    let mut start = 0;
    for (i, event) in events.iter().enumerate() {
        if event.op == Op::Truncate {
            if start < i {
                segments.push(start..i);
            }
            segments.push(i..i + 1);
            start = i + 1;
        }
    }
    if start < events.len() {
        segments.push(start..events.len());
    }
    let last = segments.len().saturating_sub(1);
    for (n, segment) in segments.into_iter().enumerate() {
        // This commit makes durable everything of the table up to the end of
        // the segment; the last one also the batch's trailing records
        // (tombstones) of the same partitions.
        let mut this_commit = batch_offsets.empty_like();
        for event in events.iter().take(segment.end) {
            this_commit.advance(&event.position);
        }
        if n == last {
            for (topic, partition, offset) in batch_offsets.iter() {
                if this_commit.get(topic, partition).is_some() {
                    this_commit.set(Arc::from(topic), partition, offset);
                }
            }
        }
        let table = state.table.clone();
        // Segments partition `0..events.len()`.
        let events = events.get(segment).unwrap_or_default();
        let truncating = events.first().copied().filter(|e| e.op == Op::Truncate);
        let truncate_at = truncating.map(|e| e.order.to_hex());
        let mut extra: Vec<(&str, serde_json::Value)> = Vec::new();
        extra.extend(truncate_at.as_ref().map(|hex| (TRUNCATED_METADATA, serde_json::json!(hex))));
        let truncated_at = truncating.and_then(|e| e.source.ts_micros());
        extra.extend(truncated_at.map(|at| (TRUNCATED_AT_METADATA, serde_json::json!(at))));
        let stored_schema = if truncating.is_none() { stored_schema(state, events) } else { None };
        extra.extend(stored_schema.as_ref().map(|(_, json)| (SCHEMA_METADATA, json.clone())));
        let (properties, cumulative) = offsets_commit(config, &state.held, &this_commit, extra);
        let table_config = config.table(name);
        let scd2 = table_config.mode == TableMode::Scd2;
        mode_matches_table(name, &state.table, table_config.mode)?;
        let table = match truncating {
            Some(event) if scd2 => {
                scd2::truncate(config, name, (table, state.schema.as_ref()), event, properties, meter).await?
            }
            Some(event) => meter.stages.time("truncate", truncate(table, event, properties)).await?,
            None if scd2 => {
                let schema = stored_schema.as_ref().map(|(_, json)| json);
                let guard = offsets_guard(config, &state.held, &this_commit, schema);
                let track = table_config.track_history_columns.as_deref();
                let sources = (table, state.schema.as_ref());
                // Rows read late, from before the truncate, are history too:
                // their versions end at the truncate.
                let truncated = state.truncated_below.as_deref().map(|below| (below, state.truncated_at));
                scd2::apply(config, name, sources, (events, truncated), track, (guard, properties), meter).await?
            }
            None => {
                // Rows older than an applied truncate stay out (they arrive
                // late from another partition); SCD2 tables keep them as
                // history instead.
                let live: Vec<&ChangeEvent> = events
                    .iter()
                    .copied()
                    .filter(|e| state.truncated_below.as_ref().is_none_or(|below| e.order.to_hex() > *below))
                    .collect();
                let collapsing = Instant::now();
                let collapsed = cdc_core::collapse(&live).pop();
                meter.stages.add("collapse", collapsing.elapsed());
                match collapsed {
                    Some(TableChange::Rows(rows)) => {
                        let schema = stored_schema.as_ref().map(|(_, json)| json);
                        let guard = offsets_guard(config, &state.held, &this_commit, schema);
                        let sources = (table, history, state.schema.as_ref());
                        apply_rows(config, name, sources, &rows, (guard, properties), meter).await?
                    }
                    _ => table,
                }
            }
        };
        if truncate_at > state.truncated_below {
            state.truncated_below = truncate_at;
            state.truncated_at = truncated_at;
        }
        state.table = table;
        state.held = cumulative;
        if let Some((schema, _)) = stored_schema {
            state.schema = Some(schema);
        }
        meter.counts.commits += 1;
    }
    Ok(())
}

/// A table keeps the mode it was created in: a current-state MERGE on an
/// SCD2 table would rewrite every version of a key, and SCD2 needs its
/// version columns. A mismatch is the configuration's, not the events':
/// reported as an outage (retried, logged, never dead-lettered) until the
/// configuration names a table of its own for the new mode.
fn mode_matches_table(name: &str, table: &DeltaTable, mode: TableMode) -> Result<()> {
    let Some(schema) = convert::table_schema(table)? else { return Ok(()) };
    let holds_versions = schema.field_with_name(scd2::START_ORDER).is_ok();
    if holds_versions == (mode == TableMode::Scd2) {
        return Ok(());
    }
    let (was, now) = if holds_versions { ("an SCD2", "current") } else { ("a current-state", "scd2") };
    Err(Error::Unavailable {
        sink: NAME.into(),
        message: format!(
            "Delta table {name} is {was} table but delta.tables.{name}.mode is {now}: a table keeps its mode; \
             give the new mode a table of its own (another table_name or root) or restore the mode"
        ),
    })
}

/// The source schema of every column the table holds once `events` are
/// written (theirs, newest first, then what the table held), and its JSON.
fn stored_schema(state: &TableState, events: &[&ChangeEvent]) -> Option<(cdc_core::TableSchema, serde_json::Value)> {
    let mut versions: Vec<&cdc_core::TableSchema> = Vec::new();
    let mut by_order: Vec<&&ChangeEvent> = events.iter().filter(|e| !e.schema.fields().is_empty()).collect();
    by_order.sort_by_key(|e| std::cmp::Reverse(e.order));
    for event in by_order {
        if !versions.iter().any(|v| std::ptr::eq(*v, &*event.schema)) {
            versions.push(&event.schema);
        }
    }
    versions.extend(state.schema.as_ref());
    let schema = cdc_core::TableSchema::union(versions).ok()?;
    let json = cdc_core::connect::schema_to_json(&schema)?;
    Some((schema, json))
}

/// Deletes the rows older than the truncate, by order key rather than by
/// arrival: rows changed after it (consumed earlier from another
/// partition) stay.
async fn truncate(table: DeltaTable, event: &ChangeEvent, properties: CommitProperties) -> Result<DeltaTable> {
    if table.version().is_none() {
        return Ok(table);
    }
    let predicate = format!("{} < '{}'", cdc_core::arrow::ORDER_COLUMN, event.order.to_hex());
    let (table, _) = table
        .delete()
        .with_predicate(predicate)
        .with_writer_properties(table_writer_properties())
        .with_commit_properties(properties)
        .await
        .map_err(|e| delta_error(&e))?;
    Ok(table)
}

/// Writes one run of collapsed row changes.
async fn apply_rows(
    config: &DeltaConfig,
    name: &str,
    (table, history, stored_schema): (DeltaTable, Option<&DeltaTable>, Option<&cdc_core::TableSchema>),
    rows: &[RowChange<'_>],
    (guard, properties): (CommitProperties, CommitProperties),
    meter: &mut Meter,
) -> Result<DeltaTable> {
    let preparing = Instant::now();
    let Some(newest) = rows.iter().map(|r| r.event).max_by_key(|e| e.order) else { return Ok(table) };
    // A delete's image is the row it deletes as far as the batch knows.
    let images: Vec<(&ChangeEvent, Option<&[Value]>)> =
        rows.iter().map(|r| (r.event, r.after.as_deref().or(r.before.as_deref()).map(Vec::as_slice))).collect();
    let schema = batch_schema(name, newest, rows.iter().map(|r| r.event), stored_schema)?;
    let batch = cdc_core::arrow::rows_to_record_batch(name, &schema, &images)?;
    let key = primary_key(name, newest)?;
    meter.stages.add("arrow", preparing.elapsed());
    let (table, existing) = reshape_if_needed(name, table, &schema, &batch, guard).await?;
    let preparing = Instant::now();
    let source = convert::for_delta(name, &batch, existing.as_ref(), config.soft_delete)?;
    let settle = owed::Settle {
        name,
        table: &table,
        existing: existing.as_ref(),
        key: &key,
        soft_delete: config.soft_delete,
        history: history.filter(|_| config.history),
    };
    let source = owed::settle(&settle, source, rows).await?;
    let source = convert::sort_by_key(&source, &key)?;
    meter.stages.add("arrow", preparing.elapsed());
    let has_rows = table.version().is_some() && convert::has_files(&table)?;
    let deletes = rows.iter().any(RowChange::is_delete);
    let fast_path = !has_rows
        || (config.merge_pruning
            && !deletes
            && rows.iter().all(|r| matches!(r.event.op, Op::Create | Op::Read))
            && convert::keys_above_table(&table, &key, &source)?);
    if fast_path {
        // With soft_delete a delete is stored flagged even where the table
        // never had its row: the flag guards the key against older events
        // read late, and keeps the row for a primary-key change's create.
        let inserts =
            if config.soft_delete { convert::stored_columns(&source)? } else { convert::without_deletes(&source)? };
        meter.counts.appends += 1;
        meter.counts.files_added += 1;
        return meter.stages.time("append", append(config, table, inserts, properties)).await;
    }
    meter.counts.merges += 1;
    // The table's schema as read once above: whether it holds `_cdc_owed`.
    let target_owes = existing.as_ref().is_some_and(|s| s.field_with_name(owed::OWED_COLUMN).is_ok());
    merge(config, (table, target_owes), source, &key, rows, properties, meter).await
}

/// The columns a batch's rows are written with. Newest schema first; a
/// column only older events carry keeps their values. Last the columns the
/// table holds that no event of the batch has: an event read late, from
/// before `ADD COLUMN ... DEFAULT`, writes that default (as PostgreSQL filled
/// the row), as it would in a batch that also carries the column.
fn batch_schema<'a>(
    name: &str,
    newest: &'a ChangeEvent,
    events: impl Iterator<Item = &'a ChangeEvent>,
    stored_schema: Option<&'a cdc_core::TableSchema>,
) -> Result<cdc_core::TableSchema> {
    let mut versions: Vec<&cdc_core::TableSchema> = vec![&newest.schema];
    for event in events {
        if !versions.iter().any(|v| std::ptr::eq(*v, &*event.schema)) {
            versions.push(&event.schema);
        }
    }
    versions.extend(stored_schema);
    cdc_core::TableSchema::union(versions).map_err(|e| Error::Sink {
        sink: NAME.into(),
        message: format!("table {name}: {e}"),
        retriable: false,
    })
}

/// The primary key of a table, as its newest event's record key names it.
fn primary_key(name: &str, newest: &ChangeEvent) -> Result<Vec<String>> {
    let key: Vec<String> = newest.schema.key_names().map(str::to_owned).collect();
    if key.is_empty() {
        return Err(Error::Sink {
            sink: NAME.into(),
            message: format!("table {name} has no primary key: Debezium sent no record key"),
            retriable: false,
        });
    }
    Ok(key)
}

/// Rewrites the table first (see `widen`) when the batch's values need a
/// wider column type than it has, or bring a new column with a default the
/// existing rows must get; in a commit guarded by `offsets_guard`. Returns
/// the table and its schema.
async fn reshape_if_needed(
    name: &str,
    table: DeltaTable,
    schema: &cdc_core::TableSchema,
    batch: &RecordBatch,
    guard: CommitProperties,
) -> Result<(DeltaTable, Option<deltalake::arrow::datatypes::SchemaRef>)> {
    let existing = convert::table_schema(&table)?;
    let Some(stored) = &existing else { return Ok((table, existing)) };
    // Columns renamed at the source are renamed here, keeping their values.
    let rename: Vec<(String, String)> = schema
        .renames()
        .iter()
        .filter(|(new, old)| stored.field_with_name(old).is_ok() && stored.field_with_name(new).is_err())
        .map(|(new, old)| (old.clone(), new.clone()))
        .collect();
    let renamed_stored = deltalake::arrow::datatypes::Schema::new(
        stored
            .fields()
            .iter()
            .map(|f| {
                let new = rename.iter().find(|(old, _)| old == f.name()).map_or(f.name().as_str(), |(_, new)| new);
                f.as_ref().clone().with_name(new)
            })
            .collect::<Vec<_>>(),
    );
    let mut change = widen::Rewrite { widen: widen::needed(&renamed_stored, &batch.schema()), add: Vec::new(), rename };
    if convert::has_files(&table)? {
        for field in schema.fields().iter().filter(|f| renamed_stored.field_with_name(&f.name).is_err()) {
            let Some(default) = &field.default else { continue };
            let raw = cdc_core::arrow::value_array(&field.data_type, &[default]).map_err(|message| Error::Sink {
                sink: NAME.into(),
                message: format!("table {name}: default of new column {}: {message}", field.name),
                retriable: false,
            })?;
            let Some(arrow_field) = batch.schema().field_with_name(&field.name).ok().cloned() else { continue };
            let one_row = RecordBatch::try_new(
                std::sync::Arc::new(deltalake::arrow::datatypes::Schema::new(vec![arrow_field.with_nullable(true)])),
                vec![raw],
            )
            .map_err(|e| Error::Sink { sink: NAME.into(), message: e.to_string(), retriable: false })?;
            // The Delta type of the column, as the batch will write it.
            let converted = convert::for_delta(name, &one_row, None, false)?;
            if let (Ok(delta_field), Some(value)) =
                (converted.schema().field_with_name(&field.name).cloned(), converted.column_by_name(&field.name))
            {
                change.add.push((delta_field, value.clone()));
            }
        }
    }
    if change.is_empty() {
        return Ok((table, existing));
    }
    let table = widen::rewrite(table, name, &change, guard).await?;
    let existing = convert::table_schema(&table)?;
    Ok((table, existing))
}

/// Parquet settings: snappy, as delta-rs writes by default; no dictionary
/// for `unique` columns, whose values rarely repeat (every value would be
/// hashed into a dictionary the writer then abandons), and no statistics for
/// `unfiltered` ones (min/max compare whole values).
fn writer_properties(unique: &[&str], unfiltered: &[&str]) -> WriterProperties {
    let builder = WriterProperties::builder().set_compression(Compression::SNAPPY);
    let builder = unique.iter().fold(builder, |b, c| b.set_column_dictionary_enabled(ColumnPath::from(*c), false));
    unfiltered
        .iter()
        .fold(builder, |b, c| b.set_column_statistics_enabled(ColumnPath::from(*c), EnabledStatistics::None))
        .build()
}

/// Every write of a table's files: its order keys are unique per row.
pub(super) fn table_writer_properties() -> WriterProperties {
    writer_properties(&[cdc_core::arrow::ORDER_COLUMN], &[])
}

async fn append(
    config: &DeltaConfig,
    table: DeltaTable,
    batch: RecordBatch,
    properties: CommitProperties,
) -> Result<DeltaTable> {
    let creating = table.version().is_none();
    let mut builder = table
        .write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .with_schema_mode(SchemaMode::Merge)
        .with_writer_properties(table_writer_properties())
        .with_commit_properties(properties);
    if creating {
        builder = builder.with_configuration(config.new_table_properties());
    }
    builder.await.map_err(|e| delta_error(&e))
}

/// One MERGE for a run of changes: upsert where the source is newer, delete
/// (or flag) where the source is a newer delete, insert new keys.
async fn merge(
    config: &DeltaConfig,
    (table, target_owes): (DeltaTable, bool),
    source: RecordBatch,
    key: &[String],
    rows: &[RowChange<'_>],
    properties: CommitProperties,
    meter: &mut Meter,
) -> Result<DeltaTable> {
    let started = Instant::now();
    let sql = convert::MergeSql::new(&source, key, rows, config.soft_delete, (config.merge_pruning, target_owes))?;
    let ctx = SessionContext::new();
    let source_frame = ctx.read_batch(source).map_err(|e| df_error(&e))?;
    let mut builder = table
        .merge(source_frame, sql.predicate.clone())
        .with_source_alias("source")
        .with_target_alias("target")
        .with_merge_schema(true)
        .with_writer_properties(table_writer_properties())
        .with_commit_properties(properties)
        .when_matched_update(|update| {
            sql.updates.iter().fold(update.predicate(sql.update_when.clone()), |u, (column, expr)| {
                u.update(convert::column(column), expr.clone())
            })
        })
        .map_err(|e| delta_error(&e))?;
    if !sql.pays.is_empty() {
        builder = builder
            .when_matched_update(|update| {
                sql.pays.iter().fold(update.predicate(sql.pay_when.clone()), |u, (column, expr)| {
                    u.update(convert::column(column), expr.clone())
                })
            })
            .map_err(|e| delta_error(&e))?;
    }
    builder = if config.soft_delete {
        builder
            .when_matched_update(|update| {
                sql.soft_delete.iter().fold(update.predicate(sql.delete_when.clone()), |u, (column, expr)| {
                    u.update(convert::column(column), expr.clone())
                })
            })
            .map_err(|e| delta_error(&e))?
    } else {
        builder.when_matched_delete(|delete| delete.predicate(sql.delete_when.clone())).map_err(|e| delta_error(&e))?
    };
    let insert_when = if config.soft_delete { sql.insert_flagged_when.clone() } else { sql.insert_when.clone() };
    builder = builder
        .when_not_matched_insert(|insert| {
            sql.inserts.iter().fold(insert.predicate(insert_when.clone()), |i, (column, expr)| {
                i.set(convert::column(column), expr.clone())
            })
        })
        .map_err(|e| delta_error(&e))?;
    let (table, metrics) = builder.await.map_err(|e| delta_error(&e))?;
    // delta-rs times the scan and the rewrite; what is left is planning and the commit.
    let (scan, rewrite) = (Duration::from_millis(metrics.scan_time_ms), Duration::from_millis(metrics.rewrite_time_ms));
    meter.stages.add("merge scan", scan);
    meter.stages.add("merge rewrite", rewrite);
    meter.stages.add("merge plan+commit", started.elapsed().saturating_sub(scan + rewrite));
    meter.counts.files_rewritten += metrics.num_target_files_removed as u64;
    meter.counts.files_added += metrics.num_target_files_added as u64;
    tracing::debug!(
        inserted = metrics.num_target_rows_inserted,
        updated = metrics.num_target_rows_updated,
        deleted = metrics.num_target_rows_deleted,
        files_added = metrics.num_target_files_added,
        files_removed = metrics.num_target_files_removed,
        "merged"
    );
    Ok(table)
}

/// A sink error from a deltalake error: retriable for conflicts with
/// concurrent commits and storage I/O; not for schema or data problems.
pub(crate) fn delta_error(error: &DeltaTableError) -> Error {
    use deltalake::kernel::transaction::TransactionError;
    // Another writer committed first: contention, which a re-read and a
    // retry resolve however often it repeats; never bad data to dead-letter.
    let contention = matches!(
        error,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_)
                    | TransactionError::MaxCommitAttempts(_)
                    | TransactionError::VersionAlreadyExists(_)
            }
    );
    if contention {
        return Error::Unavailable { sink: NAME.into(), message: error.to_string() };
    }
    let retriable = matches!(
        error,
        DeltaTableError::ObjectStore { .. }
            | DeltaTableError::Io { .. }
            | DeltaTableError::Transaction { .. }
            | DeltaTableError::VersionAlreadyExists(_)
    );
    Error::Sink { sink: NAME.into(), message: error.to_string(), retriable }
}

pub(crate) fn df_error(error: &deltalake::datafusion::error::DataFusionError) -> Error {
    Error::Sink { sink: NAME.into(), message: error.to_string(), retriable: false }
}

#[async_trait]
impl Sink for DeltaSink {
    fn name(&self) -> &str {
        NAME
    }

    fn stage_times(&self) -> Option<&cdc_core::StageTimes> {
        Some(&self.meter.stages)
    }

    fn status(&self) -> Option<String> {
        let versions = self.versions();
        let history = self.history.as_ref().and_then(|h| h.table.version());
        let tables = versions.iter().map(|(table, v)| format!("{table}@v{v}"));
        let all: Vec<String> = tables.chain(history.map(|v| format!("{}@v{v}", history::TABLE))).collect();
        (!all.is_empty()).then(|| all.join(" "))
    }

    /// Per topic-partition, the lowest offset any table (and the history
    /// table) holds. A partition the history holds but no table does is left
    /// out (resume from the group's offset or the start): a crash between
    /// the history commit and a table's first commit of that partition
    /// must not hide the table's gap behind the history's offset. Tables
    /// are found by listing the root (local or object store) and from the
    /// history commits' `cdc.tables` lists.
    async fn durable_offsets(&mut self) -> Result<Offsets> {
        let mut names: BTreeSet<String> = time_travel::list_tables(&self.config).await?.into_iter().collect();
        // Re-read every table: another consumer of the group may have advanced it.
        self.tables.clear();
        self.history = None;
        let history_held = if self.config.history {
            let history = history::state(&self.config, &mut self.history).await?;
            names.extend(history.tables_named.iter().cloned());
            Some((history.held.clone(), history.last_events.clone()))
        } else {
            None
        };
        names.remove(history::TABLE);
        names.remove(consistency::TABLE);
        self.read_points = None;
        // The read points table, like the history, must not be ahead: its
        // tracker counts every change of a batch once, after the tables.
        let read_points_held = consistency::held(&self.config, &mut self.read_points).await?;
        // A few tables at once: on an object store each open is a few
        // round trips, and a root may hold hundreds of tables.
        let config = &self.config;
        let opened: Vec<(String, TableState)> = futures::stream::iter(names.iter().cloned())
            .map(|name| async move { Ok::<_, Error>((name.clone(), open_state(config, &name).await?)) })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        self.tables.extend(opened);
        let mut lowest: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut cluster = history_held.as_ref().and_then(|(held, _)| held.cluster.clone());
        for name in names {
            let state = self.state(&name).await?;
            cluster = cluster.or_else(|| state.held.cluster.clone());
            for (topic, partition, offset) in state.held.iter() {
                // A table holding its partition's newest event the history
                // holds lacks nothing of it: only records without changes
                // (a tombstone cut into the next batch) are past it.
                let offset = match &history_held {
                    Some((held, last_events)) if last_events.get(topic, partition).is_some_and(|e| offset >= e) => {
                        held.get(topic, partition).map_or(offset, |h| h.max(offset))
                    }
                    _ => offset,
                };
                lowest.entry((topic.to_owned(), partition)).and_modify(|o| *o = (*o).min(offset)).or_insert(offset);
            }
        }
        let mut offsets = Offsets::new();
        offsets.cluster = cluster;
        'partitions: for ((topic, partition), offset) in lowest {
            let mut offset = offset;
            let guards = history_held.iter().map(|(held, _)| held).chain(read_points_held.iter());
            for guard in guards {
                match guard.get(&topic, partition) {
                    // Behind every table.
                    Some(g) => offset = offset.min(g),
                    // Holds nothing of it: read it from the group's offset.
                    None => continue 'partitions,
                }
            }
            offsets.set(Arc::from(topic), partition, offset);
        }
        Ok(offsets)
    }

    /// The source types the table's commits stored (`cdc.schema`): exact for
    /// tables this version wrote; `None` for others.
    async fn column_types(&mut self, table: &str) -> Result<Option<cdc_core::TableSchema>> {
        let Some((schema, name)) = table.split_once('.') else { return Ok(None) };
        let name = self.config.table_name(schema, name);
        Ok(self.state(&name).await?.schema.clone())
    }

    async fn apply(&mut self, batch: &Batch) -> Result<()> {
        let mut tables: BTreeMap<String, Vec<&ChangeEvent>> = BTreeMap::new();
        for event in &batch.events {
            tables.entry(self.config.table_name(&event.source.schema, &event.source.table)).or_default().push(event);
        }
        self.meter.stages.start_batch();
        // The history and the tables are written at once (their Parquet is
        // encoded on separate cores); each holds its own offsets, so a retry
        // redoes only what each lacks. An event a table refuses
        // (dead-lettered) still happened at the source, and the history says
        // so. The tables' owed TOAST values need the history only as of the
        // batches before: the collapse pays what this batch holds.
        // A reapplied batch (fixed dead letters) is already in the history.
        let write_history = self.config.history && !batch.reapply;
        let history_before = match self.config.history {
            true => Some(history::state(&self.config, &mut self.history).await?.table.clone()),
            false => None,
        };
        let DeltaSink { config, tables: states, history, meter, .. } = self;
        let config = &*config;
        let history_write = async {
            let started = std::time::Instant::now();
            let written = if write_history { history::append(config, history, batch).await } else { Ok(()) };
            (written, started.elapsed())
        };
        // Every table at once too: their MERGEs' scans, joins and Parquet
        // run on separate cores. Each table's stage times are summed.
        let tables_write = async {
            let runs = tables.iter().map(|(name, events)| {
                let state = states.remove(name.as_str());
                let history = history_before.as_ref();
                async move {
                    let mut table_meter = Meter::default();
                    let (state, result) =
                        apply_table(config, state, &mut table_meter, history, (name, events), batch).await;
                    (name, state, table_meter, result)
                }
            });
            let mut written = Ok(());
            for (name, state, table_meter, result) in futures::future::join_all(runs).await {
                if let Some(state) = state {
                    states.insert(name.clone(), state);
                }
                meter.absorb(&table_meter);
                written = written.and(result);
            }
            written
        };
        let ((history_written, history_took), tables_written) = tokio::join!(history_write, tables_write);
        if write_history {
            meter.stages.add("history", history_took);
        }
        history_written?;
        tables_written?;
        if self.config.read_points {
            let versions = self.versions_after(tables.keys()).await?;
            consistency::record(&self.config, &mut self.read_points, batch, versions).await?;
        }
        // The read points table too: a small file per batch, compacted on
        // the same schedule.
        let written = tables
            .into_keys()
            .chain(write_history.then(|| history::TABLE.to_owned()))
            .chain(self.config.read_points.then(|| consistency::TABLE.to_owned()));
        self.maintain_due(written).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use deltalake::kernel::transaction::{CommitConflictError, TransactionError};

    use super::*;

    /// Another writer winning a commit, however often in a row, is an
    /// outage to wait out: the pipeline turns a retriable error that repeats
    /// identically into bad data and dead-letters it, which a busy table's
    /// conflicts must never become.
    #[test]
    fn commit_conflicts_are_contention_never_bad_data() {
        let conflicts = [
            DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(CommitConflictError::MetadataChanged),
            },
            DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(CommitConflictError::ConcurrentAppend),
            },
            DeltaTableError::Transaction { source: TransactionError::MaxCommitAttempts(0) },
            DeltaTableError::VersionAlreadyExists(7),
        ];
        for conflict in &conflicts {
            let error = delta_error(conflict);
            assert!(error.is_outage(), "{error}");
            assert!(delta_error(conflict).into_bad_data(100).is_retriable(), "{error}");
        }
        let bad_data = delta_error(&DeltaTableError::Generic("column x is Int32".into()));
        assert!(!bad_data.is_retriable());
    }
}
