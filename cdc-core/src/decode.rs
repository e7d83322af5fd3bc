//! The push decoder: Kafka record bytes in, typed [`Record`]s out. No I/O.
//!
//! Values are decoded straight from the JSON tokens into [`Value`]s by their
//! column type (a serde `DeserializeSeed` per type), never through
//! `serde_json::Value`. A record's Connect schema is parsed once per distinct
//! schema text and cached, so records with schemas cost little more than
//! schemaless ones: the schema bytes are only scanned and hashed.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::{Error, Position, Result};
use crate::event::{
    ChangeEvent, Op, OrderKey, RawJson, Record, Row, Source, TransactionBlock, TransactionMarker, TransactionStatus,
};
use crate::schema::{ConnectSchema, DataType, Field, SchemaRef, TableSchema};
use crate::value::{DATE_INFINITY, DATE_NEG_INFINITY, Decimal, TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY, Value};

/// What Debezium writes for an unchanged TOASTed column it could not read
/// (`unavailable.value.placeholder`, its default).
pub const UNAVAILABLE_PLACEHOLDER: &str = "__debezium_unavailable_value";
/// The same placeholder, base64-encoded as bytea columns carry it.
const UNAVAILABLE_PLACEHOLDER_BASE64: &str = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ==";

/// Millisecond values the PostgreSQL JDBC driver uses for timestamp
/// `infinity` / `-infinity`; Debezium passes them on scaled to the wire unit.
const PG_INFINITY_MILLIS: i64 = 9_223_372_036_825_200_000;
const PG_NEG_INFINITY_MILLIS: i64 = -9_223_372_036_832_400_000;
/// What Debezium 3.6 sends for date `infinity` and `-infinity`: in a
/// snapshot, the JDBC driver's infinities as epoch days wrapped to 32 bits;
/// streamed, PostgreSQL's own (`i32::MAX`, `i32::MIN` days after 2000-01-01)
/// shifted to 1970 with overflow. No real date is that far back (PostgreSQL
/// dates start in 4713 BC), so they are read as the infinities.
const DEBEZIUM_DATE_INFINITY: [i64; 2] = [-622_191_234, -2_147_472_692];
const DEBEZIUM_DATE_NEG_INFINITY: [i64; 2] = [-625_821_272, -2_147_472_691];

/// One Kafka record as the decoder sees it.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

impl RawRecord<'_> {
    pub fn position(&self) -> Position {
        Position::new(self.topic, self.partition, self.offset)
    }
}

/// Decodes Debezium records produced by Kafka Connect's JsonConverter, with
/// (`schemas.enable=true`) or without schemas.
///
/// Without schemas, column types come from a schema given to
/// [`register_schema`](Decoder::register_schema) (the pipeline registers the
/// source catalog's, see [`crate::catalog`]) or learnt from an earlier
/// record of the same table that had one. A column of no known type is an
/// [`Error::Untyped`]: its value's meaning is unknown (`"ATo="` may be the
/// numeric 3.14, an integer a timestamp), so it is not guessed, unless
/// [`type_by_json_shape`](Decoder::type_by_json_shape) asks for the JSON shape
/// ([`DataType::Dynamic`]: decimals stay base64 text, timestamps integers).
/// A schemaless event's schema holds the columns its JSON has, as a record
/// with a schema would: a column the source added later is not in the
/// events written before it.
#[derive(Default)]
pub struct Decoder {
    /// Parses records and decodes the rows of those with schemas.
    worker: DecodeWorker,
    /// What decoding a record needs of the records of its table before it.
    state: TableStates,
    buffer: Vec<Record>,
}

/// The part of decoding that needs nothing from earlier records of a table:
/// parsing a record and decoding the rows of one that carries its schema.
/// A parallel decode gives each thread its own ([`Decoder::worker`]), and
/// the records of a partition to one worker in order; the [`Decoder`]
/// finishes each [`Prepared`] record in record order
/// ([`Decoder::finish`]), doing there all that depends on the records of a
/// table before it.
#[derive(Default)]
pub struct DecodeWorker {
    /// Keep each change event's JSON text ([`ChangeEvent::raw`]).
    keep_raw_json: bool,
    /// Type schemaless columns of unknown type by their JSON shape.
    json_shape: bool,
    /// Value schema text -> the row schema it describes: a parse cache.
    /// Hashed with aHash: the keys are kilobytes long, hashed per record.
    value_schemas: HashMap<Box<str>, CachedValueSchema, ahash::RandomState>,
    /// Key schema text -> key column names.
    key_schemas: HashMap<Box<str>, Arc<[String]>, ahash::RandomState>,
    /// Topic -> the value and key schema texts of its last record with
    /// schemas: the next record's are compared with them byte for byte
    /// instead of being scanned as JSON ([`split_known_wrapper`]).
    last_schemas: HashMap<String, [Option<Arc<str>>; 2]>,
}

/// What decoding depends on across the records of a table, updated in
/// record order by the one [`Decoder`] (never by a [`DecodeWorker`]).
#[derive(Default)]
struct TableStates {
    /// Value schema text -> the row schema it describes, as first seen: a
    /// text seen before is not checked against the table again, and events
    /// of one schema share one `SchemaRef`.
    value_schemas: HashMap<Box<str>, CachedValueSchema, ahash::RandomState>,
    /// `schema.table` -> the latest schema seen or registered.
    tables: HashMap<String, SchemaRef>,
    /// `schema.table` -> schemas of schemaless events holding only some
    /// columns of the table's schema: (columns present, table schema, event schema).
    projections: HashMap<String, Vec<(Vec<bool>, SchemaRef, SchemaRef)>>,
    /// `schema.table` -> the widest type of each column seen so far.
    widest: HashMap<String, WidestTypes>,
}

/// A record's schema text and its key's column names.
type CarriedSchema = (Arc<str>, Option<Arc<[String]>>);

/// A record as a [`DecodeWorker`] left it, for [`Decoder::finish`].
pub struct Prepared(Step);

enum Step {
    /// Decoded: nothing of it depends on earlier records (tombstones,
    /// transaction markers, heartbeats, unreadable envelopes).
    Done(Result<Record>),
    /// A change event, its rows decoded; what depends on the table's state
    /// (its schema's first sighting, the narrowing check) is left to do.
    Change {
        event: Result<ChangeEvent>,
        table: String,
        position: Position,
        /// The schema text and key columns it carried, if any.
        schema: Option<CarriedSchema>,
    },
    /// A schemaless record: its column types come from the table's state,
    /// so the decoder decodes it whole.
    Schemaless,
}
/// The widest type seen of each column of a table, with the order key of
/// the first event that carried it. A narrower type in an event ordered
/// before that is an older schema version read late (from another
/// partition): its values fit the wider column. Ordered after it, the source
/// narrowed the column: refused, naming table, column and both types.
#[derive(Default, Clone)]
struct WidestTypes {
    columns: HashMap<String, (DataType, OrderKey)>,
    /// The last schema checked, and from which order key on an event of it
    /// is a narrowing (with the error to give): events of one schema cost
    /// one pointer comparison.
    checked: Option<(SchemaRef, Option<(OrderKey, String)>)>,
}

impl WidestTypes {
    fn refuse_narrowing(
        &mut self,
        table: &str,
        schema: &SchemaRef,
        order: OrderKey,
    ) -> std::result::Result<(), String> {
        let narrowing = match &self.checked {
            Some((checked, narrowing)) if Arc::ptr_eq(checked, schema) => narrowing.clone(),
            _ => {
                let mut narrowing: Option<(OrderKey, String)> = None;
                for field in schema.fields() {
                    match self.columns.get_mut(&field.name) {
                        None => {
                            self.columns.insert(field.name.clone(), (field.data_type.clone(), order));
                        }
                        Some((widest, since)) if *widest != field.data_type => {
                            if widest.can_widen_to(&field.data_type) {
                                (*widest, *since) = (field.data_type.clone(), order);
                            } else if field.data_type.can_widen_to(widest)
                                && narrowing.as_ref().is_none_or(|(at, _)| *since < *at)
                            {
                                let message = format!(
                                    "column `{}` of `{table}` narrowed from {widest:?} to {:?} at the source (an \
                                     event ordered after the wider type): the sinks keep the wider column; alter it \
                                     at the source back, or the sink table, and replay the dead letters",
                                    field.name, field.data_type
                                );
                                narrowing = Some((*since, message));
                            }
                        }
                        Some(_) => {}
                    }
                }
                self.checked = Some((schema.clone(), narrowing.clone()));
                narrowing
            }
        };
        match narrowing {
            Some((since, message)) if order > since => Err(message),
            _ => Ok(()),
        }
    }
}

/// Which schema text of a record [`DecodeWorker::last_schemas`] holds.
const VALUE: usize = 0;
const KEY: usize = 1;

/// `{"schema":S,"payload":P}` as Kafka Connect's JsonConverter writes it
/// (compact), where S is `schema` byte for byte: (S, P) without scanning S
/// as JSON. `None` for anything else, which the caller parses in full. P is
/// not checked here: the caller parses it.
fn split_known_wrapper<'b, 's>(bytes: &'b [u8], schema: &'s str) -> Option<(&'s str, &'b str)> {
    const OPEN: &[u8] = b"{\"schema\":";
    const PAYLOAD: &[u8] = b",\"payload\":";
    let rest = bytes.strip_prefix(OPEN)?.strip_prefix(schema.as_bytes())?.strip_prefix(PAYLOAD)?;
    let payload = rest.trim_ascii_end().strip_suffix(b"}")?;
    Some((schema, std::str::from_utf8(payload).ok()?))
}

struct CachedValueSchema {
    columns: Arc<TableSchema>,
    /// Keyed variants of `columns`, by key columns (almost always one).
    keyed: Vec<(Arc<[String]>, SchemaRef)>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Keeps the JSON text of each change event's key, `before`, `after` and
    /// `source` in [`ChangeEvent::raw`], for sinks that store raw events
    /// (PostgreSQL `cdc_raw.cdc_events`, the Delta `cdc_events` table). Off
    /// by default: it copies those bytes.
    pub fn keep_raw_json(mut self, keep: bool) -> Decoder {
        self.worker.keep_raw_json = keep;
        self
    }

    /// Types schemaless columns of unknown type by their JSON shape instead
    /// of refusing the record ([`Error::Untyped`]): integers, floats,
    /// booleans, strings, lists. Decimals then stay base64 text and
    /// timestamps integers; for sources that are not a relational database.
    pub fn type_by_json_shape(mut self, on: bool) -> Decoder {
        self.worker.json_shape = on;
        self
    }

    /// Gives the column types of `schema.table` for schemaless records.
    pub fn register_schema(&mut self, table: &str, schema: TableSchema) {
        self.state.tables.insert(table.to_owned(), Arc::new(schema));
    }

    /// The latest schema known for `schema.table`.
    pub fn table_schema(&self, table: &str) -> Option<&SchemaRef> {
        self.state.tables.get(table)
    }

    /// A worker with this decoder's settings and nothing learnt, for another
    /// thread to prepare records with ([`DecodeWorker::prepare`]).
    pub fn worker(&self) -> DecodeWorker {
        DecodeWorker {
            keep_raw_json: self.worker.keep_raw_json,
            json_shape: self.worker.json_shape,
            ..DecodeWorker::default()
        }
    }

    /// Decodes one record and keeps it for [`flush`](Decoder::flush). On error
    /// nothing is kept: the caller dead-letters the record.
    pub fn push(&mut self, record: RawRecord<'_>) -> Result<()> {
        let decoded = self.decode(record)?;
        self.buffer.push(decoded);
        Ok(())
    }

    /// The records pushed since the last flush, in push order.
    pub fn flush(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.buffer)
    }

    /// Decodes one record.
    pub fn decode(&mut self, record: RawRecord<'_>) -> Result<Record> {
        let Prepared(step) = self.worker.prepare_with(record, Some(&mut self.state));
        self.state.finish(step)
    }

    /// Finishes a record a [`DecodeWorker`] prepared: records must come here
    /// in the order they were read (a partition's in offset order), as to
    /// [`decode`](Decoder::decode), whose result this equals.
    pub fn finish(&mut self, record: RawRecord<'_>, prepared: Prepared) -> Result<Record> {
        match prepared.0 {
            Step::Schemaless => self.decode(record),
            step => self.state.finish(step),
        }
    }
}

impl TableStates {
    /// What of a prepared record depends on the records of its table before it.
    fn finish(&mut self, step: Step) -> Result<Record> {
        let (event, table, position, schema) = match step {
            Step::Done(record) => return record,
            Step::Schemaless => {
                return Err(Error::Schema { message: "a schemaless record reached the decoder undecoded".into() });
            }
            Step::Change { event, table, position, schema } => (event, table, position, schema),
        };
        // A schema seen for the first time is checked against the table's
        // before the rows' own errors count, as the source changed first.
        let first_seen = match &schema {
            Some((text, key)) => Some(
                self.schema_from_text(text, key.as_ref(), &table)
                    .map_err(|e| Error::RecordSchema { position: position.clone(), source: Box::new(e) })?,
            ),
            None => None,
        };
        let mut event = event?;
        if let Some(known) = first_seen {
            event.schema = known;
        }
        let widest = match self.widest.get_mut(&table) {
            Some(widest) => widest,
            None => self.widest.entry(table.clone()).or_default(),
        };
        widest.refuse_narrowing(&table, &event.schema, event.order).map_err(|message| Error::Decode {
            position,
            field: None,
            message,
        })?;
        Ok(Record::Change(event))
    }

    /// The schema a record's schema text describes, shared by the events of
    /// that text; a text seen for the first time is checked against the
    /// table's schema and becomes it.
    fn schema_from_text(&mut self, text: &str, key: Option<&Arc<[String]>>, table: &str) -> Result<SchemaRef> {
        let no_key: Arc<[String]> = Arc::from(Vec::new());
        let key = key.unwrap_or(&no_key);
        if let Some(cached) = self.value_schemas.get(text)
            && let Some((_, schema)) = cached.keyed.iter().find(|(k, _)| k == key)
        {
            return Ok(schema.clone());
        }
        if !self.value_schemas.contains_key(text) {
            let columns = columns_of_schema_text(text)?;
            if let Some(previous) = self.tables.get(table) {
                check_compatible(table, previous, &columns)?;
            }
            self.value_schemas.insert(text.into(), CachedValueSchema { columns, keyed: Vec::new() });
        }
        let Some(cached) = self.value_schemas.get_mut(text) else {
            return Err(Error::Schema { message: format!("the schema of table {table} went missing from the cache") });
        };
        let schema = cached.with_key(key)?;
        self.tables.insert(table.to_owned(), schema.clone());
        Ok(schema)
    }

    /// The schema a schemaless record of `table` is decoded with; `Err`
    /// names a key column of no known type.
    fn schemaless_schema(
        &mut self,
        table: &str,
        key: Option<&Arc<[String]>>,
        json_shape: bool,
        fail: &impl Fn(Option<&str>, String) -> Error,
    ) -> Result<Result<SchemaRef, String>, Error> {
        let known = self.tables.get(table).cloned();
        let schema = match known {
            Some(schema) => schema,
            None => Arc::new(TableSchema::new(Vec::new(), &[])?),
        };
        let Some(key) = key else { return Ok(Ok(schema)) };
        if schema.key_names().eq(key.iter().map(String::as_str)) {
            return Ok(Ok(schema));
        }
        // Key columns unknown so far are added as shape-typed columns (when
        // asked for), so that the key resolves; their values come from the row image.
        let mut fields = schema.fields().to_vec();
        for name in key.iter() {
            if schema.index_of(name).is_none() {
                if !json_shape {
                    return Ok(Err(name.clone()));
                }
                fields.push(dynamic_field(name));
            }
        }
        let key_refs: Vec<&str> = key.iter().map(String::as_str).collect();
        let schema = Arc::new(TableSchema::new(fields, &key_refs).map_err(|e| fail(Some("key"), e.to_string()))?);
        self.tables.insert(table.to_owned(), schema.clone());
        Ok(Ok(schema))
    }

    /// The schema of `table`'s columns marked in `present`, cached.
    fn projection(&mut self, table: &str, schema: &SchemaRef, present: &[bool]) -> Result<SchemaRef> {
        let cached = self.projections.entry(table.to_owned()).or_default();
        if let Some((_, _, projected)) =
            cached.iter().find(|(mask, whole, _)| mask.as_slice() == present && Arc::ptr_eq(whole, schema))
        {
            return Ok(projected.clone());
        }
        let fields: Vec<Field> =
            schema.fields().iter().zip(present).filter(|(_, seen)| **seen).map(|(f, _)| f.clone()).collect();
        let key: Vec<&str> = schema.key_names().collect();
        let projected = Arc::new(TableSchema::new(fields, &key)?);
        // Schemas replaced since (widened, registered) are dropped with their projections.
        cached.retain(|(_, whole, _)| Arc::ptr_eq(whole, schema));
        cached.push((present.to_vec(), schema.clone(), projected.clone()));
        Ok(projected)
    }

    /// The schema with column `name` widened to the next wider type, if any.
    fn widen(&mut self, table: &str, schema: &SchemaRef, name: &str) -> Option<SchemaRef> {
        let index = schema.index_of(name)?;
        let mut fields = schema.fields().to_vec();
        let field = fields.get_mut(index)?;
        field.data_type = match field.data_type {
            DataType::Int8 | DataType::Int16 | DataType::Int32 => DataType::Int64,
            DataType::Float32 => DataType::Float64,
            _ => return None,
        };
        let key: Vec<&str> = schema.key_names().collect();
        let widened = Arc::new(TableSchema::new(fields, &key).ok()?);
        self.tables.insert(table.to_owned(), widened.clone());
        Some(widened)
    }

    fn extend_schema(&mut self, table: &str, schema: &SchemaRef, extra: &[String]) -> SchemaRef {
        let mut fields = schema.fields().to_vec();
        fields.extend(extra.iter().filter(|n| schema.index_of(n).is_none()).map(|n| dynamic_field(n)));
        let key: Vec<&str> = schema.key_names().collect();
        let Ok(extended) = TableSchema::new(fields, &key).map(Arc::new) else { return schema.clone() };
        self.tables.insert(table.to_owned(), extended.clone());
        extended
    }
}

/// The row columns an envelope schema text describes (without key).
fn columns_of_schema_text(text: &str) -> Result<Arc<TableSchema>> {
    let parsed: ConnectSchema =
        serde_json::from_str(text).map_err(|e| Error::Schema { message: format!("value schema: {e}") })?;
    let row = ["after", "before"]
        .iter()
        .find_map(|name| parsed.child(name))
        .ok_or_else(|| Error::Schema { message: "envelope schema has no `before`/`after` struct".into() })?;
    Ok(Arc::new(TableSchema::new(row.columns()?, &[])?))
}

impl CachedValueSchema {
    /// The columns with `key` as key columns, made once per key.
    fn with_key(&mut self, key: &Arc<[String]>) -> Result<SchemaRef> {
        if let Some((_, schema)) = self.keyed.iter().find(|(k, _)| k == key) {
            return Ok(schema.clone());
        }
        let key_refs: Vec<&str> = key.iter().map(String::as_str).collect();
        let schema = Arc::new(self.columns.with_key(&key_refs)?);
        self.keyed.push((key.clone(), schema.clone()));
        Ok(schema)
    }
}

impl DecodeWorker {
    /// Prepares one record for [`Decoder::finish`]: parses it, and decodes
    /// the rows of one that carries its schema.
    pub fn prepare(&mut self, record: RawRecord<'_>) -> Prepared {
        self.prepare_with(record, None)
    }

    /// Prepares one record; with the decoder's table `state`, a schemaless
    /// record is decoded too, else left to the decoder.
    fn prepare_with(&mut self, record: RawRecord<'_>, state: Option<&mut TableStates>) -> Prepared {
        let position = record.position();
        let fail = |field: Option<&str>, message: String| Error::Decode {
            position: position.clone(),
            field: field.map(str::to_owned),
            message,
        };
        let done = |record: Result<Record>| Prepared(Step::Done(record));
        let Some(bytes) = record.value else {
            return done(Ok(Record::Tombstone { position }));
        };
        // Without the table's state, a record that does not start as a
        // schema wrapper (schemaless, or written unusually) is left whole to
        // the decoder: scanning it here would be work done twice.
        if state.is_none() && !bytes.starts_with(b"{\"schema\":") {
            return Prepared(Step::Schemaless);
        }
        let last_value_schema = self.last_schema(record.topic, VALUE);
        if let Some((schema, payload)) = last_value_schema.as_deref().and_then(|s| split_known_wrapper(bytes, s))
            && let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(payload)
            && !envelope.is_wrapper()
        {
            let schema = last_value_schema.clone().unwrap_or_else(|| Arc::from(schema));
            return self.decode_envelope(record, envelope, Some(schema), "payload.", state);
        }
        let top: Envelope<'_> = match serde_json::from_slice(bytes) {
            Ok(top) => top,
            Err(e) => return done(Err(fail(None, format!("not JSON: {e}")))),
        };
        let (envelope, schema_text, prefix) = match (top.schema, top.payload) {
            (Some(schema), Some(payload)) if top.is_wrapper() => {
                if payload.get() == "null" {
                    return done(Ok(Record::Tombstone { position }));
                }
                let envelope: Envelope<'_> = match serde_json::from_str(payload.get()) {
                    Ok(envelope) => envelope,
                    Err(e) => return done(Err(fail(Some("payload"), format!("not a Debezium envelope: {e}")))),
                };
                (envelope, (schema.get() != "null").then(|| schema.get()), "payload.")
            }
            (Some(_), None) if top.is_wrapper() => {
                return done(Err(fail(Some("payload"), "record has a `schema` but no `payload`".into())));
            }
            _ => (top, None, ""),
        };
        if schema_text.is_none() && state.is_none() {
            return Prepared(Step::Schemaless);
        }
        // Kept as the topic's last schema, and shared by the prepared record.
        let schema_text = schema_text.map(|text| {
            self.remember_schema(record.topic, VALUE, text);
            self.last_schema(record.topic, VALUE).filter(|last| **last == *text).unwrap_or_else(|| Arc::from(text))
        });
        self.decode_envelope(record, envelope, schema_text, prefix, state)
    }

    /// The topic's last schema text of `which` ([`VALUE`] or [`KEY`]).
    fn last_schema(&self, topic: &str, which: usize) -> Option<Arc<str>> {
        self.last_schemas.get(topic).and_then(|texts| texts.get(which).cloned().flatten())
    }

    fn remember_schema(&mut self, topic: &str, which: usize, text: &str) {
        if self.last_schemas.get(topic).and_then(|t| t.get(which)?.as_deref()) == Some(text) {
            return;
        }
        let texts = match self.last_schemas.get_mut(topic) {
            Some(texts) => texts,
            None => self.last_schemas.entry(topic.to_owned()).or_default(),
        };
        if let Some(slot) = texts.get_mut(which) {
            *slot = Some(Arc::from(text));
        }
    }

    /// Decodes a Debezium envelope (or transaction marker, heartbeat) read
    /// from `record`'s value, with its schema text if it had one. A
    /// schemaless change needs the table's `state`: without it, it is left
    /// to the decoder ([`Step::Schemaless`]).
    fn decode_envelope(
        &mut self,
        record: RawRecord<'_>,
        envelope: Envelope<'_>,
        schema_text: Option<Arc<str>>,
        prefix: &str,
        state: Option<&mut TableStates>,
    ) -> Prepared {
        let position = record.position();
        let fail = |field: Option<&str>, message: String| Error::Decode {
            position: position.clone(),
            field: field.map(str::to_owned),
            message,
        };
        let done = |record: Result<Record>| Prepared(Step::Done(record));

        if envelope.status.is_some() {
            return done(envelope.transaction_marker(position, prefix).map(Record::Transaction));
        }
        let Some(op_code) = envelope.op.as_deref() else {
            if envelope.is_heartbeat(record.topic) {
                return done(Ok(Record::Heartbeat { position, ts_ms: envelope.ts_ms }));
            }
            return done(Err(fail(Some(&format!("{prefix}op")), "missing: not a Debezium change event".into())));
        };
        let Some(op) = Op::parse(op_code) else {
            return done(Err(fail(Some(&format!("{prefix}op")), format!("unknown operation `{op_code}`"))));
        };
        let source: Source = match envelope.source.map(|raw| serde_json::from_str(raw.get())) {
            Some(Ok(source)) => source,
            Some(Err(e)) => return done(Err(fail(Some(&format!("{prefix}source")), e.to_string()))),
            None => return done(Err(fail(Some(&format!("{prefix}source")), "missing".into()))),
        };
        let transaction: Option<TransactionBlock> =
            match envelope.transaction.map(|raw| serde_json::from_str(raw.get())) {
                Some(Ok(transaction)) => transaction,
                Some(Err(e)) => return done(Err(fail(Some(&format!("{prefix}transaction")), e.to_string()))),
                None => None,
            };
        let table = format!("{}.{}", source.schema, source.table);

        let (key_names, key_json) = match record.key {
            Some(key) if op != Op::Truncate => match self.key_names(record.topic, key) {
                Ok((names, json)) => (Some(names), Some(json)),
                Err(message) => return done(Err(fail(Some("key"), message))),
            },
            _ => (None, None),
        };
        let schema_source = match (schema_text, state) {
            (Some(text), _) => Ok(text),
            (None, Some(state)) => Err(state),
            (None, None) => return Prepared(Step::Schemaless),
        };
        let carried = schema_source.as_ref().ok().map(|text| (text.clone(), key_names.clone()));
        let event = self.decode_change(
            (record, op, source, transaction),
            (&envelope, prefix, &table, key_json),
            key_names.as_ref(),
            schema_source,
        );
        Prepared(Step::Change { event, table, position, schema: carried })
    }

    /// The change event of an envelope: its rows decoded against the schema
    /// its record carried (`Ok` text), or a schemaless one's against the
    /// table's `state` (`Err`).
    fn decode_change(
        &mut self,
        (record, op, source, transaction): (RawRecord<'_>, Op, Source, Option<TransactionBlock>),
        (envelope, prefix, table, key_json): (&Envelope<'_>, &str, &str, Option<&str>),
        key_names: Option<&Arc<[String]>>,
        schema_source: std::result::Result<Arc<str>, &mut TableStates>,
    ) -> Result<ChangeEvent> {
        let position = record.position();
        let fail = |field: Option<&str>, message: String| Error::Decode {
            position: position.clone(),
            field: field.map(str::to_owned),
            message,
        };
        let (mut schema, mut state) = match schema_source {
            Ok(text) => (
                self.schema_for_text(&text, key_names)
                    .map_err(|e| Error::RecordSchema { position: position.clone(), source: Box::new(e) })?,
                None,
            ),
            Err(state) => {
                let schema = state.schemaless_schema(table, key_names, self.json_shape, &fail)?.map_err(|column| {
                    Error::Untyped { position: position.clone(), field: "key".into(), table: table.to_owned(), column }
                })?;
                (schema, Some(state))
            }
        };

        let mut before = None;
        let mut after = None;
        let schemaless = state.is_some().then_some(Schemaless { json_shape: self.json_shape });
        let mut present = Vec::new();
        for (name, raw, image) in [("before", envelope.before, &mut before), ("after", envelope.after, &mut after)] {
            let Some(raw) = raw else { continue };
            let decoded = loop {
                match decode_row(raw.get(), &schema, schemaless) {
                    Ok(decoded) => break decoded,
                    // A schemaless record cannot announce that a column was
                    // widened (int -> bigint): widen the known type and retry.
                    Err(RowError::Value { field: Some(field), .. })
                        if let Some(state) = state.as_deref_mut()
                            && let Some(wider) = state.widen(table, &schema, &field) =>
                    {
                        schema = wider;
                    }
                    Err(RowError::Untyped(column)) => {
                        let field = format!("{prefix}{name}.{column}");
                        return Err(Error::Untyped { position, field, table: table.to_owned(), column });
                    }
                    Err(RowError::Value { field, message }) => {
                        let path = field.map(|f| format!(".{f}")).unwrap_or_default();
                        return Err(fail(Some(&format!("{prefix}{name}{path}")), message));
                    }
                }
            };
            if !decoded.extra.is_empty()
                && let Some(state) = state.as_deref_mut()
            {
                schema = state.extend_schema(table, &schema, &decoded.extra);
            }
            let seen = decoded.present.iter().copied().chain(decoded.extra.iter().map(|_| true));
            for (i, seen) in seen.enumerate() {
                if present.len() <= i {
                    present.resize(i + 1, false);
                }
                if let Some(slot) = present.get_mut(i) {
                    *slot |= seen;
                }
            }
            *image = Some(decoded.values);
        }
        // Rows decoded before the schema grew lack the new columns.
        for row in [&mut before, &mut after].into_iter().flatten() {
            row.resize(schema.fields().len(), Value::Null);
        }
        if let Some(state) = state {
            present.resize(schema.fields().len(), false);
            for &i in schema.key_indices() {
                if let Some(slot) = present.get_mut(i) {
                    *slot = true;
                }
            }
            if present.iter().any(|seen| !seen) {
                let projected = state.projection(table, &schema, &present).map_err(|e| fail(None, e.to_string()))?;
                for row in [&mut before, &mut after].into_iter().flatten() {
                    let mut seen = present.iter();
                    row.retain(|_| seen.next().copied().unwrap_or(false));
                }
                schema = projected;
            }
        }
        if op == Op::Delete
            && let Some(image) = before.as_mut()
        {
            blank_key_only_filler(&schema, image);
        }
        let key = if op == Op::Truncate {
            None
        } else {
            after
                .as_ref()
                .or(before.as_ref())
                .map(|row| schema.key_indices().iter().map(|&i| row.get(i).cloned().unwrap_or(Value::Null)).collect())
        };
        let raw = self.keep_raw_json.then(|| {
            Arc::new(RawJson {
                key: key_json.map(Into::into),
                before: envelope.before.map(|r| r.get().into()),
                after: envelope.after.map(|r| r.get().into()),
                source: envelope.source.map(|r| r.get()).unwrap_or("null").into(),
            })
        });
        let order =
            order_key(&source, record.offset).map_err(|m| fail(Some(&format!("{prefix}source.sequence")), m))?;
        Ok(ChangeEvent {
            position,
            op,
            schema,
            before,
            after,
            key,
            source,
            ts_ms: envelope.ts_ms,
            transaction,
            order,
            raw,
        })
    }

    /// The key's column names and the JSON text of its payload.
    fn key_names<'k>(&mut self, topic: &str, key: &'k [u8]) -> std::result::Result<(Arc<[String]>, &'k str), String> {
        if let Some(last) = self.last_schema(topic, KEY)
            && let Some((schema, payload)) = split_known_wrapper(key, &last)
            && serde_json::from_str::<IgnoredAny>(payload).is_ok()
            && let Some(names) = self.key_schemas.get(schema)
        {
            return Ok((names.clone(), payload));
        }
        let text = std::str::from_utf8(key).map_err(|e| format!("not UTF-8: {e}"))?;
        let names = serde_json::from_str::<KeyNames>(text).map_err(|e| format!("not a JSON object: {e}"))?.0;
        let is_wrapper =
            names.len() == 2 && names.iter().any(|n| n == "schema") && names.iter().any(|n| n == "payload");
        if !is_wrapper {
            return Ok((names.into(), text));
        }
        #[derive(Deserialize)]
        struct Wrapper<'a> {
            #[serde(borrow)]
            schema: &'a RawValue,
            #[serde(borrow)]
            payload: &'a RawValue,
        }
        let wrapper: Wrapper<'_> = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let payload = wrapper.payload.get();
        self.remember_schema(topic, KEY, wrapper.schema.get());
        if let Some(names) = self.key_schemas.get(wrapper.schema.get()) {
            return Ok((names.clone(), payload));
        }
        let parsed: ConnectSchema =
            serde_json::from_str(wrapper.schema.get()).map_err(|e| format!("key schema: {e}"))?;
        let names: Arc<[String]> = parsed.fields.iter().filter_map(|f| f.field.clone()).collect();
        self.key_schemas.insert(wrapper.schema.get().into(), names.clone());
        Ok((names, payload))
    }

    /// The schema a record's schema text describes, parsed once per text.
    /// Checking it against the table is the decoder's
    /// ([`TableStates::schema_from_text`]).
    fn schema_for_text(&mut self, text: &str, key: Option<&Arc<[String]>>) -> Result<SchemaRef> {
        let no_key: Arc<[String]> = Arc::from(Vec::new());
        let key = key.unwrap_or(&no_key);
        if let Some(cached) = self.value_schemas.get_mut(text) {
            return cached.with_key(key);
        }
        let mut cached = CachedValueSchema { columns: columns_of_schema_text(text)?, keyed: Vec::new() };
        let schema = cached.with_key(key)?;
        self.value_schemas.insert(text.into(), cached);
        Ok(schema)
    }
}

fn dynamic_field(name: &str) -> Field {
    Field { name: name.to_owned(), data_type: DataType::Dynamic, nullable: true, default: None, source: None }
}

/// A column whose type changed to one its readers cannot widen to is an error:
/// the record goes to the dead-letter store rather than corrupting the table.
/// A narrower type is not here: it is an older schema version arriving after
/// a newer one (from another partition), whose values the wider column
/// holds, unless the event is ordered after the wider type (see
/// `WidestTypes`: then the source narrowed the column).
fn check_compatible(table: &str, old: &TableSchema, new: &TableSchema) -> Result<()> {
    for field in new.fields() {
        if let Some(previous) = old.field(&field.name)
            && !previous.data_type.can_widen_to(&field.data_type)
            && !field.data_type.can_widen_to(&previous.data_type)
        {
            return Err(Error::Schema {
                message: format!(
                    "column `{}` of `{table}` changed type in place from {:?} to {:?}",
                    field.name, previous.data_type, field.data_type
                ),
            });
        }
    }
    Ok(())
}

impl DataType {
    /// Whether values of `self` can be stored unchanged in a column of `to`.
    pub fn can_widen_to(&self, to: &DataType) -> bool {
        use DataType::*;
        let int_rank = |t: &DataType| match t {
            Int8 => Some(1),
            Int16 => Some(2),
            Int32 => Some(3),
            Int64 => Some(4),
            _ => None,
        };
        match (self, to) {
            (a, b) if a == b => true,
            (Dynamic, _) | (_, Dynamic) => true,
            (a, b) if int_rank(a).is_some() && int_rank(b).is_some() => int_rank(a) <= int_rank(b),
            (Int8 | Int16 | Int32, Float64) | (Float32, Float64) => true,
            // No fewer digits before the point, and none fewer after it.
            (Decimal { precision: p1, scale: s1 }, Decimal { precision: p2, scale: s2 }) => {
                let integer_digits = |p: &Option<u32>, s: &i32| p.map(|p| i64::from(p) - i64::from(*s));
                s2 >= s1
                    && match (integer_digits(p1, s1), integer_digits(p2, s2)) {
                        (_, None) => true,
                        (Some(before), Some(after)) => after >= before,
                        (None, Some(_)) => false,
                    }
            }
            (Decimal { .. }, VariableDecimal) => true,
            (Enum { .. }, Enum { .. }) | (EnumSet { .. }, EnumSet { .. }) => true,
            (Bits { .. }, Bits { .. }) => true,
            (String | Enum { .. } | Uuid | Xml | Json, String) => true,
            (Time(_), Time(_)) | (Timestamp(_), Timestamp(_)) => true,
            (Array(a), Array(b)) => a.can_widen_to(b),
            _ => false,
        }
    }
}

/// With `REPLICA IDENTITY DEFAULT`, a delete's before-image carries the key
/// and, for every other column, null or a filler (empty string, 0, epoch, or
/// the schema default JsonConverter substitutes for null). Such values are
/// not the row's: mark them unavailable. A full before-image has at least one
/// real value and is kept.
fn blank_key_only_filler(schema: &TableSchema, image: &mut [Value]) {
    let key = schema.key_indices();
    let is_filler = |i: usize, value: &Value| {
        let default = schema.fields().get(i).and_then(|field| field.default.as_ref());
        value.is_null() || default == Some(value) || is_zero_value(value)
    };
    let all_filler = image.iter().enumerate().all(|(i, v)| key.contains(&i) || is_filler(i, v));
    let any_non_key = (0..image.len()).any(|i| !key.contains(&i));
    if all_filler && any_non_key && !key.is_empty() {
        for (i, value) in image.iter_mut().enumerate() {
            if !key.contains(&i) {
                *value = Value::Unavailable;
            }
        }
    }
}

fn is_zero_value(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::Int(0) | Value::Date(0) | Value::Time(0) | Value::Timestamp(0) | Value::TimestampTz(0) => true,
        Value::Duration(0) => true,
        Value::Float(f) => *f == 0.0,
        Value::Decimal(d) => d.unscaled == 0,
        Value::String(s) => s.is_empty(),
        Value::Bytes(b) => b.is_empty(),
        Value::List(l) => l.is_empty(),
        _ => false,
    }
}

fn order_key(source: &Source, offset: i64) -> std::result::Result<OrderKey, String> {
    let lsn = source.lsn.map(|l| l as u64).unwrap_or(0);
    let Some(sequence) = source.sequence.as_deref() else {
        return Ok(OrderKey { commit_lsn: lsn, lsn, offset });
    };
    let parts: [Option<Cow<'_, str>>; 2] =
        serde_json::from_str(sequence).map_err(|e| format!("expected [\"commit_lsn\",\"lsn\"]: {e}"))?;
    let parse = |p: &Option<Cow<'_, str>>| -> std::result::Result<Option<u64>, String> {
        p.as_deref().map(|s| s.parse::<u64>().map_err(|e| format!("`{s}`: {e}"))).transpose()
    };
    let lsn = parse(&parts[1])?.unwrap_or(lsn);
    // See `OrderKey`: the previous commit and this change's LSN both bound
    // this transaction's commit from below, and a snapshot read (no previous
    // commit) orders at the snapshot's LSN.
    let commit_lsn = parse(&parts[0])?.unwrap_or(0).max(lsn);
    Ok(OrderKey { commit_lsn, lsn, offset })
}

/// Both levels of a JsonConverter record: `{schema, payload}` and the
/// Debezium envelope (change event, transaction marker or heartbeat).
#[derive(Deserialize, Default)]
struct Envelope<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    schema: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    before: Option<&'a RawValue>,
    #[serde(borrow)]
    after: Option<&'a RawValue>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    ts_ms: Option<i64>,
    #[serde(borrow)]
    transaction: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    event_count: Option<i64>,
    #[serde(borrow)]
    data_collections: Option<&'a RawValue>,
}

/// Keeps `"schema": null` distinguishable from an absent key (a raw `null`).
fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

impl<'a> Envelope<'a> {
    /// `{"schema": ..., "payload": ...}` and nothing else.
    fn is_wrapper(&self) -> bool {
        self.schema.is_some()
            && self.before.is_none()
            && self.after.is_none()
            && self.op.is_none()
            && self.source.is_none()
            && self.status.is_none()
    }

    fn is_heartbeat(&self, topic: &str) -> bool {
        topic.contains("heartbeat") || (self.ts_ms.is_some() && self.before.is_none() && self.after.is_none())
    }

    fn transaction_marker(self, position: Position, prefix: &str) -> Result<TransactionMarker> {
        let fail = |field: &str, message: String| Error::Decode {
            position: position.clone(),
            field: Some(format!("{prefix}{field}")),
            message,
        };
        let status = match self.status.as_deref().unwrap_or_default() {
            "BEGIN" => TransactionStatus::Begin,
            "END" => TransactionStatus::End,
            other => return Err(fail("status", format!("unknown transaction status `{other}`"))),
        };
        let id = self.id.ok_or_else(|| fail("id", "missing".into()))?.into_owned();
        #[derive(Deserialize)]
        struct Collection {
            data_collection: String,
            event_count: i64,
        }
        let data_collections = match self.data_collections {
            Some(raw) => serde_json::from_str::<Option<Vec<Collection>>>(raw.get())
                .map_err(|e| fail("data_collections", e.to_string()))?
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.data_collection, c.event_count))
                .collect(),
            None => Vec::new(),
        };
        Ok(TransactionMarker {
            position,
            status,
            id,
            event_count: self.event_count,
            data_collections,
            ts_ms: self.ts_ms,
        })
    }
}

/// Field names of a schemaless key object, in order.
struct KeyNames(Vec<String>);

impl<'de> Deserialize<'de> for KeyNames {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyNames;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<KeyNames, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                    map.next_value::<IgnoredAny>()?;
                    names.push(name.into_owned());
                }
                Ok(KeyNames(names))
            }
        }
        d.deserialize_map(V)
    }
}

/// How a schemaless record's columns the schema lacks are treated.
#[derive(Clone, Copy)]
struct Schemaless {
    /// Typed by their JSON shape (and returned by name so the caller can
    /// grow the schema); otherwise refused as untyped.
    json_shape: bool,
}

/// Why a row image could not be decoded.
enum RowError {
    /// A schemaless record's column of no known type.
    Untyped(String),
    /// A value that does not fit its column (named when one failed).
    Value { field: Option<String>, message: String },
}

/// A row's values, aligned with the schema, then values of the columns the
/// schema lacks (schemaless JSON-shape typing only), named in `extra`.
struct DecodedRow {
    values: Vec<Value>,
    extra: Vec<String>,
    /// Which of the schema's columns the JSON had.
    present: Vec<bool>,
}

/// Decodes a row image into values aligned with `schema`. Columns the schema
/// lacks are an error with a Connect schema; schemaless, see [`Schemaless`].
fn decode_row(json: &str, schema: &TableSchema, schemaless: Option<Schemaless>) -> Result<DecodedRow, RowError> {
    let failed_field = RefCell::new(None);
    let untyped = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(json);
    let seed = RowSeed { schema, schemaless, failed_field: &failed_field, untyped: &untyped };
    let result = seed.deserialize(&mut de).and_then(|row| de.end().map(|()| row));
    result.map_err(|e| match untyped.take() {
        Some(column) => RowError::Untyped(column),
        None => RowError::Value { field: failed_field.take(), message: e.to_string() },
    })
}

struct RowSeed<'s> {
    schema: &'s TableSchema,
    schemaless: Option<Schemaless>,
    failed_field: &'s RefCell<Option<String>>,
    untyped: &'s RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = DecodedRow;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = DecodedRow;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let fields = self.schema.fields();
        let mut row = vec![Value::Null; fields.len()];
        let mut extra_names = Vec::new();
        let mut extra_values = Vec::new();
        let mut next = 0;
        let mut present = vec![false; fields.len()];
        while let Some(key) = map.next_key_seed(FieldSeed { schema: self.schema, hint: next })? {
            let (index, data_type, name) = match key {
                FieldKey::Known(i) => match fields.get(i) {
                    Some(field) => (Some(i), &field.data_type, None),
                    None => return Err(de::Error::custom("column index beyond the record's schema")),
                },
                FieldKey::Unknown(name) if self.schemaless.is_some_and(|s| s.json_shape) => {
                    (None, &DataType::Dynamic, Some(name))
                }
                FieldKey::Unknown(name) if self.schemaless.is_some() => {
                    *self.untyped.borrow_mut() = Some(name);
                    return Err(de::Error::custom("column of no known type"));
                }
                FieldKey::Unknown(name) => {
                    *self.failed_field.borrow_mut() = Some(name);
                    return Err(de::Error::custom("column is not in the record's schema"));
                }
            };
            let value = map.next_value_seed(ValueSeed(data_type)).inspect_err(|_| {
                *self.failed_field.borrow_mut() =
                    name.clone().or_else(|| Some(fields.get(index.unwrap_or_default())?.name.clone()));
            })?;
            match index {
                Some(i) => {
                    let value = match fields.get(i) {
                        Some(field) if matches!(value, Value::String(_)) => numeric_text(field, value),
                        _ => value,
                    };
                    if let (Some(slot), Some(seen)) = (row.get_mut(i), present.get_mut(i)) {
                        *slot = value;
                        *seen = true;
                    }
                    next = i + 1;
                }
                None => {
                    extra_names.extend(name);
                    extra_values.push(value);
                }
            }
        }
        // Kafka Connect's own converter rejects a record whose payload lacks
        // a field its schema declares required; so do we, rather than apply
        // NULL where the source cannot hold one.
        if self.schemaless.is_none()
            && let Some((field, _)) = fields.iter().zip(&present).find(|(f, seen)| !f.nullable && !**seen)
        {
            *self.failed_field.borrow_mut() = Some(field.name.clone());
            return Err(de::Error::custom("required column (optional: false in the schema) is missing"));
        }
        row.extend(extra_values);
        Ok(DecodedRow { values: row, extra: extra_names, present })
    }
}

/// `decimal.handling.mode=string` spells a numeric's NaN and infinities
/// `NAN`, `POSITIVE_INFINITY`, `NEGATIVE_INFINITY` (Java's names); PostgreSQL
/// and every reader spell them `NaN`, `Infinity`, `-Infinity`.
fn numeric_text(field: &Field, value: Value) -> Value {
    let numeric = field.source.as_ref().is_some_and(|s| matches!(s.type_name.as_str(), "NUMERIC" | "DECIMAL"));
    match &value {
        Value::String(text) if numeric => match &**text {
            "NAN" => Value::String("NaN".into()),
            "POSITIVE_INFINITY" => Value::String("Infinity".into()),
            "NEGATIVE_INFINITY" => Value::String("-Infinity".into()),
            _ => value,
        },
        _ => value,
    }
}

enum FieldKey {
    Known(usize),
    Unknown(String),
}

/// Resolves a column name to its index without allocating: Debezium writes
/// columns in schema order, so the next index is tried first.
struct FieldSeed<'s> {
    schema: &'s TableSchema,
    hint: usize,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = FieldKey;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<FieldKey, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldSeed<'_> {
    type Value = FieldKey;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a column name")
    }
    fn visit_str<E: de::Error>(self, name: &str) -> std::result::Result<FieldKey, E> {
        let fields = self.schema.fields();
        if fields.get(self.hint).is_some_and(|f| f.name == name) {
            return Ok(FieldKey::Known(self.hint));
        }
        Ok(match self.schema.index_of(name) {
            Some(i) => FieldKey::Known(i),
            None => FieldKey::Unknown(name.to_owned()),
        })
    }
}

/// Decodes a row image as an event carried it (the raw `after` JSON the
/// Delta history keeps) into values aligned with `schema`. A column the JSON
/// lacks is [`Value::Unavailable`] (nothing is known of it); a column the
/// schema lacks is ignored. For sinks that look a stored row up again.
pub fn decode_image(json: &str, schema: &TableSchema) -> Result<Row, String> {
    let decoded = decode_row(json, schema, Some(Schemaless { json_shape: true })).map_err(|e| match e {
        RowError::Untyped(column) => format!("column {column} has no known type"),
        RowError::Value { field, message } => match field {
            Some(field) => format!("column {field}: {message}"),
            None => message,
        },
    })?;
    let mut values = decoded.values;
    values.truncate(schema.fields().len());
    for (value, present) in values.iter_mut().zip(decoded.present) {
        if !present {
            *value = Value::Unavailable;
        }
    }
    Ok(values)
}

/// Decodes a JSON value (a schema default, for instance) as `data_type`.
pub(crate) fn value_from_json(json: &serde_json::Value, data_type: &DataType) -> Result<Value, String> {
    ValueSeed(data_type).deserialize(json).map_err(|e| e.to_string())
}

/// Decodes one JSON value as the given column type.
#[derive(Clone, Copy)]
struct ValueSeed<'t>(&'t DataType);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

fn out_of_range<E: de::Error>(value: impl fmt::Display, data_type: &DataType) -> E {
    E::custom(format!("value {value} does not fit {data_type:?}"))
}

impl ValueSeed<'_> {
    fn int<E: de::Error>(self, v: i64) -> std::result::Result<Value, E> {
        let (min, max) = match self.0 {
            DataType::Int8 => (i8::MIN as i64, i8::MAX as i64),
            DataType::Int16 => (i16::MIN as i64, i16::MAX as i64),
            DataType::Int32 | DataType::Year => (i32::MIN as i64, i32::MAX as i64),
            _ => (i64::MIN, i64::MAX),
        };
        if v < min || v > max {
            return Err(out_of_range(v, self.0));
        }
        Ok(Value::Int(v))
    }

    fn bytes<E: de::Error>(self, text: &str) -> std::result::Result<Vec<u8>, E> {
        BASE64.decode(text).map_err(|e| E::custom(format!("invalid base64: {e}")))
    }

    fn timestamp<E: de::Error>(self, v: i64, unit: crate::schema::TimeUnit) -> std::result::Result<i64, E> {
        let micros = unit.to_micros(v).ok_or_else(|| out_of_range(v, self.0))?;
        Ok(match micros {
            PG_INFINITY_MILLIS => TIMESTAMP_INFINITY,
            PG_NEG_INFINITY_MILLIS => TIMESTAMP_NEG_INFINITY,
            m => m,
        })
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a JSON encoding of {:?}", self.0)
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Value, E> {
        match self.0 {
            DataType::Boolean | DataType::Dynamic => Ok(Value::Bool(v)),
            _ => Err(E::invalid_type(de::Unexpected::Bool(v), &self)),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Value, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) if matches!(self.0, DataType::Float32 | DataType::Float64 | DataType::Dynamic) => {
                Ok(Value::Float(v as f64))
            }
            Err(_) => Err(out_of_range(v, self.0)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Value, E> {
        use DataType::*;
        match self.0 {
            Int8 | Int16 | Int32 | Int64 | Year | Dynamic => self.int(v),
            Float32 | Float64 => Ok(Value::Float(v as f64)),
            Date if DEBEZIUM_DATE_INFINITY.contains(&v) => Ok(Value::Date(DATE_INFINITY)),
            Date if DEBEZIUM_DATE_NEG_INFINITY.contains(&v) => Ok(Value::Date(DATE_NEG_INFINITY)),
            Date => i32::try_from(v).map(Value::Date).map_err(|_| out_of_range(v, self.0)),
            Time(unit) => unit.to_micros(v).map(Value::Time).ok_or_else(|| out_of_range(v, self.0)),
            Timestamp(unit) => self.timestamp(v, *unit).map(Value::Timestamp),
            Duration => Ok(Value::Duration(v)),
            _ => Err(E::invalid_type(de::Unexpected::Signed(v), &self)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Value, E> {
        match self.0 {
            DataType::Float32 | DataType::Float64 | DataType::Dynamic => Ok(Value::Float(v)),
            _ => Err(E::invalid_type(de::Unexpected::Float(v), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Value, E> {
        use DataType::*;
        if v == UNAVAILABLE_PLACEHOLDER
            || (v == UNAVAILABLE_PLACEHOLDER_BASE64 && matches!(self.0, Bytes | Bits { .. }))
        {
            return Ok(Value::Unavailable);
        }
        match self.0 {
            String | Json | Uuid | Xml | Enum { .. } | EnumSet { .. } | ZonedTime | Struct | Dynamic => {
                Ok(Value::String(v.into()))
            }
            Bytes | Bits { .. } => self.bytes(v).map(Value::Bytes),
            Float32 | Float64 => match v {
                "NaN" => Ok(Value::Float(f64::NAN)),
                "Infinity" => Ok(Value::Float(f64::INFINITY)),
                "-Infinity" => Ok(Value::Float(f64::NEG_INFINITY)),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            },
            Decimal { scale, .. } => decimal_from_bytes(&self.bytes(v)?, *scale).map_err(E::custom),
            TimestampTz => match v {
                "infinity" => Ok(Value::TimestampTz(TIMESTAMP_INFINITY)),
                "-infinity" => Ok(Value::TimestampTz(TIMESTAMP_NEG_INFINITY)),
                _ => chrono::DateTime::parse_from_rfc3339(v)
                    .map(|t| Value::TimestampTz(t.timestamp_micros()))
                    .map_err(|e| E::custom(format!("invalid ZonedTimestamp `{v}`: {e}"))),
            },
            Interval => crate::value::Interval::parse_iso8601(v)
                .map(Value::Interval)
                .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self)),
            _ => Err(E::invalid_type(de::Unexpected::Str(v), &self)),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let element = match self.0 {
            DataType::Array(element) => element.as_ref(),
            DataType::Dynamic => &DataType::Dynamic,
            DataType::Struct => return json_text(JsonSeq(seq)),
            _ => return Err(de::Error::invalid_type(de::Unexpected::Seq, &self)),
        };
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(value) = seq.next_element_seed(ValueSeed(element))? {
            values.push(value);
        }
        // An unchanged TOASTed array arrives as [placeholder].
        if values.iter().any(Value::is_unavailable) {
            return Ok(Value::Unavailable);
        }
        Ok(Value::List(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        match self.0 {
            DataType::VariableDecimal => {
                let mut scale = None;
                let mut bytes = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "scale" => scale = Some(map.next_value::<i32>()?),
                        "value" => bytes = Some(self.bytes(&map.next_value::<Cow<'de, str>>()?)?),
                        _ => drop(map.next_value::<IgnoredAny>()?),
                    }
                }
                match (scale, bytes) {
                    (Some(scale), Some(bytes)) => decimal_from_bytes(&bytes, scale).map_err(de::Error::custom),
                    _ => Err(de::Error::custom("VariableScaleDecimal needs `scale` and `value`")),
                }
            }
            DataType::Geometry => {
                let mut wkb = None;
                let mut srid = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "wkb" => {
                            wkb = map.next_value::<Option<Cow<'de, str>>>()?.map(|t| self.bytes(&t)).transpose()?
                        }
                        "srid" => srid = map.next_value::<Option<i32>>()?,
                        _ => drop(map.next_value::<IgnoredAny>()?),
                    }
                }
                let wkb = wkb.ok_or_else(|| de::Error::custom("geometry without `wkb`"))?;
                Ok(Value::Geometry { wkb, srid })
            }
            DataType::Struct | DataType::Dynamic => json_text(JsonMap(map)),
            _ => Err(de::Error::invalid_type(de::Unexpected::Map, &self)),
        }
    }
}

/// Nested structures without a column type are kept as their JSON text.
fn json_text<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Value, D::Error> {
    let json = serde_json::Value::deserialize(d)?;
    Ok(Value::String(json.to_string().into()))
}

struct JsonSeq<A>(A);
struct JsonMap<A>(A);

impl<'de, A: SeqAccess<'de>> Deserializer<'de> for JsonSeq<A> {
    type Error = A::Error;
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, A::Error> {
        visitor.visit_seq(self.0)
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for JsonMap<A> {
    type Error = A::Error;
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, A::Error> {
        visitor.visit_map(self.0)
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// The scales a PostgreSQL numeric can have (131072 digits before the point,
/// 16383 after): any other cannot come from the source, and writing it out
/// would take gigabytes.
const DECIMAL_SCALES: std::ops::RangeInclusive<i32> = -131_072..=16_383;

/// Big-endian two's-complement unscaled bytes (Connect's Decimal) to a value.
fn decimal_from_bytes(bytes: &[u8], scale: i32) -> std::result::Result<Value, String> {
    if !DECIMAL_SCALES.contains(&scale) {
        return Err(format!("decimal scale {scale} is outside PostgreSQL's range {DECIMAL_SCALES:?}"));
    }
    Ok(decimal_in_range(bytes, scale))
}

fn decimal_in_range(bytes: &[u8], scale: i32) -> Value {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut buf = if negative { [0xff; 16] } else { [0; 16] };
    // Sign-extended into 16 bytes when it fits an i128.
    if let Some(tail) = buf.len().checked_sub(bytes.len()).and_then(|start| buf.get_mut(start..)) {
        tail.copy_from_slice(bytes);
        return Value::Decimal(Decimal { unscaled: i128::from_be_bytes(buf), scale });
    }
    let big = num_bigint::BigInt::from_signed_bytes_be(bytes);
    let digits = big.magnitude().to_string();
    let mut text = String::new();
    // Writing to a String cannot fail.
    crate::value::write_decimal(&mut text, big.sign() == num_bigint::Sign::Minus, &digits, scale).unwrap_or_default();
    Value::BigDecimal(text.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_bytes_sign_extend() {
        assert_eq!(decimal_from_bytes(&[0xff], 2).unwrap(), Value::Decimal(Decimal { unscaled: -1, scale: 2 }));
        assert_eq!(decimal_from_bytes(&[0x00, 0x80], 0).unwrap(), Value::Decimal(Decimal { unscaled: 128, scale: 0 }));
        assert_eq!(decimal_from_bytes(&[], 0).unwrap(), Value::Decimal(Decimal { unscaled: 0, scale: 0 }));
        let mut wide = vec![0x01];
        wide.extend([0u8; 16]);
        assert_eq!(
            decimal_from_bytes(&wide, 3).unwrap(),
            Value::BigDecimal("340282366920938463463374607431768211.456".into())
        );
        assert!(decimal_from_bytes(&[1], i32::MAX).is_err() && decimal_from_bytes(&[1], i32::MIN).is_err());
    }

    #[test]
    fn interval_type_is_iso() {
        let v = value_from_json(&serde_json::json!("P1Y"), &DataType::Interval).unwrap();
        assert_eq!(v, Value::Interval(crate::Interval { months: 12, days: 0, micros: 0 }));
    }
}
