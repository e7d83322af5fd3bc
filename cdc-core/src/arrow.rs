//! Change events of one table as an Arrow [`RecordBatch`]: the table's columns
//! with faithful Arrow types, plus CDC metadata columns.
//!
//! | Connect / Debezium type | Arrow type |
//! |---|---|
//! | boolean, int8..int64, float, double | Boolean, Int8..Int64, Float32, Float64 |
//! | Decimal(p, s), p <= 38 | Decimal128(p, s) (p = 38 when unknown) |
//! | Decimal p > 38, VariableScaleDecimal | Utf8, exact decimal text |
//! | string, Json, Uuid, Xml, Enum, EnumSet, ZonedTime | Utf8 (field metadata `cdc.logical_type`) |
//! | Bits(n) | Utf8 bit string (`0101`) |
//! | bytes | Binary |
//! | geometry.* | Binary (WKB) |
//! | Date | Date32 |
//! | Time, MicroTime, NanoTime | Time64(us) |
//! | Timestamp, MicroTimestamp, NanoTimestamp (no zone) | Timestamp(us) |
//! | ZonedTimestamp | Timestamp(us, "UTC") |
//! | MicroDuration | Duration(us) |
//! | Interval (string mode) | Interval(MonthDayNano) |
//! | Year | Int32 |
//! | array of T | List(T) |
//! | other structs and maps | Utf8 (JSON text) |
//!
//! Infinite timestamps are `i64::MAX` / `i64::MIN` microseconds.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, DurationMicrosecondBuilder,
    Float32Builder, Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder, IntervalMonthDayNanoBuilder,
    ListArray, ListBuilder, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{
    DataType as ArrowType, Field as ArrowField, IntervalMonthDayNano, Schema, SchemaRef as ArrowSchemaRef, TimeUnit,
};
use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::event::{ChangeEvent, Op};
use crate::schema::{DataType, TableSchema};
use crate::value::Value;

/// Operation code (`c`, `u`, `d`, `r`).
pub const OP_COLUMN: &str = "_cdc_op";
/// [`OrderKey::to_hex`](crate::OrderKey::to_hex): compare to keep the newest event.
pub const ORDER_COLUMN: &str = "_cdc_order";
pub const LSN_COLUMN: &str = "_cdc_lsn";
pub const TX_ID_COLUMN: &str = "_cdc_tx_id";
/// Source commit time.
pub const SOURCE_TS_COLUMN: &str = "_cdc_source_ts";
pub const TOPIC_COLUMN: &str = "_cdc_topic";
pub const PARTITION_COLUMN: &str = "_cdc_partition";
pub const OFFSET_COLUMN: &str = "_cdc_offset";
/// Names of the columns whose value Debezium did not send (unchanged TOAST,
/// key-only delete images); null when every column is present. Those columns
/// are null in the batch and must keep their stored value.
pub const UNAVAILABLE_COLUMN: &str = "_cdc_unavailable";

/// Field metadata key naming the Debezium logical type of a text column.
pub const LOGICAL_TYPE_METADATA: &str = "cdc.logical_type";

/// The Arrow type of a column; `None` for [`DataType::Dynamic`], which is
/// typed by the values in a batch.
pub fn arrow_type(data_type: &DataType) -> Option<ArrowType> {
    use DataType::*;
    Some(match data_type {
        Boolean => ArrowType::Boolean,
        Int8 => ArrowType::Int8,
        Int16 => ArrowType::Int16,
        Int32 | Year => ArrowType::Int32,
        Int64 => ArrowType::Int64,
        Float32 => ArrowType::Float32,
        Float64 => ArrowType::Float64,
        Decimal { precision, scale } => match (precision.unwrap_or(38), i8::try_from(*scale)) {
            (p @ 1..=38, Ok(s)) => ArrowType::Decimal128(p as u8, s),
            _ => ArrowType::Utf8,
        },
        VariableDecimal
        | String
        | Json
        | Uuid
        | Xml
        | Enum { .. }
        | EnumSet { .. }
        | ZonedTime
        | Bits { .. }
        | Struct => ArrowType::Utf8,
        Bytes | Geometry => ArrowType::Binary,
        Date => ArrowType::Date32,
        Time(_) => ArrowType::Time64(TimeUnit::Microsecond),
        Timestamp(_) => ArrowType::Timestamp(TimeUnit::Microsecond, None),
        TimestampTz => ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Duration => ArrowType::Duration(TimeUnit::Microsecond),
        Interval => ArrowType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
        Array(element) => ArrowType::List(Arc::new(ArrowField::new("item", arrow_type(element)?, true))),
        Dynamic => return None,
    })
}

fn logical_name(data_type: &DataType) -> Option<&'static str> {
    Some(match data_type {
        DataType::Json => "json",
        DataType::Uuid => "uuid",
        DataType::Xml => "xml",
        DataType::Enum { .. } => "enum",
        DataType::EnumSet { .. } => "enum_set",
        DataType::ZonedTime => "zoned_time",
        DataType::Bits { .. } => "bits",
        DataType::VariableDecimal | DataType::Decimal { .. } => "decimal",
        DataType::Geometry => "wkb",
        DataType::Struct => "json",
        _ => return None,
    })
}

/// The CDC metadata columns appended after the table's columns.
pub fn metadata_fields() -> Vec<ArrowField> {
    vec![
        ArrowField::new(OP_COLUMN, ArrowType::Utf8, false),
        ArrowField::new(ORDER_COLUMN, ArrowType::Utf8, false),
        ArrowField::new(LSN_COLUMN, ArrowType::Int64, true),
        ArrowField::new(TX_ID_COLUMN, ArrowType::Int64, true),
        ArrowField::new(SOURCE_TS_COLUMN, ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        ArrowField::new(TOPIC_COLUMN, ArrowType::Utf8, false),
        ArrowField::new(PARTITION_COLUMN, ArrowType::Int32, false),
        ArrowField::new(OFFSET_COLUMN, ArrowType::Int64, false),
        ArrowField::new(
            UNAVAILABLE_COLUMN,
            ArrowType::List(Arc::new(ArrowField::new("item", ArrowType::Utf8, true))),
            true,
        ),
    ]
}

/// Converts the row events (c, u, r, d) of one table to a record batch with
/// the columns of `schema` (events written under another schema version are
/// matched by column name; missing columns are null) plus metadata columns.
/// A delete contributes its before-image. Truncate events carry no row and
/// are left out: sinks apply them between row batches.
pub fn to_record_batch(table: &str, schema: &TableSchema, events: &[&ChangeEvent]) -> Result<RecordBatch> {
    let rows: Vec<(&ChangeEvent, Option<&[Value]>)> =
        events.iter().filter(|e| e.op != Op::Truncate).map(|e| (*e, e.image().map(Vec::as_slice))).collect();
    rows_to_record_batch(table, schema, &rows)
}

/// Like [`to_record_batch`], with the row image of each event given: for
/// example the TOAST-filled image of a [`RowChange`](crate::RowChange).
pub fn rows_to_record_batch(
    table: &str,
    schema: &TableSchema,
    rows: &[(&ChangeEvent, Option<&[Value]>)],
) -> Result<RecordBatch> {
    let events: Vec<&ChangeEvent> = rows.iter().map(|(e, _)| *e).collect();
    let images: Vec<Option<&[Value]>> = rows.iter().map(|(_, image)| *image).collect();
    let mut fields = Vec::with_capacity(schema.fields().len() + 9);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.capacity());
    let mut unavailable: Vec<Vec<&str>> = vec![Vec::new(); events.len()];
    let null = Value::Null;
    for field in schema.fields() {
        let values: Vec<&Value> = events
            .iter()
            .zip(&images)
            .enumerate()
            .map(|(row, (event, image))| {
                let value = match (event.schema.index_of(&field.name), image) {
                    (Some(i), Some(image)) => image.get(i).unwrap_or(&null),
                    // The event's schema version lacks the column: it takes
                    // the column's default, as PostgreSQL gave the rows that
                    // existed when `ADD COLUMN ... DEFAULT v` ran.
                    (None, Some(_)) => field.default.as_ref().unwrap_or(&null),
                    _ => &null,
                };
                if value.is_unavailable()
                    && let Some(names) = unavailable.get_mut(row)
                {
                    names.push(&field.name);
                }
                value
            })
            .collect();
        let arrow = match arrow_type(&field.data_type) {
            Some(t) => t,
            None => infer_dynamic(&values),
        };
        let array = build_array(&field.data_type, &arrow, &values).map_err(|message| Error::Arrow {
            table: table.to_owned(),
            column: field.name.clone(),
            message,
        })?;
        let mut arrow_field = ArrowField::new(&field.name, arrow, true);
        if let Some(logical) = logical_name(&field.data_type) {
            arrow_field = arrow_field.with_metadata(HashMap::from([(LOGICAL_TYPE_METADATA.into(), logical.into())]));
        }
        fields.push(arrow_field);
        columns.push(array);
    }
    columns.extend(metadata_columns(&events, &unavailable));
    fields.extend(metadata_fields());
    let schema: ArrowSchemaRef = Arc::new(Schema::new(fields));
    RecordBatch::try_new(schema, columns).map_err(|e| Error::Arrow {
        table: table.to_owned(),
        column: String::new(),
        message: e.to_string(),
    })
}

fn metadata_columns(events: &[&ChangeEvent], unavailable: &[Vec<&str>]) -> Vec<ArrayRef> {
    let mut op = StringBuilder::new();
    let mut order = StringBuilder::new();
    let mut lsn = Int64Builder::new();
    let mut tx_id = Int64Builder::new();
    let mut source_ts = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut topic = StringBuilder::new();
    let mut partition = Int32Builder::new();
    let mut offset = Int64Builder::new();
    for event in events {
        op.append_value(event.op.code());
        order.append_value(event.order.to_hex());
        lsn.append_option(event.source.lsn);
        tx_id.append_option(event.source.tx_id);
        source_ts.append_option(event.source.ts_micros());
        topic.append_value(&event.position.topic);
        partition.append_value(event.position.partition);
        offset.append_value(event.position.offset);
    }
    let mut names = ListBuilder::new(StringBuilder::new());
    for columns in unavailable {
        if columns.is_empty() {
            names.append_null();
        } else {
            for column in columns {
                names.values().append_value(column);
            }
            names.append(true);
        }
    }
    let unavailable: ArrayRef = Arc::new(names.finish());
    vec![
        Arc::new(op.finish()),
        Arc::new(order.finish()),
        Arc::new(lsn.finish()),
        Arc::new(tx_id.finish()),
        Arc::new(source_ts.finish()),
        Arc::new(topic.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
        unavailable,
    ]
}

/// The narrowest Arrow type holding every value of a shape-typed column.
fn infer_dynamic(values: &[&Value]) -> ArrowType {
    let present = || values.iter().filter(|v| !v.is_null() && !v.is_unavailable());
    if present().all(|v| matches!(v, Value::Int(_))) {
        ArrowType::Int64
    } else if present().all(|v| matches!(v, Value::Int(_) | Value::Float(_))) {
        ArrowType::Float64
    } else if present().all(|v| matches!(v, Value::Bool(_))) {
        ArrowType::Boolean
    } else {
        ArrowType::Utf8
    }
}

fn unexpected(value: &Value, arrow: &ArrowType) -> String {
    format!("value {value:?} does not fit {arrow}")
}

/// `values` of a column of `data_type` as an Arrow array (a column's
/// default for rows written before the column existed, say).
pub fn value_array(data_type: &DataType, values: &[&Value]) -> Result<ArrayRef, String> {
    let arrow = arrow_type(data_type).unwrap_or_else(|| infer_dynamic(values));
    build_array(data_type, &arrow, values)
}

/// Appends `values` (nulls for Null and Unavailable) as an array of `arrow`.
fn build_array(data_type: &DataType, arrow: &ArrowType, values: &[&Value]) -> Result<ArrayRef, String> {
    macro_rules! build {
        ($builder:expr, |$v:ident| $convert:expr) => {{
            let mut builder = $builder;
            for value in values {
                match value {
                    Value::Null | Value::Unavailable => builder.append_null(),
                    $v => builder.append_value($convert),
                }
            }
            Arc::new(builder.finish()) as ArrayRef
        }};
    }
    macro_rules! int {
        ($builder:expr) => {
            build!($builder, |v| match v {
                Value::Int(i) => (*i).try_into().map_err(|_| unexpected(v, arrow))?,
                _ => return Err(unexpected(v, arrow)),
            })
        };
    }
    Ok(match arrow {
        ArrowType::Boolean => build!(BooleanBuilder::new(), |v| match v {
            Value::Bool(b) => *b,
            _ => return Err(unexpected(v, arrow)),
        }),
        ArrowType::Int8 => int!(Int8Builder::new()),
        ArrowType::Int16 => int!(Int16Builder::new()),
        ArrowType::Int32 => int!(Int32Builder::new()),
        ArrowType::Int64 => int!(Int64Builder::new()),
        ArrowType::Float32 => build!(Float32Builder::new(), |v| match v {
            Value::Float(f) => *f as f32,
            _ => return Err(unexpected(v, arrow)),
        }),
        ArrowType::Float64 => build!(Float64Builder::new(), |v| match v {
            Value::Float(f) => *f,
            Value::Int(i) => *i as f64,
            _ => return Err(unexpected(v, arrow)),
        }),
        ArrowType::Decimal128(precision, scale) => {
            let builder =
                Decimal128Builder::new().with_precision_and_scale(*precision, *scale).map_err(|e| e.to_string())?;
            build!(builder, |v| match v {
                Value::Decimal(d) => {
                    let d = d.rescale(i32::from(*scale)).ok_or_else(|| unexpected(v, arrow))?;
                    if d.digits() > u32::from(*precision) {
                        return Err(unexpected(v, arrow));
                    }
                    d.unscaled
                }
                _ => return Err(unexpected(v, arrow)),
            })
        }
        ArrowType::Utf8 => build!(StringBuilder::new(), |v| text(data_type, v).ok_or_else(|| unexpected(v, arrow))?),
        ArrowType::Binary => build!(BinaryBuilder::new(), |v| match v {
            Value::Bytes(b) => b.as_slice(),
            Value::Geometry { wkb, .. } => wkb.as_slice(),
            _ => return Err(unexpected(v, arrow)),
        }),
        ArrowType::Date32 => build!(Date32Builder::new(), |v| match v {
            Value::Date(d) => *d,
            _ => return Err(unexpected(v, arrow)),
        }),
        ArrowType::Time64(_) => build!(Time64MicrosecondBuilder::new(), |v| match v {
            Value::Time(t) => *t,
            _ => return Err(unexpected(v, arrow)),
        }),
        ArrowType::Timestamp(_, zone) => {
            let builder = TimestampMicrosecondBuilder::new().with_timezone_opt(zone.clone());
            build!(builder, |v| match v {
                Value::Timestamp(t) | Value::TimestampTz(t) => *t,
                _ => return Err(unexpected(v, arrow)),
            })
        }
        ArrowType::Duration(_) => build!(DurationMicrosecondBuilder::new(), |v| match v {
            Value::Duration(d) => *d,
            _ => return Err(unexpected(v, arrow)),
        }),
        ArrowType::Interval(_) => build!(IntervalMonthDayNanoBuilder::new(), |v| match v {
            Value::Interval(i) => IntervalMonthDayNano::new(
                i.months,
                i.days,
                i.micros.checked_mul(1000).ok_or_else(|| unexpected(v, arrow))?
            ),
            _ => return Err(unexpected(v, arrow)),
        }),
        ArrowType::List(item) => {
            let element = match data_type {
                DataType::Array(element) => element.as_ref(),
                _ => &DataType::Dynamic,
            };
            let mut lengths = Vec::with_capacity(values.len());
            let mut children: Vec<&Value> = Vec::new();
            let mut validity = Vec::with_capacity(values.len());
            for value in values {
                match value {
                    Value::List(items) => {
                        lengths.push(items.len());
                        children.extend(items.iter());
                        validity.push(true);
                    }
                    Value::Null | Value::Unavailable => {
                        lengths.push(0);
                        validity.push(false);
                    }
                    other => return Err(unexpected(other, arrow)),
                }
            }
            let child = build_array(element, item.data_type(), &children)?;
            let nulls = NullBuffer::from(validity);
            let list = ListArray::try_new(item.clone(), OffsetBuffer::from_lengths(lengths), child, Some(nulls))
                .map_err(|e| e.to_string())?;
            Arc::new(list)
        }
        other => return Err(format!("no conversion to {other}")),
    })
}

/// Text of a value stored in a Utf8 column.
fn text(data_type: &DataType, value: &Value) -> Option<String> {
    Some(match (data_type, value) {
        (DataType::Bits { length, varying }, Value::Bytes(bytes)) => bit_string(bytes, *length, *varying),
        (_, Value::String(s)) => s.to_string(),
        (_, Value::Decimal(d)) => d.to_string(),
        (_, Value::BigDecimal(d)) => d.to_string(),
        (_, Value::Int(i)) => i.to_string(),
        (_, Value::Float(f)) => f.to_string(),
        (_, Value::Bool(b)) => b.to_string(),
        _ => return None,
    })
}

/// Debezium sends a bit string as the little-endian bytes of its binary
/// number. Fixed-length `bit(n)` is padded to `n` digits; `bit varying` has
/// lost its leading zeros on the wire, so it gets the shortest form.
pub fn bit_string(bytes: &[u8], length: u32, varying: bool) -> String {
    let mut bits: String = bytes.iter().rev().map(|b| format!("{b:08b}")).collect();
    let significant = bits.trim_start_matches('0').len();
    let width = if varying { significant } else { (length as usize).max(significant) };
    if bits.len() > width {
        bits.drain(..bits.len() - width);
    } else {
        bits.insert_str(0, &"0".repeat(width - bits.len()));
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_strings_from_little_endian_bytes() {
        assert_eq!(bit_string(&[0x0a], 4, false), "1010");
        assert_eq!(bit_string(&[], 4, false), "0000");
        assert_eq!(bit_string(&[0x01, 0x80], 16, true), "1000000000000001");
        assert_eq!(bit_string(&[0x33], 16, true), "110011");
    }
}
