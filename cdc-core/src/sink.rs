//! The [`Sink`] trait: what a destination guarantees, and the batches it gets.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Position, Result};
use crate::event::{ChangeEvent, Record};

/// The last offset applied per (topic, partition), and the Kafka cluster
/// those offsets are positions in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offsets {
    by_partition: BTreeMap<(Arc<str>, i32), i64>,
    /// The id of the Kafka cluster the offsets were read from: offsets of
    /// another cluster (a new docker-compose stack, say) mean nothing here.
    /// `None` when unknown (a file replay, or stored before ids were kept).
    pub cluster: Option<Arc<str>>,
    /// How many partitions each topic has, where known (from the Kafka
    /// source): what every partition of a topic has passed can be pruned.
    pub partition_counts: BTreeMap<Arc<str>, i32>,
}

impl Offsets {
    pub fn new() -> Offsets {
        Offsets::default()
    }

    /// No offsets yet, in the same cluster as `self` (for a part of a batch).
    pub fn empty_like(&self) -> Offsets {
        Offsets { cluster: self.cluster.clone(), partition_counts: self.partition_counts.clone(), ..Offsets::new() }
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.by_partition.iter().find(|((t, p), _)| &**t == topic && *p == partition).map(|(_, &o)| o)
    }

    /// Records that `position` is applied (offsets only move forward).
    pub fn advance(&mut self, position: &Position) {
        self.set(position.topic.clone(), position.partition, position.offset);
    }

    /// Sets the offset of a partition if it is beyond the current one.
    pub fn set(&mut self, topic: Arc<str>, partition: i32, offset: i64) {
        let entry = self.by_partition.entry((topic, partition)).or_insert(offset);
        *entry = (*entry).max(offset);
    }

    /// Whether the record at `position` is already applied.
    pub fn holds(&self, position: &Position) -> bool {
        self.get(&position.topic, position.partition).is_some_and(|o| position.offset <= o)
    }

    /// Takes every partition's offset from `other` where it is further, and
    /// `other`'s cluster when it names one.
    pub fn merge(&mut self, other: &Offsets) {
        for ((topic, partition), &offset) in &other.by_partition {
            self.set(topic.clone(), *partition, offset);
        }
        if other.cluster.is_some() {
            self.cluster.clone_from(&other.cluster);
        }
        self.partition_counts.extend(other.partition_counts.iter().map(|(t, n)| (t.clone(), *n)));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.by_partition.iter().map(|((t, p), &o)| (&**t, *p, o))
    }

    pub fn is_empty(&self) -> bool {
        self.by_partition.is_empty()
    }
}

/// Decoded change events to apply together, in the order they were consumed
/// (so in order within each partition), and the offsets they cover.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub events: Vec<ChangeEvent>,
    /// Per partition, the last offset this batch covers, including records
    /// with nothing to apply (tombstones, heartbeats, transaction markers),
    /// so a sink's stored offsets move past them too.
    pub offsets: Offsets,
    /// Apply the events even at or below a sink's stored offsets (fixed dead
    /// letters replayed): each row still moves only forward by order key.
    pub reapply: bool,
    /// The transaction topic's END records among the batch's records (for
    /// sinks that track transaction boundaries, `consistency`).
    pub transactions: Vec<crate::event::TransactionMarker>,
}

impl Batch {
    /// The batch of `records`, each position once: Kafka delivers a record
    /// again after a seek or a rebalance (a fetched record of a partition
    /// revoked and assigned back, then the same record read from the
    /// committed offset), and a second copy in one batch would be applied
    /// twice by sinks that append (the history), since stored offsets only
    /// tell batches apart. A position is the same record: the first copy is
    /// kept.
    pub fn from_records(records: impl IntoIterator<Item = Record>) -> Batch {
        let mut batch = Batch::default();
        let mut seen: std::collections::HashSet<Position> = std::collections::HashSet::new();
        for record in records {
            if !seen.insert(record.position().clone()) {
                continue;
            }
            batch.offsets.advance(record.position());
            match record {
                Record::Change(event) => batch.events.push(event),
                Record::Transaction(marker) if marker.status == crate::event::TransactionStatus::End => {
                    batch.transactions.push(marker);
                }
                _ => {}
            }
        }
        batch
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.offsets.is_empty()
    }

    /// The events a sink that stores `held` must apply: those beyond its
    /// stored offsets (the rest it already holds), or, in a
    /// [`reapply`](Batch::reapply) batch, all of them. Every sink asks this,
    /// so the rule lives here.
    pub fn to_apply<'a>(&'a self, held: &'a Offsets) -> impl Iterator<Item = &'a ChangeEvent> + 'a {
        self.events.iter().filter(move |e| self.must_apply(held, e))
    }

    /// Whether a sink that stores `held` must apply `event` of this batch.
    pub fn must_apply(&self, held: &Offsets, event: &ChangeEvent) -> bool {
        self.reapply || !held.holds(&event.position)
    }
}

/// Where a sink's time goes, by stage (`history`, `arrow`, `merge`,
/// `commit`, `copy`, `apply`, ...): the last batch's and the totals since
/// start, each in the order the stages first ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageTimes {
    last: Vec<(&'static str, std::time::Duration)>,
    total: Vec<(&'static str, std::time::Duration)>,
}

impl StageTimes {
    /// Starts a batch: what [`last`](Self::last) reports from now on.
    pub fn start_batch(&mut self) {
        self.last.clear();
    }

    pub fn add(&mut self, stage: &'static str, took: std::time::Duration) {
        for list in [&mut self.last, &mut self.total] {
            match list.iter_mut().find(|(name, _)| *name == stage) {
                Some((_, sum)) => *sum += took,
                None => list.push((stage, took)),
            }
        }
    }

    /// Times `work` as `stage`.
    pub async fn time<T>(&mut self, stage: &'static str, work: impl std::future::Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let result = work.await;
        self.add(stage, started.elapsed());
        result
    }

    pub fn last(&self) -> &[(&'static str, std::time::Duration)] {
        &self.last
    }

    pub fn total(&self) -> &[(&'static str, std::time::Duration)] {
        &self.total
    }

    /// `copy 120ms apply 3.4s` (milliseconds below ten seconds).
    pub fn describe(stages: &[(&'static str, std::time::Duration)]) -> String {
        let shown = stages.iter().map(|(stage, took)| match took.as_millis() {
            ms @ 0..10_000 => format!("{stage} {ms}ms"),
            _ => format!("{stage} {:.1}s", took.as_secs_f64()),
        });
        shown.collect::<Vec<_>>().join(" ")
    }
}

/// A destination for change events.
///
/// The contract, which the pipeline relies on for exactly-once delivery:
///
/// - **Order.** `apply` gets batches one at a time, never concurrently for one
///   sink instance, with the events of each partition in offset order. Events
///   of one row are in one partition (Debezium keys records by primary key).
///   Across partitions there is no order; a sink orders one row's events by
///   [`ChangeEvent::order`](crate::ChangeEvent) and never lets an older event
///   overwrite a newer one.
/// - **Durability.** When `apply` returns `Ok`, the batch's changes *and* its
///   [`Batch::offsets`] are durable, atomically: after a crash the sink holds
///   both or neither (a Delta commit with `txn` actions, one PostgreSQL
///   transaction). When it returns `Err`, nothing of the batch may be visible
///   as applied.
/// - **Resume.** [`durable_offsets`](Sink::durable_offsets) reads back the last
///   offsets a sink holds, with the [`Offsets::cluster`] the last batch
///   named (stored with them); the pipeline resumes each partition right after the
///   lowest offset any sink holds.
/// - **Duplicates.** Because sinks resume from different points, a sink will
///   be given records it already holds: it must skip events at or below its
///   durable offset for their partition ([`Batch::to_apply`]), checked
///   against the offsets it has stored, not a copy cached in the process, so
///   applying a batch twice leaves the same state as applying it once. Stored
///   offsets never go backwards.
/// - **Bad data.** An event the sink cannot apply fails the batch with an
///   error naming the event; [`Error::is_retriable`](crate::Error::is_retriable)
///   tells a transient failure (retry the same batch) from bad data
///   (dead-letter the event, apply the rest).
#[async_trait]
pub trait Sink: Send {
    /// A short name for logs and errors (`delta`, `pg-target`).
    fn name(&self) -> &str;

    /// The offsets this sink durably holds, read from its own store.
    async fn durable_offsets(&mut self) -> Result<Offsets>;

    /// Applies a batch atomically with its offsets; see the trait docs.
    async fn apply(&mut self, batch: &Batch) -> Result<()>;

    /// A short state for progress lines (the Delta sink: each table's
    /// version); `None` when there is nothing worth showing.
    fn status(&self) -> Option<String> {
        None
    }

    /// Where this sink's time went, by stage, if it measures it.
    fn stage_times(&self) -> Option<&StageTimes> {
        None
    }

    /// The column types this sink's copy of `schema.table` holds, as
    /// Debezium encodes them (the connector's default handling modes): the
    /// pipeline's last source of types for schemaless records, after the
    /// source catalog. `None` when the sink cannot say exactly.
    async fn column_types(&mut self, _table: &str) -> Result<Option<crate::TableSchema>> {
        Ok(None)
    }
}
