// No input may panic the library: errors name the record instead (tests may panic).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable,
        clippy::todo,
        clippy::unimplemented,
        clippy::indexing_slicing
    )
)]
//! The Debezium side of cdc-lakehouse: the change-event model, a type-faithful
//! decoder for Kafka Connect JsonConverter records, Arrow conversion, and the
//! [`Sink`] trait every destination implements.
//!
//! ```no_run
//! use cdc_core::{Decoder, RawRecord, Record};
//!
//! let mut decoder = Decoder::new();
//! let value = br#"{"before":null,"after":{"id":1},"source":{"schema":"public","table":"t","lsn":1},"op":"c"}"#;
//! decoder.push(RawRecord { topic: "cdc.public.t", partition: 0, offset: 0, key: Some(br#"{"id":1}"#), value: Some(value) })?;
//! for record in decoder.flush() {
//!     if let Record::Change(event) = record {
//!         println!("{} {} {:?}", event.table(), event.op.code(), event.after);
//!     }
//! }
//! # Ok::<(), cdc_core::Error>(())
//! ```
//!
//! | feature | what it adds |
//! |---|---|
//! | `test-utils` | [`MemorySink`](memory::MemorySink), an in-memory sink, and [`testing`] fixture helpers |

pub mod arrow;
pub mod catalog;
mod collapse;
pub mod connect;
pub mod consistency;
mod decode;
mod error;
mod event;
pub mod jsonl;
#[cfg(feature = "test-utils")]
pub mod memory;
pub mod pipeline;
pub mod renames;
pub mod scd2;
mod schema;
mod sink;
#[cfg(feature = "test-utils")]
pub mod testing;
mod value;

pub use collapse::{RowChange, TableChange, collapse, key_bytes};
pub use decode::{DecodeWorker, Decoder, Prepared, RawRecord, UNAVAILABLE_PLACEHOLDER, decode_image};
pub use error::{Error, Position, Result};
pub use event::{
    ChangeEvent, Op, OrderKey, RawJson, Record, Row, Source, SqlVersion, TableId, TransactionBlock, TransactionMarker,
    TransactionStatus, supersedes, supersedes_sql,
};
pub use schema::{DataType, Field, SchemaRef, SourceColumn, TableSchema, TimeUnit};
pub use sink::{Batch, Offsets, Sink, StageTimes};
pub use value::{
    DATE_INFINITY, DATE_NEG_INFINITY, Decimal, Interval, TIMESTAMP_INFINITY, TIMESTAMP_NEG_INFINITY, Value,
};
