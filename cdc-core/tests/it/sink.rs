//! The Sink contract, checked on the in-memory sink with real fixture events:
//! replays are skipped, and any split of a stream into batches gives the same
//! final state.
use cdc_core::memory::MemorySink;
use cdc_core::{Batch, Record, Sink};
use proptest::prelude::*;

use crate::common::*;

fn batches(records: &[Record], cuts: &[usize]) -> Vec<Batch> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (records.len() + 1)).collect();
    cuts.push(0);
    cuts.push(records.len());
    cuts.sort_unstable();
    cuts.dedup();
    cuts.windows(2).map(|w| Batch::from_records(records[w[0]..w[1]].iter().cloned())).collect()
}

fn state(sink: &MemorySink) -> String {
    format!("{:?}", sink.tables)
}

async fn apply_all(sink: &mut MemorySink, batches: &[Batch]) {
    for batch in batches {
        sink.apply(batch).await.unwrap();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

#[test]
fn durable_offsets_cover_every_record_kind() {
    let records = decode_all("schemas");
    let mut sink = MemorySink::new();
    runtime().block_on(apply_all(&mut sink, &batches(&records, &[])));
    let offsets = runtime().block_on(sink.durable_offsets()).unwrap();
    // Heartbeats, transaction markers and tombstones advance offsets too.
    for topic in ["__debezium-heartbeat.cdc", "cdc.transaction", "cdc.public.customers"] {
        let last = load("schemas").iter().filter(|r| r.topic == topic).map(|r| r.offset).max().unwrap();
        assert_eq!(offsets.get(topic, 0), Some(last), "{topic}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_batch_split_gives_the_same_state(cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let records = decode_all("schemas");
        let mut whole = MemorySink::new();
        let mut split = MemorySink::new();
        runtime().block_on(async {
            apply_all(&mut whole, &batches(&records, &[])).await;
            apply_all(&mut split, &batches(&records, &cuts)).await;
        });
        prop_assert_eq!(state(&whole), state(&split));
        prop_assert_eq!(whole.offsets, split.offsets);
    }

    /// A restart re-delivers from some earlier point: applying any prefix
    /// again, then the rest, leaves the state of applying everything once.
    #[test]
    fn replaying_a_prefix_changes_nothing(prefix in any::<usize>(), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let records = decode_all("schemas");
        let prefix = prefix % (records.len() + 1);
        let mut once = MemorySink::new();
        let mut replayed = MemorySink::new();
        runtime().block_on(async {
            apply_all(&mut once, &batches(&records, &cuts)).await;
            apply_all(&mut replayed, &batches(&records[..prefix], &cuts)).await;
            apply_all(&mut replayed, &batches(&records, &cuts)).await;
        });
        prop_assert_eq!(state(&once), state(&replayed));
    }
}

/// Kafka delivers records again after a seek or a rebalance, possibly into
/// the batch that holds the first copies: a batch takes each position once
/// (an appending sink, the history, would otherwise write it twice), and
/// keeps records it did not hold yet however the offsets arrive.
#[test]
fn a_batch_takes_a_redelivered_record_once() {
    let records = decode_all("schemas");
    let (head, rest) = records.split_at(6);
    // The first six, then the same partition read again from the start and
    // on: every record of `head` twice, the rest once.
    let delivered: Vec<Record> = head.iter().chain(head).chain(rest).cloned().collect();
    let batch = Batch::from_records(delivered);
    let once = Batch::from_records(records.iter().cloned());
    let positions = |batch: &Batch| batch.events.iter().map(|e| e.position.clone()).collect::<Vec<_>>();
    assert_eq!(positions(&batch), positions(&once));
    assert_eq!(batch.offsets, once.offsets);
    assert_eq!(batch.transactions.len(), once.transactions.len());
}
