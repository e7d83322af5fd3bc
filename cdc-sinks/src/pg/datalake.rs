//! The PostgreSQL data lake: `cdc_raw.cdc_events` holds every raw event,
//! `cdc_processed.<table>` the current state of each source table with
//! deletes kept as flagged rows.

use async_trait::async_trait;
use cdc_core::{Batch, ChangeEvent, Error, Offsets, Result, Sink};
use futures::pin_mut;
use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::{
    DeleteMode, PgBase, PgConnectionConfig, StateTables, StoredOffsets, TransactionalSink, apply_with_retries,
    sink_error,
};

const NAME: &str = "pg-datalake";

/// Schemas and the raw events table (also in `init-scripts/datalake-init.sql`).
pub const DATALAKE_DDL: &str = "CREATE SCHEMA IF NOT EXISTS cdc_raw; CREATE SCHEMA IF NOT EXISTS cdc_processed; \
    CREATE TABLE IF NOT EXISTS cdc_raw.cdc_events (\
        id bigserial PRIMARY KEY, topic text NOT NULL, kafka_partition integer NOT NULL, kafka_offset bigint NOT NULL, \
        source_schema text NOT NULL, source_table text NOT NULL, op text NOT NULL, record_key jsonb, \
        before jsonb, after jsonb, source jsonb NOT NULL, tx_id bigint, lsn bigint, \
        event_ts timestamp with time zone, ingested_at timestamp with time zone NOT NULL DEFAULT now(), \
        UNIQUE (topic, kafka_partition, kafka_offset)); \
    CREATE INDEX IF NOT EXISTS cdc_events_by_table ON cdc_raw.cdc_events (source_schema, source_table, event_ts)";

/// Writes the data-lake database: raw events and processed current state,
/// with the batch's offsets, in one transaction per batch.
///
/// Raw events need the JSON text of each event: decode with
/// [`Decoder::keep_raw_json`](cdc_core::Decoder::keep_raw_json).
pub struct PgDatalakeSink {
    base: PgBase,
    processed: StateTables,
    ready: bool,
}

impl PgDatalakeSink {
    pub fn new(config: PgConnectionConfig) -> PgDatalakeSink {
        PgDatalakeSink {
            base: PgBase::new(config, NAME),
            processed: StateTables::new(NAME, Some("cdc_processed".into()), DeleteMode::Soft),
            ready: false,
        }
    }
}

impl TransactionalSink for PgDatalakeSink {
    fn base(&mut self) -> &mut PgBase {
        &mut self.base
    }

    fn rolled_back(&mut self) {
        self.processed.forget();
        self.ready = false;
    }

    async fn try_apply(&mut self, batch: &Batch) -> Result<()> {
        let consumer = self.base.connection.config().consumer.clone();
        let stages = &mut self.base.stages;
        stages.start_batch();
        let client = self.base.connection.client().await?;
        let tx = client.transaction().await.map_err(|e| sink_error(NAME, &e))?;
        if !self.ready {
            tx.batch_execute(DATALAKE_DDL).await.map_err(|e| sink_error(NAME, &e))?;
        }
        let stored = StoredOffsets::lock(&tx, NAME, &consumer).await?;
        let tables = stored.unapplied(batch);
        let events: Vec<&ChangeEvent> = tables.values().flatten().copied().collect();
        stages.time("raw copy", insert_raw(&tx, &events)).await?;
        for events in tables.values() {
            self.processed.apply(&tx, events, stages).await?;
        }
        stored.write(&tx, NAME, batch).await?;
        stages.time("commit", tx.commit()).await.map_err(|e| sink_error(NAME, &e))?;
        self.ready = true;
        Ok(())
    }
}

/// Appends events to `cdc_raw.cdc_events`; a replayed event is ignored by
/// its (topic, partition, offset).
async fn insert_raw(tx: &Transaction<'_>, events: &[&ChangeEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let fail = |e: tokio_postgres::Error| sink_error(NAME, &e);
    tx.batch_execute(
        "CREATE TEMP TABLE _cdc_raw_stage (topic text, kafka_partition int4, kafka_offset int8, source_schema text, \
         source_table text, op text, record_key text, before text, after text, source text, tx_id int8, lsn int8, \
         event_ts timestamptz) ON COMMIT DROP",
    )
    .await
    .map_err(fail)?;
    let sink = tx.copy_in("COPY _cdc_raw_stage FROM STDIN BINARY").await.map_err(fail)?;
    let types = [
        Type::TEXT,
        Type::INT4,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::TIMESTAMPTZ,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for event in events {
        let raw = event.raw.as_deref().ok_or_else(|| Error::Sink {
            sink: NAME.into(),
            message: format!(
                "record {} has no raw JSON: decode with Decoder::keep_raw_json(true) for the data-lake sink",
                event.position
            ),
            retriable: false,
        })?;
        let event_ts = event.source.ts_micros().map(|us| std::time::UNIX_EPOCH + micros(us));
        let row: [&(dyn ToSql + Sync); 13] = [
            &&*event.position.topic,
            &event.position.partition,
            &event.position.offset,
            &event.source.schema,
            &event.source.table,
            &event.op.code(),
            &raw.key.as_deref(),
            &raw.before.as_deref(),
            &raw.after.as_deref(),
            &&*raw.source,
            &event.source.tx_id,
            &event.source.lsn,
            &event_ts,
        ];
        writer.as_mut().write(&row).await.map_err(fail)?;
    }
    writer.finish().await.map_err(fail)?;
    tx.batch_execute(
        "INSERT INTO cdc_raw.cdc_events (topic, kafka_partition, kafka_offset, source_schema, source_table, op, \
         record_key, before, after, source, tx_id, lsn, event_ts) \
         SELECT topic, kafka_partition, kafka_offset, source_schema, source_table, op, record_key::jsonb, \
         before::jsonb, after::jsonb, source::jsonb, tx_id, lsn, event_ts FROM _cdc_raw_stage \
         ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING",
    )
    .await
    .map_err(fail)
}

fn micros(us: i64) -> std::time::Duration {
    std::time::Duration::from_micros(us.max(0) as u64)
}

#[async_trait]
impl Sink for PgDatalakeSink {
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
}
