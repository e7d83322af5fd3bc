//! A primary-key change's create owes the values its old key's row had
//! (unchanged TOAST; see `cdc_core::RowChange::owed_since`). The collapse
//! pays what the batch itself holds; what is left is read here from the old
//! row the table still stores (its delete is in this batch, so the MERGE
//! that deletes it has not run yet) and written into the create's row of
//! the MERGE source.

use cdc_core::{Error, Result, RowChange};
use deltalake::DeltaTable;
use deltalake::arrow::array::{Array, ArrayRef, RecordBatch};
use deltalake::arrow::compute::{cast, concat_batches, interleave};
use deltalake::datafusion::prelude::{Expr, SessionContext, col, lit};
use deltalake::datafusion::scalar::ScalarValue;

use super::{NAME, df_error, time_travel};

/// `source` (one row per change of `rows`, in order, converted to the
/// table's types) with the owed columns of primary-key changes' creates
/// taken from the stored rows of their old keys.
pub async fn pay_from_table(
    name: &str,
    table: &DeltaTable,
    source: RecordBatch,
    rows: &[RowChange<'_>],
    key: &[String],
) -> Result<RecordBatch> {
    // (row of the create, row of the delete at the same LSN) in `source`.
    let pairs: Vec<(usize, usize)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, row)| {
            let owed = row.owed_since?;
            let j = rows.iter().position(|d| {
                d.is_delete() && d.event.order.commit_lsn == owed.commit_lsn && d.event.order.lsn == owed.lsn
            })?;
            Some((i, j))
        })
        .collect();
    if pairs.is_empty() || table.version().is_none() {
        return Ok(source);
    }
    let error = |message: String| Error::Sink {
        sink: NAME.into(),
        message: format!("table {name}: {message}"),
        retriable: false,
    };
    // The old rows, one filter per old key.
    let mut wanted: Option<Expr> = None;
    for &(_, j) in &pairs {
        let mut one: Option<Expr> = None;
        for k in key {
            let column = source.column_by_name(k).ok_or_else(|| error(format!("no key column {k}")))?;
            let value = ScalarValue::try_from_array(column, j).map_err(|e| df_error(&e))?;
            let term = col(format!("\"{}\"", k.replace('"', "\"\""))).eq(lit(value));
            one = Some(match one {
                Some(e) => e.and(term),
                None => term,
            });
        }
        if let Some(one) = one {
            wanted = Some(match wanted {
                Some(e) => e.or(one),
                None => one,
            });
        }
    }
    let Some(wanted) = wanted else { return Ok(source) };
    let ctx = SessionContext::new();
    time_travel::register(&ctx, "stored", table).await?;
    let frame = ctx.table("stored").await.map_err(|e| df_error(&e))?.filter(wanted).map_err(|e| df_error(&e))?;
    let found = frame.collect().await.map_err(|e| df_error(&e))?;
    let Some(first) = found.first() else { return Ok(source) };
    let stored = concat_batches(&first.schema(), &found).map_err(|e| error(e.to_string()))?;
    // Which stored row is each pair's old row: equal key values.
    let same_key = |j: usize, s: usize| -> bool {
        key.iter().all(|k| {
            let (Some(a), Some(b)) = (source.column_by_name(k), stored.column_by_name(k)) else { return false };
            ScalarValue::try_from_array(a, j).ok() == ScalarValue::try_from_array(b, s).ok()
        })
    };
    let mut from_stored: Vec<Option<usize>> = vec![None; source.num_rows()];
    for &(i, j) in &pairs {
        if let Some(slot) = from_stored.get_mut(i) {
            *slot = (0..stored.num_rows()).find(|&s| same_key(j, s));
        }
    }
    let schema = source.schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(source.columns()) {
        let owed_here = |i: usize| {
            rows.get(i).and_then(|r| {
                let index = r.event.schema.index_of(field.name())?;
                r.after.as_ref()?.get(index).map(cdc_core::Value::is_unavailable)
            }) == Some(true)
        };
        let Some(stored_column) = stored.column_by_name(field.name()).filter(|_| !key.contains(field.name())) else {
            columns.push(column.clone());
            continue;
        };
        // DataFusion may read a type as another layout (Utf8View for Utf8).
        let stored_column = cast(stored_column, column.data_type()).map_err(|e| error(e.to_string()))?;
        let indices: Vec<(usize, usize)> = (0..source.num_rows())
            .map(|i| match from_stored.get(i).copied().flatten() {
                Some(s) if owed_here(i) => (1, s),
                _ => (0, i),
            })
            .collect();
        let patched =
            interleave(&[column.as_ref(), stored_column.as_ref()], &indices).map_err(|e| error(e.to_string()))?;
        columns.push(patched);
    }
    RecordBatch::try_new(schema, columns).map_err(|e| error(e.to_string()))
}
