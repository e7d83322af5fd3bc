//! SCD type 2 tables (`mode = "scd2"`) of the Delta sink and of the
//! PostgreSQL target against a reference SCD2 built from the source's own
//! history: the real-Debezium fixture in the order the source committed it,
//! replayed to the sink in adversarial interleavings of its partitions
//! (`interleavings.rs`).
use std::collections::BTreeMap;

use cdc_core::{Batch, ChangeEvent, Op, Record, Sink, Value};
use cdc_sinks::delta::deltalake::arrow::util::display::array_value_to_string;
use cdc_sinks::delta::time_travel::{self, AsOf};
use cdc_sinks::{DeltaConfig, DeltaSink, PgConnectionConfig, PgTargetSink, TableConfig, TableMode};
use tokio_postgres::SimpleQueryMessage;

use crate::interleavings::{decode, in_source_order, interleavings};
use crate::store::TestRoot;
use crate::support::{connect, fresh_database};

/// Which sink keeps the SCD2 tables.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Delta,
    Pg,
}

/// Where a test's SCD2 tables are kept: a Delta root, or a fresh database
/// for the PostgreSQL target.
struct Store {
    kind: Kind,
    root: TestRoot,
    url: String,
}

impl Store {
    async fn new(kind: Kind, name: &str) -> Store {
        let url = if kind == Kind::Pg { fresh_database(name).await } else { String::new() };
        Store { kind, root: TestRoot::new(), url }
    }

    /// A sink writing here, with `tables`' settings.
    fn sink(&self, tables: &BTreeMap<String, TableConfig>) -> Box<dyn Sink> {
        match self.kind {
            Kind::Delta => Box::new(DeltaSink::new(self.delta_config(tables))),
            Kind::Pg => {
                let mut config = PgConnectionConfig::new(&self.url);
                config.backoff_ms = 20;
                Box::new(PgTargetSink::new(config).with_tables(tables.clone()))
            }
        }
    }

    fn delta_config(&self, tables: &BTreeMap<String, TableConfig>) -> DeltaConfig {
        let mut config = self.root.config();
        config.history = false;
        config.tables = tables.clone();
        config
    }

    /// The rows of `sql`, each column as text ("" for null; booleans
    /// `true` / `false`).
    async fn query(&self, sql: &str) -> Vec<Vec<String>> {
        let mut rows = Vec::new();
        match self.kind {
            Kind::Delta => {
                let config = self.delta_config(&BTreeMap::new());
                for batch in time_travel::query(&config, sql, AsOf::Latest).await.unwrap() {
                    for row in 0..batch.num_rows() {
                        rows.push(
                            (0..batch.num_columns())
                                .map(|c| array_value_to_string(batch.column(c), row).unwrap())
                                .collect(),
                        );
                    }
                }
            }
            Kind::Pg => {
                let client = connect(&self.url).await;
                for message in client.simple_query(sql).await.unwrap() {
                    if let SimpleQueryMessage::Row(row) = message {
                        rows.push(
                            (0..row.len())
                                .map(|c| match row.get(c) {
                                    None => String::new(),
                                    Some("t") => "true".into(),
                                    Some("f") => "false".into(),
                                    Some(text) => text.to_owned(),
                                })
                                .collect(),
                        );
                    }
                }
            }
        }
        rows
    }

    /// A timestamp column as microseconds since the epoch.
    fn micros(&self, column: &str) -> String {
        match self.kind {
            Kind::Delta => format!("CAST({column} AS BIGINT)"),
            Kind::Pg => format!("CAST(extract(epoch FROM {column}) * 1000000 AS BIGINT)"),
        }
    }
}

/// Every table of the fixture in SCD2 mode, tracking `track`'s columns.
fn scd2_tables(track: &BTreeMap<&str, Vec<&str>>) -> BTreeMap<String, TableConfig> {
    TABLES
        .iter()
        .map(|table| {
            let track_history_columns = track.get(table).map(|c| c.iter().map(|c| (*c).to_owned()).collect());
            ((*table).to_owned(), TableConfig { mode: TableMode::Scd2, track_history_columns })
        })
        .collect()
}

/// One version of a row, as compared: the order keys of the change that
/// opened it and of the change whose values it holds, whether it records a
/// delete, whether it is current, and its start time (µs).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Version {
    opened_by: String,
    values_of: String,
    deleted: bool,
    current: bool,
    start_at: Option<i64>,
}

type History = BTreeMap<(String, i64), Vec<Version>>;

fn id_of(event: &ChangeEvent) -> i64 {
    match event.key.as_deref() {
        Some([Value::Int(id)]) => *id,
        other => panic!("the fixture's tables have an integer key, not {other:?}"),
    }
}

/// The reference: every change in source commit order opens a version
/// (a delete a deleted one; a truncate one per live row), unless only
/// columns outside `track` changed (then the version before takes its
/// values).
fn reference(events: &[ChangeEvent], track: &BTreeMap<&str, Vec<&str>>) -> History {
    let mut history: History = BTreeMap::new();
    let tracked = |event: &ChangeEvent, columns: &[&str]| -> Vec<Option<Value>> {
        columns.iter().map(|c| event.after.as_ref().and_then(|a| Some(a[event.schema.index_of(c)?].clone()))).collect()
    };
    let mut last_tracked: BTreeMap<(String, i64), Vec<Option<Value>>> = BTreeMap::new();
    for event in events {
        let table = event.source.table.clone();
        if event.op == Op::Truncate {
            for ((t, _), versions) in history.iter_mut().filter(|((t, _), _)| *t == table) {
                let _ = t;
                if let Some(last) = versions.last_mut().filter(|v| v.current) {
                    last.current = false;
                    let opened_by = event.order.to_hex();
                    let start_at = event.source.ts_micros();
                    versions.push(Version {
                        values_of: opened_by.clone(),
                        opened_by,
                        deleted: true,
                        current: false,
                        start_at,
                    });
                }
            }
            continue;
        }
        let row = (table.clone(), id_of(event));
        let versions = history.entry(row.clone()).or_default();
        let deleted = event.op == Op::Delete;
        let order = event.order.to_hex();
        let columns = track.get(table.as_str());
        let now = columns.map(|c| tracked(event, c));
        let fold = !deleted
            && columns.is_some()
            && versions.last().is_some_and(|v| !v.deleted)
            && last_tracked.get(&row) == now.as_ref();
        if let Some(now) = now {
            last_tracked.insert(row.clone(), now);
        }
        if fold {
            versions.last_mut().unwrap().values_of = order;
            continue;
        }
        if let Some(last) = versions.last_mut() {
            last.current = false;
        }
        let start_at = event.source.ts_micros();
        versions.push(Version { opened_by: order.clone(), values_of: order, deleted, current: !deleted, start_at });
    }
    history
}

/// Every version the sink's SCD2 tables hold, per row in sequence order;
/// checks each version ends where the next starts.
async fn stored(store: &Store, tables: &[&str]) -> History {
    let mut history: History = BTreeMap::new();
    for table in tables {
        let sql = format!(
            "SELECT CAST(id AS BIGINT) AS row_id, __start_order, __end_order, _cdc_order, _cdc_deleted, \
             __is_current, {start} AS start_micros, {end} AS end_micros \
             FROM {table} ORDER BY row_id, __start_order",
            start = store.micros("__start_at"),
            end = store.micros("__end_at"),
        );
        let mut ends: BTreeMap<i64, Vec<(String, String, String, String)>> = BTreeMap::new();
        for row in store.query(&sql).await {
            let [id, start, end, order, deleted, current, start_at, end_at] = <[String; 8]>::try_from(row).unwrap();
            let id: i64 = id.parse().unwrap();
            // A place in the sequence is the opening change's order key,
            // after the place it follows where that one ordered later.
            let opened_by = start.rsplit('.').next().unwrap().to_owned();
            history.entry(((*table).to_owned(), id)).or_default().push(Version {
                opened_by,
                values_of: order,
                deleted: deleted == "true",
                current: current == "true",
                start_at: start_at.parse().ok(),
            });
            ends.entry(id).or_default().push((start, end, start_at, end_at));
        }
        for (id, versions) in ends {
            for pair in versions.windows(2) {
                let ((_, end, _, end_at), (next_start, _, next_at, _)) = (&pair[0], &pair[1]);
                assert_eq!((end, end_at), (next_start, next_at), "{table} {id}: a version ends where the next starts");
            }
            let (_, end, _, end_at) = versions.last().unwrap();
            assert_eq!((end.as_str(), end_at.as_str()), ("", ""), "{table} {id}: the last version is open");
        }
    }
    history
}

const TABLES: [&str; 5] = ["all_types", "customers", "order_items", "orders", "products"];

/// Replays the first `orders` interleavings in batches of `batch_size`.
async fn replay_matches_the_reference(kind: Kind, track: BTreeMap<&str, Vec<&str>>, batch_size: usize, orders: usize) {
    let source_order: Vec<ChangeEvent> = decode(&in_source_order())
        .into_iter()
        .filter_map(|r| match r {
            Record::Change(e) if e.position.topic.starts_with("cdc.public.") => Some(e),
            _ => None,
        })
        .collect();
    let expected = reference(&source_order, &track);
    let expected_big_texts = reference_big_texts(&source_order);
    let tables = scd2_tables(&track);
    for (n, (name, order)) in interleavings().into_iter().take(orders).enumerate() {
        let store = Store::new(kind, &format!("scd2_replay_{batch_size}_{}_{n}", track.len())).await;
        let mut sink = store.sink(&tables);
        let records = decode(&order);
        for batch in records.chunks(batch_size).map(|chunk| Batch::from_records(chunk.iter().cloned())) {
            sink.apply(&batch).await.unwrap_or_else(|e| panic!("{kind:?} {name}: {e}"));
        }
        let found = stored(&store, &TABLES).await;
        assert_eq!(big_texts(&store).await, expected_big_texts, "{kind:?} {name}: TOAST values of all_types");
        for (row, versions) in &expected {
            assert_eq!(found.get(row), Some(versions), "{kind:?} {name}: {row:?}");
        }
        assert_eq!(found.len(), expected.len(), "{kind:?} {name}: rows");
    }
}

/// Every change opens a version; the versions of every row equal the
/// reference's however the partitions interleave, in batches of 7 (and of
/// 1, a commit per record, for the first).
#[tokio::test]
async fn scd2_tables_hold_the_sources_history_in_any_interleaving() {
    replay_matches_the_reference(Kind::Delta, BTreeMap::new(), 7, usize::MAX).await;
    replay_matches_the_reference(Kind::Delta, BTreeMap::new(), 1, 1).await;
}

/// The same for the PostgreSQL target's SCD2 tables.
#[tokio::test]
async fn pg_scd2_tables_hold_the_sources_history_in_any_interleaving() {
    replay_matches_the_reference(Kind::Pg, BTreeMap::new(), 7, usize::MAX).await;
    replay_matches_the_reference(Kind::Pg, BTreeMap::new(), 1, 1).await;
}

fn tracked_columns() -> BTreeMap<&'static str, Vec<&'static str>> {
    BTreeMap::from([("customers", vec!["email"]), ("products", vec!["price"]), ("orders", vec!["status"])])
}

/// With `track_history_columns`, a change to other columns only updates
/// the version before.
#[tokio::test]
async fn untracked_columns_update_the_current_version_in_place() {
    replay_matches_the_reference(Kind::Delta, tracked_columns(), 5, 3).await;
}

#[tokio::test]
async fn pg_untracked_columns_update_the_current_version_in_place() {
    replay_matches_the_reference(Kind::Pg, tracked_columns(), 5, 3).await;
}

/// Per live version of `all_types` (in sequence), the length of
/// `c_big_text`: a change that left it unchanged (TOASTed, not sent)
/// keeps the version before's.
fn reference_big_texts(events: &[ChangeEvent]) -> Vec<(i64, Option<usize>)> {
    let mut last: BTreeMap<i64, Option<usize>> = BTreeMap::new();
    let mut versions: BTreeMap<i64, Vec<Option<usize>>> = BTreeMap::new();
    for event in events.iter().filter(|e| e.source.table == "all_types" && e.op != Op::Truncate) {
        let id = id_of(event);
        let Some(after) = &event.after else { continue };
        let value = match &after[event.schema.index_of("c_big_text").unwrap()] {
            Value::Unavailable => last.get(&id).copied().flatten(),
            Value::String(text) => Some(text.len()),
            _ => None,
        };
        last.insert(id, value);
        versions.entry(id).or_default().push(value);
    }
    versions.into_iter().flat_map(|(id, values)| values.into_iter().map(move |v| (id, v))).collect()
}

async fn big_texts(store: &Store) -> Vec<(i64, Option<usize>)> {
    let sql = "SELECT CAST(id AS BIGINT) AS row_id, CAST(length(c_big_text) AS BIGINT) AS big FROM all_types \
               WHERE NOT _cdc_deleted ORDER BY row_id, __start_order";
    store.query(sql).await.into_iter().map(|row| (row[0].parse().unwrap(), row[1].parse().ok())).collect()
}

/// A transaction open when the snapshot began orders below the snapshot's
/// reads, yet changes the row after them: its version follows the read's
/// (as `supersedes` rules), and a re-snapshot's read is a version too.
#[tokio::test]
async fn versions_follow_the_partition_where_order_keys_cannot_tell() {
    for kind in [Kind::Delta, Kind::Pg] {
        for one_per_record in [false, true] {
            let store = Store::new(kind, &format!("scd2_edge_{one_per_record}")).await;
            let tables = BTreeMap::from([(
                "customers".to_owned(),
                TableConfig { mode: TableMode::Scd2, track_history_columns: None },
            )]);
            let (batches, expected) = crate::support::snapshot_edge_batches(one_per_record);
            let mut sink = store.sink(&tables);
            for batch in &batches {
                sink.apply(batch).await.unwrap();
            }
            let sql = "SELECT CAST(id AS BIGINT) AS row_id, email, __is_current FROM customers \
                       ORDER BY row_id, __start_order";
            let mut versions: BTreeMap<i64, Vec<(String, bool)>> = BTreeMap::new();
            for row in store.query(sql).await {
                versions.entry(row[0].parse().unwrap()).or_default().push((row[1].clone(), row[2] == "true"));
            }
            let wanted = BTreeMap::from([
                (
                    1,
                    vec![
                        ("snapshot@example.com".to_owned(), false),
                        ("streamed@example.com".to_owned(), false),
                        ("resnapshot@example.com".to_owned(), true),
                    ],
                ),
                (2, vec![("snapshot@example.com".to_owned(), false), ("in-flight@example.com".to_owned(), true)]),
            ]);
            assert_eq!(versions, wanted, "{kind:?}, one batch per record: {one_per_record}");
            for (id, email) in expected {
                assert_eq!(versions[&id].last().unwrap().0, email, "the current-state sink's answer for {id}");
            }
        }
    }
}

/// A replayed batch (fixed dead letters, `reapply`) brings changes the
/// table holds: each is recognised by its start and adds no version.
#[tokio::test]
async fn a_replayed_batch_adds_no_version() {
    for kind in [Kind::Delta, Kind::Pg] {
        let store = Store::new(kind, "scd2_replayed").await;
        let tables = scd2_tables(&BTreeMap::new());
        let records = decode(&in_source_order());
        let mut sink = store.sink(&tables);
        for chunk in records.chunks(11) {
            sink.apply(&Batch::from_records(chunk.iter().cloned())).await.unwrap();
        }
        let before = stored(&store, &TABLES).await;
        for chunk in records.chunks(11) {
            let mut batch = Batch::from_records(chunk.iter().cloned());
            batch.reapply = true;
            sink.apply(&batch).await.unwrap();
        }
        assert_eq!(stored(&store, &TABLES).await, before, "{kind:?}");
    }
}

/// A table keeps the mode it was created in: switching the configuration
/// stops the sink with an outage naming the table (never dead letters, and
/// never a current-state MERGE over every version of a key).
#[tokio::test]
async fn a_table_keeps_the_mode_it_was_created_in() {
    let records: Vec<Record> = decode(&in_source_order())
        .into_iter()
        .filter(|r| matches!(r, Record::Change(e) if e.source.table == "customers"))
        .collect();
    let (first, rest) = records.split_at(4);
    for kind in [Kind::Delta, Kind::Pg] {
        for created_as in [TableMode::Current, TableMode::Scd2] {
            let store = Store::new(kind, &format!("scd2_mode_{created_as:?}").to_lowercase()).await;
            let table =
                |mode| BTreeMap::from([("customers".to_owned(), TableConfig { mode, track_history_columns: None })]);
            store.sink(&table(created_as)).apply(&Batch::from_records(first.iter().cloned())).await.unwrap();
            let other = if created_as == TableMode::Scd2 { TableMode::Current } else { TableMode::Scd2 };
            let mut sink = store.sink(&table(other));
            let error = sink.apply(&Batch::from_records(rest.iter().cloned())).await.unwrap_err();
            assert!(error.is_outage() && error.to_string().contains("keeps its mode"), "{kind:?}: {error}");
        }
    }
}

/// The current versions of the PostgreSQL target's SCD2 tables are the
/// source, value for value: every type of `all_types` read back from the
/// table and written as a new version keeps its value exactly, through
/// TOAST updates, deletes, a truncate, a primary-key change and schema
/// changes.
#[tokio::test]
async fn pg_current_versions_equal_the_source() {
    let source = crate::support::source_database("sinks_scd2_source").await;
    let url = fresh_database("sinks_scd2_values").await;
    let records = crate::support::fixture_records("schemas");
    let tables: BTreeMap<String, TableConfig> = crate::support::TABLES
        .iter()
        .map(|t| ((*t).to_owned(), TableConfig { mode: TableMode::Scd2, track_history_columns: None }))
        .collect();
    let mut config = PgConnectionConfig::new(&url);
    config.backoff_ms = 20;
    let mut sink = PgTargetSink::new(config).with_tables(tables);
    for batch in crate::support::batches(&records, 7) {
        sink.apply(&batch).await.unwrap();
    }
    let mirror = connect(&url).await;
    mirror.batch_execute("CREATE SCHEMA current_versions").await.unwrap();
    for table in crate::support::TABLES {
        mirror
            .batch_execute(&format!(
                "CREATE VIEW current_versions.{table} AS SELECT * FROM public.{table} WHERE __is_current"
            ))
            .await
            .unwrap();
    }
    crate::support::assert_mirrors_source(&source, &mirror, "current_versions", false).await;
    let versions: i64 = mirror.query_one("SELECT count(*) FROM public.all_types", &[]).await.unwrap().get(0);
    let current: i64 = mirror.query_one("SELECT count(*) FROM current_versions.all_types", &[]).await.unwrap().get(0);
    assert!(versions > current, "all_types keeps its history: {versions} versions, {current} current");
}
