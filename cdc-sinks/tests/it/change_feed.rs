//! The Delta change data feed (`change_data_feed = true`), read back by
//! another Delta implementation: the Python `deltalake` package's `load_cdf`.
use std::collections::BTreeMap;

use cdc_core::{Batch, Op, Record, Sink, Value};
use cdc_sinks::DeltaSink;

use crate::store::TestRoot;
use crate::support::*;

/// One row of a feed: (key, change type, the row's `_cdc_order`).
type FeedRow = (i64, String, String);

/// Every change the feed of `table` holds, per commit version, as the Python
/// package reads it (rows of one commit sorted).
fn python_feed(root: &TestRoot, table: &str) -> BTreeMap<i64, Vec<FeedRow>> {
    let script = r#"
import json, os, sys
from deltalake import DeltaTable
dt = DeltaTable(sys.argv[1], storage_options=json.loads(sys.argv[2]))
import pyarrow
rows = pyarrow.table(dt.load_cdf(starting_version=0).read_all()).to_pylist()
print(json.dumps([[r["_commit_version"], r["id"], r["_change_type"], r["_cdc_order"]] for r in rows]), flush=True)
os._exit(0)  # the package's runtime threads can abort the interpreter at exit
"#;
    let options = serde_json::to_string(&root.config().storage_options).unwrap();
    let rows: Vec<(i64, i64, String, String)> =
        serde_json::from_value(python_json(script, &[&root.table_url(table), &options])).unwrap();
    let mut feed: BTreeMap<i64, Vec<FeedRow>> = BTreeMap::new();
    for (version, id, change, order) in rows {
        feed.entry(version).or_default().push((id, change, order));
    }
    feed.values_mut().for_each(|rows| rows.sort());
    feed
}

fn key(values: &[Value]) -> i64 {
    match values.first() {
        Some(Value::Int(id)) => *id,
        other => panic!("customers' key is an integer, not {other:?}"),
    }
}

/// With one event per batch, each commit's feed is exactly that event: an
/// insert for a new key, the stored row and the new one for an update, the
/// stored row for a delete (each with its `_cdc_order`, which names the
/// event that wrote it). A column added with a default rewrites the table
/// in a commit of its own, which the feed shows as every row deleted and
/// inserted again, so a reader replaying the feed gets the column's values.
#[tokio::test]
async fn the_change_data_feed_holds_every_applied_change() {
    let root = TestRoot::new();
    let mut config = root.config();
    config.change_data_feed = true;
    config.history = false;
    let records = table_records("schemas", "customers");
    let mut sink = DeltaSink::new(config.clone());
    let mut expected: Vec<Vec<FeedRow>> = Vec::new();
    let mut stored: BTreeMap<i64, String> = BTreeMap::new();
    let mut columns_held = std::collections::BTreeSet::new();
    for record in &records {
        sink.apply(&Batch::from_records([record.clone()])).await.unwrap();
        let Record::Change(event) = record else { continue };
        let id = key(event.key.as_deref().expect("a keyed table"));
        let order = event.order.to_hex();
        let columns: std::collections::BTreeSet<String> =
            event.schema.fields().iter().map(|f| f.name.clone()).collect();
        let adds_a_column_with_default = !stored.is_empty()
            && event.schema.fields().iter().any(|f| f.default.is_some() && !columns_held.contains(&f.name));
        if adds_a_column_with_default {
            let mut rewrite: Vec<FeedRow> = stored
                .iter()
                .flat_map(|(id, old)| {
                    [(*id, "delete".to_owned(), old.clone()), (*id, "insert".to_owned(), old.clone())]
                })
                .collect();
            rewrite.sort();
            expected.push(rewrite);
        }
        columns_held.extend(columns);
        let mut rows = match (event.op, stored.get(&id)) {
            (Op::Delete, Some(old)) => vec![(id, "delete".to_owned(), old.clone())],
            (Op::Delete, None) => Vec::new(),
            (_, None) => vec![(id, "insert".to_owned(), order.clone())],
            (_, Some(old)) => {
                vec![
                    (id, "update_preimage".to_owned(), old.clone()),
                    (id, "update_postimage".to_owned(), order.clone()),
                ]
            }
        };
        rows.sort();
        match event.op {
            Op::Delete => stored.remove(&id),
            _ => stored.insert(id, order),
        };
        expected.push(rows);
    }
    let feed = python_feed(&root, "customers");
    let changes: Vec<Vec<FeedRow>> = feed.into_values().collect();
    let expected: Vec<Vec<FeedRow>> = expected.into_iter().filter(|rows| !rows.is_empty()).collect();
    assert_eq!(changes, expected);
}
