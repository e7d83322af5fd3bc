//! Reading the Delta tables back: any table at a version or a timestamp, and
//! a table's history.

use cdc_core::{Error, Result};
use chrono::{DateTime, Utc};
use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::logstore::object_store::ObjectStoreExt;
use futures::{StreamExt, TryStreamExt};

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

/// The tables under the root, local or on an object store: the folders
/// directly under it holding a `_delta_log`. One listing of the root, then
/// one short listing per folder (a few at once), so start-up on an object
/// store costs a round trip per table, not a walk of every data file.
pub async fn list_tables(config: &DeltaConfig) -> Result<Vec<String>> {
    let local = config.root.strip_prefix("file://").unwrap_or(&config.root);
    if !local.contains("://") && !std::path::Path::new(local).is_dir() {
        return Ok(Vec::new()); // no table written yet; do not create the root for a read
    }
    let store = root_store(config)?;
    let folders = match store.list_with_delimiter(None).await {
        Ok(listing) => listing.common_prefixes,
        Err(deltalake::ObjectStoreError::NotFound { .. }) => return Ok(Vec::new()),
        Err(error) => return Err(store_error(&config.root, &error)),
    };
    let store = &store;
    let mut names: Vec<String> = futures::stream::iter(folders)
        .map(|folder| async move {
            let log = folder.clone().join("_delta_log");
            match store.list(Some(&log)).try_next().await {
                Ok(first) => Ok(first.is_some().then(|| folder.filename().unwrap_or_default().to_owned())),
                Err(error) => Err(store_error(&config.root, &error)),
            }
        })
        .buffer_unordered(16)
        .try_filter_map(|name| futures::future::ready(Ok(name)))
        .try_collect()
        .await?;
    names.sort();
    Ok(names)
}

/// Whether the root takes a write: puts and deletes a probe object (a
/// local root is created), then lists the tables. Returns their number.
pub async fn probe_root(config: &DeltaConfig) -> Result<usize> {
    let store = root_store(config)?;
    let probe = deltalake::Path::from(format!(".cdc-check-{}", std::process::id()));
    let probed = async {
        store.put(&probe, deltalake::logstore::object_store::PutPayload::from_static(b"check")).await?;
        store.delete(&probe).await
    };
    probed.await.map_err(|e| Error::Sink {
        sink: NAME.into(),
        message: format!("writing a probe object under {}: {e}", config.root),
        retriable: true,
    })?;
    Ok(list_tables(config).await?.len())
}

/// The object store at the root (a local folder is one too).
fn root_store(config: &DeltaConfig) -> Result<deltalake::logstore::ObjectStoreRef> {
    let url = deltalake::ensure_table_uri(&config.root).map_err(|e| delta_error(&e))?;
    let storage = deltalake::logstore::StorageConfig::parse_options(config.resolved_storage_options()?)
        .map_err(|e| delta_error(&e))?;
    Ok(deltalake::logstore::logstore_for(&url, storage).map_err(|e| delta_error(&e))?.object_store(None))
}

fn store_error(root: &str, error: &deltalake::ObjectStoreError) -> Error {
    Error::Sink { sink: NAME.into(), message: format!("listing the tables under {root}: {error}"), retriable: true }
}

/// The latest version of a table.
pub async fn open(config: &DeltaConfig, name: &str) -> Result<DeltaTable> {
    let table =
        DeltaTable::try_from_url_with_storage_options(config.table_url(name)?, config.resolved_storage_options()?)
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
    for name in list_tables(config).await? {
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
