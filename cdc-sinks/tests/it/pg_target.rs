//! The PostgreSQL target mirror against a real PostgreSQL.
use cdc_core::testing::changes;
use cdc_core::{Batch, Decoder, Offsets, RawRecord, Record, Sink};
use cdc_sinks::{PgConnectionConfig, PgTargetSink};

use crate::support::*;

fn sink(url: &str) -> PgTargetSink {
    let mut config = PgConnectionConfig::new(url);
    config.backoff_ms = 20;
    PgTargetSink::new(config)
}

async fn apply_all(sink: &mut PgTargetSink, batches: &[Batch]) {
    for batch in batches {
        sink.apply(batch).await.unwrap();
    }
}

/// The real-Debezium fixture applied in small batches (TOAST update, delete,
/// truncate, primary-key change and schema changes land in different
/// batches) leaves the target equal to the source.
#[tokio::test]
async fn target_equals_source_after_the_fixture() {
    let source = source_database("sinks_target_source").await;
    let url = fresh_database("sinks_target").await;
    let records = fixture_records("schemas");
    let mut target = sink(&url);
    apply_all(&mut target, &batches(&records, 7)).await;
    let mirror = connect(&url).await;
    assert_mirrors_source(&source, &mirror, "public", false).await;

    // Types are faithful, and schema changes landed.
    let types: Vec<(String, String)> = mirror
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = 'public.products'::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let ty = |name: &str| types.iter().find(|(n, _)| n == name).map(|(_, t)| t.as_str()).unwrap();
    assert_eq!(ty("price"), "numeric(10,2)");
    assert_eq!(ty("name"), "character varying(100)");
    assert_eq!(ty("created_at"), "timestamp without time zone");
    assert_eq!(ty("stock_quantity"), "bigint", "int -> bigint followed the source");
    assert_eq!(ty("category"), "character varying(50)", "a dropped source column stays");
    assert_eq!(ty("_cdc_order"), "text");
    let pk: String = mirror
        .query_one(
            "SELECT string_agg(a.attname, ',') FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
             AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'public.customers'::regclass AND i.indisprimary",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pk, "id");
    // Rows written after the drop have nulls there.
    let category: Option<String> =
        mirror.query_one("SELECT category FROM products WHERE id = 6", &[]).await.unwrap().get(0);
    assert_eq!(category, None);

    // Offsets are durable and read back by a new sink instance.
    let offsets = sink(&url).durable_offsets().await.unwrap();
    let last = records.last().unwrap().position();
    assert_eq!(offsets.get(&last.topic, last.partition), Some(last.offset));
}

/// Applying an already-applied range again changes nothing, also with a
/// fresh sink instance (after a restart).
#[tokio::test]
async fn replaying_applied_batches_changes_nothing() {
    let url = fresh_database("sinks_target_replay").await;
    let records = fixture_records("schemas");
    let all = batches(&records, 25);
    let mut target = sink(&url);
    apply_all(&mut target, &all).await;
    let mirror = connect(&url).await;
    let before = snapshot(&mirror).await;
    let mut restarted = sink(&url);
    apply_all(&mut restarted, &all[2..5]).await;
    apply_all(&mut restarted, &all).await;
    assert_eq!(before, snapshot(&mirror).await);
}

async fn snapshot(client: &tokio_postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    for table in TABLES {
        let rows = client
            .query(&format!("SELECT (to_jsonb(t) - '_cdc_synced_at')::text FROM public.{table} t ORDER BY id"), &[])
            .await
            .unwrap();
        out.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    out
}

/// An event older than the row's current state (here: delivered later from
/// another partition) never overwrites it.
#[tokio::test]
async fn older_events_never_overwrite_newer_rows() {
    let url = fresh_database("sinks_target_order").await;
    let records = fixture_records("schemas");
    let events = changes(&records);
    let updates: Vec<_> =
        events.iter().filter(|e| e.source.table == "orders" && e.op == cdc_core::Op::Update).collect();
    let (older, newer) = (updates[0], updates[1]);
    assert!(older.order < newer.order);
    let mut target = sink(&url);
    // Snapshot first, then the newer update, then the older one from elsewhere.
    let snapshot: Vec<Record> =
        records.iter().filter(|r| matches!(r, Record::Change(e) if e.op == cdc_core::Op::Read)).cloned().collect();
    target.apply(&Batch::from_records(snapshot)).await.unwrap();
    target.apply(&Batch { events: vec![moved(newer, 7, 1)], ..Batch::default() }).await.unwrap();
    target.apply(&Batch { events: vec![moved(older, 8, 1)], ..Batch::default() }).await.unwrap();
    let mirror = connect(&url).await;
    let id = match &newer.key.as_ref().unwrap()[0] {
        cdc_core::Value::Int(i) => *i as i32,
        other => panic!("{other:?}"),
    };
    let order: String = mirror.query_one("SELECT _cdc_order FROM orders WHERE id = $1", &[&id]).await.unwrap().get(0);
    assert_eq!(order, newer.order.to_hex());
}

/// Table and column names from events are quoted: a hostile name is just a name.
#[tokio::test]
async fn hostile_identifiers_cannot_inject_sql() {
    let url = fresh_database("sinks_target_hostile").await;
    let mirror = connect(&url).await;
    mirror.batch_execute("CREATE TABLE victim (id int); INSERT INTO victim VALUES (1)").await.unwrap();
    let table = r#"we\"ird; DROP TABLE victim; --"#;
    let column = r#"ç\"ol'); DELETE FROM victim; --"#;
    let value = format!(
        r#"{{"schema":{{"type":"struct","fields":[{{"type":"struct","optional":true,"field":"after","fields":[
            {{"type":"int32","optional":false,"field":"id"}},{{"type":"string","optional":true,"field":"{column}"}}]}}],"optional":false}},
           "payload":{{"before":null,"after":{{"id":1,"{column}":"x'); DROP TABLE victim; --"}},
           "source":{{"schema":"public","table":"{table}","lsn":10,"txId":1,"sequence":"[\"9\",\"10\"]"}},"op":"c"}}}}"#
    );
    let key =
        br#"{"schema":{"type":"struct","fields":[{"type":"int32","optional":false,"field":"id"}]},"payload":{"id":1}}"#;
    let raw =
        RawRecord { topic: "cdc.public.weird", partition: 0, offset: 0, key: Some(key), value: Some(value.as_bytes()) };
    let record = Decoder::new().decode(raw).unwrap();
    sink(&url).apply(&Batch::from_records([record])).await.unwrap();
    let victims: i64 = mirror.query_one("SELECT count(*) FROM victim", &[]).await.unwrap().get(0);
    assert_eq!(victims, 1);
    let stored: String = mirror
        .query_one(
            &format!(
                "SELECT \"{}\" FROM public.\"{}\"",
                r#"ç"ol'); DELETE FROM victim; --"#.replace('"', "\"\""),
                r#"we"ird; DROP TABLE victim; --"#.replace('"', "\"\"")
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, "x'); DROP TABLE victim; --");
}

/// The connection is killed while a batch waits inside its transaction: the
/// transaction rolls back, the sink reconnects and applies the batch again.
#[tokio::test]
async fn connection_killed_mid_batch_is_retried() {
    let url = fresh_database("sinks_target_kill").await;
    let records = fixture_records("schemas");
    let all = batches(&records, 40);
    let mut target = sink(&url);
    target.apply(&all[0]).await.unwrap();
    let admin = connect(&url).await;
    // Block the sink's next transaction on a lock, kill its backend, release.
    admin.batch_execute("BEGIN; LOCK TABLE public.customers IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let killer = tokio::spawn(async move {
        let mut killed = 0;
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            let rows = admin
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = 'pg-target' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap();
            killed += rows.len();
            if killed > 0 {
                break;
            }
        }
        admin.batch_execute("COMMIT").await.unwrap();
        killed
    });
    for batch in &all[1..] {
        target.apply(batch).await.unwrap();
    }
    assert_eq!(killer.await.unwrap(), 1, "the sink's backend was killed once");
    let source = source_database("sinks_target_kill_source").await;
    assert_mirrors_source(&source, &connect(&url).await, "public", false).await;
}

/// A column whose type changes to one PostgreSQL cannot widen in place is a
/// clear, non-retriable error naming the table and column.
#[tokio::test]
async fn incompatible_type_change_is_a_clear_error() {
    let url = fresh_database("sinks_target_types").await;
    let record = |offset: i64, ty: &str, value: &str| {
        let json = format!(
            r#"{{"schema":{{"type":"struct","fields":[{{"type":"struct","optional":true,"field":"after","fields":[
                {{"type":"int32","optional":false,"field":"id"}},{{"type":"{ty}","optional":true,"field":"v"}}]}}],"optional":false}},
               "payload":{{"before":null,"after":{{"id":1,"v":{value}}},
               "source":{{"schema":"public","table":"t","lsn":{offset},"txId":1}},"op":"c"}}}}"#
        );
        let key = r#"{"id":1}"#;
        let raw = RawRecord {
            topic: "cdc.public.t",
            partition: 0,
            offset,
            key: Some(key.as_bytes()),
            value: Some(json.as_bytes()),
        };
        // A fresh decoder each time: the decoder's own check would stop it first.
        Decoder::new().decode(raw).unwrap()
    };
    let mut target = sink(&url);
    target.apply(&Batch::from_records([record(1, "int32", "5")])).await.unwrap();
    target.apply(&Batch::from_records([record(2, "int64", "5000000000")])).await.expect("int -> bigint widens");
    let err = target.apply(&Batch::from_records([record(3, "boolean", "true")])).await.unwrap_err();
    assert!(!err.is_retriable());
    let message = err.to_string();
    assert!(message.contains("column v of public.t is bigint") && message.contains("boolean"), "{message}");
}

/// init-scripts/target-init.sql creates what the sink expects.
#[tokio::test]
async fn init_script_prepares_the_target() {
    let url = fresh_database("sinks_target_init").await;
    let db = connect(&url).await;
    let script = std::fs::read_to_string(cdc_core::testing::repo_root().join("init-scripts/target-init.sql")).unwrap();
    db.batch_execute(&script).await.unwrap();
    let records = fixture_records("schemas");
    let mut target = sink(&url);
    assert!(target.durable_offsets().await.unwrap().is_empty());
    target.apply(&batches(&records, 1000)[0]).await.unwrap();
    let offsets: i64 = db.query_one("SELECT count(*) FROM cdc_meta.offsets", &[]).await.unwrap().get(0);
    assert!(offsets >= 4, "one row per topic-partition");
}

fn int_key(event: &cdc_core::ChangeEvent) -> i32 {
    match &event.key.as_ref().expect("keyed")[0] {
        cdc_core::Value::Int(i) => *i as i32,
        other => panic!("{other:?}"),
    }
}

/// After a hard delete, an older event of the same key arriving later (from
/// another partition) must not bring the row back: the delete's order key
/// is remembered.
#[tokio::test]
async fn a_deleted_row_stays_deleted_when_an_older_event_arrives_later() {
    let url = fresh_database("sinks_target_tombstone").await;
    let records = fixture_records("schemas");
    let events = changes(&records);
    let (older, delete) = events
        .iter()
        .filter(|d| d.op == cdc_core::Op::Delete)
        .find_map(|d| {
            let older = events.iter().find(|e| {
                e.source.table == d.source.table && e.key == d.key && e.op != cdc_core::Op::Delete && e.order < d.order
            })?;
            Some((*older, *d))
        })
        .expect("a deleted row with an earlier change");
    let mut target = sink(&url);
    target.apply(&Batch { events: vec![moved(older, 7, 1)], ..Batch::default() }).await.unwrap();
    target.apply(&Batch { events: vec![moved(delete, 8, 1)], ..Batch::default() }).await.unwrap();
    // The same older change again, as another partition would deliver it late.
    target.apply(&Batch { events: vec![moved(older, 9, 1)], ..Batch::default() }).await.unwrap();
    let mirror = connect(&url).await;
    let sql = format!("SELECT count(*) FROM \"{}\".\"{}\" WHERE id = $1", delete.source.schema, delete.source.table);
    let count: i64 = mirror.query_one(&sql, &[&int_key(delete)]).await.unwrap().get(0);
    assert_eq!(count, 0, "{} id {} resurrected", delete.source.table, int_key(delete));
}

/// A truncate removes what is older than it, not what arrived before it: a
/// row written after the truncate (consumed first, from another partition)
/// stays, and an older row consumed after it stays out.
#[tokio::test]
async fn truncate_applies_by_order() {
    let url = fresh_database("sinks_target_truncate").await;
    let records = fixture_records("schemas");
    let events = changes(&records);
    let truncate = events.iter().find(|e| e.op == cdc_core::Op::Truncate).expect("a truncate");
    let same_table = |e: &&&cdc_core::ChangeEvent| e.source.table == truncate.source.table && e.key.is_some();
    let after = events.iter().filter(same_table).find(|e| e.order > truncate.order).expect("a row after it");
    let before = events.iter().filter(same_table).find(|e| e.order < truncate.order && e.key != after.key).unwrap();
    let mut target = sink(&url);
    target.apply(&Batch { events: vec![moved(after, 7, 1)], ..Batch::default() }).await.unwrap();
    target.apply(&Batch { events: vec![moved(truncate, 8, 1)], ..Batch::default() }).await.unwrap();
    target.apply(&Batch { events: vec![moved(before, 9, 1)], ..Batch::default() }).await.unwrap();
    let mirror = connect(&url).await;
    let sql = format!("SELECT id FROM \"{}\".\"{}\" ORDER BY id", truncate.source.schema, truncate.source.table);
    let ids: Vec<i32> = mirror.query(&sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, vec![int_key(after)]);
}

/// A value the client cannot serialise for its column (a list where the
/// table has a text column) is bad data: not retriable, and the error names
/// the record, so the pipeline dead-letters it instead of retrying for ever.
#[tokio::test]
async fn a_value_the_client_cannot_serialise_is_bad_data() {
    let url = fresh_database("sinks_target_serialise").await;
    let record = |offset: i64, value: &str| {
        let json = format!(
            r#"{{"before":null,"after":{{"id":1,"v":{value}}},
               "source":{{"schema":"public","table":"t","lsn":{offset},"txId":1}},"op":"c"}}"#
        );
        let raw = RawRecord {
            topic: "cdc.public.t",
            partition: 0,
            offset,
            key: Some(br#"{"id":1}"#),
            value: Some(json.as_bytes()),
        };
        Decoder::new().type_by_json_shape(true).decode(raw).unwrap()
    };
    let mut target = sink(&url);
    target.apply(&Batch::from_records([record(1, r#""text""#)])).await.unwrap();
    let err = target.apply(&Batch::from_records([record(2, r#"["a","b"]"#)])).await.unwrap_err();
    assert!(!err.is_retriable(), "{err}");
    assert!(err.to_string().contains("cdc.public.t[0]@2"), "{err}");
}

/// The Kafka cluster a batch's offsets belong to is stored with them (the
/// pipeline refuses offsets of another cluster); a batch that names none
/// (a file replay) keeps the one stored.
#[tokio::test]
async fn the_kafka_cluster_is_stored_with_the_offsets() {
    let url = fresh_database("sinks_target_cluster").await;
    let mut all = batches(&fixture_records("schemas"), 25);
    all[0].offsets.cluster = Some("cluster-a".into());
    let mut target = sink(&url);
    target.apply(&all[0]).await.unwrap();
    assert_eq!(sink(&url).durable_offsets().await.unwrap().cluster.as_deref(), Some("cluster-a"));
    target.apply(&all[1]).await.unwrap();
    let after = sink(&url).durable_offsets().await.unwrap();
    assert_eq!(after.cluster.as_deref(), Some("cluster-a"));
    assert!(all[1].offsets.iter().all(|(t, p, o)| after.get(t, p) == Some(o)), "the second batch was applied");
}

/// A re-snapshot corrects a row a streamed change wrote, and the change of a
/// transaction open when the snapshot began wins over the snapshot's read.
#[tokio::test]
async fn the_mirror_ends_as_the_source_at_snapshot_edges() {
    for one_per_record in [false, true] {
        let url = fresh_database(&format!("sinks_target_snapshot_edges_{one_per_record}")).await;
        let (batches, expected) = snapshot_edge_batches(one_per_record);
        apply_all(&mut sink(&url), &batches).await;
        let mirror = connect(&url).await;
        for (id, wanted) in expected {
            let row = mirror.query_one("SELECT email FROM public.customers WHERE id = $1", &[&(id as i32)]).await;
            let email: String = row.unwrap().get(0);
            assert_eq!(email, wanted, "customer {id}, one batch per record: {one_per_record}");
        }
    }
}

/// Columns widened at the source (numeric(10,2) -> numeric(14,4), varchar(20)
/// -> varchar(40) -> text) are widened in place, in one batch or across
/// batches, and the values that need the wider type are stored exactly.
#[tokio::test]
async fn widened_columns_are_altered_in_place() {
    for one_per_record in [false, true] {
        let url = fresh_database(&format!("sinks_target_widening_{one_per_record}")).await;
        let (records, (amount, status)) = cdc_core::testing::widening_changes();
        let batches = batches(&records, if one_per_record { 1 } else { records.len() });
        apply_all(&mut sink(&url), &batches).await;
        let mirror = connect(&url).await;
        let row = mirror.query_one("SELECT total_amount::text, status FROM public.orders", &[]).await.unwrap();
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), (amount.to_owned(), status.clone()));
        for (column, wanted) in [("total_amount", "numeric(14,4)"), ("status", "text")] {
            let sql = "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
                       WHERE attrelid = 'public.orders'::regclass AND attname = $1";
            let found: String = mirror.query_one(sql, &[&column]).await.unwrap().get(0);
            assert_eq!(found, wanted, "{column}, one batch per record: {one_per_record}");
        }
    }
}

/// A delete's tombstone stays while some partition of its topic may still
/// hold an older event of the key (here: one not consumed yet), and goes
/// once every partition has applied newer events.
#[tokio::test]
async fn tombstones_go_once_every_partition_has_passed_them() {
    let records = fixture_records("schemas");
    let events = changes(&records);
    let customers = |e: &&&cdc_core::ChangeEvent| e.source.table == "customers";
    let delete = events.iter().filter(customers).find(|e| e.op == cdc_core::Op::Delete).expect("a customer delete");
    let newer: Vec<&cdc_core::ChangeEvent> =
        events.iter().filter(customers).filter(|e| e.order > delete.order && e.key != delete.key).copied().collect();
    assert!(newer.len() >= 2, "two newer customer events");
    for (partitions, pruned) in [(3, false), (2, true)] {
        let url = fresh_database(&format!("sinks_target_prune_{partitions}")).await;
        let batch = |events: Vec<cdc_core::ChangeEvent>| {
            let mut offsets = Offsets::new();
            for event in &events {
                offsets.advance(&event.position);
            }
            offsets.partition_counts.insert("cdc.public.customers".into(), partitions);
            Batch { events, offsets, ..Batch::default() }
        };
        let mut target = sink(&url);
        target.apply(&batch(vec![moved(delete, 0, 10)])).await.unwrap();
        target.apply(&batch(vec![moved(newer[0], 0, 11), moved(newer[1], 1, 5)])).await.unwrap();
        let mirror = connect(&url).await;
        let left: i64 = mirror
            .query_one("SELECT count(*) FROM cdc_meta.deleted_keys WHERE row_key <> ''", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, if pruned { 0 } else { 1 }, "{partitions} partitions");
    }
}
