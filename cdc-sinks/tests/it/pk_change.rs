//! A primary-key change of a row whose TOASTed value did not change (real
//! Debezium output, REPLICA IDENTITY DEFAULT): the delete of the old key and
//! the create of the new one share an LSN, and the create carries the
//! unavailable placeholder; the value exists only in the old key's row. Every
//! sink must carry it over, whether the two land in one batch, the delete in
//! an earlier batch, or the create first (from another partition).
use cdc_core::{Batch, ChangeEvent, Op, Record, Sink, Value};
use cdc_sinks::{PgConnectionConfig, PgDatalakeSink, PgTargetSink};

use crate::support::{connect, fixture_records, fresh_database, moved};

/// The `toasty` table's events: two snapshot reads, then (1 -> 2) and
/// (10 -> 20, then an update of 20 in the same transaction).
fn toasty() -> Vec<ChangeEvent> {
    fixture_records("fidelity-schemas")
        .into_iter()
        .filter_map(|r| match r {
            Record::Change(e) if e.source.table == "toasty" => Some(e),
            _ => None,
        })
        .collect()
}

/// Each way the events can be cut into batches, by name.
fn scenarios() -> Vec<(&'static str, Vec<Vec<ChangeEvent>>)> {
    let events = toasty();
    let ops: Vec<Op> = events.iter().map(|e| e.op).collect();
    assert_eq!(ops, [Op::Read, Op::Read, Op::Delete, Op::Create, Op::Delete, Op::Create, Op::Update], "fixture");
    let [r1, r10, d1, c2, d10, c20, u20] = <[ChangeEvent; 7]>::try_from(events).unwrap();
    assert!(matches!(c2.after.as_ref().unwrap()[1], Value::Unavailable), "the create carries the placeholder");
    // Creates read from another partition, ahead of their deletes.
    let (c2_early, c20_early, u20_early) = (moved(&c2, 1, 0), moved(&c20, 1, 1), moved(&u20, 1, 2));
    vec![
        (
            "snapshot earlier, the change in one batch",
            vec![vec![r1.clone(), r10.clone()], vec![d1.clone(), c2.clone(), d10.clone(), c20.clone(), u20.clone()]],
        ),
        (
            "one batch",
            vec![vec![r1.clone(), r10.clone(), d1.clone(), c2.clone(), d10.clone(), c20.clone(), u20.clone()]],
        ),
        (
            "deletes in earlier batches",
            vec![
                vec![r1.clone(), r10.clone(), d1.clone()],
                vec![c2.clone(), d10.clone()],
                vec![c20.clone(), u20.clone()],
            ],
        ),
        (
            "creates first, deletes in a later batch",
            vec![vec![r1.clone(), r10.clone(), c2_early, c20_early, u20_early], vec![d1.clone(), d10.clone()]],
        ),
        ("each change its own batch", [r1, r10, d1, c2, d10, c20, u20].into_iter().map(|e| vec![e]).collect()),
    ]
}

/// The big value of each snapshot read, by id.
fn source_values() -> Vec<(i32, String, String)> {
    let events = toasty();
    let text = |e: &ChangeEvent, i: usize| match &e.after.as_ref().unwrap()[i] {
        Value::String(s) => s.to_string(),
        other => panic!("{other:?}"),
    };
    vec![(2, text(&events[0], 1), "first".into()), (20, text(&events[1], 1), "twentieth, again".into())]
}

async fn apply(sink: &mut dyn Sink, batches: &[Vec<ChangeEvent>]) {
    for events in batches {
        sink.apply(&Batch { events: events.clone(), ..Batch::default() }).await.unwrap();
    }
}

#[tokio::test]
async fn postgres_sinks_carry_toast_over_a_primary_key_change() {
    for (name, batches) in scenarios() {
        for (sink_name, table) in [("target", "public.toasty"), ("datalake", "cdc_processed.toasty")] {
            let url = fresh_database(&format!("pk_change_{sink_name}")).await;
            let config = PgConnectionConfig::new(&url);
            let mut sink: Box<dyn Sink> = match sink_name {
                "target" => Box::new(PgTargetSink::new(config)),
                _ => Box::new(PgDatalakeSink::new(config)),
            };
            apply(sink.as_mut(), &batches).await;
            let live = if sink_name == "datalake" { "WHERE NOT _cdc_deleted" } else { "" };
            let rows: Vec<(i32, String, String)> = connect(&url)
                .await
                .query(&format!("SELECT id, coalesce(big, 'NULL'), note FROM {table} {live} ORDER BY id"), &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            assert!(
                rows == source_values(),
                "{sink_name}, {name}: {:?}",
                rows.iter().map(|r| (r.0, &r.1[..8.min(r.1.len())], &r.2)).collect::<Vec<_>>()
            );
        }
    }
}

/// The Delta sink pays what a primary-key change owes in every order: from
/// the batch, the stored old row, the flagged row (soft delete), the old
/// key's events in the `cdc_events` history (delete in an earlier batch), or,
/// when the create was stored first, in the delete's batch. Without the
/// history, a hard delete committed before its create leaves the value
/// unknown: null, and listed in `_cdc_owed`.
#[cfg(feature = "delta")]
#[tokio::test]
async fn delta_carries_toast_over_a_primary_key_change() {
    use cdc_sinks::DeltaSink;
    use cdc_sinks::delta::time_travel::{self, AsOf};
    let text = |a: &dyn cdc_sinks::delta::deltalake::arrow::array::Array, i| {
        cdc_sinks::delta::deltalake::arrow::util::display::array_value_to_string(a, i).unwrap()
    };
    for (name, batches) in scenarios() {
        for (soft_delete, history) in [(false, true), (true, true), (true, false), (false, false)] {
            let root = crate::store::TestRoot::new();
            let mut config = root.config();
            config.soft_delete = soft_delete;
            config.history = history;
            let mut sink = DeltaSink::new(config.clone());
            apply(&mut sink, &batches).await;
            let live = if soft_delete { "WHERE NOT _cdc_deleted" } else { "" };
            let found = time_travel::query(&config, &format!("SELECT * FROM toasty {live} ORDER BY id"), AsOf::Latest)
                .await
                .unwrap();
            let mut rows: Vec<(i32, String, String)> = Vec::new();
            let mut owed: Vec<String> = Vec::new();
            for b in &found {
                let column = |n: &str| b.column_by_name(n).map(|c| c.as_ref());
                for i in 0..b.num_rows() {
                    let big = column("big").filter(|c| !c.is_null(i)).map_or("NULL".into(), |c| text(c, i));
                    rows.push((text(column("id").unwrap(), i).parse().unwrap(), big, text(column("note").unwrap(), i)));
                    owed.push(column("_cdc_owed").filter(|c| !c.is_null(i)).map_or(String::new(), |c| text(c, i)));
                }
            }
            let unknowable =
                !soft_delete && !history && (name.starts_with("deletes in earlier") || name.contains("own batch"));
            let (expected, expected_owed) = if unknowable {
                let nulls = source_values().into_iter().map(|(id, _, note)| (id, "NULL".to_owned(), note)).collect();
                (nulls, vec!["[big]".to_owned(); 2])
            } else {
                (source_values(), vec![String::new(); 2])
            };
            assert!(
                rows == expected && owed == expected_owed,
                "soft {soft_delete}, history {history}, {name}: {:?} owing {owed:?}",
                rows.iter().map(|r| (r.0, &r.1[..8.min(r.1.len())], &r.2)).collect::<Vec<_>>()
            );
        }
    }
}
