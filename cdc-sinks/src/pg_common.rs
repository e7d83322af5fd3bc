//! What the PostgreSQL sinks share: connections with retry, identifier
//! quoting, the type mapping, binary COPY staging, current-state tables and
//! the offsets table.

use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use cdc_core::arrow::bit_string;
use cdc_core::{
    Batch, ChangeEvent, DataType, Error, Field, Offsets, Result, SqlVersion, TableChange, TableSchema, Value,
    supersedes_sql,
};
use futures::pin_mut;
use serde::Deserialize;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Transaction};

/// A connection string that never shows its password (`Debug`, `Display`).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct PgUrl(String);

impl PgUrl {
    pub fn new(url: impl Into<String>) -> PgUrl {
        PgUrl(url.into())
    }

    /// The real connection string; only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // postgres://user:secret@host/db -> postgres://user:***@host/db
        match (self.0.find("://"), self.0.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let userinfo = &self.0[scheme + 3..at];
                let user = userinfo.split(':').next().unwrap_or_default();
                let hidden = if userinfo.contains(':') { ":***" } else { "" };
                write!(f, "{}{user}{hidden}{}", &self.0[..scheme + 3], &self.0[at..])
            }
            _ if self.0.contains("password") => f.write_str("<connection string with password>"),
            _ => f.write_str(&self.0),
        }
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

/// Connection and retry settings shared by the PostgreSQL sinks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PgConnectionConfig {
    /// `postgres://user:password@host:port/db` (the password is never logged).
    pub url: PgUrl,
    /// Names this consumer's rows in the offsets table, so several pipelines
    /// can share one database.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Attempts for a batch that fails with a retriable error (connection
    /// lost, server restart, serialization failure) before giving up.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First backoff between attempts; doubles up to 30 s.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
}

fn default_consumer() -> String {
    "cdc-lakehouse".into()
}
fn default_attempts() -> u32 {
    8
}
fn default_backoff_ms() -> u64 {
    200
}

impl PgConnectionConfig {
    pub fn new(url: impl Into<String>) -> PgConnectionConfig {
        PgConnectionConfig {
            url: PgUrl::new(url),
            consumer: default_consumer(),
            max_attempts: default_attempts(),
            backoff_ms: default_backoff_ms(),
        }
    }
}

/// A lazily (re)connected client.
pub(crate) struct Connection {
    config: PgConnectionConfig,
    sink: &'static str,
    client: Option<Client>,
}

impl Connection {
    pub fn new(config: PgConnectionConfig, sink: &'static str) -> Connection {
        Connection { config, sink, client: None }
    }

    pub fn config(&self) -> &PgConnectionConfig {
        &self.config
    }

    pub async fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let mut pg_config: tokio_postgres::Config =
                self.config.url.expose().parse().map_err(|e| sink_error(self.sink, &e))?;
            pg_config.application_name(self.sink);
            let (client, connection) = pg_config.connect(NoTls).await.map_err(|e| sink_error(self.sink, &e))?;
            let sink = self.sink;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(sink, error = %e, "PostgreSQL connection ended");
                }
            });
            tracing::debug!(sink, url = %self.config.url, "connected");
            return Ok(self.client.insert(client));
        }
        self.client
            .as_mut()
            .ok_or_else(|| Error::Unavailable { sink: self.sink.into(), message: "not connected".into() })
    }

    /// Forgets the client so the next call reconnects.
    pub fn reset(&mut self) {
        self.client = None;
    }

    /// After failed attempt number `attempt` (1-based) with `error`: how long
    /// to wait before trying again, or `None` to give up. Resets the
    /// connection when trying again.
    pub fn retry_after(&mut self, attempt: u32, error: &Error) -> Option<Duration> {
        if !error.is_retriable() || attempt >= self.config.max_attempts.max(1) {
            return None;
        }
        self.reset();
        let ms = self.config.backoff_ms.saturating_mul(1 << attempt.min(16).saturating_sub(1));
        let wait = Duration::from_millis(ms.min(30_000));
        tracing::warn!(sink = self.sink, %error, attempt, ?wait, "retrying the batch after a retriable error");
        Some(wait)
    }
}

/// A sink error from a PostgreSQL error, classified once for every caller:
/// an outage when the connection or the server went away (I/O, closed
/// connection, classes 08, 53, 57, 58); retriable when the transaction lost
/// a race (serialization failure, deadlock); otherwise not retriable: the
/// data or the SQL is wrong, including a value the client cannot serialise
/// (no SQLSTATE, but nothing a retry changes). The message never contains
/// credentials.
pub(crate) fn sink_error(sink: &str, error: &tokio_postgres::Error) -> Error {
    enum Class {
        Outage,
        Race,
        Data,
    }
    let io = || {
        let mut source = error.source();
        while let Some(cause) = source {
            if cause.is::<std::io::Error>() {
                return true;
            }
            source = cause.source();
        }
        false
    };
    let class = match error.code() {
        None if error.is_closed() || io() => Class::Outage,
        None => Class::Data,
        Some(code) if matches!(&code.code()[..2], "08" | "53" | "57" | "58") => Class::Outage,
        Some(code) if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED => {
            Class::Race
        }
        Some(_) => Class::Data,
    };
    let mut message = error.to_string();
    if let Some(db) = error.as_db_error() {
        message = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            message.push_str(&format!(": {detail}"));
        }
    } else if let Some(source) = error.source() {
        message.push_str(&format!(": {source}"));
    }
    let sink = sink.to_owned();
    match class {
        Class::Outage => Error::Unavailable { sink, message },
        Class::Race => Error::Sink { sink, message, retriable: true },
        Class::Data => Error::Sink { sink, message, retriable: false },
    }
}

/// `name` as a quoted SQL identifier: events name tables and columns, so
/// every identifier is quoted; embedded quotes are doubled.
pub fn quote_ident(name: &str) -> Result<String> {
    if name.contains('\0') {
        return Err(Error::Sink {
            sink: "postgres".into(),
            message: format!("identifier {name:?} contains a NUL byte"),
            retriable: false,
        });
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// A SQL string literal.
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The PostgreSQL column type for a Debezium column, as `format_type` spells
/// it, so it can be compared with an existing table. The source column type
/// (`column.propagate.source.type`) refines it where it is known.
pub fn pg_type(field: &Field) -> String {
    let source = field.source.as_ref();
    let source_name = source.map(|s| s.type_name.to_ascii_uppercase());
    let length = source.and_then(|s| s.length).filter(|&l| l > 0 && l < 10_485_760);
    base_pg_type(&field.data_type, source_name.as_deref(), length)
}

fn base_pg_type(data_type: &DataType, source: Option<&str>, length: Option<i64>) -> String {
    use DataType::*;
    match data_type {
        Boolean => "boolean".into(),
        Int8 | Int16 => "smallint".into(),
        Int32 | Year => "integer".into(),
        Int64 => "bigint".into(),
        Float32 => "real".into(),
        Float64 => "double precision".into(),
        Decimal { precision: Some(p), scale } if *scale >= 0 && *scale <= i32::try_from(*p).unwrap_or(0) => {
            format!("numeric({p},{scale})")
        }
        Decimal { .. } | VariableDecimal => "numeric".into(),
        String => match (source, length) {
            (Some("VARCHAR"), Some(n)) => format!("character varying({n})"),
            (Some("BPCHAR" | "CHAR"), Some(n)) => format!("character({n})"),
            (Some("INET"), _) => "inet".into(),
            (Some("CIDR"), _) => "cidr".into(),
            (Some("MACADDR"), _) => "macaddr".into(),
            (Some("NUMERIC" | "DECIMAL"), _) => "numeric".into(),
            _ => "text".into(),
        },
        Json if source == Some("JSON") => "json".into(),
        Json | Struct => "jsonb".into(),
        Uuid => "uuid".into(),
        Xml => "xml".into(),
        Enum { .. } | EnumSet { .. } | Dynamic => "text".into(),
        Bits { length, varying: false } => format!("bit({})", (*length).max(1)),
        Bits { length: 0, varying: true } => "bit varying".into(),
        Bits { length, varying: true } => format!("bit varying({length})"),
        Bytes => "bytea".into(),
        Geometry if source == Some("POINT") => "point".into(),
        Geometry => "bytea".into(),
        Date => "date".into(),
        Time(_) => "time without time zone".into(),
        Timestamp(_) => "timestamp without time zone".into(),
        TimestampTz => "timestamp with time zone".into(),
        ZonedTime => "time with time zone".into(),
        Duration | Interval => "interval".into(),
        Array(element) => format!("{}[]", base_pg_type(element, source.map(|s| s.trim_start_matches('_')), length)),
    }
}

/// Whether a column of type `from` (as `format_type` writes it) can be
/// altered in place to `to` without losing or changing any value (`ALTER
/// COLUMN ... TYPE`): a wider integer; `real` to `double precision`;
/// `numeric(p,s)` to `numeric(p',s')` with p'-s' >= p-s and s' >= s, or to
/// unconstrained `numeric` (integers too, when their digits fit); a longer
/// `character varying`; anything to `text`; a longer `bit varying`.
fn widens(from: &str, to: &str) -> bool {
    use PgColumnType::*;
    match (PgColumnType::parse(from), PgColumnType::parse(to)) {
        (Integer { digits: a }, Integer { digits: b }) => a < b,
        (Integer { digits }, Numeric(None)) => digits > 0,
        (Integer { digits }, Numeric(Some((p, s)))) => p - s >= digits,
        (Real, Double) => true,
        (Numeric(Some(_)), Numeric(None)) => true,
        (Numeric(Some((p, s))), Numeric(Some((p2, s2)))) => (p2 - s2 >= p - s && s2 >= s) && (p2, s2) != (p, s),
        (Varchar(Some(n)), Varchar(m)) => m.is_none_or(|m| m > n),
        // Any value has a text form (the rule before these families were known).
        (_, Text) => true,
        (BitVarying(Some(n)), BitVarying(m)) => m.is_none_or(|m| m > n),
        _ => false,
    }
}

/// The column types whose widening is known; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgColumnType {
    /// `smallint`, `integer`, `bigint`, by the decimal digits they hold.
    Integer {
        digits: i64,
    },
    Real,
    Double,
    /// `numeric(p,s)`, or unconstrained.
    Numeric(Option<(i64, i64)>),
    Varchar(Option<i64>),
    Char(i64),
    Text,
    BitVarying(Option<i64>),
    Other,
}

impl PgColumnType {
    fn parse(name: &str) -> PgColumnType {
        let (family, arguments) = match name.split_once('(') {
            Some((family, rest)) => (family.trim(), rest.trim_end_matches(')')),
            None => (name.trim(), ""),
        };
        let numbers: Vec<i64> = arguments.split(',').filter_map(|n| n.trim().parse().ok()).collect();
        match (family, numbers.as_slice()) {
            ("smallint", []) => PgColumnType::Integer { digits: 5 },
            ("integer", []) => PgColumnType::Integer { digits: 10 },
            ("bigint", []) => PgColumnType::Integer { digits: 19 },
            ("real", []) => PgColumnType::Real,
            ("double precision", []) => PgColumnType::Double,
            ("numeric", []) => PgColumnType::Numeric(None),
            ("numeric", [p]) => PgColumnType::Numeric(Some((*p, 0))),
            ("numeric", [p, s]) => PgColumnType::Numeric(Some((*p, *s))),
            ("character varying", []) => PgColumnType::Varchar(None),
            ("character varying", [n]) => PgColumnType::Varchar(Some(*n)),
            ("character", [n]) => PgColumnType::Char(*n),
            ("text", []) => PgColumnType::Text,
            ("bit varying", []) => PgColumnType::BitVarying(None),
            ("bit varying", [n]) => PgColumnType::BitVarying(Some(*n)),
            _ => PgColumnType::Other,
        }
    }
}

/// How a value travels in the binary COPY to the staging table. Types with
/// a simple binary form go binary; the rest go as text and are cast to the
/// column type by the apply statements.
fn staging_type(data_type: &DataType) -> Type {
    use DataType::*;
    match data_type {
        Boolean => Type::BOOL,
        Int8 | Int16 => Type::INT2,
        Int32 | Year => Type::INT4,
        Int64 => Type::INT8,
        Float32 => Type::FLOAT4,
        Float64 => Type::FLOAT8,
        Bytes => Type::BYTEA,
        Date => Type::DATE,
        Time(_) => Type::TIME,
        Timestamp(_) => Type::TIMESTAMP,
        TimestampTz => Type::TIMESTAMPTZ,
        Duration | Interval => Type::INTERVAL,
        _ => Type::TEXT,
    }
}

const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

/// One value in the binary COPY, encoded for its staging type.
#[derive(Debug)]
struct Cell<'a> {
    value: &'a Value,
    data_type: &'a DataType,
    geometry_as_point: bool,
}

impl ToSql for Cell<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let mismatch = || -> Box<dyn StdError + Sync + Send> {
            format!("value {:?} cannot be written as {ty}", self.value).into()
        };
        match self.value {
            Value::Null | Value::Unavailable => return Ok(IsNull::Yes),
            Value::Bool(b) if *ty == Type::BOOL => out.put_u8(u8::from(*b)),
            Value::Int(i) if *ty == Type::INT2 => out.put_i16(i16::try_from(*i).map_err(|_| mismatch())?),
            Value::Int(i) if *ty == Type::INT4 => out.put_i32(i32::try_from(*i).map_err(|_| mismatch())?),
            Value::Int(i) if *ty == Type::INT8 => out.put_i64(*i),
            Value::Float(f) if *ty == Type::FLOAT4 => out.put_f32(*f as f32),
            Value::Float(f) if *ty == Type::FLOAT8 => out.put_f64(*f),
            Value::Bytes(b) if *ty == Type::BYTEA => out.put_slice(b),
            Value::Date(d) if *ty == Type::DATE => out.put_i32(match *d {
                // i32::MAX / i32::MIN are PostgreSQL's own infinity / -infinity.
                i32::MAX | i32::MIN => *d,
                d => d.checked_sub(PG_EPOCH_DAYS).ok_or_else(mismatch)?,
            }),
            Value::Time(t) if *ty == Type::TIME => out.put_i64(*t),
            Value::Timestamp(t) | Value::TimestampTz(t) if *ty == Type::TIMESTAMP || *ty == Type::TIMESTAMPTZ => {
                // i64::MAX / i64::MIN are PostgreSQL's own infinity / -infinity.
                out.put_i64(match *t {
                    i64::MAX | i64::MIN => *t,
                    t => t.checked_sub(PG_EPOCH_MICROS).ok_or_else(mismatch)?,
                })
            }
            Value::Duration(micros) if *ty == Type::INTERVAL => {
                out.put_i64(*micros);
                out.put_i32(0);
                out.put_i32(0);
            }
            Value::Interval(i) if *ty == Type::INTERVAL => {
                out.put_i64(i.micros);
                out.put_i32(i.days);
                out.put_i32(i.months);
            }
            value if *ty == Type::TEXT => {
                let text = pg_text(self.data_type, value, self.geometry_as_point).ok_or_else(mismatch)?;
                out.put_slice(text.as_bytes());
            }
            _ => return Err(mismatch()),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// PostgreSQL input text for values staged as text.
fn pg_text(data_type: &DataType, value: &Value, geometry_as_point: bool) -> Option<String> {
    Some(match (data_type, value) {
        (DataType::Bits { length, varying }, Value::Bytes(b)) => bit_string(b, *length, *varying),
        (_, Value::String(s)) => s.to_string(),
        (_, Value::Decimal(d)) => d.to_string(),
        (_, Value::BigDecimal(d)) => d.to_string(),
        (_, Value::Int(i)) => i.to_string(),
        (_, Value::Bool(b)) => b.to_string(),
        (_, Value::Float(f)) if f.is_nan() => "NaN".into(),
        (_, Value::Float(f)) if f.is_infinite() => if *f > 0.0 { "Infinity" } else { "-Infinity" }.into(),
        (_, Value::Float(f)) => format!("{f:?}"),
        (_, Value::Bytes(b)) => format!("\\x{}", b.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        (_, Value::Geometry { wkb, .. }) if geometry_as_point && wkb.len() == 21 => {
            let x = f64::from_le_bytes(wkb.get(5..13)?.try_into().ok()?);
            let y = f64::from_le_bytes(wkb.get(13..21)?.try_into().ok()?);
            format!("({x:?},{y:?})")
        }
        (_, Value::Geometry { wkb, .. }) => {
            format!("\\x{}", wkb.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
        (DataType::Array(element), Value::List(items)) => {
            let mut text = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                match item {
                    Value::Null | Value::Unavailable => text.push_str("NULL"),
                    item => {
                        let inner = pg_text(element, item, geometry_as_point)?;
                        text.push('"');
                        text.push_str(&inner.replace('\\', "\\\\").replace('"', "\\\""));
                        text.push('"');
                    }
                }
            }
            text.push('}');
            text
        }
        // Dates and times travel binary; nothing else reaches text staging.
        _ => return None,
    })
}

/// How deletes land in a current-state table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeleteMode {
    /// Remove the row (the target mirror).
    Hard,
    /// Keep the row, flagged `_cdc_deleted` (the data lake's processed tables).
    Soft,
}

/// A current-state table as it exists in the database.
#[derive(Debug, Clone)]
struct KnownTable {
    /// Column name -> `format_type` text.
    columns: BTreeMap<String, String>,
}

/// Writes current-state tables: one per source table, created on first
/// sight, grown with new columns, updated set-based from a staging table.
pub(crate) struct StateTables {
    sink: &'static str,
    /// Schema for every table; `None` mirrors the source schema.
    schema: Option<String>,
    delete_mode: DeleteMode,
    known: HashMap<(String, String), KnownTable>,
    staging_counter: u64,
}

/// Metadata columns of a current-state table and their types.
fn metadata_columns(mode: DeleteMode) -> Vec<(&'static str, &'static str)> {
    let mut columns = vec![
        ("_cdc_op", "text"),
        ("_cdc_order", "text COLLATE \"C\""),
        ("_cdc_source_ts", "timestamp with time zone"),
        ("_cdc_lsn", "bigint"),
        ("_cdc_tx_id", "bigint"),
        ("_cdc_synced_at", "timestamp with time zone"),
        // The Kafka position of the last change: a later offset of the same
        // partition is newer whatever the order keys say (`supersedes`).
        ("_cdc_topic", "text"),
        ("_cdc_partition", "integer"),
        ("_cdc_offset", "bigint"),
    ];
    if mode == DeleteMode::Soft {
        columns.push(("_cdc_deleted", "boolean NOT NULL DEFAULT false"));
        columns.push(("_cdc_deleted_at", "timestamp with time zone"));
    }
    columns
}

impl StateTables {
    pub fn new(sink: &'static str, schema: Option<String>, delete_mode: DeleteMode) -> StateTables {
        StateTables { sink, schema, delete_mode, known: HashMap::new(), staging_counter: 0 }
    }

    /// Forgets what it knew of existing tables (after a rollback).
    pub fn forget(&mut self) {
        self.known.clear();
    }

    fn error(&self, message: String) -> Error {
        Error::Sink { sink: self.sink.to_owned(), message, retriable: false }
    }

    /// Applies one table's events of a batch inside `tx`.
    pub async fn apply(&mut self, tx: &Transaction<'_>, events: &[&ChangeEvent]) -> Result<()> {
        let Some(first) = events.first() else { return Ok(()) };
        let schema_name = self.schema.clone().unwrap_or_else(|| first.source.schema.clone());
        let table_name = first.source.table.clone();
        let columns = self.ensure_table(tx, &schema_name, &table_name, events).await?;
        let table = format!("{}.{}", quote_ident(&schema_name)?, quote_ident(&table_name)?);
        for change in cdc_core::collapse(events) {
            match change {
                TableChange::Truncate(event) => {
                    // By order, not by arrival: rows changed after the truncate
                    // (consumed earlier from another partition) stay, and the
                    // marker keeps older rows consumed later out.
                    let order = quote_literal(&event.order.to_hex());
                    let wipe = match self.delete_mode {
                        DeleteMode::Hard => format!("DELETE FROM {table} WHERE _cdc_order < {order}"),
                        DeleteMode::Soft => format!(
                            "UPDATE {table} SET _cdc_deleted = true, _cdc_deleted_at = now(), _cdc_op = 't', \
                             _cdc_synced_at = now() WHERE NOT _cdc_deleted AND _cdc_order < {order}"
                        ),
                    };
                    let sql = format!(
                        "{wipe};\nINSERT INTO {DELETED_KEYS} (table_name, row_key, order_key) \
                         VALUES ({name}, '', {order}) ON CONFLICT (table_name, row_key) DO UPDATE \
                         SET order_key = GREATEST({DELETED_KEYS}.order_key, EXCLUDED.order_key)",
                        name = quote_literal(&table),
                    );
                    tx.batch_execute(&sql).await.map_err(|e| sink_error(self.sink, &e))?;
                }
                TableChange::Rows(rows) => {
                    if rows.iter().any(|r| r.event.key.is_none()) {
                        return Err(self.error(format!(
                            "table {schema_name}.{table_name} has no primary key: Debezium sent no record key, \
                             so rows cannot be matched"
                        )));
                    }
                    self.apply_rows(tx, &table, &columns, &rows).await?;
                }
            }
        }
        Ok(())
    }

    /// Creates the table or adds missing columns; returns the data columns
    /// the staging table carries, key columns first, each with its column
    /// type in the table.
    async fn ensure_table(
        &mut self,
        tx: &Transaction<'_>,
        schema_name: &str,
        table_name: &str,
        events: &[&ChangeEvent],
    ) -> Result<Vec<(Field, String)>> {
        // Every column of every schema version in the batch; the last wins,
        // unless another version has it wider (versions read out of order).
        let Some(newest) = events.last().map(|e| &e.schema) else { return Ok(Vec::new()) };
        let schema =
            TableSchema::union(events.iter().rev().map(|e| &*e.schema)).map_err(|e| self.error(e.to_string()))?;
        let mut columns: Vec<Field> = schema.fields().to_vec();
        let key: Vec<&str> = newest.key_names().collect();
        columns.sort_by_key(|c| !key.contains(&c.name.as_str()));

        let id = (schema_name.to_owned(), table_name.to_owned());
        if !self.known.contains_key(&id) {
            let existing =
                existing_columns(tx, schema_name, table_name).await.map_err(|e| sink_error(self.sink, &e))?;
            if existing.is_empty() {
                self.create_table(tx, schema_name, table_name, &columns, &key).await?;
            } else {
                self.add_missing_metadata(tx, schema_name, table_name, &existing).await?;
                self.known.insert(id.clone(), KnownTable { columns: existing });
            }
        }
        let table = format!("{}.{}", quote_ident(schema_name)?, quote_ident(table_name)?);
        let known = self.known.get(&id).cloned().unwrap_or(KnownTable { columns: BTreeMap::new() });
        let mut changed = known.clone();
        for column in &columns {
            let wanted = pg_type(column);
            match known.columns.get(&column.name) {
                None => {
                    // `ADD COLUMN ... DEFAULT v` at the source fills the rows
                    // it holds without emitting events: so does this (the
                    // Connect schema carries the default).
                    let default = column
                        .default
                        .as_ref()
                        .and_then(|value| pg_text(&column.data_type, value, false))
                        .map(|text| format!(" DEFAULT {}::{wanted}", quote_literal(&text)))
                        .unwrap_or_default();
                    let sql = format!(
                        "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {wanted}{default}",
                        quote_ident(&column.name)?
                    );
                    tx.batch_execute(&sql).await.map_err(|e| sink_error(self.sink, &e))?;
                    changed.columns.insert(column.name.clone(), wanted);
                }
                Some(current) if *current == wanted => {}
                Some(current) if widens(current, &wanted) => {
                    let name = quote_ident(&column.name)?;
                    let sql = format!("ALTER TABLE {table} ALTER COLUMN {name} TYPE {wanted} USING {name}::{wanted}");
                    tx.batch_execute(&sql).await.map_err(|e| sink_error(self.sink, &e))?;
                    changed.columns.insert(column.name.clone(), wanted);
                }
                // An event of an older schema version (the table was widened
                // since), or a narrowing at the source: every value it can
                // carry fits the wider column, which stays.
                Some(current) if widens(&wanted, current) || same_family(current, &wanted) => {}
                Some(current) => {
                    return Err(self.error(format!(
                        "column {} of {schema_name}.{table_name} is {current} in PostgreSQL but events now carry \
                         {wanted}: not a widening PostgreSQL can do in place",
                        column.name
                    )));
                }
            }
        }
        // Columns the table has but no event of the batch carries (dropped at
        // the source) are written as null, typed as they are in the table.
        for name in changed.columns.keys() {
            if !name.starts_with("_cdc_") && !columns.iter().any(|c| &c.name == name) {
                columns.push(Field {
                    name: name.clone(),
                    data_type: DataType::Dynamic,
                    nullable: true,
                    default: None,
                    source: None,
                });
            }
        }
        let typed = columns
            .into_iter()
            .map(|c| {
                let ty = changed.columns.get(&c.name).cloned().unwrap_or_else(|| pg_type(&c));
                (c, ty)
            })
            .collect();
        self.known.insert(id, changed);
        Ok(typed)
    }

    /// Tables created by an older version lack newer metadata columns.
    async fn add_missing_metadata(
        &self,
        tx: &Transaction<'_>,
        schema_name: &str,
        table_name: &str,
        existing: &BTreeMap<String, String>,
    ) -> Result<()> {
        let table = format!("{}.{}", quote_ident(schema_name)?, quote_ident(table_name)?);
        for (name, ty) in metadata_columns(self.delete_mode) {
            if !existing.contains_key(name) {
                let sql = format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {ty}");
                tx.batch_execute(&sql).await.map_err(|e| sink_error(self.sink, &e))?;
            }
        }
        Ok(())
    }

    async fn create_table(
        &mut self,
        tx: &Transaction<'_>,
        schema_name: &str,
        table_name: &str,
        columns: &[Field],
        key: &[&str],
    ) -> Result<()> {
        let mut definitions = Vec::new();
        let mut known = BTreeMap::new();
        for column in columns {
            let ty = pg_type(column);
            let not_null = if key.contains(&column.name.as_str()) { " NOT NULL" } else { "" };
            definitions.push(format!("{} {ty}{not_null}", quote_ident(&column.name)?));
            known.insert(column.name.clone(), ty);
        }
        for (name, ty) in metadata_columns(self.delete_mode) {
            definitions.push(format!("{name} {ty}"));
        }
        if !key.is_empty() {
            let key: Vec<String> = key.iter().map(|k| quote_ident(k)).collect::<Result<_>>()?;
            definitions.push(format!("PRIMARY KEY ({})", key.join(", ")));
        }
        // Room on each page for HOT updates: a CDC mirror is mostly updates of
        // rows whose key does not change, and HOT skips the index insert.
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE TABLE IF NOT EXISTS {schema}.{table} ({}) WITH (fillfactor = 85)",
            definitions.join(", "),
            schema = quote_ident(schema_name)?,
            table = quote_ident(table_name)?,
        );
        tx.batch_execute(&sql).await.map_err(|e| sink_error(self.sink, &e))?;
        self.known.insert((schema_name.to_owned(), table_name.to_owned()), KnownTable { columns: known });
        Ok(())
    }

    async fn apply_rows(
        &mut self,
        tx: &Transaction<'_>,
        table: &str,
        columns: &[(Field, String)],
        rows: &[cdc_core::RowChange<'_>],
    ) -> Result<()> {
        self.staging_counter += 1;
        let staging = format!("_cdc_stage_{}", self.staging_counter);
        let Some(first) = rows.first() else { return Ok(()) };
        let key_count = first.event.schema.key_indices().len();
        let mut definitions = Vec::new();
        let mut types = Vec::new();
        for (column, _) in columns {
            let ty = staging_type(&column.data_type);
            definitions.push(format!("{} {}", quote_ident(&column.name)?, ty.name()));
            types.push(ty);
        }
        for (name, ty) in [
            ("_cdc_op", Type::TEXT),
            ("_cdc_order", Type::TEXT),
            ("_cdc_source_ts", Type::TIMESTAMPTZ),
            ("_cdc_lsn", Type::INT8),
            ("_cdc_tx_id", Type::INT8),
            ("_cdc_topic", Type::TEXT),
            ("_cdc_partition", Type::INT4),
            ("_cdc_offset", Type::INT8),
            ("_cdc_unavailable", Type::TEXT),
            ("_cdc_missing", Type::TEXT),
        ] {
            // The order key compares byte-wise, like the table's column.
            let collate = if name == "_cdc_order" { " COLLATE \"C\"" } else { "" };
            definitions.push(format!("{name} {}{collate}", ty.name()));
            types.push(ty);
        }
        let create = format!("CREATE TEMP TABLE {staging} ({}) ON COMMIT DROP", definitions.join(", "));
        tx.batch_execute(&create).await.map_err(|e| sink_error(self.sink, &e))?;

        let sink =
            tx.copy_in(&format!("COPY {staging} FROM STDIN BINARY")).await.map_err(|e| sink_error(self.sink, &e))?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        let null = Value::Null;
        let points: Vec<bool> = columns
            .iter()
            .map(|(c, _)| c.source.as_ref().is_some_and(|s| s.type_name.eq_ignore_ascii_case("POINT")))
            .collect();
        // Table columns some staged row's schema version lacks.
        let mut missing_anywhere: Vec<&str> = Vec::new();
        for row in rows {
            let event = row.event;
            // Deletes stage their before-image (the key, or the whole row with
            // REPLICA IDENTITY FULL).
            let image = match &row.after {
                Some(after) => Some(after.as_ref()),
                None => event.before.as_ref(),
            };
            let mut unavailable = Vec::new();
            let mut missing = Vec::new();
            let mut cells = Vec::with_capacity(types.len());
            for ((column, _), &point) in columns.iter().zip(&points) {
                if event.schema.index_of(&column.name).is_none() {
                    missing.push(column.name.as_str());
                    if !missing_anywhere.contains(&column.name.as_str()) {
                        missing_anywhere.push(&column.name);
                    }
                }
                let value = match (event.schema.index_of(&column.name), image) {
                    (Some(i), Some(image)) => image.get(i).unwrap_or(&null),
                    _ => &null,
                };
                if value.is_unavailable() {
                    unavailable.push(column.name.as_str());
                }
                cells.push(Cell { value, data_type: &column.data_type, geometry_as_point: point });
            }
            let order = event.order.to_hex();
            let unavailable = (!unavailable.is_empty()).then(|| array_literal(&unavailable));
            let missing = (!missing.is_empty()).then(|| array_literal(&missing));
            let op = event.op.code();
            let source_ts = event.source.ts_micros().map(Value::TimestampTz).unwrap_or(Value::Null);
            let mut params: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            let topic: &str = &event.position.topic;
            let meta: [&(dyn ToSql + Sync); 10] = [
                &op,
                &order,
                &Cell { value: &source_ts, data_type: &DataType::TimestampTz, geometry_as_point: false },
                &event.source.lsn,
                &event.source.tx_id,
                &topic,
                &event.position.partition,
                &event.position.offset,
                &unavailable,
                &missing,
            ];
            params.extend(meta);
            writer.as_mut().write(&params).await.map_err(|e| {
                let mut error = sink_error(self.sink, &e);
                if let Error::Sink { message, .. } = &mut error {
                    message.push_str(&format!(" (record {})", event.position));
                }
                error
            })?;
        }
        writer.finish().await.map_err(|e| sink_error(self.sink, &e))?;

        let mut sql = self.apply_sql(table, &staging, columns, key_count)?;
        // A column the event's schema version lacks takes the column's
        // default (null without one): an event from before `ADD COLUMN ...
        // DEFAULT v` (read late, from another partition) describes a row the
        // source gave `v` when the column was added.
        let key = columns.iter().take(key_count);
        let key_match = key
            .map(|(column, ty)| Ok(format!("t.{name} = s.{name}::{ty}", name = quote_ident(&column.name)?)))
            .collect::<Result<Vec<_>>>()?
            .join(" AND ");
        for name in missing_anywhere {
            sql.push_str(&format!(
                "\nUPDATE {table} AS t SET {column} = DEFAULT FROM {staging} s WHERE {key_match} \
                 AND s._cdc_missing::text[] @> ARRAY[{literal}] AND t._cdc_order = s._cdc_order;",
                column = quote_ident(name)?,
                literal = quote_literal(name),
            ));
        }
        tx.batch_execute(&sql).await.map_err(|e| sink_error(self.sink, &e))
    }

    /// The set-based statements that move a staged batch into the table.
    fn apply_sql(&self, table: &str, staging: &str, columns: &[(Field, String)], key_count: usize) -> Result<String> {
        let mut names = Vec::new();
        let mut casts = Vec::new();
        for (column, ty) in columns {
            let name = quote_ident(&column.name)?;
            casts.push(format!("s.{name}::{ty}"));
            names.push(name);
        }
        // Key columns come first (`ensure_table`).
        let key = || names.iter().zip(&casts).take(key_count);
        // Rows the UPDATE did not touch are new, or older than what the table
        // holds (the INSERT's ON CONFLICT skips those).
        let returning = key().map(|(name, _)| format!("t.{name}")).collect::<Vec<_>>().join(", ");
        let staged_key = key().map(|(_, cast)| cast.as_str()).collect::<Vec<_>>().join(", ");
        let key_match = key().map(|(name, cast)| format!("t.{name} = {cast}")).collect::<Vec<_>>().join(" AND ");
        let sets: Vec<String> = names
            .iter()
            .zip(&casts)
            .zip(columns)
            .skip(key_count)
            .map(|((name, cast), (column, _))| {
                format!(
                    "{name} = CASE WHEN s._cdc_unavailable::text[] @> ARRAY[{literal}] THEN t.{name} ELSE {cast} END",
                    literal = quote_literal(&column.name),
                )
            })
            .collect();
        let meta = "_cdc_op = s._cdc_op, _cdc_order = s._cdc_order, _cdc_source_ts = s._cdc_source_ts, \
                    _cdc_lsn = s._cdc_lsn, _cdc_tx_id = s._cdc_tx_id, _cdc_topic = s._cdc_topic, \
                    _cdc_partition = s._cdc_partition, _cdc_offset = s._cdc_offset, _cdc_synced_at = now()";
        let undelete =
            if self.delete_mode == DeleteMode::Soft { ", _cdc_deleted = false, _cdc_deleted_at = NULL" } else { "" };
        let mut sets_sql = sets.join(", ");
        if !sets_sql.is_empty() {
            sets_sql.push_str(", ");
        }
        let insert_columns = format!(
            "{}, _cdc_op, _cdc_order, _cdc_source_ts, _cdc_lsn, _cdc_tx_id, _cdc_topic, _cdc_partition, \
             _cdc_offset, _cdc_synced_at",
            names.join(", ")
        );
        let insert_values = format!(
            "{}, s._cdc_op, s._cdc_order, s._cdc_source_ts, s._cdc_lsn, s._cdc_tx_id, s._cdc_topic, \
             s._cdc_partition, s._cdc_offset, now()",
            casts.join(", ")
        );
        // A batch touches few rows of a large table: probe the primary key
        // per staged row rather than hash the whole table (the planner
        // otherwise picks a sequential scan of the target for a few
        // thousand staged rows). Local to this transaction.
        // Never let an older event overwrite a newer one (`supersedes`).
        // A key deleted by a newer event stays deleted: an older event of it
        // arriving later, from another partition, finds the tombstone
        // instead of an absent row. A truncate's marker (row key '') holds
        // rows older by order key out (a truncate's transaction cannot
        // overlap another writing the table, so order keys order it).
        let newer = supersedes_sql(&SqlVersion::of("s"), &SqlVersion::of("t"));
        let table_literal = quote_literal(table);
        let row_key = format!("ROW({staged_key})::text");
        let tombstone = SqlVersion { order: "d.order_key".into(), ..SqlVersion::of("d") };
        let not_buried = format!(
            "NOT EXISTS (SELECT 1 FROM {DELETED_KEYS} d WHERE d.table_name = {table_literal} \
             AND ((d.row_key = {row_key} AND NOT {newer_than_tombstone}) \
                  OR (d.row_key = '' AND d.order_key >= s._cdc_order)))",
            newer_than_tombstone = supersedes_sql(&SqlVersion::of("s"), &tombstone),
        );
        let keep_newer_tombstone = supersedes_sql(
            &SqlVersion { order: "EXCLUDED.order_key".into(), ..SqlVersion::of("EXCLUDED") },
            &SqlVersion { order: format!("{DELETED_KEYS}.order_key"), ..SqlVersion::of(DELETED_KEYS) },
        );
        let mut sql = format!(
            "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off;\n\
             WITH updated AS (UPDATE {table} AS t SET {sets_sql}{meta}{undelete} FROM {staging} s \
             WHERE {key_match} AND s._cdc_op <> 'd' AND {newer} AND {not_buried} \
             RETURNING {returning}) \
             INSERT INTO {table} ({insert_columns}) SELECT {insert_values} FROM {staging} s \
             WHERE s._cdc_op <> 'd' AND ({staged_key}) NOT IN (SELECT * FROM updated) AND {not_buried} \
             ON CONFLICT DO NOTHING;\n"
        );
        match self.delete_mode {
            DeleteMode::Hard => sql.push_str(&format!(
                "DELETE FROM {table} AS t USING {staging} s WHERE {key_match} AND s._cdc_op = 'd' \
                 AND {newer};\n\
                 INSERT INTO {DELETED_KEYS} (table_name, row_key, order_key, _cdc_topic, _cdc_partition, _cdc_offset) \
                 SELECT {table_literal}, {row_key}, s._cdc_order, s._cdc_topic, s._cdc_partition, s._cdc_offset \
                 FROM {staging} s WHERE s._cdc_op = 'd' \
                 ON CONFLICT (table_name, row_key) DO UPDATE \
                 SET order_key = EXCLUDED.order_key, _cdc_topic = EXCLUDED._cdc_topic, \
                     _cdc_partition = EXCLUDED._cdc_partition, _cdc_offset = EXCLUDED._cdc_offset \
                 WHERE {keep_newer_tombstone};"
            )),
            DeleteMode::Soft => sql.push_str(&format!(
                "UPDATE {table} AS t SET {meta}, _cdc_deleted = true, _cdc_deleted_at = s._cdc_source_ts \
                 FROM {staging} s WHERE {key_match} AND s._cdc_op = 'd' AND {newer};\n\
                 INSERT INTO {table} ({insert_columns}, _cdc_deleted, _cdc_deleted_at) \
                 SELECT {insert_values}, true, s._cdc_source_ts FROM {staging} s \
                 WHERE s._cdc_op = 'd' AND NOT EXISTS (SELECT 1 FROM {table} t WHERE {key_match}) ON CONFLICT DO NOTHING;"
            )),
        }
        Ok(sql)
    }
}

/// `character varying(50)` vs `character varying(100)` and the like: the
/// same type family with another modifier is left as it is.
fn same_family(current: &str, wanted: &str) -> bool {
    let family = |t: &str| t.split('(').next().unwrap_or(t).trim().to_owned();
    family(current) == family(wanted) && !matches!(family(current).as_str(), "numeric")
}

fn array_literal(items: &[&str]) -> String {
    let quoted: Vec<String> =
        items.iter().map(|i| format!("\"{}\"", i.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("{{{}}}", quoted.join(","))
}

async fn existing_columns(
    tx: &Transaction<'_>,
    schema: &str,
    table: &str,
) -> std::result::Result<BTreeMap<String, String>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&schema, &table],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect())
}

/// The offsets table (the last applied offset per consumer, topic and
/// partition, and the Kafka cluster it is an offset in) and the tombstones of deleted keys (per table and key, the
/// order key of the newest delete; `row_key = ''` marks a truncate).
pub(crate) const OFFSETS_DDL: &str = "CREATE SCHEMA IF NOT EXISTS cdc_meta; \
    CREATE TABLE IF NOT EXISTS cdc_meta.offsets (\
        consumer text NOT NULL, topic text NOT NULL, kafka_partition integer NOT NULL, \
        kafka_offset bigint NOT NULL, updated_at timestamp with time zone NOT NULL DEFAULT now(), \
        PRIMARY KEY (consumer, topic, kafka_partition)); \
    ALTER TABLE cdc_meta.offsets ADD COLUMN IF NOT EXISTS kafka_cluster text; \
    ALTER TABLE cdc_meta.offsets ADD COLUMN IF NOT EXISTS last_order text COLLATE \"C\"; \
    CREATE TABLE IF NOT EXISTS cdc_meta.deleted_keys (\
        table_name text NOT NULL, row_key text NOT NULL, order_key text COLLATE \"C\" NOT NULL, \
        PRIMARY KEY (table_name, row_key)); \
    ALTER TABLE cdc_meta.deleted_keys ADD COLUMN IF NOT EXISTS _cdc_topic text, \
        ADD COLUMN IF NOT EXISTS _cdc_partition integer, ADD COLUMN IF NOT EXISTS _cdc_offset bigint; \
    CREATE INDEX IF NOT EXISTS deleted_keys_by_topic ON cdc_meta.deleted_keys (_cdc_topic, order_key)";

/// Where deleted keys are remembered.
const DELETED_KEYS: &str = "cdc_meta.deleted_keys";

/// This consumer's offsets; the cluster is the one the latest write named.
const SELECT_OFFSETS: &str = "SELECT topic, kafka_partition, kafka_offset, kafka_cluster FROM cdc_meta.offsets \
     WHERE consumer = $1 ORDER BY updated_at";

fn offsets_from_rows(rows: &[tokio_postgres::Row]) -> Offsets {
    let mut offsets = Offsets::new();
    for row in rows {
        let topic: String = row.get(0);
        offsets.set(Arc::from(topic), row.get(1), row.get(2));
        if let Some(cluster) = row.get::<_, Option<String>>(3) {
            offsets.cluster = Some(cluster.into());
        }
    }
    offsets
}

pub(crate) async fn read_offsets(
    client: &Client,
    consumer: &str,
) -> std::result::Result<Offsets, tokio_postgres::Error> {
    client.batch_execute(OFFSETS_DDL).await?;
    Ok(offsets_from_rows(&client.query(SELECT_OFFSETS, &[&consumer]).await?))
}

/// The offset protocol of the PostgreSQL sinks, in one place. Inside the
/// batch's transaction it takes this consumer's lock and reads the stored
/// offsets, so a process that lost its partitions (a zombie after a
/// rebalance) skips whatever the new owner wrote since, whatever it cached;
/// at the end it writes offsets that never go backwards.
pub(crate) struct StoredOffsets {
    consumer: String,
    held: Offsets,
}

impl StoredOffsets {
    /// Locks this consumer's offsets until the transaction ends and reads them.
    pub async fn lock(tx: &Transaction<'_>, sink: &str, consumer: &str) -> Result<StoredOffsets> {
        let fail = |e: tokio_postgres::Error| sink_error(sink, &e);
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('cdc_meta.offsets:' || $1, 0))", &[&consumer])
            .await
            .map_err(fail)?;
        let held = offsets_from_rows(&tx.query(SELECT_OFFSETS, &[&consumer]).await.map_err(fail)?);
        Ok(StoredOffsets { consumer: consumer.to_owned(), held })
    }

    /// The events of a batch not stored yet, by source table.
    pub fn unapplied<'a>(&self, batch: &'a Batch) -> BTreeMap<(String, String), Vec<&'a ChangeEvent>> {
        let mut tables: BTreeMap<(String, String), Vec<&ChangeEvent>> = BTreeMap::new();
        for event in batch.events.iter().filter(|e| batch.must_apply(&self.held, e)) {
            tables.entry((event.source.schema.clone(), event.source.table.clone())).or_default().push(event);
        }
        tables
    }

    /// Stores the batch's offsets where they are beyond what is stored
    /// (never backwards), with the cluster they are offsets in and each
    /// partition's greatest order key so far; then prunes the tombstones
    /// every partition of their topic has passed.
    pub async fn write(&self, tx: &Transaction<'_>, sink: &str, batch: &Batch) -> Result<()> {
        let offsets = &batch.offsets;
        let mut last_orders: BTreeMap<(&str, i32), String> = BTreeMap::new();
        for event in &batch.events {
            let hex = event.order.to_hex();
            let slot = last_orders.entry((&event.position.topic, event.position.partition)).or_default();
            if hex > *slot {
                *slot = hex;
            }
        }
        let (mut topics, mut partitions, mut positions, mut orders) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (topic, partition, offset) in offsets.iter() {
            if self.held.get(topic, partition).is_some_and(|held| held >= offset) {
                continue;
            }
            topics.push(topic.to_owned());
            partitions.push(partition);
            positions.push(offset);
            orders.push(last_orders.get(&(topic, partition)).cloned());
        }
        tx.execute(
            "INSERT INTO cdc_meta.offsets (consumer, topic, kafka_partition, kafka_offset, last_order, kafka_cluster) \
             SELECT $1, t.*, $6 FROM unnest($2::text[], $3::integer[], $4::bigint[], $5::text[]) AS t \
             ON CONFLICT (consumer, topic, kafka_partition) DO UPDATE \
             SET kafka_offset = GREATEST(cdc_meta.offsets.kafka_offset, EXCLUDED.kafka_offset), \
                 last_order = GREATEST(cdc_meta.offsets.last_order, EXCLUDED.last_order), \
                 kafka_cluster = COALESCE(EXCLUDED.kafka_cluster, cdc_meta.offsets.kafka_cluster), updated_at = now()",
            &[&self.consumer, &topics, &partitions, &positions, &orders, &offsets.cluster.as_deref()],
        )
        .await
        .map_err(|e| sink_error(sink, &e))?;
        self.prune_tombstones(tx, sink, offsets).await
    }

    /// A tombstone keeps an older event of its key, read late from another
    /// partition, from bringing the row back. Once every partition of the
    /// key's topic has applied events with greater order keys, no such event
    /// is left to come: the tombstone goes. Only for topics whose partition
    /// count the source told, and all of whose partitions this consumer holds.
    /// Runs in every batch: `deleted_keys_by_topic` makes it a range scan.
    async fn prune_tombstones(&self, tx: &Transaction<'_>, sink: &str, offsets: &Offsets) -> Result<()> {
        for (topic, &count) in &offsets.partition_counts {
            if offsets.iter().all(|(t, _, _)| t != &**topic) {
                continue;
            }
            tx.execute(
                &format!(
                    "DELETE FROM {DELETED_KEYS} d WHERE d.row_key <> '' AND d._cdc_topic = $2 AND d.order_key < \
                     (SELECT min(o.last_order) FROM cdc_meta.offsets o WHERE o.consumer = $1 AND o.topic = $2 \
                      HAVING count(o.last_order) >= $3)"
                ),
                &[&self.consumer, &&**topic, &i64::from(count)],
            )
            .await
            .map_err(|e| sink_error(sink, &e))?;
        }
        Ok(())
    }
}

/// What the PostgreSQL sinks share around their transaction: the
/// connection, and whether the offsets table is known to exist.
pub(crate) struct PgBase {
    pub connection: Connection,
    ready: bool,
}

impl PgBase {
    pub fn new(config: PgConnectionConfig, sink: &'static str) -> PgBase {
        PgBase { connection: Connection::new(config, sink), ready: false }
    }

    /// Reads the offsets table (creating it if missing), with retries.
    pub async fn durable_offsets(&mut self) -> Result<Offsets> {
        let sink = self.connection.sink;
        let mut attempt = 0;
        let offsets = loop {
            attempt += 1;
            let consumer = self.connection.config().consumer.clone();
            let result = match self.connection.client().await {
                Ok(client) => read_offsets(client, &consumer).await.map_err(|e| sink_error(sink, &e)),
                Err(e) => Err(e),
            };
            match result {
                Ok(offsets) => break offsets,
                Err(error) => match self.connection.retry_after(attempt, &error) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return Err(error),
                },
            }
        };
        self.ready = true;
        Ok(offsets)
    }
}

/// A sink whose batch is one PostgreSQL transaction.
pub(crate) trait TransactionalSink {
    fn base(&mut self) -> &mut PgBase;

    /// Called after a failed attempt: the transaction rolled back.
    fn rolled_back(&mut self);

    /// Applies the events not stored yet ([`StoredOffsets`], read inside the
    /// transaction) and the batch's offsets in one transaction, committed
    /// before it returns `Ok`.
    async fn try_apply(&mut self, batch: &Batch) -> Result<()>;
}

/// Applies a batch, retrying retriable failures (connection lost, server
/// restart) on a fresh connection with backoff; each attempt is a whole new
/// transaction, so nothing is lost or doubled.
pub(crate) async fn apply_with_retries<S: TransactionalSink>(sink: &mut S, batch: &Batch) -> Result<()> {
    if !sink.base().ready {
        sink.base().durable_offsets().await?; // creates the offsets table
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        match sink.try_apply(batch).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                sink.rolled_back();
                match sink.base().connection.retry_after(attempt, &error) {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => return Err(error),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widenings_lose_nothing() {
        for (from, to) in [
            ("integer", "bigint"),
            ("smallint", "numeric"),
            ("integer", "numeric(12,2)"),
            ("real", "double precision"),
            ("numeric(12,2)", "numeric(14,4)"),
            ("numeric(12,2)", "numeric"),
            ("character varying(20)", "character varying(40)"),
            ("character varying(20)", "text"),
            ("integer", "text"),
            ("character varying(20)", "character varying"),
            ("bit varying(5)", "bit varying"),
        ] {
            assert!(widens(from, to), "{from} -> {to}");
        }
        for (from, to) in [
            ("bigint", "integer"),
            ("bigint", "numeric(12,2)"),
            ("numeric(12,2)", "numeric(12,4)"),
            ("numeric(14,4)", "numeric(12,2)"),
            ("numeric", "numeric(30,2)"),
            ("double precision", "real"),
            ("character varying(40)", "character varying(20)"),
            ("text", "character varying(100)"),
            ("text", "integer"),
            ("numeric(12,2)", "numeric(12,2)"),
        ] {
            assert!(!widens(from, to), "{from} -> {to}");
        }
    }

    #[test]
    fn urls_never_show_passwords() {
        let url = PgUrl::new("postgres://target_user:target_password@localhost:5435/target_db");
        assert_eq!(url.to_string(), "postgres://target_user:***@localhost:5435/target_db");
        assert!(!format!("{url:?}").contains("target_password"));
        let kv = PgUrl::new("host=localhost user=u password=secret");
        assert!(!kv.to_string().contains("secret"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident(r#"a"b; DROP"#).unwrap(), r#""a""b; DROP""#);
        assert!(quote_ident("a\0b").is_err());
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn array_text_quotes_every_element() {
        let data_type = DataType::Array(Box::new(DataType::String));
        let value = Value::List(vec![Value::String("a \"b\"".into()), Value::Null, Value::String("c\\".into())]);
        assert_eq!(pg_text(&data_type, &value, false).unwrap(), r#"{"a \"b\"",NULL,"c\\"}"#);
    }
}
