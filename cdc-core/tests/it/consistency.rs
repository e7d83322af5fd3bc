//! Transaction boundaries from the real fixture's transaction metadata.
use cdc_core::consistency::TransactionTracker;
use cdc_core::{Batch, Record, TransactionStatus};

use crate::common::*;

/// The fixture's capture ran with a marker table whose topic is not in it.
fn tracker() -> TransactionTracker {
    TransactionTracker::new(["public.capture_marker".to_owned()])
}

/// The fixture in source order, as batches of `size` records.
fn batches(size: usize) -> Vec<Batch> {
    let records = decode_all("schemas");
    records.chunks(size).map(|chunk| Batch::from_records(chunk.iter().cloned())).collect()
}

/// The id of the last END of the fixture's data transactions.
fn last_end() -> String {
    decode_all("schemas")
        .iter()
        .rev()
        .find_map(|r| match r {
            Record::Transaction(m) if m.status == TransactionStatus::End => Some(m.id.clone()),
            _ => None,
        })
        .unwrap()
}

#[test]
fn the_whole_stream_ends_on_its_last_transaction() {
    let mut tracker = tracker();
    for batch in batches(7) {
        tracker.observe(&batch.events, &batch.transactions);
    }
    assert_eq!(tracker.exact_boundary().map(|b| b.id.clone()), Some(last_end()));
    assert_eq!(tracker.open_transactions(), 0);
}

/// Between a transaction's first and last change the tables show it half:
/// no boundary is exact. Replaying what was observed changes nothing.
#[test]
fn a_half_applied_transaction_has_no_exact_boundary() {
    let records = decode_all("schemas");
    let changes = changes(&records);
    let first_tx = changes.iter().find(|e| e.transaction.is_some()).and_then(|e| e.tx_id()).unwrap();
    let in_tx: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r, Record::Change(e) if e.tx_id() == Some(first_tx) && e.transaction.is_some()))
        .map(|(i, _)| i)
        .collect();
    assert!(in_tx.len() >= 2, "a transaction of several changes");
    let mut tracker = tracker();
    let (head, tail) = records.split_at(in_tx[1]);
    let head = Batch::from_records(head.iter().cloned());
    tracker.observe(&head.events, &head.transactions);
    assert_eq!(tracker.exact_boundary(), None, "one change of {first_tx} applied");
    let before = tracker.clone();
    tracker.observe(&head.events, &head.transactions);
    assert_eq!(tracker, before, "a replay counts nothing twice");
    let tail = Batch::from_records(tail.iter().cloned());
    tracker.observe(&tail.events, &tail.transactions);
    assert_eq!(tracker.exact_boundary().map(|b| b.id.clone()), Some(last_end()));
}

/// The END records count every captured table: a sink that never gets one
/// of them (not told to ignore it) never sees a transaction complete.
#[test]
fn a_table_not_consumed_must_be_named() {
    let mut tracker = TransactionTracker::new([]);
    for batch in batches(7) {
        tracker.observe(&batch.events, &batch.transactions);
    }
    assert_eq!(tracker.exact_boundary(), None);
}
