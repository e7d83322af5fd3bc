//! SCD type 2 tables (`[delta.tables.<name>] mode = "scd2"`): every change
//! closes the version of the row it follows and opens a new one, so the
//! table holds each row's whole history.
//!
//! A version is identified by the row's key and `__start_order`, the place
//! of the change that opened it in the row's sequence (its order key). Its
//! `__end_order` is the next version's start; `__start_at` / `__end_at` are
//! the source commit times of those changes; `__is_current` marks the open
//! version of a live row. A delete opens a version flagged `_cdc_deleted`
//! (never current): it records where the row did not exist, so a change read
//! late (from another partition) lands in the interval it belongs to instead
//! of becoming current.
//!
//! Per batch and table: the batch's changes, and the stored versions of
//! their keys that may neighbour them (every version ending after the
//! batch's oldest change), are ordered into each row's sequence by the rule
//! the PostgreSQL target shares ([`cdc_core::scd2::sequence`]): ends,
//! current flags, unchanged-TOAST values (taken from the version before) and,
//! with `track_history_columns`, changes folded into the version before
//! (only other columns changed); one MERGE on (key, `__start_order`) then
//! writes them. A change the table holds already (a replayed batch) is
//! recognised by its start and skipped.

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Instant;

use cdc_core::arrow::{
    OFFSET_COLUMN, OP_COLUMN, ORDER_COLUMN, PARTITION_COLUMN, SOURCE_TS_COLUMN, TOPIC_COLUMN, UNAVAILABLE_COLUMN,
};
use cdc_core::{ChangeEvent, Error, Result, Value};
use deltalake::DeltaTable;
use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
    new_null_array,
};
use deltalake::arrow::compute::{cast, concat_batches, take};
use deltalake::arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef};
use deltalake::arrow::row::{RowConverter, Rows, SortField};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::CommitProperties;

use super::convert::{self, DELETED_COLUMN, ident, literal};
use super::{DeltaConfig, Meter, NAME, delta_error, df_error, time_travel};

use cdc_core::scd2::{Columns, Entry, Sequence, Tracked};
pub use cdc_core::scd2::{END_AT, END_ORDER, IS_CURRENT, START_AT, START_ORDER};
/// MERGE input only: a stored version folded into the one before it
/// (`track_history_columns`), to delete.
const DROP_COLUMN: &str = "__cdc_drop";

fn error(name: &str, message: impl std::fmt::Display) -> Error {
    Error::Sink { sink: NAME.into(), message: format!("SCD2 table {name}: {message}"), retriable: false }
}

/// The batch's changes of one SCD2 table (one row per change, converted for
/// Delta: `_cdc_deleted` set for deletes) with the version columns of a new
/// version: start from the change itself, no end yet.
pub fn opened_versions(name: &str, changes: RecordBatch) -> Result<RecordBatch> {
    let order = column(name, &changes, ORDER_COLUMN)?.clone();
    let at = column(name, &changes, SOURCE_TS_COLUMN)?.clone();
    let rows = changes.num_rows();
    let batch = set_column(name, changes, Field::new(START_ORDER, DataType::Utf8, true), order)?;
    let batch = set_column(name, batch, Field::new(START_AT, at.data_type().clone(), true), at.clone())?;
    let batch =
        set_column(name, batch, Field::new(END_ORDER, DataType::Utf8, true), new_null_array(&DataType::Utf8, rows))?;
    let batch = set_column(
        name,
        batch,
        Field::new(END_AT, at.data_type().clone(), true),
        new_null_array(at.data_type(), rows),
    )?;
    set_column(
        name,
        batch,
        Field::new(IS_CURRENT, DataType::Boolean, true),
        Arc::new(BooleanArray::from(vec![false; rows])),
    )
}

/// The stored versions of the batch's keys that may neighbour its changes:
/// open ones, and those ending after the batch's oldest change. `prune` is
/// the key-range condition on `target` (files outside it are not read).
pub async fn neighbours(
    name: &str,
    table: &DeltaTable,
    opened: &RecordBatch,
    key: &[String],
    prune: Option<String>,
) -> Result<Vec<RecordBatch>> {
    let starts = strings(name, opened, START_ORDER)?;
    let Some(oldest) = starts.iter().flatten().min() else { return Ok(Vec::new()) };
    let ctx = SessionContext::new();
    time_travel::register(&ctx, "target", table).await?;
    let mut sql =
        format!("SELECT * FROM target WHERE ({end} IS NULL OR {end} > {})", literal(oldest), end = ident(END_ORDER));
    if let Some(prune) = prune {
        sql.push_str(&format!(" AND {prune}"));
    }
    let batches = ctx.sql(&sql).await.map_err(|e| df_error(&e))?.collect().await.map_err(|e| df_error(&e))?;
    // Only the batch's keys (the range condition reads neighbours of others).
    let converter = key_converter(name, opened, key)?;
    let wanted: std::collections::HashSet<Vec<u8>> =
        key_rows(name, &converter, opened, key)?.iter().map(|r| r.as_ref().to_vec()).collect();
    let mut kept = Vec::new();
    for batch in batches {
        let batch = align(name, &batch, &opened.schema())?;
        let rows = key_rows(name, &converter, &batch, key)?;
        let mask: BooleanArray = rows.iter().map(|r| Some(wanted.contains(r.as_ref()))).collect();
        let batch = deltalake::arrow::compute::filter_record_batch(&batch, &mask).map_err(|e| error(name, e))?;
        if batch.num_rows() > 0 {
            kept.push(batch);
        }
    }
    Ok(kept)
}

/// What [`cdc_core::scd2::sequence`] reads of each row of `all`.
struct EntryColumns {
    keys: Rows,
    start: StringArray,
    order: StringArray,
    op: StringArray,
    deleted: BooleanArray,
    topic: StringArray,
    partition: deltalake::arrow::array::Int32Array,
    offset: deltalake::arrow::array::Int64Array,
    unavailable: Vec<Vec<usize>>,
}

impl EntryColumns {
    fn read(name: &str, all: &RecordBatch, key: &[String]) -> Result<EntryColumns> {
        let converter = key_converter(name, all, key)?;
        let index: HashMap<&str, usize> =
            all.schema_ref().fields().iter().enumerate().map(|(i, f)| (f.name().as_str(), i)).collect();
        let unavailable = match all.column_by_name(UNAVAILABLE_COLUMN).and_then(|c| c.as_list_opt::<i32>().cloned()) {
            Some(lists) => (0..all.num_rows())
                .map(|row| {
                    if lists.is_null(row) {
                        return Vec::new();
                    }
                    let names = lists.value(row);
                    let names = names.as_string_opt::<i32>().into_iter().flat_map(|names| names.iter().flatten());
                    names.filter_map(|n| index.get(n).copied()).collect()
                })
                .collect(),
            None => vec![Vec::new(); all.num_rows()],
        };
        let deleted = cast(column(name, all, DELETED_COLUMN)?, &DataType::Boolean).map_err(|e| error(name, e))?;
        let partition = cast(column(name, all, PARTITION_COLUMN)?, &DataType::Int32).map_err(|e| error(name, e))?;
        let offset = cast(column(name, all, OFFSET_COLUMN)?, &DataType::Int64).map_err(|e| error(name, e))?;
        Ok(EntryColumns {
            keys: key_rows(name, &converter, all, key)?,
            start: strings(name, all, START_ORDER)?,
            order: strings(name, all, ORDER_COLUMN)?,
            op: strings(name, all, OP_COLUMN)?,
            deleted: deleted.as_boolean().clone(),
            topic: strings(name, all, TOPIC_COLUMN)?,
            partition: partition.as_primitive::<Int32Type>().clone(),
            offset: offset.as_primitive::<Int64Type>().clone(),
            unavailable,
        })
    }

    fn entries(&self) -> Vec<Entry<'_>> {
        let truncate = cdc_core::Op::Truncate.code();
        (0..self.start.len())
            .map(|row| Entry {
                key: self.keys.row(row).data(),
                start: self.start.value(row),
                order: self.order.value(row),
                truncate: self.op.value(row) == truncate,
                deleted: self.deleted.value(row),
                topic: self.topic.value(row),
                partition: self.partition.value(row),
                offset: self.offset.value(row),
                unavailable: self.unavailable.get(row).map_or(&[], Vec::as_slice),
            })
            .collect()
    }
}

/// Works out every version of the batch's keys: `stored` (their stored
/// neighbours, aligned to `opened`'s schema) and `opened` (the batch's
/// changes, in arrival order) in one sequence per key
/// ([`cdc_core::scd2::sequence`]). Returns the rows to MERGE: every version
/// with its end and current flag, and stored versions to drop
/// (`__cdc_drop`).
pub fn sequence(
    name: &str,
    stored: &[RecordBatch],
    opened: &RecordBatch,
    key: &[String],
    track: Option<&[String]>,
) -> Result<RecordBatch> {
    let schema = opened.schema();
    let stored_rows: usize = stored.iter().map(RecordBatch::num_rows).sum();
    let all = concat_batches(&schema, stored.iter().chain([opened])).map_err(|e| error(name, e))?;
    let read = EntryColumns::read(name, &all, key)?;
    let tracked: Vec<(usize, Rows)> = match track {
        Some(columns) => columns
            .iter()
            .filter_map(|c| schema.index_of(c).ok())
            .map(|i| {
                let converter = RowConverter::new(vec![SortField::new(all.column(i).data_type().clone())])
                    .map_err(|e| error(name, e))?;
                let rows = converter.convert_columns(&[all.column(i).clone()]).map_err(|e| error(name, e))?;
                Ok((i, rows))
            })
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let tracked_columns: Vec<usize> = tracked.iter().map(|(i, _)| *i).collect();
    let same = |column: usize, a: usize, b: usize| {
        tracked.iter().find(|(i, _)| *i == column).is_some_and(|(_, rows)| rows.row(a) == rows.row(b))
    };
    let columns = Columns {
        width: all.num_columns(),
        order: schema.index_of(ORDER_COLUMN).ok(),
        tracked: track.map(|_| Tracked { columns: &tracked_columns, same: &same }),
    };
    let sequence = cdc_core::scd2::sequence(&read.entries(), stored_rows, &columns);
    let starts = StringArray::from(sequence.starts.clone());
    let all = set_column(name, all, Field::new(START_ORDER, DataType::Utf8, true), Arc::new(starts))?;
    build_output(name, &all, &sequence)
}

/// The MERGE source: each version's row (identity from its start, values
/// from its sources) with end, current flag and `__cdc_drop`, then the
/// stored versions to drop.
fn build_output(name: &str, all: &RecordBatch, sequence: &Sequence) -> Result<RecordBatch> {
    let Sequence { versions, next, drops, .. } = sequence;
    let schema = all.schema();
    let identity: Vec<usize> = [START_ORDER, START_AT].iter().filter_map(|c| schema.index_of(c).ok()).collect();
    let rows = versions.len() + drops.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len() + 1);
    for (i, array) in all.columns().iter().enumerate() {
        let sources = versions
            .iter()
            .map(|v| if identity.contains(&i) { v.start } else { v.source(i) })
            .chain(drops.iter().copied())
            .map(|r| r as u32);
        let indices = UInt32Array::from_iter_values(sources);
        columns.push(take(array.as_ref(), &indices, None).map_err(|e| error(name, e))?);
    }
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| error(name, e))?;
    // Ends: the next version's start; dropped rows have none.
    let start = strings(name, &batch, START_ORDER)?;
    let start_at = column(name, &batch, START_AT)?.clone();
    let next: Vec<Option<u32>> = (0..rows).map(|v| next.get(v).copied().flatten().map(|n| n as u32)).collect();
    let end_order: StringArray = next.iter().map(|n| n.map(|n| start.value(n as usize))).collect();
    let end_at = take(start_at.as_ref(), &UInt32Array::from(next), None).map_err(|e| error(name, e))?;
    let current: BooleanArray = (0..rows).map(|v| Some(sequence.is_current(v))).collect();
    let dropped: BooleanArray = (0..rows).map(|v| Some(v >= versions.len())).collect();
    let batch = set_column(name, batch, Field::new(END_ORDER, DataType::Utf8, true), Arc::new(end_order))?;
    let batch = set_column(name, batch, Field::new(END_AT, start_at.data_type().clone(), true), end_at)?;
    let batch = set_column(name, batch, Field::new(IS_CURRENT, DataType::Boolean, true), Arc::new(current))?;
    set_column(name, batch, Field::new(DROP_COLUMN, DataType::Boolean, false), Arc::new(dropped))
}

/// The rows to store from a MERGE source: none dropped, no MERGE-only columns.
pub fn stored_versions(name: &str, merged: &RecordBatch) -> Result<RecordBatch> {
    let dropped = cast(column(name, merged, DROP_COLUMN)?, &DataType::Boolean).map_err(|e| error(name, e))?;
    let keep = deltalake::arrow::compute::not(dropped.as_boolean()).map_err(|e| error(name, e))?;
    let mut kept = deltalake::arrow::compute::filter_record_batch(merged, &keep).map_err(|e| error(name, e))?;
    for helper in [DROP_COLUMN, UNAVAILABLE_COLUMN] {
        if let Ok(i) = kept.schema().index_of(helper) {
            kept.remove_column(i);
        }
    }
    Ok(kept)
}

/// The MERGE of a table's versions: match on key and start; drop what
/// folded into the version before; every column from the source.
pub struct MergeSql {
    pub predicate: String,
    pub drop_when: String,
    pub keep_when: String,
    pub columns: Vec<(String, String)>,
}

impl MergeSql {
    pub fn new(source: &RecordBatch, key: &[String], prune: Option<String>) -> MergeSql {
        let mut predicate: Vec<String> = key
            .iter()
            .chain([&START_ORDER.to_owned()])
            .map(|k| format!("target.{k} = source.{k}", k = ident(k)))
            .collect();
        predicate.extend(prune);
        let columns = source
            .schema()
            .fields()
            .iter()
            .map(|f| f.name())
            .filter(|n| *n != DROP_COLUMN && *n != UNAVAILABLE_COLUMN)
            .map(|n| (n.clone(), format!("source.{}", ident(n))))
            .collect();
        MergeSql {
            predicate: predicate.join(" AND "),
            drop_when: format!("source.{}", ident(DROP_COLUMN)),
            keep_when: format!("NOT source.{}", ident(DROP_COLUMN)),
            columns,
        }
    }
}

/// `batch` with the columns of `schema`: by name, cast to its type; null
/// where it has none.
fn align(name: &str, batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
            Some(column) => cast(column, field.data_type()).map_err(|e| error(name, e)),
            None => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| error(name, e))
}

/// `batch` with `field` set to `values` (replaced where it has the column).
fn set_column(name: &str, batch: RecordBatch, field: Field, values: ArrayRef) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns = batch.columns().to_vec();
    let at = schema.index_of(field.name()).ok();
    match at.and_then(|i| Some((fields.get_mut(i)?, columns.get_mut(i)?))) {
        Some((old_field, old_values)) => {
            *old_field = field;
            *old_values = values;
        }
        None => {
            fields.push(field);
            columns.push(values);
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| error(name, e))
}

/// A text column as `Utf8` (a reader may give views or large strings).
fn strings(name: &str, batch: &RecordBatch, column_name: &str) -> Result<StringArray> {
    let array = cast(column(name, batch, column_name)?, &DataType::Utf8).map_err(|e| error(name, e))?;
    array
        .as_string_opt::<i32>()
        .cloned()
        .ok_or_else(|| error(name, format!("column {column_name} is {}, not text", array.data_type())))
}

fn column<'a>(name: &str, batch: &'a RecordBatch, column: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(column).ok_or_else(|| error(name, format!("no column {column}")))
}

fn key_converter(name: &str, batch: &RecordBatch, key: &[String]) -> Result<RowConverter> {
    let fields = key
        .iter()
        .map(|k| Ok(SortField::new(column(name, batch, k)?.data_type().clone())))
        .collect::<Result<Vec<_>>>()?;
    RowConverter::new(fields).map_err(|e| error(name, e))
}

fn key_rows(name: &str, converter: &RowConverter, batch: &RecordBatch, key: &[String]) -> Result<Rows> {
    let columns = key.iter().map(|k| column(name, batch, k).cloned()).collect::<Result<Vec<_>>>()?;
    converter.convert_columns(&columns).map_err(|e| error(name, e))
}

/// Writes a run of one SCD2 table's changes (every one a version; none
/// collapsed) in one commit: appended to a table without rows, else merged.
pub(super) async fn apply(
    config: &DeltaConfig,
    name: &str,
    (table, stored_schema): (DeltaTable, Option<&cdc_core::TableSchema>),
    (events, truncated): (&[&ChangeEvent], Option<(&str, Option<i64>)>),
    track: Option<&[String]>,
    (guard, properties): (CommitProperties, CommitProperties),
    meter: &mut Meter,
) -> Result<DeltaTable> {
    let preparing = Instant::now();
    let Some(newest) = events.iter().copied().max_by_key(|e| e.order) else { return Ok(table) };
    let images: Vec<(&ChangeEvent, Option<&[Value]>)> =
        events.iter().map(|e| (*e, e.image().map(Vec::as_slice))).collect();
    let schema = super::batch_schema(name, newest, events.iter().copied(), stored_schema)?;
    let batch = cdc_core::arrow::rows_to_record_batch(name, &schema, &images)?;
    let key = super::primary_key(name, newest)?;
    meter.stages.add("arrow", preparing.elapsed());
    let (table, existing) = super::reshape_if_needed(name, table, &schema, &batch, guard).await?;
    // Deletes flagged: they open the versions where the row did not exist.
    let opened = opened_versions(name, convert::for_delta(name, &batch, existing.as_ref(), true)?)?;
    let opened = match truncated {
        Some((below, at)) => with_truncate_ends(name, opened, &key, (below, at))?,
        None => opened,
    };
    write_versions(config, name, table, opened, (&key, track), properties, meter).await
}

/// A truncate ends every current version older than it: each gets a
/// deleted version opened by the truncate.
pub(super) async fn truncate(
    config: &DeltaConfig,
    name: &str,
    (table, stored_schema): (DeltaTable, Option<&cdc_core::TableSchema>),
    event: &ChangeEvent,
    properties: CommitProperties,
    meter: &mut Meter,
) -> Result<DeltaTable> {
    if table.version().is_none() || !convert::has_files(&table)? {
        return Ok(table);
    }
    let ctx = SessionContext::new();
    time_travel::register(&ctx, "target", &table).await?;
    let hex = event.order.to_hex();
    let sql =
        format!("SELECT * FROM target WHERE {} AND {} < {}", ident(IS_CURRENT), ident(START_ORDER), literal(&hex));
    let current = ctx.sql(&sql).await.map_err(|e| df_error(&e))?.collect().await.map_err(|e| df_error(&e))?;
    let Some(schema) = current.first().map(RecordBatch::schema) else { return Ok(table) };
    let current = concat_batches(&schema, &current).map_err(|e| error(name, e))?;
    let key: Vec<String> = stored_schema.map(|s| s.key_names().map(str::to_owned).collect()).unwrap_or_default();
    if key.is_empty() {
        return Err(error(name, "the table's commits store no primary key (cdc.schema)"));
    }
    let markers = truncated_versions(name, current, (&hex, event.source.ts_micros()), Some(&event.position))?;
    write_versions(config, name, table, markers, (&key, None), properties, meter).await
}

/// `opened` plus, for each row whose newest change in it is older than the
/// newest truncate and not a delete, the deleted version the truncate opens.
fn with_truncate_ends(
    name: &str,
    opened: RecordBatch,
    key: &[String],
    (below, at): (&str, Option<i64>),
) -> Result<RecordBatch> {
    let read = EntryColumns::read(name, &opened, key)?;
    let ended = cdc_core::scd2::ended_by_truncate(&read.entries(), below);
    if ended.is_empty() {
        return Ok(opened);
    }
    let ended = UInt32Array::from_iter_values(ended.into_iter().map(|row| row as u32));
    let rows = deltalake::arrow::compute::take_record_batch(&opened, &ended).map_err(|e| error(name, e))?;
    let markers = truncated_versions(name, rows, (below, at), None)?;
    concat_batches(&opened.schema(), [&opened, &markers]).map_err(|e| error(name, e))
}

/// Deleted versions opened by a truncate (order key `hex`, commit time
/// `at`) for `rows` (their values kept, as a delete's before-image). The
/// truncate's position where known; else each row's own, so the version
/// follows it in its partition.
fn truncated_versions(
    name: &str,
    rows: RecordBatch,
    (hex, at): (&str, Option<i64>),
    position: Option<&cdc_core::Position>,
) -> Result<RecordBatch> {
    let count = rows.num_rows();
    let text = |value: &str| -> ArrayRef { Arc::new(StringArray::from(vec![value; count])) };
    let at: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![at; count]).with_timezone("UTC"));
    let mut values: Vec<(&str, ArrayRef)> = vec![
        (ORDER_COLUMN, text(hex)),
        (START_ORDER, text(hex)),
        (OP_COLUMN, text(cdc_core::Op::Truncate.code())),
        (DELETED_COLUMN, Arc::new(BooleanArray::from(vec![true; count]))),
        (START_AT, at.clone()),
        (SOURCE_TS_COLUMN, at),
    ];
    if let Some(position) = position {
        let number = |n: i64| -> ArrayRef { Arc::new(deltalake::arrow::array::Int64Array::from(vec![n; count])) };
        values.push((TOPIC_COLUMN, text(&position.topic)));
        values.push((PARTITION_COLUMN, number(i64::from(position.partition))));
        values.push((OFFSET_COLUMN, number(position.offset)));
    }
    let mut markers = rows;
    for (column, values) in values {
        let field = markers.schema().field_with_name(column).map_err(|e| error(name, e))?.clone();
        let values = cast(&values, field.data_type()).map_err(|e| error(name, e))?;
        markers = set_column(name, markers, field, values)?;
    }
    // They send nothing unchanged: the values are the row's as it was.
    if let Ok(i) = markers.schema().index_of(UNAVAILABLE_COLUMN) {
        let field = markers.schema().field(i).clone();
        markers = set_column(name, markers, field.clone(), new_null_array(field.data_type(), count))?;
    }
    Ok(markers)
}

/// Sequences `opened` (new versions) with the stored versions they
/// neighbour and writes the result in one commit.
async fn write_versions(
    config: &DeltaConfig,
    name: &str,
    table: DeltaTable,
    opened: RecordBatch,
    (key, track): (&[String], Option<&[String]>),
    properties: CommitProperties,
    meter: &mut Meter,
) -> Result<DeltaTable> {
    let has_rows = table.version().is_some() && convert::has_files(&table)?;
    let prune = if config.merge_pruning { convert::key_range(&opened, key) } else { None };
    let sequencing = Instant::now();
    let stored = if has_rows { neighbours(name, &table, &opened, key, prune.clone()).await? } else { Vec::new() };
    let merged = sequence(name, &stored, &opened, key, track)?;
    meter.stages.add("scd2 sequence", sequencing.elapsed());
    if !has_rows {
        meter.counts.appends += 1;
        meter.counts.files_added += 1;
        let rows = convert::sort_by_key(&stored_versions(name, &merged)?, key)?;
        return meter.stages.time("append", super::append(config, table, rows, properties)).await;
    }
    meter.counts.merges += 1;
    let sql = MergeSql::new(&merged, key, prune);
    let merging = Instant::now();
    let source = SessionContext::new().read_batch(merged).map_err(|e| df_error(&e))?;
    let (table, metrics) = table
        .merge(source, sql.predicate.clone())
        .with_source_alias("source")
        .with_target_alias("target")
        .with_merge_schema(true)
        .with_writer_properties(super::table_writer_properties())
        .with_commit_properties(properties)
        .when_matched_delete(|delete| delete.predicate(sql.drop_when.clone()))
        .and_then(|b| {
            b.when_matched_update(|update| {
                sql.columns
                    .iter()
                    .fold(update.predicate(sql.keep_when.clone()), |u, (c, e)| u.update(convert::column(c), e.clone()))
            })
        })
        .and_then(|b| {
            b.when_not_matched_insert(|insert| {
                sql.columns
                    .iter()
                    .fold(insert.predicate(sql.keep_when.clone()), |i, (c, e)| i.set(convert::column(c), e.clone()))
            })
        })
        .map_err(|e| delta_error(&e))?
        .await
        .map_err(|e| delta_error(&e))?;
    meter.stages.add("merge", merging.elapsed());
    meter.counts.files_rewritten += metrics.num_target_files_removed as u64;
    meter.counts.files_added += metrics.num_target_files_added as u64;
    Ok(table)
}
