//! Which source transactions a sink holds whole: from Debezium's transaction
//! metadata (`provide.transaction.metadata`: END records on the
//! `<prefix>.transaction` topic counting each transaction's events, and the
//! `transaction` block of each change), so a sink can say when what it holds
//! shows the source as of one transaction boundary, no transaction half
//! applied.
//!
//! The tracker is fed each batch a sink applied (its changes, and the END
//! markers it carried). A transaction is *complete* once as many of its
//! changes were applied, per table, as its END counts (tables the sink does
//! not consume are named as ignored: their changes never reach it). Transactions retire in commit
//! order (the order of their END records): the boundary is the newest
//! transaction that, with every transaction ended before it, is complete.
//! What the sink holds is *exactly* the source at that boundary when no
//! transaction beyond it has any change applied.
//!
//! Changes are counted once each (by Kafka position), so a replayed batch
//! counts nothing twice; a change that was dead-lettered is not counted
//! until it is reapplied, and until then its transaction, and so every
//! boundary after it, stays open: the tables do not show the source then.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::error::Position;
use crate::event::{ChangeEvent, TransactionMarker, TransactionStatus};

/// A transaction boundary: the source as of the commit of transaction `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boundary {
    /// Debezium's transaction id (`txId:lsn` for PostgreSQL).
    pub id: String,
    /// The LSN of the transaction (the part of the id after the colon).
    pub lsn: Option<i64>,
    /// When the connector processed its END (ms since the epoch).
    pub ts_ms: Option<i64>,
}

impl Boundary {
    fn of(marker: &TransactionMarker) -> Boundary {
        Boundary {
            id: marker.id.clone(),
            lsn: marker.id.rsplit_once(':').and_then(|(_, lsn)| lsn.parse().ok()),
            ts_ms: marker.ts_ms,
        }
    }
}

/// A transaction not retired yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Open {
    /// Its END: the boundary it makes, and its changes per table.
    end: Option<(Boundary, Vec<(String, i64)>)>,
    /// Per table (`schema.table`), the positions (topic, partition, offset)
    /// of its changes applied.
    counted: BTreeMap<String, BTreeSet<(String, i32, i64)>>,
}

impl Open {
    fn is_complete(&self, ignored: &BTreeSet<String>) -> bool {
        let Some((_, tables)) = &self.end else { return false };
        tables
            .iter()
            .filter(|(table, _)| !ignored.contains(table))
            .all(|(table, expected)| self.counted.get(table).map_or(0, BTreeSet::len) as i64 >= *expected)
    }
}

/// See the module docs. Serializable, so a sink stores it with its offsets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionTracker {
    /// Tables whose changes the sink never gets (not consumed).
    ignored: BTreeSet<String>,
    /// By source transaction id (`txId`: a change's `transaction.id` is
    /// `txId:lsn` with the change's own LSN).
    open: BTreeMap<i64, Open>,
    /// Ended, not retired transactions, in commit order.
    ended: VecDeque<i64>,
    /// Per topic and partition, the newest change and END record observed:
    /// anything at or below is a replay, counted already (or retired).
    observed: BTreeMap<String, BTreeMap<i32, i64>>,
    boundary: Option<Boundary>,
}

impl TransactionTracker {
    /// A tracker for a sink that does not get the changes of `ignored`
    /// tables (`schema.table`): the transaction topic counts them, but
    /// their topics are not consumed.
    pub fn new(ignored: impl IntoIterator<Item = String>) -> TransactionTracker {
        TransactionTracker { ignored: ignored.into_iter().collect(), ..TransactionTracker::default() }
    }

    /// Takes in what a sink applied: `events` and the END `markers` of one
    /// batch (in consumption order).
    pub fn observe<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a ChangeEvent>,
        markers: impl IntoIterator<Item = &'a TransactionMarker>,
    ) {
        for marker in markers {
            if marker.status != TransactionStatus::End || self.holds(&marker.position) {
                continue;
            }
            self.advance(&marker.position);
            let Some(tx) = marker.tx_id() else { continue };
            self.open.entry(tx).or_default().end = Some((Boundary::of(marker), marker.data_collections.clone()));
            self.ended.push_back(tx);
        }
        for event in events {
            let Some(tx) = event.transaction.as_ref().and(event.tx_id()) else { continue };
            let at = (event.position.topic.to_string(), event.position.partition, event.position.offset);
            // A change of a retired transaction replayed is not counted again;
            // one of an open transaction (a dead letter reapplied) is, once.
            if !self.open.contains_key(&tx) && self.holds(&event.position) {
                continue;
            }
            let table = event.table().to_string();
            self.open.entry(tx).or_default().counted.entry(table).or_default().insert(at);
            self.advance(&event.position);
        }
        while let Some(&tx) = self.ended.front() {
            let Some(open) = self.open.get(&tx).filter(|open| open.is_complete(&self.ignored)) else { break };
            self.boundary = open.end.as_ref().map(|(boundary, _)| boundary.clone());
            self.open.remove(&tx);
            self.ended.pop_front();
        }
    }

    fn holds(&self, at: &Position) -> bool {
        self.observed.get(&*at.topic).and_then(|p| p.get(&at.partition)).is_some_and(|&o| at.offset <= o)
    }

    fn advance(&mut self, at: &Position) {
        let offset = self.observed.entry(at.topic.to_string()).or_default().entry(at.partition).or_insert(at.offset);
        *offset = (*offset).max(at.offset);
    }

    /// The boundary the sink's tables show exactly: every transaction up to
    /// it complete, none after it with a change applied. `None` while some
    /// transaction is half applied (or before the first END).
    pub fn exact_boundary(&self) -> Option<&Boundary> {
        let untouched = self.open.values().all(|open| open.counted.is_empty());
        self.boundary.as_ref().filter(|_| untouched)
    }

    /// How many transactions are open (ended or with changes applied, not
    /// retired).
    pub fn open_transactions(&self) -> usize {
        self.open.len()
    }
}
