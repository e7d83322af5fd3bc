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
//! Sinks that apply Debezium change events, each an implementation of
//! [`cdc_core::Sink`].
//!
//! | feature | sinks |
//! |---|---|
//! | `postgres` | [`PgTargetSink`] (mirror of the source tables), [`PgDatalakeSink`] (raw events + processed state) |
//! | `delta` | [`DeltaSink`](delta::DeltaSink): Delta Lake current-state tables and the `cdc_events` history table; time travel and maintenance |

#[cfg(feature = "delta")]
pub mod delta;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod tables;

#[cfg(feature = "delta")]
pub use delta::{ApplyStats, DeltaConfig, DeltaSink};
#[cfg(feature = "postgres")]
pub use pg::{
    DATALAKE_DDL, PgConnectionConfig, PgDatalakeSink, PgSourceCatalog, PgTargetSink, PgUrl, pg_type, quote_ident,
};
pub use tables::{TableConfig, TableMode};
