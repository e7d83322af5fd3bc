//! Reading the Delta tables back: any table at a version or a timestamp, and
//! a table's history.

use cdc_core::{Error, Result};
use chrono::{DateTime, Utc};
use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use super::{DeltaConfig, NAME, delta_error};

/// One commit of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub version: u64,
    pub timestamp: Option<DateTime<Utc>>,
    /// `WRITE`, `MERGE`, `DELETE`, `OPTIMIZE`, `VACUUM START`, ...
    pub operation: String,
    /// Rows written, updated or deleted, from the commit's operation metrics.
    pub rows_affected: Option<i64>,
}

/// The tables under a local root (directories with a `_delta_log`). Object
/// store roots are not listed: their tables are found when first written.
pub fn list_tables(config: &DeltaConfig) -> Result<Vec<String>> {
    let root = config.root.strip_prefix("file://").unwrap_or(&config.root);
    if root.contains("://") {
        return Ok(Vec::new());
    }
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(Vec::new()) };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("_delta_log").is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// The latest version of a table.
pub async fn open(config: &DeltaConfig, name: &str) -> Result<DeltaTable> {
    let table = DeltaTable::try_from_url_with_storage_options(config.table_url(name)?, config.storage_options.clone())
        .await
        .map_err(|e| delta_error(&e))?;
    if table.version().is_none() {
        return Err(Error::Sink {
            sink: NAME.into(),
            message: format!("no Delta table {name} under {}", config.root),
            retriable: false,
        });
    }
    Ok(table)
}

/// A table as it was at `version`.
pub async fn at_version(config: &DeltaConfig, name: &str, version: u64) -> Result<DeltaTable> {
    let mut table = open(config, name).await?;
    table.load_version(version).await.map_err(|e| delta_error(&e))?;
    Ok(table)
}

/// A table as it was at `timestamp`: its latest commit at or before it.
pub async fn at_timestamp(config: &DeltaConfig, name: &str, timestamp: DateTime<Utc>) -> Result<DeltaTable> {
    let mut table = open(config, name).await?;
    table.load_with_datetime(timestamp).await.map_err(|e| delta_error(&e))?;
    Ok(table)
}

/// A table's commits, newest first.
pub async fn history(config: &DeltaConfig, name: &str) -> Result<Vec<HistoryEntry>> {
    let table = open(config, name).await?;
    let latest = table.version().unwrap_or(0);
    let infos: Vec<_> = table.history(None).try_collect().await.map_err(|e| delta_error(&e))?;
    Ok(infos
        .iter()
        .enumerate()
        .map(|(i, info)| {
            let metrics = info.info.get("operationMetrics").and_then(|m| m.as_object());
            let rows_affected = metrics.map(|m| {
                [
                    "num_added_rows",
                    "numOutputRows",
                    "num_target_rows_inserted",
                    "num_target_rows_updated",
                    "num_target_rows_deleted",
                    "num_deleted_rows",
                ]
                .iter()
                .filter_map(|k| m.get(*k).and_then(serde_json::Value::as_i64))
                .sum()
            });
            HistoryEntry {
                version: latest.saturating_sub(i as u64),
                timestamp: info.timestamp.and_then(DateTime::from_timestamp_millis),
                operation: info.operation.clone().unwrap_or_default(),
                rows_affected,
            }
        })
        .collect())
}

/// Which version of the tables a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsOf {
    #[default]
    Latest,
    Version(u64),
    Timestamp(DateTime<Utc>),
}

/// Registers `table` in a DataFusion session under `name`.
pub async fn register(ctx: &SessionContext, name: &str, table: &DeltaTable) -> Result<()> {
    table.update_datafusion_session(&ctx.state()).map_err(|e| delta_error(&e))?;
    let provider = table.table_provider().await.map_err(|e| super::df_error(&e))?;
    ctx.register_table(name, provider).map_err(|e| super::df_error(&e))?;
    Ok(())
}

/// Runs SQL over every table under the root, each read as of `as_of`
/// (a table that did not exist then is left out).
pub async fn query(config: &DeltaConfig, sql: &str, as_of: AsOf) -> Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    for name in list_tables(config)? {
        let table = match as_of {
            AsOf::Latest => open(config, &name).await,
            AsOf::Version(v) => at_version(config, &name, v).await,
            AsOf::Timestamp(t) => at_timestamp(config, &name, t).await,
        };
        match table {
            Ok(table) => register(&ctx, &name, &table).await?,
            Err(error) if as_of != AsOf::Latest => tracing::debug!(table = name, %error, "not readable as of then"),
            Err(error) => return Err(error),
        }
    }
    let frame = ctx.sql(sql).await.map_err(|e| super::df_error(&e))?;
    frame.collect().await.map_err(|e| super::df_error(&e))
}
