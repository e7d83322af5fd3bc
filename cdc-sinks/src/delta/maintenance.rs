//! Table maintenance: compaction (optionally Z-ordered by the primary key),
//! checkpoints, log cleanup and vacuum: once by hand ([`run`],
//! `examples/maintain.rs`), or on the policy's schedule inside the Delta
//! sink ([`DeltaSink::with_maintenance`](super::DeltaSink::with_maintenance)),
//! between its batches, so it never races the sink's own commits (a commit
//! of another writer that races it is retried by delta-rs).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cdc_core::Result;
use deltalake::operations::optimize::OptimizeType;
use serde::{Deserialize, Serialize};

use super::{DeltaConfig, delta_error, time_travel};

/// How to maintain the tables and, in the Delta sink, when: a table it
/// writes is maintained after every `every_commits` of its batches that
/// touched the table, or once `every_minutes` passed since the table was
/// last maintained, whichever comes first; right after the batch's commits,
/// before the next batch. A run by hand ([`run`]) ignores the schedule.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaintenancePolicy {
    /// The sink's schedule is on.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_every_commits")]
    pub every_commits: u64,
    #[serde(default = "default_every_minutes")]
    pub every_minutes: u64,
    /// Compact a table once it has at least this many data files.
    #[serde(default = "default_min_files")]
    pub optimize_min_files: usize,
    /// Z-order compacted files by these columns (usually the primary key);
    /// empty for plain bin-packing. The history table is never Z-ordered.
    #[serde(default)]
    pub zorder_by: Vec<String>,
    /// Vacuum: remove files no version younger than this needs (time travel
    /// to older versions stops working).
    #[serde(default = "default_retention_hours")]
    pub vacuum_retention_hours: u64,
    /// After a checkpoint, delete log files older than the table's
    /// `delta.logRetentionDuration` (30 days unless set) that the checkpoint
    /// makes unnecessary.
    #[serde(default = "default_true")]
    pub cleanup_logs: bool,
}

fn default_true() -> bool {
    true
}
fn default_every_commits() -> u64 {
    100
}
fn default_every_minutes() -> u64 {
    60
}

fn default_min_files() -> usize {
    32
}
fn default_retention_hours() -> u64 {
    168
}

impl Default for MaintenancePolicy {
    fn default() -> Self {
        MaintenancePolicy {
            enabled: true,
            every_commits: default_every_commits(),
            every_minutes: default_every_minutes(),
            optimize_min_files: default_min_files(),
            zorder_by: Vec::new(),
            vacuum_retention_hours: default_retention_hours(),
            cleanup_logs: true,
        }
    }
}

/// What a maintenance run did to one table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaintenanceReport {
    pub files_removed: u64,
    pub files_added: u64,
    pub files_vacuumed: usize,
    pub checkpoint_version: Option<u64>,
    pub logs_deleted: usize,
}

/// Compacts small files (Z-ordered by `zorder_by` when given).
pub async fn optimize(config: &DeltaConfig, name: &str, zorder_by: &[String]) -> Result<MaintenanceReport> {
    let table = time_travel::open(config, name).await?;
    let kind = if zorder_by.is_empty() { OptimizeType::Compact } else { OptimizeType::ZOrder(zorder_by.to_vec()) };
    let (_, metrics) = table.optimize().with_type(kind).await.map_err(|e| delta_error(&e))?;
    Ok(MaintenanceReport {
        files_removed: metrics.num_files_removed,
        files_added: metrics.num_files_added,
        ..MaintenanceReport::default()
    })
}

/// Writes a checkpoint of the latest version.
pub async fn checkpoint(config: &DeltaConfig, name: &str) -> Result<MaintenanceReport> {
    let table = time_travel::open(config, name).await?;
    deltalake::checkpoints::create_checkpoint(&table, None).await.map_err(|e| delta_error(&e))?;
    Ok(MaintenanceReport { checkpoint_version: table.version(), ..MaintenanceReport::default() })
}

/// Deletes files older than `retention` that no retained version needs.
/// Time travel to versions older than the retention stops working.
pub async fn vacuum(config: &DeltaConfig, name: &str, retention: Duration) -> Result<MaintenanceReport> {
    let table = time_travel::open(config, name).await?;
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let (_, metrics) = table
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .await
        .map_err(|e| delta_error(&e))?;
    Ok(MaintenanceReport { files_vacuumed: metrics.files_deleted.len(), ..MaintenanceReport::default() })
}

/// Deletes the log files a checkpoint made unnecessary and the table's log
/// retention lets go.
pub async fn cleanup_logs(config: &DeltaConfig, name: &str) -> Result<MaintenanceReport> {
    let table = time_travel::open(config, name).await?;
    let deleted = deltalake::checkpoints::cleanup_metadata(&table, None).await.map_err(|e| delta_error(&e))?;
    Ok(MaintenanceReport { logs_deleted: deleted, ..MaintenanceReport::default() })
}

/// Runs what `policy` says is due on every table: compaction where files
/// piled up, a checkpoint after it, log cleanup, vacuum of old files.
pub async fn run(config: &DeltaConfig, policy: &MaintenancePolicy) -> Result<Vec<(String, MaintenanceReport)>> {
    let mut reports = Vec::new();
    for name in time_travel::list_tables(config).await? {
        reports.push((name.clone(), maintain(config, &name, policy).await?));
    }
    Ok(reports)
}

/// One table's maintenance: compaction when its files piled up, then a
/// checkpoint and log cleanup, then vacuum.
pub async fn maintain(config: &DeltaConfig, name: &str, policy: &MaintenancePolicy) -> Result<MaintenanceReport> {
    let table = time_travel::open(config, name).await?;
    let files = table.snapshot().map_err(|e| delta_error(&e))?.log_data().num_files();
    let mut report = MaintenanceReport::default();
    if files >= policy.optimize_min_files {
        // The history and the read points have no key columns to Z-order by.
        let keyless = [super::history::TABLE, super::consistency::TABLE].contains(&name);
        let zorder: Vec<String> = if keyless { Vec::new() } else { policy.zorder_by.clone() };
        report = optimize(config, name, &zorder).await?;
        report.checkpoint_version = checkpoint(config, name).await?.checkpoint_version;
        if policy.cleanup_logs {
            report.logs_deleted = cleanup_logs(config, name).await?.logs_deleted;
        }
    }
    let retention = Duration::from_secs(policy.vacuum_retention_hours * 3600);
    report.files_vacuumed = vacuum(config, name, retention).await?.files_vacuumed;
    Ok(report)
}

/// Which tables are due, per the schedule: commits and time since each
/// table was last maintained (or first written by this sink).
#[derive(Debug, Default)]
pub(super) struct Due {
    tables: HashMap<String, (u64, Instant)>,
}

impl Due {
    /// Counts a batch's commit to `table`; true when it is due now.
    pub(super) fn committed(&mut self, schedule: &MaintenancePolicy, table: &str) -> bool {
        let (commits, since) = self.tables.entry(table.to_owned()).or_insert((0, Instant::now()));
        *commits += 1;
        schedule.enabled
            && (*commits >= schedule.every_commits.max(1)
                || since.elapsed() >= Duration::from_secs(schedule.every_minutes * 60))
    }

    /// Starts the table's count over after its maintenance.
    pub(super) fn maintained(&mut self, table: &str) {
        self.tables.insert(table.to_owned(), (0, Instant::now()));
    }
}
