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
