//! Table schemas, derived from the Kafka Connect schema Debezium sends with each
//! record (`schemas.enable=true`), registered by the user, or inferred from the
//! JSON shape of schemaless records.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::value::Value;

/// The type of a column, named after the Connect logical type it comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum DataType {
    Boolean,
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// `org.apache.kafka.connect.data.Decimal` (`decimal.handling.mode=precise`).
    /// `precision` comes from `connect.decimal.precision` or the source column length.
    Decimal {
        precision: Option<u32>,
        scale: i32,
    },
    /// `io.debezium.data.VariableScaleDecimal`: unconstrained `numeric`.
    VariableDecimal,
    String,
    Bytes,
    /// `io.debezium.data.Json` (json and jsonb), as text.
    Json,
    /// `io.debezium.data.Uuid`, as text.
    Uuid,
    /// `io.debezium.data.Xml`, as text.
    Xml,
    /// `io.debezium.data.Enum`, with the allowed values.
    Enum {
        allowed: Vec<String>,
    },
    /// `io.debezium.data.EnumSet` (comma-separated members).
    EnumSet {
        allowed: Vec<String>,
    },
    /// `io.debezium.data.Bits`: a bit string of `length` bits, sent as
    /// little-endian bytes; `varying` for `bit varying`.
    Bits {
        /// Declared length; 0 for `bit varying` without one.
        length: u32,
        varying: bool,
    },
    /// `io.debezium.time.Date`, Connect `Date`.
    Date,
    /// Time of day; the unit is the one on the wire.
    Time(TimeUnit),
    /// Timestamp without time zone; the unit is the one on the wire.
    Timestamp(TimeUnit),
    /// `io.debezium.time.ZonedTimestamp` (ISO 8601 text, normalised to UTC).
    TimestampTz,
    /// `io.debezium.time.ZonedTime` (ISO 8601 text, kept as text).
    ZonedTime,
    /// `io.debezium.time.MicroDuration` (`interval.handling.mode=numeric`).
    Duration,
    /// `io.debezium.time.Interval` (`interval.handling.mode=string`).
    Interval,
    /// `io.debezium.time.Year`.
    Year,
    /// `io.debezium.data.geometry.{Geometry,Geography,Point}`: WKB + SRID.
    Geometry,
    Array(Box<DataType>),
    /// Any other struct or map: kept as JSON text.
    Struct,
    /// Schemaless record without a known schema: typed by the JSON shape
    /// (integer, float, boolean, string, list; objects as JSON text).
    Dynamic,
}

/// Unit of an integer time value on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Millis,
    Micros,
    Nanos,
}

impl TimeUnit {
    /// Converts a wire value to microseconds, flooring (pre-1970 values stay
    /// in the right microsecond); `None` on overflow.
    pub fn to_micros(self, value: i64) -> Option<i64> {
        match self {
            TimeUnit::Millis => value.checked_mul(1000),
            TimeUnit::Micros => Some(value),
            TimeUnit::Nanos => Some(value.div_euclid(1000)),
        }
    }
}

/// The source column type Debezium adds with `column.propagate.source.type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceColumn {
    /// PostgreSQL type name as Debezium reports it (`NUMERIC`, `VARCHAR`, `_INT4`, `MOOD`).
    pub type_name: String,
    pub length: Option<i64>,
    pub scale: Option<i64>,
}

/// One column.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
    /// The schema default. JsonConverter writes it in place of a null
    /// (`replace.null.with.default=true`, its default).
    pub default: Option<Value>,
    pub source: Option<SourceColumn>,
}

/// The columns of one source table, and which of them form the key.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    fields: Vec<Field>,
    /// Indices into `fields` of the key columns (from the record key's schema).
    key: Vec<usize>,
    index: HashMap<String, usize>,
    /// Columns that are earlier columns renamed at the source: (new, old).
    renamed: Vec<(String, String)>,
}

impl TableSchema {
    pub fn new(fields: Vec<Field>, key_columns: &[&str]) -> crate::Result<TableSchema> {
        let index: HashMap<String, usize> = fields.iter().enumerate().map(|(i, f)| (f.name.clone(), i)).collect();
        let key = key_columns
            .iter()
            .map(|name| {
                index.get(*name).copied().ok_or_else(|| crate::Error::Schema {
                    message: format!("key column `{name}` is not a column of the table"),
                })
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(TableSchema { fields, key, index, renamed: Vec::new() })
    }

    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Indices of the key columns, in key order.
    pub fn key_indices(&self) -> &[usize] {
        &self.key
    }

    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        self.key.iter().filter_map(|&i| self.fields.get(i)).map(|field| field.name.as_str())
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.get(self.index_of(name)?)
    }

    /// The earlier name of column `name`, when the source renamed it (see
    /// [`crate::renames`]): a sink renames its column rather than adding one.
    pub fn renamed_from(&self, name: &str) -> Option<&str> {
        self.renamed.iter().find(|(new, _)| new == name).map(|(_, old)| old.as_str())
    }

    /// Every (new, old) rename this schema knows.
    pub fn renames(&self) -> &[(String, String)] {
        &self.renamed
    }

    /// The same schema with column `old` called `new` (when it has `old`),
    /// and knowing that `new` was `old`.
    pub fn with_rename(&self, old: &str, new: &str) -> crate::Result<TableSchema> {
        let mut fields = self.fields.clone();
        if self.index_of(new).is_none() {
            for field in fields.iter_mut().filter(|f| f.name == old) {
                field.name = new.to_owned();
            }
        }
        let key: Vec<String> = self.key_names().map(|k| if k == old { new.to_owned() } else { k.to_owned() }).collect();
        let key: Vec<&str> = key.iter().map(String::as_str).collect();
        let mut renamed = TableSchema::new(fields, &key)?;
        renamed.renamed = self.renamed.clone();
        if renamed.renamed_from(new).is_none() {
            renamed.renamed.push((new.to_owned(), old.to_owned()));
        }
        Ok(renamed)
    }

    /// The same columns with another key (used when the key schema arrives
    /// separately from the value schema).
    /// Every column of `schemas` (versions of one table, newest first): a
    /// column keeps its newest type, or a wider one an older version has
    /// (versions read out of order); the key is the newest one's. A batch
    /// spanning a schema change is converted with it, each row giving its
    /// own values (null where its version lacks the column), so which
    /// batch an event lands in does not change what is written.
    pub fn union<'a>(schemas: impl IntoIterator<Item = &'a TableSchema>) -> crate::Result<TableSchema> {
        let schemas: Vec<&TableSchema> = schemas.into_iter().collect();
        let Some(newest) = schemas.first() else { return TableSchema::new(Vec::new(), &[]) };
        let mut fields = newest.fields.clone();
        for older in schemas.iter().skip(1) {
            for field in older.fields() {
                match fields.iter_mut().find(|f| f.name == field.name) {
                    None => fields.push(field.clone()),
                    // Versions read out of order: the column takes the wider type.
                    Some(chosen)
                        if chosen.data_type != field.data_type && chosen.data_type.can_widen_to(&field.data_type) =>
                    {
                        *chosen = field.clone();
                    }
                    Some(_) => {}
                }
            }
        }
        let key: Vec<&str> = newest.key_names().collect();
        let mut union = TableSchema::new(fields, &key)?;
        for rename in schemas.iter().flat_map(|s| s.renamed.iter()) {
            if !union.renamed.contains(rename) {
                union.renamed.push(rename.clone());
            }
        }
        Ok(union)
    }

    pub fn with_key(&self, key_columns: &[&str]) -> crate::Result<TableSchema> {
        TableSchema::new(self.fields.clone(), key_columns)
    }
}

/// A Kafka Connect schema as JsonConverter writes it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ConnectSchema {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub optional: bool,
    pub name: Option<String>,
    pub field: Option<String>,
    #[serde(default)]
    pub parameters: HashMap<String, String>,
    #[serde(default)]
    pub fields: Vec<ConnectSchema>,
    pub items: Option<Box<ConnectSchema>>,
    pub default: Option<serde_json::Value>,
}

impl ConnectSchema {
    pub fn child(&self, name: &str) -> Option<&ConnectSchema> {
        self.fields.iter().find(|f| f.field.as_deref() == Some(name))
    }

    fn param<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.parameters.get(key).and_then(|v| v.parse().ok())
    }

    /// The column type this schema stands for.
    pub fn data_type(&self) -> crate::Result<DataType> {
        let source_type = self.parameters.get("__debezium.source.column.type").map(String::as_str);
        let list = |key: &str| -> Vec<String> {
            self.parameters.get(key).map(|v| v.split(',').map(str::to_owned).collect()).unwrap_or_default()
        };
        let logical = match self.name.as_deref() {
            Some("org.apache.kafka.connect.data.Decimal") => Some(DataType::Decimal {
                precision: self
                    .param("connect.decimal.precision")
                    // `money` says 2147483647: no precision PostgreSQL has (1000 at most).
                    .or_else(|| self.param("__debezium.source.column.length").filter(|&p: &u32| p > 0 && p <= 1000)),
                scale: self.param("scale").ok_or_else(|| crate::Error::Schema {
                    message: "Decimal schema without a `scale` parameter".into(),
                })?,
            }),
            Some("io.debezium.data.VariableScaleDecimal") => Some(DataType::VariableDecimal),
            Some("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date") => Some(DataType::Date),
            Some("io.debezium.time.Time" | "org.apache.kafka.connect.data.Time") => {
                Some(DataType::Time(TimeUnit::Millis))
            }
            Some("io.debezium.time.MicroTime") => Some(DataType::Time(TimeUnit::Micros)),
            Some("io.debezium.time.NanoTime") => Some(DataType::Time(TimeUnit::Nanos)),
            Some("io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp") => {
                Some(DataType::Timestamp(TimeUnit::Millis))
            }
            Some("io.debezium.time.MicroTimestamp") => Some(DataType::Timestamp(TimeUnit::Micros)),
            Some("io.debezium.time.NanoTimestamp") => Some(DataType::Timestamp(TimeUnit::Nanos)),
            Some("io.debezium.time.ZonedTimestamp") => Some(DataType::TimestampTz),
            Some("io.debezium.time.ZonedTime") => Some(DataType::ZonedTime),
            Some("io.debezium.time.MicroDuration") => Some(DataType::Duration),
            Some("io.debezium.time.Interval") => Some(DataType::Interval),
            Some("io.debezium.time.Year") => Some(DataType::Year),
            Some("io.debezium.data.Json") => Some(DataType::Json),
            Some("io.debezium.data.Uuid") => Some(DataType::Uuid),
            Some("io.debezium.data.Xml") => Some(DataType::Xml),
            Some("io.debezium.data.Enum") => Some(DataType::Enum { allowed: list("allowed") }),
            Some("io.debezium.data.EnumSet") => Some(DataType::EnumSet { allowed: list("allowed") }),
            Some("io.debezium.data.Bits") => {
                // `bit varying` without a length arrives as length 2147483647:
                // beyond PostgreSQL's limit, so it can only mean "no length"
                // (0 here), and the value is as many bits as it has.
                let length = self.param("length").unwrap_or(0);
                let unbounded = length > MAX_BIT_LENGTH;
                Some(DataType::Bits {
                    length: if unbounded { 0 } else { length },
                    varying: unbounded || source_type.is_some_and(|t| t.eq_ignore_ascii_case("VARBIT")),
                })
            }
            Some(
                "io.debezium.data.geometry.Geometry"
                | "io.debezium.data.geometry.Geography"
                | "io.debezium.data.geometry.Point",
            ) => Some(DataType::Geometry),
            _ => None,
        };
        if let Some(logical) = logical {
            return Ok(logical);
        }
        Ok(match self.kind.as_str() {
            "boolean" => DataType::Boolean,
            "int8" => DataType::Int8,
            "int16" => DataType::Int16,
            "int32" => DataType::Int32,
            "int64" => DataType::Int64,
            "float" | "float32" => DataType::Float32,
            "double" | "float64" => DataType::Float64,
            "string" => DataType::String,
            "bytes" => DataType::Bytes,
            "array" => {
                let items = self
                    .items
                    .as_deref()
                    .ok_or_else(|| crate::Error::Schema { message: "array schema without `items`".into() })?;
                DataType::Array(Box::new(items.data_type()?))
            }
            "struct" | "map" => DataType::Struct,
            other => {
                return Err(crate::Error::Schema { message: format!("unknown Connect schema type `{other}`") });
            }
        })
    }

    /// Columns of a struct schema (a row image's schema).
    pub fn columns(&self) -> crate::Result<Vec<Field>> {
        self.fields
            .iter()
            .map(|f| {
                let name = f
                    .field
                    .clone()
                    .ok_or_else(|| crate::Error::Schema { message: "struct field without a `field` name".into() })?;
                let data_type = f.data_type()?;
                let default =
                    match &f.default {
                        Some(json) => Some(crate::decode::value_from_json(json, &data_type).map_err(|e| {
                            crate::Error::Schema { message: format!("default of column `{name}`: {e}") }
                        })?),
                        None => None,
                    };
                let source = f.parameters.get("__debezium.source.column.type").map(|t| SourceColumn {
                    type_name: t.clone(),
                    length: f.param("__debezium.source.column.length"),
                    scale: f.param("__debezium.source.column.scale"),
                });
                Ok(Field { name, data_type, nullable: f.optional, default, source })
            })
            .collect()
    }
}

/// Schemas shared between events: cheap to clone.
pub type SchemaRef = Arc<TableSchema>;

/// PostgreSQL's longest bit string (`bit(n)` refuses more).
const MAX_BIT_LENGTH: u32 = 83_886_080;
