//! The PostgreSQL target: a mirror of every source table, same column names,
//! faithful types, same primary key, plus CDC metadata columns; hard deletes.
//! Tables configured `mode = "scd2"` keep every version instead (`scd2.rs`).

use async_trait::async_trait;
use cdc_core::catalog::{HandlingModes, connect_columns};
use cdc_core::{Batch, Offsets, Result, Sink, TableSchema};
use std::collections::BTreeMap;

use crate::TableConfig;

use super::apply::is_metadata_column;
use super::catalog::read_columns;
use super::{
    DeleteMode, PgBase, PgConnectionConfig, StateTables, StoredOffsets, TransactionalSink, apply_with_retries,
    sink_error,
};

const NAME: &str = "pg-target";

/// Mirrors source tables into a PostgreSQL database.
///
/// Each batch is one transaction: every table's rows are bulk-loaded with
/// binary COPY into a staging table and merged with set-based statements
/// that never overwrite a newer row with an older event and keep columns
/// Debezium did not send (unchanged TOAST); the batch's offsets are upserted
/// into `cdc_meta.offsets` in the same transaction. Tables are created on
/// first sight, in the source's schema (or [`with_schema`](Self::with_schema)),
/// and grown with new columns; dropped source columns stay, with nulls.
pub struct PgTargetSink {
    base: PgBase,
    tables: StateTables,
    /// How the connector encodes values, for typing schemaless records from
    /// the mirror's column types.
    modes: HandlingModes,
}

impl PgTargetSink {
    pub fn new(config: PgConnectionConfig) -> PgTargetSink {
        PgTargetSink {
            base: PgBase::new(config, NAME),
            tables: StateTables::new(NAME, None, DeleteMode::Hard),
            modes: HandlingModes::default(),
        }
    }

    /// The connector's handling modes (`decimal.handling.mode` etc.; the
    /// defaults otherwise): schemaless records typed from the mirror's
    /// column types are decoded as the connector encoded them.
    pub fn with_handling_modes(mut self, modes: HandlingModes) -> PgTargetSink {
        self.modes = modes;
        self
    }

    /// Puts every table in `schema` instead of the source's schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> PgTargetSink {
        self.tables.set_schema(schema.into());
        self
    }

    /// Per-table settings, by source table name or `schema.table`: tables
    /// with `mode = TableMode::Scd2` keep every version of every row
    /// (`__start_order`, `__end_order`, `__start_at`, `__end_at`,
    /// `__is_current`; see `cdc_core::scd2`) instead of mirroring the
    /// current state.
    pub fn with_tables(mut self, tables: BTreeMap<String, TableConfig>) -> PgTargetSink {
        self.tables.set_table_configs(tables);
        self
    }
}

impl TransactionalSink for PgTargetSink {
    fn base(&mut self) -> &mut PgBase {
        &mut self.base
    }

    fn rolled_back(&mut self) {
        self.tables.forget();
    }

    async fn try_apply(&mut self, batch: &Batch) -> Result<()> {
        let consumer = self.base.connection.config().consumer.clone();
        let stages = &mut self.base.stages;
        stages.start_batch();
        let client = self.base.connection.client().await?;
        let tx = client.transaction().await.map_err(|e| sink_error(NAME, &e))?;
        let stored = StoredOffsets::lock(&tx, NAME, &consumer).await?;
        for events in stored.unapplied(batch).values() {
            self.tables.apply(&tx, events, stages).await?;
        }
        stored.write(&tx, NAME, batch).await?;
        stages.time("commit", tx.commit()).await.map_err(|e| sink_error(NAME, &e))
    }
}

#[async_trait]
impl Sink for PgTargetSink {
    fn name(&self) -> &str {
        NAME
    }

    fn stage_times(&self) -> Option<&cdc_core::StageTimes> {
        Some(&self.base.stages)
    }

    async fn durable_offsets(&mut self) -> Result<Offsets> {
        self.base.durable_offsets().await
    }

    async fn apply(&mut self, batch: &Batch) -> Result<()> {
        apply_with_retries(self, batch).await
    }

    /// The mirror's column types, which keep what the source dropped since.
    /// Exact for tables this version created (time precisions kept).
    async fn column_types(&mut self, table: &str) -> Result<Option<TableSchema>> {
        let Some((source_schema, name)) = table.split_once('.') else { return Ok(None) };
        let schema = self.tables.schema_name(source_schema);
        let client = self.base.connection.client().await?;
        let (mut columns, key) = read_columns(client, NAME, &schema, name).await?;
        columns.retain(|c| !is_metadata_column(&c.name));
        if columns.is_empty() {
            return Ok(None);
        }
        let key: Vec<&str> = key.iter().map(String::as_str).filter(|k| !is_metadata_column(k)).collect();
        connect_columns(&columns, &key, &self.modes).map(Some)
    }
}
