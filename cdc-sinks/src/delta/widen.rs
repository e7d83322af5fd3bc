//! Schema changes Delta cannot make in place, made by rewriting the table in
//! one overwrite commit: widening a column type without losing a value
//! (delta-rs has no type-widening table feature: int -> bigint, real ->
//! double, numeric(p,s) -> numeric(p',s') keeping every digit), and adding a
//! column with the default PostgreSQL gave the rows that existed (`ADD
//! COLUMN ... DEFAULT v` emits no events for them), and renaming a column
//! renamed at the source (delta-rs writes no column mapping). Older versions stay
//! readable (time travel) until vacuumed; the `txn` offsets are untouched
//! (the batch's own commit follows).

use std::sync::Arc;

use cdc_core::{Error, Result};
use deltalake::DeltaTable;
use deltalake::arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use deltalake::arrow::compute::{cast, take};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;

use super::{NAME, delta_error, df_error, time_travel};

/// The columns of `stored` that values of `wanted` need wider, with the
/// wider type. Other type differences are left to the conversion (which
/// casts what fits, and refuses the rest with a clear error).
pub fn needed(stored: &Schema, wanted: &Schema) -> Vec<(String, DataType)> {
    wanted
        .fields()
        .iter()
        .filter_map(|field| {
            let current = stored.field_with_name(field.name()).ok()?;
            widens(current.data_type(), field.data_type()).then(|| (field.name().clone(), field.data_type().clone()))
        })
        .collect()
}

/// Whether every value of `from` is stored unchanged as `to`.
fn widens(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let integer_digits = |t: &DataType| match t {
        Int8 => Some(3),
        Int16 => Some(5),
        Int32 => Some(10),
        Int64 => Some(19),
        _ => None,
    };
    match (from, to) {
        (a, b) if a == b => false,
        (a, b) if integer_digits(a).is_some() && integer_digits(b).is_some() => integer_digits(a) < integer_digits(b),
        (Int8 | Int16 | Int32, Float64) | (Float32, Float64) => true,
        (a, Decimal128(p, s)) if integer_digits(a).is_some() => {
            integer_digits(a).is_some_and(|digits| i32::from(*p) - i32::from(*s) >= digits)
        }
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            s2 >= s1 && i32::from(*p2) - i32::from(*s2) >= i32::from(*p1) - i32::from(*s1)
        }
        _ => false,
    }
}

/// What a rewrite changes.
#[derive(Debug, Default)]
pub struct Rewrite {
    /// Columns cast to a wider type.
    pub widen: Vec<(String, DataType)>,
    /// Columns added, with the one-row value every existing row gets.
    pub add: Vec<(Field, ArrayRef)>,
    /// Columns renamed: (old, new). `widen` names columns by their new name.
    pub rename: Vec<(String, String)>,
}

impl Rewrite {
    pub fn is_empty(&self) -> bool {
        self.widen.is_empty() && self.add.is_empty() && self.rename.is_empty()
    }

    /// The name column `name` of the stored table has after the rewrite.
    pub fn new_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.rename.iter().find(|(old, _)| old == name).map_or(name, |(_, new)| new.as_str())
    }
}

/// Rewrites `table` as `change` says, in one commit with `properties`, which
/// fails if any other commit landed since `table` was read.
pub async fn rewrite(
    table: DeltaTable,
    name: &str,
    change: &Rewrite,
    properties: CommitProperties,
) -> Result<DeltaTable> {
    let columns = &change.widen;
    let ctx = SessionContext::new();
    time_travel::register(&ctx, "widened", &table).await?;
    let frame = ctx.table("widened").await.map_err(|e| df_error(&e))?;
    let batches = frame.collect().await.map_err(|e| df_error(&e))?;
    let stored = super::convert::table_schema(&table)?.ok_or_else(|| Error::Sink {
        sink: NAME.into(),
        message: format!("table {name} has no schema to widen"),
        retriable: false,
    })?;
    // The stored field as the rewrite writes it: renamed, then widened.
    let wider = |field: &Field| -> Field {
        let field = field.clone().with_name(change.new_name(field.name()));
        match columns.iter().find(|(column, _)| column == field.name()) {
            Some((_, data_type)) => field.with_data_type(data_type.clone()),
            None => field,
        }
    };
    let mut fields: Vec<Field> = stored.fields().iter().map(|f| wider(f)).collect();
    fields.extend(change.add.iter().map(|(field, _)| field.clone().with_nullable(true)));
    let schema = Arc::new(Schema::new(fields));
    let mut rewritten = Vec::with_capacity(batches.len().max(1));
    for batch in &batches {
        let mut cast_columns = Vec::with_capacity(schema.fields().len());
        for stored_field in stored.fields() {
            let field = wider(stored_field);
            let column = batch.column_by_name(stored_field.name()).ok_or_else(|| Error::Sink {
                sink: NAME.into(),
                message: format!("table {name}: column {} missing while widening", field.name()),
                retriable: false,
            })?;
            cast_columns.push(cast(column, field.data_type()).map_err(|e| widen_error(name, &e.to_string()))?);
        }
        let every_row = UInt32Array::from(vec![0u32; batch.num_rows()]);
        for (_, value) in &change.add {
            cast_columns.push(take(value, &every_row, None).map_err(|e| widen_error(name, &e.to_string()))?);
        }
        rewritten
            .push(RecordBatch::try_new(schema.clone(), cast_columns).map_err(|e| widen_error(name, &e.to_string()))?);
    }
    if rewritten.is_empty() {
        rewritten.push(RecordBatch::new_empty(schema.clone()));
    }
    let widened: Vec<String> = columns.iter().map(|(column, data_type)| format!("{column}: {data_type}")).collect();
    let added: Vec<&str> = change.add.iter().map(|(field, _)| field.name().as_str()).collect();
    let renamed: Vec<String> = change.rename.iter().map(|(old, new)| format!("{old} -> {new}")).collect();
    tracing::info!(
        table = name,
        widened = %widened.join(", "),
        added = %added.join(", "),
        renamed = %renamed.join(", "),
        "schema change Delta cannot make in place: rewriting the table"
    );
    table
        .write(rewritten)
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .with_writer_properties(super::table_writer_properties())
        // Any commit since the snapshot read fails the rewrite (it is retried
        // on a fresh read): delta-rs would rebase an overwrite onto a
        // concurrent append, whose rows the rewrite never saw, so they would
        // keep the old column names and miss the new columns' defaults.
        .with_commit_properties(properties.with_max_retries(0))
        .await
        .map_err(|e| delta_error(&e))
}

fn widen_error(table: &str, message: &str) -> Error {
    Error::Sink { sink: NAME.into(), message: format!("widening table {table}: {message}"), retriable: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widenings_keep_every_value() {
        use DataType::*;
        for (from, to) in [
            (Int32, Int64),
            (Int16, Int32),
            (Float32, Float64),
            (Int32, Float64),
            (Decimal128(12, 2), Decimal128(14, 4)),
            (Int32, Decimal128(12, 2)),
        ] {
            assert!(widens(&from, &to), "{from} -> {to}");
        }
        for (from, to) in [
            (Int64, Int32),
            (Int64, Float64),
            (Float64, Float32),
            (Decimal128(12, 2), Decimal128(12, 4)),
            (Decimal128(14, 4), Decimal128(14, 2)),
            (Int64, Decimal128(12, 2)),
            (Utf8, Int64),
            (Int64, Int64),
        ] {
            assert!(!widens(&from, &to), "{from} -> {to}");
        }
    }
}
