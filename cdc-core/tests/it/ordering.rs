//! The ordering key follows commit order across concurrent transactions.
use cdc_core::Op;

use crate::common::*;

#[test]
fn order_key_follows_commit_order_where_lsn_does_not() {
    for name in ["schemas", "schemaless"] {
        let records = decode_all(name);
        // Debezium emits in commit order; the fixture is in emission order.
        let streamed: Vec<_> = changes(&records).into_iter().filter(|e| !e.source.is_snapshot()).collect();
        assert!(streamed.len() > 20);
        for pair in streamed.windows(2) {
            let (a, b) = (pair[0].order, pair[1].order);
            // A primary-key update is a delete and a create from one WAL record
            // (same LSN): within a topic, the offset orders them.
            assert!((a.commit_lsn, a.lsn) <= (b.commit_lsn, b.lsn), "{name}: {a} then {b}");
            if pair[0].position.topic == pair[1].position.topic {
                assert!(a < b, "{name}: {a} then {b}");
            }
        }
        // The concurrent section: session A's first change has a lower LSN than
        // session B's, but B committed first.
        let lsn_goes_back = streamed.windows(2).any(|p| p[1].source.lsn < p[0].source.lsn);
        assert!(lsn_goes_back, "{name}: the fixture must show raw LSNs going backwards");
        // Snapshot reads sort before every streamed change.
        let snapshot_max = changes(&records).iter().filter(|e| e.op == Op::Read).map(|e| e.order).max().unwrap();
        assert!(streamed.iter().all(|e| e.order > snapshot_max));
    }
}

#[test]
fn snapshot_rows_share_an_lsn_and_order_by_offset() {
    let records = decode_all("schemas");
    let reads = table_events(&records, "products").into_iter().filter(|e| e.op == Op::Read).collect::<Vec<_>>();
    assert!(reads.windows(2).all(|p| p[0].source.lsn == p[1].source.lsn && p[0].order < p[1].order));
}

/// A snapshot read orders at its own LSN, after every change the snapshot
/// saw; a streamed change at or above the commit before it.
#[test]
fn snapshot_reads_order_at_the_snapshot_lsn() {
    let records = decode_all("schemas");
    for read in changes(&records).into_iter().filter(|e| e.op == Op::Read) {
        let lsn = read.source.lsn.unwrap() as u64;
        assert_eq!((read.order.commit_lsn, read.order.lsn), (lsn, lsn), "{}", read.position);
    }
}

/// A re-snapshot corrects a row a streamed change wrote, and the change of a
/// transaction open when the snapshot began wins over the snapshot's read:
/// in the reference sink (one event at a time) and in a batch's collapse
/// (what the set-based sinks write).
#[test]
fn the_newest_change_wins_at_snapshot_edges() {
    let (records, expected) = cdc_core::testing::snapshot_edges();
    let events = changes(&records);
    let mut reference = cdc_core::memory::MemorySink::new();
    for event in &events {
        reference.apply_event(event);
    }
    let collapsed = match cdc_core::collapse(&events).pop() {
        Some(cdc_core::TableChange::Rows(rows)) => rows,
        other => panic!("{other:?}"),
    };
    for (id, wanted) in expected {
        let wanted = Some(cdc_core::Value::String(wanted.into()));
        let row = reference.tables["public.customers"].live_rows().find(|row| row["id"] == cdc_core::Value::Int(id));
        assert_eq!(row.map(|row| row["email"].clone()), wanted, "customer {id}, reference sink");
        let change = collapsed.iter().find(|c| c.key() == [cdc_core::Value::Int(id)]).expect("the row's change");
        let email = change.event.schema.index_of("email").expect("an email column");
        assert_eq!(change.after.as_ref().map(|after| after[email].clone()), wanted, "customer {id}, collapsed");
    }
}
