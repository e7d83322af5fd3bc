//! A primary-key change's create owes the values its old key's row had
//! (unchanged TOAST; see `cdc_core::RowChange::owed_since`). The collapse
//! pays what the batch itself holds. Here, before the MERGE, the rest is paid
//! in whichever order the two changes arrive:
//!
//! - the delete is in this batch: from the old row the table still stores
//!   (the MERGE that deletes it has not run yet);
//! - the delete was committed in an earlier batch: from the flagged row
//!   (`soft_delete`), else from the old key's events in the `cdc_events`
//!   history (their raw `after` JSON, newest first);
//! - the create was committed first (read from another partition): it was
//!   stored with what it owes listed in `_cdc_owed` (its LSN in
//!   `_cdc_owed_at`); the delete's batch finds it there and pays it with a
//!   MERGE source row of op `p` (or in the batch's own change of that key).
//!
//! A value no source holds (no history and a hard delete, say) stays null
//! and listed in `_cdc_owed`: a reader can tell "unknown" from NULL.

use std::collections::BTreeSet;
use std::sync::Arc;

use cdc_core::arrow::{OP_COLUMN, ORDER_COLUMN, UNAVAILABLE_COLUMN};
use cdc_core::{Error, OrderKey, Result, RowChange, Value};
use deltalake::DeltaTable;
use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, ListBuilder, RecordBatch, StringArray, StringBuilder, new_null_array,
};
use deltalake::arrow::compute::{cast, concat_batches, interleave};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::datafusion::prelude::{Expr, SessionContext, col, lit};
use deltalake::datafusion::scalar::ScalarValue;

use super::convert::{ident, literal};
use super::{NAME, convert, df_error, time_travel};

/// Columns whose null means "not known yet": what a primary-key change's
/// create still owes (a list of column names; null when nothing is owed).
pub const OWED_COLUMN: &str = "_cdc_owed";
/// The (commit LSN, LSN) of the primary-key change a row owes values from,
/// hex: the delete of the old key carries the same.
pub const OWED_AT_COLUMN: &str = "_cdc_owed_at";

/// What paying needs to know of the table being written.
pub struct Settle<'a> {
    pub name: &'a str,
    pub table: &'a DeltaTable,
    /// The table's schema (`None` before its first commit).
    pub existing: Option<&'a SchemaRef>,
    pub key: &'a [String],
    pub soft_delete: bool,
    /// The `cdc_events` history table, when the sink keeps it.
    pub history: Option<&'a DeltaTable>,
}

/// One row of `from` pays the columns the source row `row` lacks (those in
/// its `_cdc_unavailable`), except what `from` does not know itself.
struct Payment {
    row: usize,
    from: RecordBatch,
}

/// `source` (one row per change of `rows`, in order, in the table's types)
/// with what primary-key changes owe paid where any store holds it, what is
/// still owed listed in `_cdc_owed`/`_cdc_owed_at`, and a row of op `p` for
/// each stored create this batch's deletes can pay.
pub async fn settle(cx: &Settle<'_>, source: RecordBatch, rows: &[RowChange<'_>]) -> Result<RecordBatch> {
    let stored_owed = cx.existing.is_some_and(|s| s.field_with_name(OWED_AT_COLUMN).is_ok());
    let owing = rows.iter().any(|r| r.owed_since.is_some());
    let deletes = rows.iter().any(RowChange::is_delete);
    let pays_stored = stored_owed && deletes;
    if !owing && !pays_stored {
        return Ok(source);
    }
    let stored = Stored { cx, exists: cx.table.version().is_some() && cx.existing.is_some() };
    let mut source = source;
    let mut payments = Vec::new();
    // Creates that owe: find their old rows.
    for (i, row) in rows.iter().enumerate() {
        let Some(owed) = row.owed_since else { continue };
        let at = change_hex(owed);
        if let Some(j) = rows.iter().position(|d| d.is_delete() && change_hex(d.event.order) == at) {
            if let Some(old) = stored.by_key(&source, j).await? {
                payments.push(Payment { row: i, from: old });
            }
        } else if cx.soft_delete
            && let Some(old) = stored.flagged_at(&at).await?
        {
            payments.push(Payment { row: i, from: old });
        } else if let Some(history) = cx.history
            && let Some(old) = from_history(cx, history, row, &at).await?
        {
            payments.push(Payment { row: i, from: old });
        }
    }
    // Creates stored earlier that this batch's deletes can pay.
    let mut pay_rows: Vec<RecordBatch> = Vec::new();
    if pays_stored {
        let ats: Vec<(usize, String)> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_delete())
            .map(|(j, r)| (j, change_hex(r.event.order)))
            .collect();
        if let Some(pending) = stored.owing_at(ats.iter().map(|(_, at)| at.as_str())).await? {
            let pending_at = pending.column_by_name(OWED_AT_COLUMN).map(|c| cast(c, &DataType::Utf8));
            let pending_at = pending_at.transpose().map_err(|e| arrow_error(&e))?;
            let pending_owed = pending.column_by_name(OWED_COLUMN).map(|c| names_at(c.as_ref()));
            for p in 0..pending.num_rows() {
                let at = pending_at.as_ref().and_then(|a| a.as_string_opt::<i32>()).map(|a| a.value(p).to_owned());
                let Some(&(j, _)) = ats.iter().find(|(_, d)| Some(d) == at.as_ref()) else { continue };
                let owed: BTreeSet<String> = pending_owed.as_ref().map(|f| f(p)).unwrap_or_default();
                let target = match same_key_row(&source, cx.key, &pending, p) {
                    // The batch changes that key again: pay in that change.
                    Some(m) if rows.get(m).is_some_and(|r| !r.is_delete()) => {
                        source = restrict_unavailable(source, m, &owed)?;
                        m
                    }
                    Some(_) => continue,
                    None => {
                        let row = pay_row(&source, cx.key, &pending, p, &owed)?;
                        pay_rows.push(row);
                        source.num_rows() + pay_rows.len() - 1
                    }
                };
                payments.push(Payment { row: target, from: source.slice(j, 1) });
                if let Some(old) = stored.by_key(&source, j).await? {
                    payments.push(Payment { row: target, from: old });
                }
            }
        }
    }
    if !pay_rows.is_empty() {
        let mut all = vec![source.clone()];
        all.extend(pay_rows);
        source = concat_batches(&source.schema(), &all).map_err(|e| arrow_error(&e))?;
    }
    let source = pay(cx, source, &payments)?;
    mark_owed(source, rows, stored_owed)
}

/// Reads of the table as it is now.
struct Stored<'a> {
    cx: &'a Settle<'a>,
    exists: bool,
}

impl Stored<'_> {
    /// The stored row with the key of `source`'s row `j`.
    async fn by_key(&self, source: &RecordBatch, j: usize) -> Result<Option<RecordBatch>> {
        let mut filter: Option<Expr> = None;
        for k in self.cx.key {
            let column = source.column_by_name(k).ok_or_else(|| error(self.cx, format!("no key column {k}")))?;
            let value = ScalarValue::try_from_array(column, j).map_err(|e| df_error(&e))?;
            let term = col(ident(k)).eq(lit(value));
            filter = Some(filter.map_or(term.clone(), |f| f.and(term)));
        }
        match filter {
            Some(filter) => self.rows(filter).await,
            None => Ok(None),
        }
    }

    /// The soft-deleted row whose delete has the change `at`.
    async fn flagged_at(&self, at: &str) -> Result<Option<RecordBatch>> {
        let (low, high) = order_range(at);
        let filter = col(ident(ORDER_COLUMN))
            .gt_eq(lit(low))
            .and(col(ident(ORDER_COLUMN)).lt_eq(lit(high)))
            .and(col(ident(convert::DELETED_COLUMN)).eq(lit(true)));
        self.rows(filter).await
    }

    /// Stored rows owing since one of `ats`.
    async fn owing_at(&self, ats: impl Iterator<Item = &str>) -> Result<Option<RecordBatch>> {
        let list: Vec<Expr> = ats.map(lit).collect();
        self.rows(col(ident(OWED_AT_COLUMN)).in_list(list, false)).await
    }

    /// The rows `filter` selects (file statistics prune the rest), or `None`.
    async fn rows(&self, filter: Expr) -> Result<Option<RecordBatch>> {
        if !self.exists {
            return Ok(None);
        }
        let ctx = SessionContext::new();
        time_travel::register(&ctx, "stored", self.cx.table).await?;
        let frame = ctx.table("stored").await.map_err(|e| df_error(&e))?.filter(filter).map_err(|e| df_error(&e))?;
        let found = frame.collect().await.map_err(|e| df_error(&e))?;
        let Some(first) = found.first() else { return Ok(None) };
        let rows = concat_batches(&first.schema(), &found).map_err(|e| arrow_error(&e))?;
        Ok((rows.num_rows() > 0).then_some(rows))
    }
}

/// The old key's row as its events in the history last had each owed column:
/// the delete at `at` names the key; the key's earlier events, newest first,
/// give each column the last value they carried. One row in the table's
/// types, what none carried left unavailable.
async fn from_history(
    cx: &Settle<'_>,
    history: &DeltaTable,
    create: &RowChange<'_>,
    at: &str,
) -> Result<Option<RecordBatch>> {
    if history.version().is_none() {
        return Ok(None);
    }
    let Some(after) = create.after.as_deref() else { return Ok(None) };
    let ctx = SessionContext::new();
    time_travel::register(&ctx, "history", history).await?;
    let (low, high) = order_range(at);
    let table = format!(
        "source_schema = {} AND source_table = {}",
        literal(&create.event.source.schema),
        literal(&create.event.source.table)
    );
    let sql = format!(
        "SELECT record_key FROM history WHERE {table} AND op = 'd' AND order_key >= '{low}' AND order_key <= '{high}' \
         AND record_key IS NOT NULL LIMIT 1"
    );
    let found = ctx.sql(&sql).await.map_err(|e| df_error(&e))?.collect().await.map_err(|e| df_error(&e))?;
    let Some(old_key) = texts(&found).into_iter().next() else { return Ok(None) };
    let sql = format!(
        "SELECT after FROM history WHERE {table} AND record_key = {} AND op <> 'd' AND after IS NOT NULL \
         AND order_key < '{low}' ORDER BY order_key DESC",
        literal(&old_key)
    );
    let found = ctx.sql(&sql).await.map_err(|e| df_error(&e))?.collect().await.map_err(|e| df_error(&e))?;
    let schema = &create.event.schema;
    let mut row: Vec<Value> = after.to_vec();
    for json in texts(&found) {
        if !row.iter().any(Value::is_unavailable) {
            break;
        }
        let image = match cdc_core::decode_image(&json, schema) {
            Ok(image) => image,
            Err(message) => {
                tracing::warn!(table = cx.name, %message, "an older event of a changed key does not decode");
                continue;
            }
        };
        for (value, old) in row.iter_mut().zip(image) {
            if value.is_unavailable() && !old.is_unavailable() {
                *value = old;
            }
        }
    }
    let batch = cdc_core::arrow::rows_to_record_batch(cx.name, schema, &[(create.event, Some(&row))])?;
    Ok(Some(convert::for_delta(cx.name, &batch, cx.existing, cx.soft_delete)?))
}

/// Writes the payments into `source`: each pays, of the columns its row
/// still lacks, those its `from` row knows; paid columns leave the row's
/// `_cdc_unavailable`.
fn pay(cx: &Settle<'_>, source: RecordBatch, payments: &[Payment]) -> Result<RecordBatch> {
    if payments.is_empty() {
        return Ok(source);
    }
    let unavailable = source.column_by_name(UNAVAILABLE_COLUMN).map(|c| names_at(c.as_ref()));
    let mut lacking: Vec<BTreeSet<String>> =
        (0..source.num_rows()).map(|i| unavailable.as_ref().map(|f| f(i)).unwrap_or_default()).collect();
    // (column, row) -> which payment pays it.
    let mut paid_by: std::collections::HashMap<(String, usize), usize> = std::collections::HashMap::new();
    for (k, payment) in payments.iter().enumerate() {
        let unknown = payment.from.column_by_name(UNAVAILABLE_COLUMN).map(|c| names_at(c.as_ref())(0));
        let unknown = unknown.unwrap_or_default();
        let Some(lacks) = lacking.get_mut(payment.row) else { continue };
        let paid: Vec<String> = lacks
            .iter()
            .filter(|c| !cx.key.contains(c) && !unknown.contains(*c) && payment.from.column_by_name(c).is_some())
            .cloned()
            .collect();
        for c in paid {
            lacks.remove(&c);
            paid_by.insert((c, payment.row), k);
        }
    }
    let schema = source.schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(source.columns()) {
        if field.name() == UNAVAILABLE_COLUMN {
            columns.push(names_array(field, lacking.iter()));
            continue;
        }
        if !paid_by.keys().any(|(c, _)| c == field.name()) {
            columns.push(column.clone());
            continue;
        }
        // Arrays: the column, then each payment's value (cast: DataFusion may
        // read a type in another layout, Utf8View for Utf8).
        let mut arrays: Vec<ArrayRef> = vec![column.clone()];
        for payment in payments {
            let value = match payment.from.column_by_name(field.name()) {
                Some(v) => cast(v, column.data_type()).map_err(|e| arrow_error(&e))?,
                None => new_null_array(column.data_type(), payment.from.num_rows()),
            };
            arrays.push(value);
        }
        let indices: Vec<(usize, usize)> = (0..source.num_rows())
            .map(|i| match paid_by.get(&(field.name().clone(), i)) {
                Some(&k) => (k + 1, 0),
                None => (0, i),
            })
            .collect();
        let refs: Vec<&dyn Array> = arrays.iter().map(AsRef::as_ref).collect();
        columns.push(interleave(&refs, &indices).map_err(|e| arrow_error(&e))?);
    }
    RecordBatch::try_new(schema, columns).map_err(|e| arrow_error(&e))
}

/// Adds `_cdc_owed`/`_cdc_owed_at`: for each create still owing, what it
/// lacks and since which change. Only when something is owed or the table
/// already has the columns.
fn mark_owed(source: RecordBatch, rows: &[RowChange<'_>], stored_owed: bool) -> Result<RecordBatch> {
    let unavailable = source.column_by_name(UNAVAILABLE_COLUMN).map(|c| names_at(c.as_ref()));
    let owed: Vec<(BTreeSet<String>, Option<String>)> = (0..source.num_rows())
        .map(|i| match rows.get(i).and_then(|r| r.owed_since) {
            Some(since) => {
                let lacks = unavailable.as_ref().map(|f| f(i)).unwrap_or_default();
                let at = (!lacks.is_empty()).then(|| change_hex(since));
                (lacks, at)
            }
            None => (BTreeSet::new(), None),
        })
        .collect();
    drop(unavailable);
    if !stored_owed && owed.iter().all(|(_, at)| at.is_none()) {
        return Ok(source);
    }
    let schema = source.schema();
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in schema.fields().iter().zip(source.columns()) {
        if field.name() != OWED_COLUMN && field.name() != OWED_AT_COLUMN {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    let list = Field::new(OWED_COLUMN, names_type(), true);
    columns.push(names_array(&list, owed.iter().map(|(lacks, at)| if at.is_some() { lacks } else { &EMPTY })));
    fields.push(list);
    columns.push(Arc::new(owed.iter().map(|(_, at)| at.clone()).collect::<StringArray>()));
    fields.push(Field::new(OWED_AT_COLUMN, DataType::Utf8, true));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| arrow_error(&e))
}

static EMPTY: BTreeSet<String> = BTreeSet::new();

/// A MERGE source row of op `p` for the stored row `p` of `pending`: its
/// key, lacking the columns it owes, nothing else.
fn pay_row(
    source: &RecordBatch,
    key: &[String],
    pending: &RecordBatch,
    p: usize,
    owed: &BTreeSet<String>,
) -> Result<RecordBatch> {
    let schema = source.schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let name = field.name();
        let column: ArrayRef = if key.contains(name) {
            let stored = pending.column_by_name(name).ok_or_else(|| Error::Sink {
                sink: NAME.into(),
                message: format!("no key column {name}"),
                retriable: false,
            })?;
            cast(&stored.slice(p, 1), field.data_type()).map_err(|e| arrow_error(&e))?
        } else if name == OP_COLUMN {
            Arc::new(StringArray::from(vec!["p"]))
        } else if name == UNAVAILABLE_COLUMN {
            names_array(field, std::iter::once(owed))
        } else {
            new_null_array(field.data_type(), 1)
        };
        columns.push(column);
    }
    RecordBatch::try_new(schema, columns).map_err(|e| arrow_error(&e))
}

/// Narrows row `m`'s `_cdc_unavailable` to `owed`: a change of a stored
/// owing row is paid only what the row owes (its other placeholders keep
/// the stored values, as any update's do).
fn restrict_unavailable(source: RecordBatch, m: usize, owed: &BTreeSet<String>) -> Result<RecordBatch> {
    let Ok(index) = source.schema().index_of(UNAVAILABLE_COLUMN) else { return Ok(source) };
    let Some(column) = source.columns().get(index) else { return Ok(source) };
    let names = names_at(column.as_ref());
    let sets: Vec<BTreeSet<String>> = (0..source.num_rows())
        .map(|i| {
            let set = names(i);
            if i == m { set.intersection(owed).cloned().collect() } else { set }
        })
        .collect();
    let schema = source.schema();
    let mut columns = source.columns().to_vec();
    if let (Some(slot), Some(field)) = (columns.get_mut(index), schema.fields().get(index)) {
        *slot = names_array(field, sets.iter());
    }
    RecordBatch::try_new(schema, columns).map_err(|e| arrow_error(&e))
}

/// The row of `source` with the key of `other`'s row `p`.
fn same_key_row(source: &RecordBatch, key: &[String], other: &RecordBatch, p: usize) -> Option<usize> {
    (0..source.num_rows()).find(|&i| {
        key.iter().all(|k| {
            let (Some(a), Some(b)) = (source.column_by_name(k), other.column_by_name(k)) else { return false };
            let b = cast(b, a.data_type()).ok();
            b.is_some_and(|b| ScalarValue::try_from_array(a, i).ok() == ScalarValue::try_from_array(&b, p).ok())
        })
    })
}

/// The names in a list-of-text column's row.
fn names_at(column: &dyn Array) -> impl Fn(usize) -> BTreeSet<String> + '_ {
    move |i| {
        let Some(list) = column.as_list_opt::<i32>() else { return BTreeSet::new() };
        if i >= list.len() || list.is_null(i) {
            return BTreeSet::new();
        }
        let values = list.value(i);
        let Ok(values) = cast(&values, &DataType::Utf8) else { return BTreeSet::new() };
        values.as_string::<i32>().iter().flatten().map(str::to_owned).collect()
    }
}

fn names_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// A list-of-text column (of `field`'s type), null where a set is empty.
fn names_array<'s>(field: &Field, sets: impl Iterator<Item = &'s BTreeSet<String>>) -> ArrayRef {
    let item = match field.data_type() {
        DataType::List(item) => item.clone(),
        _ => Arc::new(Field::new("item", DataType::Utf8, true)),
    };
    let mut builder = ListBuilder::new(StringBuilder::new()).with_field(item);
    for set in sets {
        if set.is_empty() {
            builder.append_null();
        } else {
            for name in set {
                builder.values().append_value(name);
            }
            builder.append(true);
        }
    }
    Arc::new(builder.finish())
}

/// The (commit LSN, LSN) part of an order key: the delete and the create of
/// one primary-key change share it.
fn change_hex(order: OrderKey) -> String {
    format!("{:016x}{:016x}", order.commit_lsn, order.lsn)
}

/// The order keys (hex) of every change at `at`.
fn order_range(at: &str) -> (String, String) {
    (format!("{at}{}", "0".repeat(16)), format!("{at}{}", "f".repeat(16)))
}

fn texts(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .iter()
        .filter_map(|b| cast(b.column(0), &DataType::Utf8).ok())
        .flat_map(|c| c.as_string::<i32>().iter().flatten().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

fn error(cx: &Settle<'_>, message: String) -> Error {
    Error::Sink { sink: NAME.into(), message: format!("table {}: {message}", cx.name), retriable: false }
}

fn arrow_error(e: &dyn std::fmt::Display) -> Error {
    Error::Sink { sink: NAME.into(), message: e.to_string(), retriable: false }
}
