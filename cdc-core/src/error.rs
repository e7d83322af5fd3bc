//! Errors of cdc-core. Every decoding error names the record it came from.

use std::fmt;
use std::sync::Arc;

/// Where a record sits in its stream: Kafka topic, partition and offset (a
/// file replay uses the line number as the offset).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

impl Position {
    pub fn new(topic: impl Into<Arc<str>>, partition: i32, offset: i64) -> Position {
        Position { topic: topic.into(), partition, offset }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// cdc-core's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A record that cannot be decoded. `field` is the JSON path inside the
    /// record (`payload.after.price`), when the problem is in one field.
    #[error("cannot decode record {position}{}: {message}", field.as_deref().map(|f| format!(" field `{f}`")).unwrap_or_default())]
    Decode { position: Position, field: Option<String>, message: String },

    /// A Connect schema that cannot be used (unknown type, missing parameter,
    /// a column that changed type in place).
    #[error("invalid schema: {message}")]
    Schema { message: String },

    /// A record's schema could not be turned into a table schema.
    #[error("invalid schema in record {position}: {source}")]
    RecordSchema {
        position: Position,
        #[source]
        source: Box<Error>,
    },

    /// A schemaless record carries a column whose type is known neither from
    /// an earlier record's schema, nor from the source's catalog, nor from
    /// the sinks: its value's meaning is unknown (`"ATo="` may be the numeric
    /// 3.14), so it is not written.
    #[error(
        "cannot decode record {position} field `{field}`: column `{column}` of `{table}` has no known type \
         (the record has no Connect schema, and no source catalog or sink table gives it). Either set `source_schema_url` (CDC_SOURCE_SCHEMA_URL) to the \
         source database so column types are read from its catalog, or enable schemas in the connector's \
         converter (value.converter.schemas.enable=true)"
    )]
    Untyped { position: Position, field: String, table: String, column: String },

    /// Rows that cannot be converted to Arrow (a value that does not fit its column).
    #[error("cannot convert table `{table}` column `{column}` to Arrow: {message}")]
    Arrow { table: String, column: String, message: String },

    /// A sink failed; `retriable` says whether applying the same batch again
    /// may succeed (a lost race: a serialization failure, a deadlock, a
    /// concurrent Delta commit). Anything caused by an event's data is not.
    #[error("sink `{sink}` failed: {message}")]
    Sink { sink: String, message: String, retriable: bool },

    /// A store could not be reached or went away (connection lost, server
    /// shutting down, I/O): an outage. Always retriable, and never a reason
    /// to dead-letter an event, however long it lasts.
    #[error("`{sink}` unavailable: {message}")]
    Unavailable { sink: String, message: String },
}

impl Error {
    /// Whether the operation may succeed if tried again unchanged. Bad input
    /// never is; it belongs in the dead-letter store.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Error::Sink { retriable: true, .. } | Error::Unavailable { .. })
    }

    /// Whether this is an outage: retried with backoff until it passes (or
    /// the retry policy gives up), never turned into a dead letter.
    pub fn is_outage(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// The same failure judged as bad data: a retriable error that repeated
    /// on the same batch beyond the retry policy's bound.
    pub fn into_bad_data(self, attempts: u32) -> Error {
        match self {
            Error::Sink { sink, message, retriable: true } => Error::Sink {
                sink,
                message: format!("{message} (the same error {attempts} times in a row: treated as bad data)"),
                retriable: false,
            },
            other => other,
        }
    }

    /// The record this error is about, if it is about one record.
    pub fn position(&self) -> Option<&Position> {
        match self {
            Error::Decode { position, .. } | Error::RecordSchema { position, .. } | Error::Untyped { position, .. } => {
                Some(position)
            }
            _ => None,
        }
    }
}

/// cdc-core's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
