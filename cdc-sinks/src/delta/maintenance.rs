//! Table maintenance: compaction (optionally Z-ordered by the primary key),
//! checkpoints and vacuum. Run between batches so it does not fight the
//! writer; a commit that still races it is retried by the sink.

use std::time::Duration;

use cdc_core::Result;
use deltalake::operations::optimize::OptimizeType;
use serde::Deserialize;

use super::{DeltaConfig, delta_error, time_travel};

/// When and how to maintain the tables.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MaintenancePolicy {
    /// Compact a table once it has at least this many data files.
    #[serde(default = "default_min_files")]
    pub optimize_min_files: usize,
    /// Z-order compacted files by these columns (usually the primary key);
    /// empty for plain bin-packing.
    #[serde(default)]
    pub zorder_by: Vec<String>,
    /// Remove files no version younger than this needs.
    #[serde(default = "default_retention_hours")]
    pub vacuum_retention_hours: u64,
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
            optimize_min_files: default_min_files(),
            zorder_by: Vec::new(),
            vacuum_retention_hours: default_retention_hours(),
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

/// Runs what `policy` says is due on every table: compaction where files
/// piled up, a checkpoint after it, vacuum of old files.
pub async fn run(config: &DeltaConfig, policy: &MaintenancePolicy) -> Result<Vec<(String, MaintenanceReport)>> {
    let mut reports = Vec::new();
    for name in time_travel::list_tables(config)? {
        let table = time_travel::open(config, &name).await?;
        let files = table.snapshot().map_err(|e| delta_error(&e))?.log_data().num_files();
        let mut report = MaintenanceReport::default();
        if files >= policy.optimize_min_files {
            let zorder: Vec<String> = if name == super::history::TABLE { Vec::new() } else { policy.zorder_by.clone() };
            report = optimize(config, &name, &zorder).await?;
            report.checkpoint_version = checkpoint(config, &name).await?.checkpoint_version;
        }
        let retention = Duration::from_secs(policy.vacuum_retention_hours * 3600);
        report.files_vacuumed = vacuum(config, &name, retention).await?.files_vacuumed;
        reports.push((name, report));
    }
    Ok(reports)
}
