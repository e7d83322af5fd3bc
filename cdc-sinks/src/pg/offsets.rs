//! The offsets table and the tombstones of deleted keys: read at start,
//! written in every batch's transaction, pruned once passed.

use std::collections::BTreeMap;
use std::sync::Arc;

use cdc_core::{Batch, ChangeEvent, Offsets, Result};
use tokio_postgres::{Client, Transaction};

use super::connection::*;

/// The offsets table (the last applied offset per consumer, topic and
/// partition, and the Kafka cluster it is an offset in) and the tombstones of deleted keys (per table and key, the
/// order key of the newest delete; `row_key = ''` marks a truncate, with its source commit time).
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
    ALTER TABLE cdc_meta.deleted_keys ADD COLUMN IF NOT EXISTS image jsonb; \
    ALTER TABLE cdc_meta.deleted_keys ADD COLUMN IF NOT EXISTS source_ts timestamp with time zone; \
    CREATE INDEX IF NOT EXISTS deleted_keys_by_topic ON cdc_meta.deleted_keys (_cdc_topic, order_key)";

/// Where deleted keys are remembered.
pub(super) const DELETED_KEYS: &str = "cdc_meta.deleted_keys";

/// This consumer's offsets; the cluster is the one the latest write named.
pub(super) const SELECT_OFFSETS: &str = "SELECT topic, kafka_partition, kafka_offset, kafka_cluster FROM cdc_meta.offsets \
     WHERE consumer = $1 ORDER BY updated_at";

pub(super) fn offsets_from_rows(rows: &[tokio_postgres::Row]) -> Offsets {
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
