//! Column types for schemaless records (`value.converter.schemas.enable=false`),
//! read from the source database's catalog.
//!
//! A schemaless record says `"price": "ATo="` and `"created_at": 1704877200000000`
//! without saying that these are a `numeric(10,2)` and a microsecond timestamp.
//! Debezium's encoding of each PostgreSQL type is fixed by the type and the
//! connector's handling modes, so the catalog's column types give back the
//! Connect schema Debezium would have sent: [`connect_columns`] builds it and
//! the decoder parses it exactly as it parses a record's own schema, so a
//! schemaless stream decodes to the same events as the same stream with
//! schemas. The I/O (a read-only query of `pg_attribute`) lives with the
//! PostgreSQL code in cdc-sinks, behind [`SchemaCatalog`].

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::error::Result;
use crate::schema::{ConnectSchema, DataType, TableSchema};
use crate::value::{Decimal, Value};

/// Where column types of schemaless records come from, asked by the pipeline
/// when a record carries a column whose type it does not know.
#[async_trait]
pub trait SchemaCatalog: Send + Sync {
    /// The columns of `schema.table` with their types as Debezium encodes
    /// them, or `None` when the catalog has no such table.
    async fn table_schema(&self, table: &str) -> Result<Option<TableSchema>>;

    /// A short name for logs and errors (`source catalog`).
    fn name(&self) -> &str;

    /// The column numbers of `schema.table` by column name (PostgreSQL's
    /// `attnum`, which a rename keeps and a dropped column's number is
    /// never reused), for telling renames from drops; `None` when unknown.
    async fn column_numbers(&self, _table: &str) -> Result<Option<HashMap<String, i32>>> {
        Ok(None)
    }
}

/// How the connector encodes the types whose encoding is configurable; the
/// names and defaults are the PostgreSQL connector's own settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HandlingModes {
    #[serde(default)]
    pub decimal_handling_mode: DecimalMode,
    #[serde(default)]
    pub time_precision_mode: TimePrecisionMode,
    #[serde(default)]
    pub interval_handling_mode: IntervalMode,
    #[serde(default)]
    pub binary_handling_mode: BinaryMode,
}

/// `decimal.handling.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecimalMode {
    #[default]
    Precise,
    Double,
    String,
}

/// `time.precision.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimePrecisionMode {
    #[default]
    Adaptive,
    AdaptiveTimeMicroseconds,
    Connect,
}

/// `interval.handling.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalMode {
    #[default]
    Numeric,
    String,
}

/// `binary.handling.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BinaryMode {
    #[default]
    Bytes,
    Base64,
    Base64UrlSafe,
    Hex,
}

/// One column as the source's catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogColumn {
    pub name: String,
    /// `pg_type.typname` of the column's type (of its elements, for an
    /// array), domains resolved to their base type.
    pub base_type: String,
    /// The type name as declared (a domain's own name; `_int4` for arrays).
    pub declared_type: String,
    pub array: bool,
    /// `atttypmod` (the domain's, for a domain): length, precision and scale.
    pub type_modifier: i32,
    /// Labels of an enum type, in order; empty for other types.
    pub enum_labels: Vec<String>,
    pub not_null: bool,
    /// The default expression as `pg_get_expr` prints it.
    pub default_expression: Option<String>,
}

/// The columns of a table as Debezium's Connect schema would give them.
/// `key` names the primary-key columns (the record key decides in the end).
pub fn connect_columns(columns: &[CatalogColumn], key: &[&str], modes: &HandlingModes) -> Result<TableSchema> {
    let fields: Vec<Json> = columns.iter().map(|c| connect_field(c, modes)).collect();
    let connect: ConnectSchema = serde_json::from_value(json!({ "type": "struct", "fields": fields }))
        .map_err(|e| crate::Error::Schema { message: format!("catalog schema: {e}") })?;
    let mut parsed = connect.columns()?;
    for (field, column) in parsed.iter_mut().zip(columns) {
        field.default = match column.default_expression.as_deref() {
            Some(expression) if constant_text(expression).is_some() => literal_default(expression, &field.data_type),
            // Debezium gives a NOT NULL column whose default is computed
            // (`nextval(...)`, `now()`) its type's zero as schema default.
            Some(_) if column.not_null => zero_value(&field.data_type),
            _ => None,
        };
    }
    TableSchema::new(parsed, key)
}

/// The Connect schema of one column, as the PostgreSQL connector writes it
/// with `column.propagate.source.type`.
fn connect_field(column: &CatalogColumn, modes: &HandlingModes) -> Json {
    let mut schema = element_schema(column, modes);
    let (length, scale) = length_and_scale(column);
    let source_type = column.declared_type.to_ascii_uppercase();
    let parameters = [
        ("__debezium.source.column.type", Some(source_type)),
        ("__debezium.source.column.length", length.map(|l| l.to_string())),
        ("__debezium.source.column.scale", scale.map(|s| s.to_string())),
        ("__debezium.source.column.name", Some(column.name.clone())),
    ];
    if column.array {
        schema = json!({ "type": "array", "items": schema });
    }
    if let Some(object) = schema.as_object_mut() {
        let entry = object.entry("parameters").or_insert_with(|| json!({}));
        for (name, value) in parameters {
            if let (Some(value), Some(map)) = (value, entry.as_object_mut()) {
                map.insert(name.into(), Json::String(value));
            }
        }
        object.insert("field".into(), Json::String(column.name.clone()));
        object.insert("optional".into(), Json::Bool(!column.not_null));
    }
    schema
}

/// Length and scale as Debezium reports them for the types whose DDL needs
/// them (`varchar(n)`, `char(n)`, `numeric(p,s)`, `bit(n)`, time precision).
fn length_and_scale(column: &CatalogColumn) -> (Option<i64>, Option<i64>) {
    let modifier = i64::from(column.type_modifier);
    match column.base_type.as_str() {
        "varchar" | "bpchar" if modifier >= 4 => (Some(modifier - 4), Some(0)),
        "numeric" => match numeric_modifier(column.type_modifier) {
            Some((p, s)) => (Some(i64::from(p)), Some(i64::from(s))),
            None => (Some(0), None),
        },
        "bit" | "varbit" if modifier >= 0 => (Some(modifier), Some(0)),
        "time" | "timetz" | "timestamp" | "timestamptz" => (None, Some(if modifier >= 0 { modifier } else { 6 })),
        _ => (None, None),
    }
}

/// `numeric(p,s)` from its type modifier; `None` for unconstrained `numeric`.
fn numeric_modifier(modifier: i32) -> Option<(u32, i32)> {
    if modifier < 4 {
        return None;
    }
    let packed = modifier - 4;
    let precision = u32::try_from((packed >> 16) & 0xffff).ok()?;
    // PostgreSQL 15 packs the scale as an 11-bit signed number.
    let scale = ((packed & 0x7ff) ^ 1024) - 1024;
    Some((precision, scale))
}

/// Precision of a time type (6 when not declared).
fn time_precision(column: &CatalogColumn) -> i32 {
    if column.type_modifier >= 0 { column.type_modifier } else { 6 }
}

/// The Connect schema of a value of the column's (element) type.
fn element_schema(column: &CatalogColumn, modes: &HandlingModes) -> Json {
    let logical = |ty: &str, name: &str| json!({ "type": ty, "name": name });
    let decimal = |precision: Option<u32>, scale: i32| match modes.decimal_handling_mode {
        DecimalMode::Double => json!({ "type": "double" }),
        DecimalMode::String => json!({ "type": "string" }),
        DecimalMode::Precise => match precision {
            Some(p) => json!({
                "type": "bytes",
                "name": "org.apache.kafka.connect.data.Decimal",
                "parameters": { "scale": scale.to_string(), "connect.decimal.precision": p.to_string() }
            }),
            None => json!({
                "type": "struct",
                "name": "io.debezium.data.VariableScaleDecimal",
                "fields": [{ "type": "int32", "field": "scale" }, { "type": "bytes", "field": "value" }]
            }),
        },
    };
    if !column.enum_labels.is_empty() {
        return json!({
            "type": "string",
            "name": "io.debezium.data.Enum",
            "parameters": { "allowed": column.enum_labels.join(",") }
        });
    }
    let connect_time = modes.time_precision_mode == TimePrecisionMode::Connect;
    match column.base_type.as_str() {
        "bool" => json!({ "type": "boolean" }),
        "int2" => json!({ "type": "int16" }),
        "int4" => json!({ "type": "int32" }),
        "int8" | "oid" => json!({ "type": "int64" }),
        "float4" => json!({ "type": "float" }),
        "float8" => json!({ "type": "double" }),
        "numeric" => {
            let (precision, scale) = match numeric_modifier(column.type_modifier) {
                Some((p, s)) => (Some(p), s),
                None => (None, 0),
            };
            decimal(precision, scale)
        }
        // `money.fraction.digits` is 2 unless configured otherwise; no precision.
        "money" => match modes.decimal_handling_mode {
            DecimalMode::Precise => json!({
                "type": "bytes",
                "name": "org.apache.kafka.connect.data.Decimal",
                "parameters": { "scale": "2" }
            }),
            _ => decimal(None, 2),
        },
        "bytea" => match modes.binary_handling_mode {
            BinaryMode::Bytes => json!({ "type": "bytes" }),
            _ => json!({ "type": "string" }),
        },
        "date" if connect_time => logical("int32", "org.apache.kafka.connect.data.Date"),
        "date" => logical("int32", "io.debezium.time.Date"),
        "time" => match modes.time_precision_mode {
            TimePrecisionMode::Connect => logical("int32", "org.apache.kafka.connect.data.Time"),
            TimePrecisionMode::Adaptive if time_precision(column) <= 3 => logical("int32", "io.debezium.time.Time"),
            _ => logical("int64", "io.debezium.time.MicroTime"),
        },
        "timestamp" => match modes.time_precision_mode {
            TimePrecisionMode::Connect => logical("int64", "org.apache.kafka.connect.data.Timestamp"),
            _ if time_precision(column) <= 3 => logical("int64", "io.debezium.time.Timestamp"),
            _ => logical("int64", "io.debezium.time.MicroTimestamp"),
        },
        "timestamptz" => logical("string", "io.debezium.time.ZonedTimestamp"),
        "timetz" => logical("string", "io.debezium.time.ZonedTime"),
        "interval" => match modes.interval_handling_mode {
            IntervalMode::Numeric => logical("int64", "io.debezium.time.MicroDuration"),
            IntervalMode::String => logical("string", "io.debezium.time.Interval"),
        },
        // hstore too (`hstore.handling.mode=json`, the default).
        "json" | "jsonb" | "hstore" => logical("string", "io.debezium.data.Json"),
        "tsvector" => logical("string", "io.debezium.data.Tsvector"),
        "uuid" => logical("string", "io.debezium.data.Uuid"),
        "xml" => logical("string", "io.debezium.data.Xml"),
        // `bit(1)` is a boolean to Debezium; longer bit strings are Bits,
        // `bit varying` without a length says so with the JDBC maximum.
        "bit" if column.type_modifier == 1 => json!({ "type": "boolean" }),
        "bit" | "varbit" => {
            let length = if column.type_modifier >= 0 { column.type_modifier } else { i32::MAX };
            json!({ "type": "bytes", "name": "io.debezium.data.Bits", "parameters": { "length": length.to_string() } })
        }
        "point" => json!({
            "type": "struct",
            "name": "io.debezium.data.geometry.Point",
            "fields": [
                { "type": "double", "field": "x" },
                { "type": "double", "field": "y" },
                { "type": "bytes", "optional": true, "field": "wkb" },
                { "type": "int32", "optional": true, "field": "srid" }
            ]
        }),
        "geometry" => geometry("io.debezium.data.geometry.Geometry"),
        "geography" => geometry("io.debezium.data.geometry.Geography"),
        // hstore (json map mode), ranges, tsvector, inet, cidr, macaddr,
        // ltree, citext and the rest arrive as their text.
        _ => json!({ "type": "string" }),
    }
}

fn geometry(name: &str) -> Json {
    json!({
        "type": "struct",
        "name": name,
        "fields": [{ "type": "bytes", "field": "wkb" }, { "type": "int32", "optional": true, "field": "srid" }]
    })
}

/// The value of a constant default (`0`, `false`, `'text'::character
/// varying`) as Debezium's schema would carry it; `None` for an expression
/// (`nextval(...)`, `now()`) or a type whose literal is not read here.
fn literal_default(expression: &str, data_type: &DataType) -> Option<Value> {
    let text = constant_text(expression)?;
    match data_type {
        DataType::Boolean => match text.as_str() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => text.parse().ok().map(Value::Int),
        DataType::Float32 | DataType::Float64 => text.parse().ok().map(Value::Float),
        DataType::Decimal { scale, .. } => Decimal::parse(&text)?.rescale(*scale).map(Value::Decimal),
        DataType::VariableDecimal => Decimal::parse(&text).map(Value::Decimal),
        DataType::String | DataType::Json | DataType::Uuid | DataType::Xml | DataType::Enum { .. } => {
            Some(Value::String(text.into()))
        }
        DataType::Date => {
            let date = NaiveDate::parse_from_str(&text, "%Y-%m-%d").ok()?;
            let days = date.signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days();
            i32::try_from(days).ok().map(Value::Date)
        }
        DataType::Time(_) => {
            let time = NaiveTime::parse_from_str(&text, "%H:%M:%S%.f").ok()?;
            time.signed_duration_since(NaiveTime::MIN).num_microseconds().map(Value::Time)
        }
        DataType::Timestamp(_) => {
            let at = NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f").ok()?;
            Some(Value::Timestamp(at.and_utc().timestamp_micros()))
        }
        DataType::TimestampTz => {
            let at = DateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f%#z").ok()?;
            Some(Value::TimestampTz(at.timestamp_micros()))
        }
        _ => None,
    }
}

/// The zero of a type, as Debezium's fallback default.
fn zero_value(data_type: &DataType) -> Option<Value> {
    Some(match data_type {
        DataType::Boolean => Value::Bool(false),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => Value::Int(0),
        DataType::Float32 | DataType::Float64 => Value::Float(0.0),
        DataType::Decimal { scale, .. } => Value::Decimal(Decimal { unscaled: 0, scale: *scale }),
        DataType::String => Value::String("".into()),
        DataType::Date => Value::Date(0),
        DataType::Time(_) => Value::Time(0),
        DataType::Timestamp(_) => Value::Timestamp(0),
        DataType::TimestampTz => Value::TimestampTz(0),
        _ => return None,
    })
}

/// The text of a constant: a bare number or boolean, or a quoted literal
/// with an optional cast (`'it''s'::text`).
fn constant_text(expression: &str) -> Option<String> {
    let expression = expression.trim();
    if let Some(quoted) = expression.strip_prefix('\'') {
        let mut text = String::new();
        let mut chars = quoted.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\'' {
                text.push(c);
            } else if chars.peek() == Some(&'\'') {
                chars.next();
                text.push('\'');
            } else {
                let rest: String = chars.collect();
                // Only casts may follow (`::character varying`, `::mood[]`).
                let cast_only = rest.is_empty()
                    || rest.starts_with("::") && rest.chars().all(|c| c.is_alphanumeric() || " _.:\"(),[]".contains(c));
                return cast_only.then_some(text);
            }
        }
        return None;
    }
    // `(-1)` and `'-1'::integer`-free forms: a bare signed number or boolean.
    let bare = expression.trim_start_matches('(').trim_end_matches(')');
    let bare = bare.split("::").next().unwrap_or(bare);
    let numeric = !bare.is_empty()
        && bare.chars().enumerate().all(|(i, c)| c.is_ascii_digit() || c == '.' || (i == 0 && c == '-'));
    (numeric || bare == "true" || bare == "false").then(|| bare.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_read_and_expressions_are_not() {
        assert_eq!(constant_text("0"), Some("0".into()));
        assert_eq!(constant_text("'-1.50'::numeric"), Some("-1.50".into()));
        assert_eq!(constant_text("'it''s'::character varying"), Some("it's".into()));
        assert_eq!(constant_text("false"), Some("false".into()));
        assert_eq!(constant_text("nextval('t_id_seq'::regclass)"), None);
        assert_eq!(constant_text("now()"), None);
        assert_eq!(constant_text("'a'::text || 'b'::text"), None);
    }

    #[test]
    fn numeric_modifiers_unpack() {
        // numeric(12,2): ((12 << 16) | 2) + 4
        assert_eq!(numeric_modifier((12 << 16 | 2) + 4), Some((12, 2)));
        assert_eq!(numeric_modifier(-1), None);
        // numeric(3,-2) (PostgreSQL 15): the scale is 11-bit signed.
        assert_eq!(numeric_modifier((3 << 16 | 0x7fe) + 4), Some((3, -2)));
    }
}
