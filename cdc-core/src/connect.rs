//! A table's schema written back as the Kafka Connect schema Debezium sends
//! (the inverse of [`ConnectSchema`] parsing), with its key: for stores that
//! keep the types of a table beside its data, so that schemaless records can
//! later be typed from them exactly (`Sink::column_types`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value as Json, json};

use crate::schema::{ConnectSchema, DataType, Field, TableSchema, TimeUnit};
use crate::value::{Decimal, Value};

/// `{"fields": [Connect field schemas], "key": [key column names]}`; `None`
/// if a column has no Connect form (typed by JSON shape).
pub fn schema_to_json(schema: &TableSchema) -> Option<Json> {
    let fields: Option<Vec<Json>> = schema.fields().iter().map(field_to_connect).collect();
    Some(json!({ "fields": fields?, "key": schema.key_names().collect::<Vec<_>>() }))
}

/// The schema [`schema_to_json`] wrote.
pub fn schema_from_json(json: &Json) -> crate::Result<TableSchema> {
    let error = |message: String| crate::Error::Schema { message };
    let fields = json.get("fields").cloned().ok_or_else(|| error("stored schema without `fields`".into()))?;
    let key: Vec<String> = serde_json::from_value(json.get("key").cloned().unwrap_or_default())
        .map_err(|e| error(format!("stored schema key: {e}")))?;
    let connect: ConnectSchema = serde_json::from_value(json!({ "type": "struct", "fields": fields }))
        .map_err(|e| error(format!("stored schema: {e}")))?;
    let key: Vec<&str> = key.iter().map(String::as_str).collect();
    TableSchema::new(connect.columns()?, &key)
}

/// One column's Connect schema, as Debezium would send it.
fn field_to_connect(field: &Field) -> Option<Json> {
    let mut schema = type_to_connect(&field.data_type)?;
    let object = schema.as_object_mut()?;
    object.insert("field".into(), json!(field.name));
    object.insert("optional".into(), json!(field.nullable));
    if let Some(default) = field.default.as_ref().and_then(|d| wire_value(d, &field.data_type)) {
        object.insert("default".into(), default);
    }
    if let Some(source) = &field.source {
        let parameters = object.entry("parameters").or_insert_with(|| json!({}));
        if let Some(parameters) = parameters.as_object_mut() {
            parameters.insert("__debezium.source.column.type".into(), json!(source.type_name));
            if let Some(length) = source.length {
                parameters.insert("__debezium.source.column.length".into(), json!(length.to_string()));
            }
            if let Some(scale) = source.scale {
                parameters.insert("__debezium.source.column.scale".into(), json!(scale.to_string()));
            }
        }
    }
    Some(schema)
}

fn type_to_connect(data_type: &DataType) -> Option<Json> {
    let named = |kind: &str, name: &str| json!({ "type": kind, "name": name });
    Some(match data_type {
        DataType::Boolean => json!({ "type": "boolean" }),
        DataType::Int8 => json!({ "type": "int8" }),
        DataType::Int16 => json!({ "type": "int16" }),
        DataType::Int32 => json!({ "type": "int32" }),
        DataType::Int64 => json!({ "type": "int64" }),
        DataType::Float32 => json!({ "type": "float" }),
        DataType::Float64 => json!({ "type": "double" }),
        DataType::Decimal { precision, scale } => {
            let mut parameters = Map::new();
            parameters.insert("scale".into(), json!(scale.to_string()));
            if let Some(precision) = precision {
                parameters.insert("connect.decimal.precision".into(), json!(precision.to_string()));
            }
            json!({ "type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "parameters": parameters })
        }
        DataType::VariableDecimal => json!({
            "type": "struct",
            "name": "io.debezium.data.VariableScaleDecimal",
            "fields": [
                { "type": "int32", "optional": false, "field": "scale" },
                { "type": "bytes", "optional": false, "field": "value" }
            ]
        }),
        DataType::String => json!({ "type": "string" }),
        DataType::Bytes => json!({ "type": "bytes" }),
        DataType::Json => named("string", "io.debezium.data.Json"),
        DataType::Uuid => named("string", "io.debezium.data.Uuid"),
        DataType::Xml => named("string", "io.debezium.data.Xml"),
        DataType::Enum { allowed } => json!({
            "type": "string", "name": "io.debezium.data.Enum", "parameters": { "allowed": allowed.join(",") }
        }),
        DataType::EnumSet { allowed } => json!({
            "type": "string", "name": "io.debezium.data.EnumSet", "parameters": { "allowed": allowed.join(",") }
        }),
        DataType::Bits { length, varying } => {
            // Length 0 is `bit varying` without one, which Debezium sends as
            // 2147483647; `varying` with a length comes from the source type.
            let length = if *varying && *length == 0 { i32::MAX as u32 } else { *length };
            json!({ "type": "bytes", "name": "io.debezium.data.Bits", "parameters": { "length": length.to_string() } })
        }
        DataType::Date => named("int32", "io.debezium.time.Date"),
        DataType::Time(TimeUnit::Millis) => named("int32", "io.debezium.time.Time"),
        DataType::Time(TimeUnit::Micros) => named("int64", "io.debezium.time.MicroTime"),
        DataType::Time(TimeUnit::Nanos) => named("int64", "io.debezium.time.NanoTime"),
        DataType::Timestamp(TimeUnit::Millis) => named("int64", "io.debezium.time.Timestamp"),
        DataType::Timestamp(TimeUnit::Micros) => named("int64", "io.debezium.time.MicroTimestamp"),
        DataType::Timestamp(TimeUnit::Nanos) => named("int64", "io.debezium.time.NanoTimestamp"),
        DataType::TimestampTz => named("string", "io.debezium.time.ZonedTimestamp"),
        DataType::ZonedTime => named("string", "io.debezium.time.ZonedTime"),
        DataType::Duration => named("int64", "io.debezium.time.MicroDuration"),
        DataType::Interval => named("string", "io.debezium.time.Interval"),
        DataType::Year => named("int32", "io.debezium.time.Year"),
        DataType::Geometry => json!({
            "type": "struct",
            "name": "io.debezium.data.geometry.Geometry",
            "fields": [
                { "type": "bytes", "optional": false, "field": "wkb" },
                { "type": "int32", "optional": true, "field": "srid" }
            ]
        }),
        DataType::Array(items) => {
            let mut items = type_to_connect(items)?;
            items.as_object_mut()?.insert("optional".into(), json!(true));
            json!({ "type": "array", "items": items })
        }
        DataType::Struct => json!({ "type": "struct" }),
        DataType::Dynamic => return None,
    })
}

/// A value as the JsonConverter writes it for `data_type` (a schema
/// default); `None` for what no default of that type needs.
fn wire_value(value: &Value, data_type: &DataType) -> Option<Json> {
    let unit = |micros: i64, unit: &TimeUnit| match unit {
        TimeUnit::Millis => micros.div_euclid(1000),
        TimeUnit::Micros => micros,
        TimeUnit::Nanos => micros.saturating_mul(1000),
    };
    Some(match (value, data_type) {
        (Value::Bool(b), _) => json!(b),
        (Value::Int(i), _) => json!(i),
        (Value::Float(f), _) if f.is_finite() => json!(f),
        (Value::String(s), _) => json!(s),
        (Value::Bytes(b), _) => json!(BASE64.encode(b)),
        (Value::Decimal(d), DataType::Decimal { .. }) => json!(BASE64.encode(unscaled_bytes(*d))),
        (Value::Decimal(d), DataType::VariableDecimal) => {
            json!({ "scale": d.scale, "value": BASE64.encode(unscaled_bytes(*d)) })
        }
        (Value::Date(days), _) => json!(days),
        (Value::Time(micros), DataType::Time(u)) => json!(unit(*micros, u)),
        (Value::Timestamp(micros), DataType::Timestamp(u)) => json!(unit(*micros, u)),
        (Value::Duration(micros), _) => json!(micros),
        (Value::TimestampTz(micros), _) => {
            let at = chrono::DateTime::from_timestamp_micros(*micros)?;
            json!(at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        }
        _ => return None,
    })
}

/// Big-endian two's complement, as short as it can be (Connect's Decimal).
fn unscaled_bytes(decimal: Decimal) -> Vec<u8> {
    let bytes = decimal.unscaled.to_be_bytes();
    let negative = decimal.unscaled < 0;
    let filler = if negative { 0xff } else { 0x00 };
    let mut start = 0;
    while start + 1 < bytes.len()
        && bytes.get(start) == Some(&filler)
        && bytes.get(start + 1).is_some_and(|b| (b & 0x80 != 0) == negative)
    {
        start += 1;
    }
    bytes.get(start..).map(<[u8]>::to_vec).unwrap_or_default()
}
