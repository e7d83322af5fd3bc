//! From cdc-core's Arrow batches to what a Delta table stores, and the
//! MERGE expressions for a run of changes.

use std::collections::BTreeSet;
use std::sync::Arc;

use cdc_core::arrow::{
    LOGICAL_TYPE_METADATA, OP_COLUMN, ORDER_COLUMN, PARTITION_COLUMN, TOPIC_COLUMN, UNAVAILABLE_COLUMN,
};
use cdc_core::{Error, Result, RowChange};
use deltalake::DeltaTable;
use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMicrosecondArray, new_null_array,
};
use deltalake::arrow::compute::{SortColumn, cast, filter_record_batch, lexsort_to_indices, take_record_batch};
use deltalake::arrow::datatypes::{DataType, Date32Type, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};
use deltalake::datafusion::common::Column;

use super::NAME;
use super::owed::{OWED_AT_COLUMN, OWED_COLUMN};

/// When the row was written to Delta.
pub const APPLIED_AT_COLUMN: &str = "_cdc_applied_at";
/// Soft-delete flag (with `soft_delete`).
pub const DELETED_COLUMN: &str = "_cdc_deleted";

fn sink_error(message: String) -> Error {
    Error::Sink { sink: NAME.into(), message, retriable: false }
}

/// The Arrow schema of an existing table, if it exists.
pub fn table_schema(table: &DeltaTable) -> Result<Option<SchemaRef>> {
    if table.version().is_none() {
        return Ok(None);
    }
    let state = table.snapshot().map_err(|e| super::delta_error(&e))?;
    Ok(Some(state.snapshot().arrow_schema()))
}

/// Whether the table holds any data file.
pub fn has_files(table: &DeltaTable) -> Result<bool> {
    let state = table.snapshot().map_err(|e| super::delta_error(&e))?;
    Ok(state.log_data().num_files() > 0)
}

/// Types Delta has no column type for become their closest exact form:
/// time of day and durations as microseconds (Int64), calendar intervals as
/// ISO-ish text. The field metadata keeps the logical type. Columns the
/// table has but the batch lacks (dropped at the source) are added as nulls;
/// a column whose type changed is cast to the table's type when every value
/// fits, and is otherwise an error naming table, column, old and new type.
/// Adds `_cdc_applied_at` (and `_cdc_deleted`), keeps `_cdc_unavailable`
/// for the MERGE (it is not stored).
pub fn for_delta(
    table: &str,
    batch: &RecordBatch,
    existing: Option<&SchemaRef>,
    soft_delete: bool,
) -> Result<RecordBatch> {
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let (logical, target) = match field.data_type() {
            DataType::Time64(_) => (Some("time_micros"), DataType::Int64),
            DataType::Duration(_) => (Some("duration_micros"), DataType::Int64),
            DataType::Interval(_) => (Some("interval"), DataType::Utf8),
            other => (None, other.clone()),
        };
        let target = match existing.and_then(|s| s.field_with_name(field.name()).ok()) {
            Some(stored) if stored.data_type() != &target && field.name() != UNAVAILABLE_COLUMN => {
                let stored_type = stored.data_type().clone();
                let cast_ok = cast(column, &stored_type).ok().filter(|c| c.null_count() == column.null_count());
                if cast_ok.is_none() {
                    return Err(sink_error(format!(
                        "column {} of Delta table {table} is {stored_type} but events now carry {target}, \
                         and Delta cannot widen it in place: the events go to the dead-letter store",
                        field.name()
                    )));
                }
                stored_type
            }
            _ => target,
        };
        let converted = if column.data_type() == &target {
            column.clone()
        } else {
            cast(column, &target).map_err(|e| sink_error(e.to_string()))?
        };
        let converted = fit_delta_range(table, field.name(), converted)?;
        let mut new_field = Field::new(field.name(), target, true).with_metadata(field.metadata().clone());
        if let Some(logical) = logical {
            let mut metadata = field.metadata().clone();
            metadata.insert(LOGICAL_TYPE_METADATA.into(), logical.into());
            new_field = new_field.with_metadata(metadata);
        }
        fields.push(new_field);
        columns.push(converted);
    }
    // Columns dropped at the source stay in the table and get nulls.
    if let Some(existing) = existing {
        for stored in existing.fields() {
            if fields.iter().all(|f| f.name() != stored.name()) {
                columns.push(new_null_array(stored.data_type(), batch.num_rows()));
                fields.push(stored.as_ref().clone().with_nullable(true));
            }
        }
    }
    let now = chrono::Utc::now().timestamp_micros();
    if let Some(i) = fields.iter().position(|f| f.name() == APPLIED_AT_COLUMN) {
        fields.remove(i);
        columns.remove(i);
    }
    fields.push(Field::new(APPLIED_AT_COLUMN, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true));
    columns.push(Arc::new(TimestampMicrosecondArray::from(vec![now; batch.num_rows()]).with_timezone("UTC")));
    if soft_delete {
        if let Some(i) = fields.iter().position(|f| f.name() == DELETED_COLUMN) {
            fields.remove(i);
            columns.remove(i);
        }
        let ops = required_column(batch, OP_COLUMN)?.as_string::<i32>();
        let deleted: BooleanArray = ops.iter().map(|op| Some(op == Some("d"))).collect();
        fields.push(Field::new(DELETED_COLUMN, DataType::Boolean, true));
        columns.push(Arc::new(deleted));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| sink_error(e.to_string()))
}

/// Delta (like Spark) keeps dates and timestamps from 0001-01-01 to
/// 9999-12-31 and has no infinity (deltalake's statistics overflow on it):
/// PostgreSQL's `infinity` / `-infinity` are stored as the last and first
/// representable instants. Any other value outside that range (a BC date) is
/// refused, naming the column: it cannot be stored as it is, and is never
/// stored as another date.
fn fit_delta_range(table: &str, name: &str, column: ArrayRef) -> Result<ArrayRef> {
    const MAX_DAY: i32 = 2_932_896; // 9999-12-31
    const MIN_DAY: i32 = -719_162; // 0001-01-01
    const MAX_MICROS: i64 = 253_402_300_799_999_999; // 9999-12-31 23:59:59.999999
    const MIN_MICROS: i64 = -62_135_596_800_000_000; // 0001-01-01 00:00:00
    let refuse = |value: String| {
        sink_error(format!(
            "column {name} of Delta table {table}: {value} is outside what Delta stores (0001-01-01 to \
             9999-12-31); the event goes to the dead-letter store"
        ))
    };
    match column.data_type() {
        DataType::Date32 => {
            let days = column.as_primitive::<Date32Type>();
            let infinite = |d: i32| d == i32::MAX || d == i32::MIN;
            if let Some(day) = days.iter().flatten().find(|d| !(MIN_DAY..=MAX_DAY).contains(d) && !infinite(*d)) {
                let date = chrono::NaiveDate::from_num_days_from_ce_opt(day.saturating_add(719_163));
                return Err(refuse(date.map_or(format!("{day} days from 1970-01-01"), |d| format!("the date {d}"))));
            }
            Ok(Arc::new(days.unary::<_, Date32Type>(|d| d.clamp(MIN_DAY, MAX_DAY))))
        }
        DataType::Timestamp(TimeUnit::Microsecond, zone) => {
            let micros = column.as_primitive::<TimestampMicrosecondType>();
            let infinite = |t: i64| t == i64::MAX || t == i64::MIN;
            if let Some(t) = micros.iter().flatten().find(|t| !(MIN_MICROS..=MAX_MICROS).contains(t) && !infinite(*t)) {
                let at = chrono::DateTime::from_timestamp_micros(t).map(|t| t.naive_utc().to_string());
                return Err(refuse(at.map_or(format!("{t} µs from 1970-01-01"), |t| format!("the timestamp {t}"))));
            }
            Ok(Arc::new(
                micros
                    .unary::<_, TimestampMicrosecondType>(|t| t.clamp(MIN_MICROS, MAX_MICROS))
                    .with_timezone_opt(zone.clone()),
            ))
        }
        _ => Ok(column),
    }
}

/// A column the batch is built with (key or metadata); its absence is a bug
/// reported as an error, never a panic.
fn required_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| sink_error(format!("the batch has no column {name}")))
}

/// Rows ordered by key: inserts land clustered, so later updates touch few files.
pub fn sort_by_key(batch: &RecordBatch, key: &[String]) -> Result<RecordBatch> {
    let columns: Vec<SortColumn> = key
        .iter()
        .map(|k| Ok(SortColumn { values: required_column(batch, k)?.clone(), options: None }))
        .collect::<Result<_>>()?;
    let indices = lexsort_to_indices(&columns, None).map_err(|e| sink_error(e.to_string()))?;
    take_record_batch(batch, &indices).map_err(|e| sink_error(e.to_string()))
}

/// The rows to store (not deletes), without the columns only the MERGE uses.
pub fn without_deletes(batch: &RecordBatch) -> Result<RecordBatch> {
    let ops = required_column(batch, OP_COLUMN)?.as_string::<i32>();
    let keep: BooleanArray = ops.iter().map(|op| Some(op != Some("d"))).collect();
    let kept = filter_record_batch(batch, &keep).map_err(|e| sink_error(e.to_string()))?;
    stored_columns(&kept)
}

/// The batch without `_cdc_unavailable` (a MERGE input, not a column).
pub fn stored_columns(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut batch = batch.clone();
    if let Ok(i) = batch.schema().index_of(UNAVAILABLE_COLUMN) {
        batch.remove_column(i);
    }
    Ok(batch)
}

/// True when the table has one integer key and every key of the batch is
/// above the largest key any data file holds (by file statistics): the
/// batch cannot touch existing rows, so it can be appended.
pub fn keys_above_table(table: &DeltaTable, key: &[String], batch: &RecordBatch) -> Result<bool> {
    let [key] = key else { return Ok(false) };
    let Some(min_new) = batch.column_by_name(key).and_then(min_int) else { return Ok(false) };
    let state = table.snapshot().map_err(|e| super::delta_error(&e))?;
    for file in state.log_data().iter() {
        // File statistics as the log stores them: {"maxValues": {"id": 41}, ...}.
        let stats: Option<serde_json::Value> = file.stats().and_then(|s| serde_json::from_str(&s).ok());
        let Some(max_key) = stats.as_ref().and_then(|s| s.get("maxValues")?.get(key)?.as_i64()) else {
            return Ok(false);
        };
        if max_key >= min_new {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The smallest value of an integer column; `None` for any other type: a
/// cast of a numeric or text key to an integer range would leave stored
/// rows outside it (7.25 -> 7).
fn min_int(array: &ArrayRef) -> Option<i64> {
    if !array.data_type().is_integer() {
        return None;
    }
    let array = cast(array, &DataType::Int64).ok()?;
    deltalake::arrow::compute::min(array.as_primitive::<deltalake::arrow::datatypes::Int64Type>())
}

fn max_int(array: &ArrayRef) -> Option<i64> {
    if !array.data_type().is_integer() {
        return None;
    }
    let array = cast(array, &DataType::Int64).ok()?;
    deltalake::arrow::compute::max(array.as_primitive::<deltalake::arrow::datatypes::Int64Type>())
}

/// The batch's key range as a condition on `target`, for a single integer
/// key (files whose statistics fall outside it need not be read).
pub fn key_range(batch: &RecordBatch, key: &[String]) -> Option<String> {
    let [single] = key else { return None };
    let column = batch.column_by_name(single)?;
    let (min, max) = (min_int(column)?, max_int(column)?);
    Some(format!("target.{k} >= {min} AND target.{k} <= {max}", k = ident(single)))
}

/// A column reference that keeps dots and quotes in names literal.
pub fn column(name: &str) -> Column {
    Column::new_unqualified(name)
}

/// `"name"` as a SQL identifier.
pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(super) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The expressions of one MERGE.
pub struct MergeSql {
    /// Join on the key, plus the batch's key range on the target so that
    /// files whose statistics fall outside it are not read or rewritten.
    pub predicate: String,
    pub update_when: String,
    pub delete_when: String,
    pub insert_when: String,
    /// With `soft_delete`, deletes of keys the table lacks are stored flagged.
    pub insert_flagged_when: String,
    pub updates: Vec<(String, String)>,
    pub inserts: Vec<(String, String)>,
    pub soft_delete: Vec<(String, String)>,
    /// Rows of op `p` pay a stored create what it owes (`delta/owed.rs`):
    /// the owed columns only. Empty when the table owes nothing.
    pub pay_when: String,
    pub pays: Vec<(String, String)>,
}

impl MergeSql {
    pub fn new(
        source: &RecordBatch,
        key: &[String],
        rows: &[RowChange<'_>],
        soft_delete: bool,
        (prune, target_owes): (bool, bool),
    ) -> Result<MergeSql> {
        let mut predicate: Vec<String> = key.iter().map(|k| format!("target.{k} = source.{k}", k = ident(k))).collect();
        predicate.extend(key_range(source, key).filter(|_| prune));
        // Columns some change in the run did not send (unchanged TOAST, or
        // the non-key part of a key-only delete): those keep the target's value.
        let unavailable: BTreeSet<&str> = rows
            .iter()
            .filter_map(|r| r.after.as_ref().map(|after| (r, after)))
            .flat_map(|(r, after)| {
                after
                    .iter()
                    .zip(r.event.schema.fields())
                    .filter(|(v, _)| v.is_unavailable())
                    .map(|(_, f)| f.name.as_str())
            })
            .collect();
        let mut updates = Vec::new();
        let mut inserts = Vec::new();
        let mut pays = Vec::new();
        let metadata: BTreeSet<String> = cdc_core::arrow::metadata_fields()
            .iter()
            .map(|f| f.name().clone())
            .chain([APPLIED_AT_COLUMN, DELETED_COLUMN, OWED_COLUMN, OWED_AT_COLUMN].map(str::to_owned))
            .collect();
        let (u, owed, owed_at) = (ident(UNAVAILABLE_COLUMN), ident(OWED_COLUMN), ident(OWED_AT_COLUMN));
        for field in source.schema().fields() {
            let name = field.name();
            if name == UNAVAILABLE_COLUMN {
                continue;
            }
            let source_value = format!("source.{}", ident(name));
            inserts.push((name.clone(), source_value.clone()));
            if key.contains(name) {
                continue;
            }
            if target_owes && !metadata.contains(name) {
                let c = ident(name);
                pays.push((
                    name.clone(),
                    format!(
                        "CASE WHEN array_has(target.{owed}, {n}) AND NOT coalesce(array_has(source.{u}, {n}), false) \
                         THEN source.{c} ELSE target.{c} END",
                        n = literal(name)
                    ),
                ));
            }
            if target_owes && (name == OWED_COLUMN || name == OWED_AT_COLUMN) {
                // A create owing anew lists what it owes; another change keeps
                // owing what the row owed and it did not send either.
                let still_owed = format!(
                    "CASE WHEN cardinality(array_intersect(target.{owed}, source.{u})) > 0 \
                     THEN array_intersect(target.{owed}, source.{u}) END"
                );
                let value = if name == OWED_COLUMN {
                    format!("CASE WHEN source.{owed} IS NOT NULL THEN source.{owed} ELSE {still_owed} END")
                } else {
                    format!(
                        "CASE WHEN source.{owed} IS NOT NULL THEN source.{owed_at} \
                         WHEN ({still_owed}) IS NOT NULL THEN target.{owed_at} END"
                    )
                };
                updates.push((name.clone(), value));
                continue;
            }
            let value = if unavailable.contains(name.as_str()) {
                format!(
                    "CASE WHEN array_has(source.{u}, {n}) THEN target.{c} ELSE {source_value} END",
                    u = ident(UNAVAILABLE_COLUMN),
                    n = literal(name),
                    c = ident(name)
                )
            } else {
                source_value
            };
            updates.push((name.clone(), value));
        }
        // The one rule of which change is newer (order key, or a later offset
        // of the same partition).
        let order = cdc_core::supersedes_sql(&cdc_core::SqlVersion::of("source"), &cdc_core::SqlVersion::of("target"));
        let op = ident(OP_COLUMN);
        let soft = if soft_delete {
            [
                OP_COLUMN,
                ORDER_COLUMN,
                "_cdc_lsn",
                "_cdc_tx_id",
                "_cdc_source_ts",
                TOPIC_COLUMN,
                PARTITION_COLUMN,
                "_cdc_offset",
                APPLIED_AT_COLUMN,
                DELETED_COLUMN,
            ]
            .iter()
            .map(|c| ((*c).to_owned(), format!("source.{}", ident(c))))
            .collect()
        } else {
            Vec::new()
        };
        if !pays.is_empty() {
            pays.push((OWED_COLUMN.to_owned(), format!("source.{u}")));
            pays.push((
                OWED_AT_COLUMN.to_owned(),
                format!("CASE WHEN source.{u} IS NOT NULL THEN target.{owed_at} END"),
            ));
        }
        Ok(MergeSql {
            predicate: predicate.join(" AND "),
            update_when: format!("source.{op} NOT IN ('d', 'p') AND {order}"),
            delete_when: format!("source.{op} = 'd' AND {order}"),
            insert_when: format!("source.{op} NOT IN ('d', 'p')"),
            insert_flagged_when: format!("source.{op} <> 'p'"),
            updates,
            inserts,
            soft_delete: soft,
            pay_when: format!("source.{op} = 'p'"),
            pays,
        })
    }
}
