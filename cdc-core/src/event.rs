//! The decoded Debezium records: change events, tombstones, transaction
//! markers and heartbeats.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use crate::error::Position;
use crate::schema::SchemaRef;
use crate::value::Value;

/// One decoded Kafka record.
// Nearly every record is a change: boxing it would add an allocation to the
// common case to shrink the rare ones.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Record {
    Change(ChangeEvent),
    /// The null-valued record Debezium writes after a delete so that log
    /// compaction can drop the key. Carries nothing to apply.
    Tombstone {
        position: Position,
    },
    /// A BEGIN or END record of the `<prefix>.transaction` topic.
    Transaction(TransactionMarker),
    /// A record of the `__debezium-heartbeat.<prefix>` topic.
    Heartbeat {
        position: Position,
        ts_ms: Option<i64>,
    },
}

impl Record {
    pub fn position(&self) -> &Position {
        match self {
            Record::Change(e) => &e.position,
            Record::Transaction(t) => &t.position,
            Record::Tombstone { position } | Record::Heartbeat { position, .. } => position,
        }
    }
}

/// The Debezium operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Update,
    Delete,
    /// A snapshot read.
    Read,
    Truncate,
}

impl Op {
    pub fn parse(code: &str) -> Option<Op> {
        Some(match code {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            "t" => Op::Truncate,
            _ => return None,
        })
    }

    /// The one-letter code Debezium uses.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
        }
    }
}

/// A row image: one value per column of the event's [`TableSchema`](crate::TableSchema).
pub type Row = Vec<Value>;

/// One change to one row (or, for truncate, to a whole table).
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    pub position: Position,
    pub op: Op,
    /// The columns `before` and `after` are aligned with, and the key columns.
    pub schema: SchemaRef,
    pub before: Option<Row>,
    pub after: Option<Row>,
    /// The record key's values, in [`TableSchema::key_indices`](crate::TableSchema::key_indices) order.
    pub key: Option<Vec<Value>>,
    pub source: Source,
    /// When Debezium processed the event (ms since the epoch).
    pub ts_ms: Option<i64>,
    pub transaction: Option<TransactionBlock>,
    pub order: OrderKey,
    /// The JSON text of the record's key payload, `before`, `after` and
    /// `source`, as Debezium sent them (see [`Decoder::keep_raw_json`](crate::Decoder::keep_raw_json)).
    pub raw: Option<Arc<RawJson>>,
}

/// The JSON text of a change event's parts, for sinks that store raw events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJson {
    pub key: Option<Box<str>>,
    pub before: Option<Box<str>>,
    pub after: Option<Box<str>>,
    pub source: Box<str>,
}

impl ChangeEvent {
    /// `schema.table` as the source names it.
    pub fn table(&self) -> TableId<'_> {
        TableId { schema: &self.source.schema, table: &self.source.table }
    }

    /// The image that holds the row's state after this event: `after`, or the
    /// (possibly key-only) `before` of a delete.
    pub fn image(&self) -> Option<&Row> {
        self.after.as_ref().or(self.before.as_ref())
    }

    /// The source transaction id, shared by every event of one transaction
    /// (`transaction.id` is `txId:lsn`, so group by this instead).
    pub fn tx_id(&self) -> Option<i64> {
        self.source.tx_id
    }

    /// What [`supersedes`] compares: the order key and the Kafka position.
    pub fn version(&self) -> (OrderKey, &Position) {
        (self.order, &self.position)
    }
}

/// A source table name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId<'a> {
    pub schema: &'a str,
    pub table: &'a str,
}

impl fmt::Display for TableId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// The `source` block of a PostgreSQL connector event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Source {
    pub version: String,
    pub connector: String,
    /// The topic prefix.
    pub name: String,
    pub ts_ms: Option<i64>,
    pub ts_us: Option<i64>,
    pub ts_ns: Option<i64>,
    /// `true`, `first`, `last`, `first_in_data_collection`, ..., or `false`.
    pub snapshot: Option<String>,
    pub db: String,
    pub schema: String,
    pub table: String,
    #[serde(rename = "txId")]
    pub tx_id: Option<i64>,
    pub lsn: Option<i64>,
    /// `["last_commit_lsn","lsn"]` as a JSON string.
    pub sequence: Option<String>,
    pub xmin: Option<i64>,
}

impl Source {
    /// Source commit time in microseconds since the epoch.
    pub fn ts_micros(&self) -> Option<i64> {
        self.ts_us.or(self.ts_ns.map(|ns| ns.div_euclid(1000))).or(self.ts_ms.map(|ms| ms * 1000))
    }

    pub fn is_snapshot(&self) -> bool {
        self.snapshot.as_deref().is_some_and(|s| s != "false")
    }
}

/// The `transaction` block of a change event (`provide.transaction.metadata`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TransactionBlock {
    /// `txId:lsn`.
    pub id: String,
    pub total_order: i64,
    pub data_collection_order: i64,
}

/// A BEGIN or END record of the transaction topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionMarker {
    pub position: Position,
    pub status: TransactionStatus,
    /// `txId:lsn`.
    pub id: String,
    /// Events in the transaction (END only).
    pub event_count: Option<i64>,
    /// Events per `schema.table` (END only).
    pub data_collections: Vec<(String, i64)>,
    pub ts_ms: Option<i64>,
}

impl TransactionMarker {
    /// The PostgreSQL transaction id (the part of `id` before the colon).
    pub fn tx_id(&self) -> Option<i64> {
        self.id.split(':').next()?.parse().ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    Begin,
    End,
}

/// Orders events of one table correctly across concurrent source transactions.
///
/// PostgreSQL emits a transaction's changes when it commits, so a change's raw
/// LSN can be lower than that of a change committed earlier by another
/// transaction. Debezium's `source.sequence` is `[last_commit_lsn, lsn]`,
/// where `last_commit_lsn` is the commit LSN of the transaction streamed
/// *before* this one (null until the connector saw a commit). `commit_lsn`
/// here is `max(last_commit_lsn, lsn)`: both lie below the transaction's own
/// commit and at or above the previous one's, so every key of a transaction
/// sorts after every key of the transactions committed before it. Snapshot
/// reads (`[null, lsn]`) thereby order at the snapshot's LSN: after every
/// change the snapshot saw, so a re-snapshot (a new slot after a lost one)
/// corrects rows. Without `sequence`, the LSN stands in for both; the Kafka
/// offset breaks remaining ties (all snapshot rows share one LSN).
///
/// Order keys alone cannot order a transaction that was open when a snapshot
/// began (its changes' LSNs lie before the snapshot's): see [`supersedes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct OrderKey {
    pub commit_lsn: u64,
    pub lsn: u64,
    pub offset: i64,
}

impl OrderKey {
    /// Fixed-width hexadecimal text that sorts like the key (48 characters),
    /// for stores that compare strings (SQL `>`), and readable in a table.
    pub fn to_hex(self) -> String {
        format!("{:016x}{:016x}{:016x}", self.commit_lsn, self.lsn, self.offset as u64 ^ (1 << 63))
    }
}

/// Whether a change (`new`) may replace the stored state of its row, which
/// the change `old` wrote: it is newer by order key, or it comes later in the
/// same Kafka partition. Debezium emits one row's changes to one partition in
/// commit order, so a later offset is newer even where order keys cannot tell
/// (a transaction open when a snapshot began orders below the snapshot's
/// reads); across partitions only order keys can. Every sink decides by this
/// rule, here or as [`supersedes_sql`].
pub fn supersedes(new: (OrderKey, &Position), old: (OrderKey, &Position)) -> bool {
    let ((new_order, new_at), (old_order, old_at)) = (new, old);
    new_order > old_order
        || (new_at.topic == old_at.topic && new_at.partition == old_at.partition && new_at.offset > old_at.offset)
}

/// Where SQL finds a row version: the `_cdc_order`, `_cdc_topic`,
/// `_cdc_partition` and `_cdc_offset` columns of a table alias, or other
/// expressions holding the same.
#[derive(Debug, Clone)]
pub struct SqlVersion {
    pub order: String,
    pub topic: String,
    pub partition: String,
    pub offset: String,
}

impl SqlVersion {
    /// The metadata columns of `alias` (`t`, `source`).
    pub fn of(alias: &str) -> SqlVersion {
        use crate::arrow::{OFFSET_COLUMN, ORDER_COLUMN, PARTITION_COLUMN, TOPIC_COLUMN};
        SqlVersion {
            order: format!("{alias}.{ORDER_COLUMN}"),
            topic: format!("{alias}.{TOPIC_COLUMN}"),
            partition: format!("{alias}.{PARTITION_COLUMN}"),
            offset: format!("{alias}.{OFFSET_COLUMN}"),
        }
    }
}

/// [`supersedes`] as a SQL condition (PostgreSQL and DataFusion alike).
/// Unknown positions (null: rows written before positions were kept)
/// compare by order key only.
pub fn supersedes_sql(new: &SqlVersion, old: &SqlVersion) -> String {
    format!(
        "({old_order} < {new_order} OR ({old_topic} = {new_topic} AND {old_partition} = {new_partition} \
         AND {old_offset} < {new_offset}))",
        old_order = old.order,
        new_order = new.order,
        old_topic = old.topic,
        new_topic = new.topic,
        old_partition = old.partition,
        new_partition = new.partition,
        old_offset = old.offset,
        new_offset = new.offset,
    )
}

impl fmt::Display for OrderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.commit_lsn, self.lsn, self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_key_hex_sorts_like_the_key() {
        let keys = [
            OrderKey { commit_lsn: 0, lsn: 5, offset: -1 },
            OrderKey { commit_lsn: 0, lsn: 5, offset: 0 },
            OrderKey { commit_lsn: 0, lsn: 6, offset: 0 },
            OrderKey { commit_lsn: 1, lsn: 2, offset: 7 },
            OrderKey { commit_lsn: u64::MAX, lsn: 0, offset: i64::MAX },
        ];
        for pair in keys.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].to_hex() < pair[1].to_hex(), "{} vs {}", pair[0], pair[1]);
        }
        assert_eq!(keys[0].to_hex().len(), 48);
    }
}
