//! The PostgreSQL sinks: [`PgTargetSink`] (a mirror of the source tables)
//! and [`PgDatalakeSink`] (raw events and processed state), and what they
//! share, a file per concern:
//!
//! | file | concern |
//! |---|---|
//! | `connection.rs` | connection settings, reconnecting, error classification |
//! | `tls.rs` | opening a connection: `sslmode` with rustls, client certificates |
//! | `types.rs` | the type mapping and in-place widening rules |
//! | `copy.rs` | binary COPY encoding into staging tables |
//! | `apply.rs` | current-state tables: create, grow, merge, delete, truncate |
//! | `scd2.rs` | SCD type 2 tables: every version of every row |
//! | `offsets.rs` | the offsets table and the tombstones of deleted keys |
//! | `catalog.rs` | column types of schemaless records, from the source's catalog |

mod apply;
mod catalog;
mod connection;
mod copy;
mod datalake;
mod offsets;
mod scd2;
mod target;
mod tls;
mod types;

pub use catalog::PgSourceCatalog;
pub use connection::{PgConnectionConfig, PgUrl};
pub use datalake::{DATALAKE_DDL, PgDatalakeSink};
pub use target::PgTargetSink;
pub use tls::{ConnectionSpec, SslMode};
pub use types::{pg_type, quote_ident};

pub(crate) use apply::{DeleteMode, StateTables};
pub(crate) use connection::{Connection, sink_error};
pub(crate) use offsets::StoredOffsets;

use offsets::*;

use cdc_core::{Batch, Offsets, Result};

/// What the PostgreSQL sinks share around their transaction: the
/// connection, and whether the offsets table is known to exist.
pub(crate) struct PgBase {
    pub connection: Connection,
    ready: bool,
    /// Where each batch's time goes: `copy`, `apply`, `commit`.
    pub stages: cdc_core::StageTimes,
}

impl PgBase {
    pub fn new(config: PgConnectionConfig, sink: &'static str) -> PgBase {
        PgBase { connection: Connection::new(config, sink), ready: false, stages: Default::default() }
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
