//! Transaction-consistent read points (`read_points = true`): after each
//! batch the sink appends a row to `cdc_consistency` saying whether its
//! tables now show the source exactly as of one transaction boundary (no
//! source transaction half applied, none after it begun), and if so the
//! version of every table that shows it. Readers take the newest such row
//! ([`latest`]), or the newest at or before a source LSN or time
//! ([`as_of`]), and read each table at its version ([`query`]).
//!
//! The transaction tracker (`cdc_core::consistency`) and this table's own
//! `txn` offsets go in the same commit, and the commit follows the batch's
//! table commits: after a crash between them the batch is read again (this
//! table's offsets are behind) and the tracker counts it then.

use std::collections::BTreeMap;
use std::sync::Arc;

use cdc_core::consistency::{Boundary, TransactionTracker};
use cdc_core::{Batch, Error, Result};
use chrono::{DateTime, Utc};
use deltalake::arrow::array::{Array, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use futures::TryStreamExt;

use super::{DeltaConfig, NAME, TableState, delta_error, df_error, offsets_commit, open_state, time_travel};

/// The read points table's name under the root.
pub const TABLE: &str = "cdc_consistency";
/// Commit metadata: the transaction tracker after the commit's batch.
const TRACKER_METADATA: &str = "cdc.transactions";
/// How many commits back the tracker is looked for (past maintenance).
const TRACKER_LOOKBACK: usize = 100;

/// A set of table versions showing the source as of one transaction boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPoint {
    pub boundary: Boundary,
    /// Every table (the history included) and the version to read it at.
    pub versions: BTreeMap<String, u64>,
}

/// The read points table and the tracker, as of its last commit.
pub(super) struct Recorder {
    state: TableState,
    tracker: TransactionTracker,
}

/// Opens the table and reads the tracker its newest commit stored.
async fn open(config: &DeltaConfig) -> Result<Recorder> {
    let state = open_state(config, TABLE).await?;
    let mut tracker = None;
    if state.table.version().is_some() {
        let infos: Vec<_> =
            state.table.history(Some(TRACKER_LOOKBACK)).try_collect().await.map_err(|e| delta_error(&e))?;
        if let Some(json) = infos.iter().find_map(|info| info.info.get(TRACKER_METADATA)) {
            tracker = Some(serde_json::from_value(json.clone()).map_err(|e| Error::Sink {
                sink: NAME.into(),
                message: format!("{TABLE}: the stored transaction tracker does not read back: {e}"),
                retriable: false,
            })?);
        }
    }
    let tracker = tracker.unwrap_or_else(|| TransactionTracker::new(config.read_points_ignore.iter().cloned()));
    Ok(Recorder { state, tracker })
}

/// The offsets the read points table holds (`None` when off).
pub(super) async fn held(config: &DeltaConfig, slot: &mut Option<Recorder>) -> Result<Option<cdc_core::Offsets>> {
    if !config.read_points {
        return Ok(None);
    }
    if slot.is_none() {
        *slot = Some(open(config).await?);
    }
    Ok(slot.as_ref().map(|r| r.state.held.clone()))
}

/// Takes in a batch every table has committed; appends its row: a read point
/// at `versions` when the tables show a boundary exactly.
pub(super) async fn record(
    config: &DeltaConfig,
    slot: &mut Option<Recorder>,
    batch: &Batch,
    versions: BTreeMap<String, u64>,
) -> Result<()> {
    let mut recorder = match slot.take() {
        Some(recorder) => recorder,
        None => open(config).await?,
    };
    let fresh =
        batch.reapply || batch.offsets.iter().any(|(t, p, o)| recorder.state.held.get(t, p).is_none_or(|h| h < o));
    if !fresh {
        *slot = Some(recorder);
        return Ok(()); // a replay of what it holds
    }
    let mut tracker = recorder.tracker.clone();
    tracker.observe(batch.to_apply(&recorder.state.held), &batch.transactions);
    let exact = tracker.exact_boundary().cloned();
    let row = row(exact.as_ref(), &versions)?;
    let tracker_json = serde_json::to_value(&tracker).map_err(|e| Error::Sink {
        sink: NAME.into(),
        message: format!("{TABLE}: the transaction tracker does not serialize: {e}"),
        retriable: false,
    })?;
    let (properties, cumulative) =
        offsets_commit(config, &recorder.state.held, &batch.offsets, vec![(TRACKER_METADATA, tracker_json)]);
    let creating = recorder.state.table.version().is_none();
    let mut builder = recorder
        .state
        .table
        .clone()
        .write(vec![row])
        .with_save_mode(SaveMode::Append)
        .with_schema_mode(SchemaMode::Merge)
        .with_commit_properties(properties);
    if creating {
        builder = builder.with_configuration(config.new_table_properties());
    }
    // On an error the slot stays empty: the next batch reads the table again.
    let table = builder.await.map_err(|e| delta_error(&e))?;
    recorder.state.table = table;
    recorder.state.held = cumulative;
    recorder.tracker = tracker;
    *slot = Some(recorder);
    Ok(())
}

fn schema() -> Schema {
    let utc = DataType::Timestamp(deltalake::arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into()));
    Schema::new(vec![
        Field::new("recorded_at", utc, false),
        Field::new("consistent", DataType::Boolean, false),
        Field::new("tx_id", DataType::Utf8, true),
        Field::new("tx_lsn", DataType::Int64, true),
        Field::new("tx_ts_ms", DataType::Int64, true),
        // {"orders": 12, ...} as JSON text.
        Field::new("versions", DataType::Utf8, true),
    ])
}

fn row(exact: Option<&Boundary>, versions: &BTreeMap<String, u64>) -> Result<RecordBatch> {
    let now = Utc::now().timestamp_micros();
    let versions = exact.map(|_| serde_json::json!(versions).to_string());
    let columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(deltalake::arrow::array::TimestampMicrosecondArray::from(vec![now]).with_timezone("UTC")),
        Arc::new(BooleanArray::from(vec![exact.is_some()])),
        Arc::new(StringArray::from(vec![exact.map(|b| b.id.clone())])),
        Arc::new(Int64Array::from(vec![exact.and_then(|b| b.lsn)])),
        Arc::new(Int64Array::from(vec![exact.and_then(|b| b.ts_ms)])),
        Arc::new(StringArray::from(vec![versions])),
    ];
    RecordBatch::try_new(Arc::new(schema()), columns).map_err(|e| Error::Sink {
        sink: NAME.into(),
        message: e.to_string(),
        retriable: false,
    })
}

/// Which read point to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointAt {
    /// The newest.
    Latest,
    /// The newest at or before this source LSN.
    Lsn(i64),
    /// The newest whose transaction the connector processed at or before this time.
    Time(DateTime<Utc>),
}

/// The newest read point (see [`PointAt`]); `None` when there is none (yet).
pub async fn as_of(config: &DeltaConfig, at: PointAt) -> Result<Option<ReadPoint>> {
    let table = match time_travel::open(config, TABLE).await {
        Ok(table) => table,
        // Not created yet, or its first commit landed just after the open
        // looked (a reader racing the sink's first batch): look once more.
        Err(_) if !time_travel::list_tables(config).await?.iter().any(|t| t == TABLE) => return Ok(None),
        Err(_) => time_travel::open(config, TABLE).await?,
    };
    let ctx = SessionContext::new();
    time_travel::register(&ctx, TABLE, &table).await?;
    let filter = match at {
        PointAt::Latest => String::new(),
        PointAt::Lsn(lsn) => format!(" AND tx_lsn <= {lsn}"),
        PointAt::Time(time) => format!(" AND tx_ts_ms <= {}", time.timestamp_millis()),
    };
    let sql = format!(
        "SELECT tx_id, tx_lsn, tx_ts_ms, versions FROM {TABLE} WHERE consistent{filter} \
         ORDER BY recorded_at DESC LIMIT 1"
    );
    let batches = ctx.sql(&sql).await.map_err(|e| df_error(&e))?.collect().await.map_err(|e| df_error(&e))?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else { return Ok(None) };
    let text = |i: usize| -> Option<String> {
        let column = deltalake::arrow::compute::cast(batch.column(i), &DataType::Utf8).ok()?;
        let column = column.as_string_opt::<i32>()?;
        (!column.is_null(0)).then(|| column.value(0).to_owned())
    };
    let number = |i: usize| -> Option<i64> {
        let column = deltalake::arrow::compute::cast(batch.column(i), &DataType::Int64).ok()?;
        let column = column.as_primitive_opt::<deltalake::arrow::datatypes::Int64Type>()?;
        (!column.is_null(0)).then(|| column.value(0))
    };
    let versions = text(3).and_then(|json| serde_json::from_str(&json).ok()).ok_or_else(|| Error::Sink {
        sink: NAME.into(),
        message: format!("{TABLE}: a consistent row without readable versions"),
        retriable: false,
    })?;
    let boundary = Boundary { id: text(0).unwrap_or_default(), lsn: number(1), ts_ms: number(2) };
    Ok(Some(ReadPoint { boundary, versions }))
}

/// The newest read point.
pub async fn latest(config: &DeltaConfig) -> Result<Option<ReadPoint>> {
    as_of(config, PointAt::Latest).await
}

/// Runs SQL over the tables of a read point, each at its version (tables
/// created after it are left out).
pub async fn query(config: &DeltaConfig, sql: &str, point: &ReadPoint) -> Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    for (name, version) in &point.versions {
        let table = time_travel::at_version(config, name, *version).await?;
        time_travel::register(&ctx, name, &table).await?;
    }
    let frame = ctx.sql(sql).await.map_err(|e| df_error(&e))?;
    frame.collect().await.map_err(|e| df_error(&e))
}
