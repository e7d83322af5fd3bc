//! The PostgreSQL data lake (raw events + processed state) against a real PostgreSQL.
use cdc_core::{Batch, Decoder, Sink};
use cdc_sinks::{PgConnectionConfig, PgDatalakeSink};

use crate::support::*;

fn sink(url: &str) -> PgDatalakeSink {
    let mut config = PgConnectionConfig::new(url);
    config.backoff_ms = 20;
    PgDatalakeSink::new(config)
}

#[tokio::test]
async fn datalake_keeps_every_event_and_the_current_state() {
    let source = source_database("sinks_lake_source").await;
    let url = fresh_database("sinks_lake").await;
    let records = fixture_records("schemas");
    let mut lake = sink(&url);
    for batch in batches(&records, 11) {
        lake.apply(&batch).await.unwrap();
    }
    let db = connect(&url).await;
    // Every change event once, raw JSON as Debezium sent it.
    let raw: i64 = db.query_one("SELECT count(*) FROM cdc_raw.cdc_events", &[]).await.unwrap().get(0);
    assert_eq!(raw as usize, change_count(&records));
    let price: String = db
        .query_one(
            "SELECT after->>'price' FROM cdc_raw.cdc_events WHERE source_table = 'products' AND op = 'r' \
             ORDER BY kafka_offset LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(price, "AfvP", "raw: the Connect Decimal bytes as sent");
    let ops: Vec<String> = db
        .query("SELECT DISTINCT op FROM cdc_raw.cdc_events ORDER BY op", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ops, ["c", "d", "r", "t", "u"]);

    // Processed: live rows equal the source; deletes are kept, flagged.
    assert_mirrors_source(&source, &db, "cdc_processed", true).await;
    let deleted: Vec<(i32, String)> = db
        .query("SELECT id, _cdc_op FROM cdc_processed.customers WHERE _cdc_deleted ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(deleted, [(5, "d".to_string())], "the primary-key change's old key");
    let truncated: i64 = db
        .query_one("SELECT count(*) FROM cdc_processed.order_items WHERE _cdc_deleted AND _cdc_op = 't'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(truncated, 7, "truncate flags every row it removed");

    // A replay adds nothing.
    let mut restarted = sink(&url);
    for batch in batches(&records, 50) {
        restarted.apply(&batch).await.unwrap();
    }
    let again: i64 = db.query_one("SELECT count(*) FROM cdc_raw.cdc_events", &[]).await.unwrap().get(0);
    assert_eq!(again, raw);
}

#[tokio::test]
async fn raw_events_need_the_raw_json() {
    let url = fresh_database("sinks_lake_raw").await;
    let records = cdc_core::testing::decode_with(&mut Decoder::new(), "schemas");
    let batch = Batch::from_records(records.into_iter().take(30));
    let err = sink(&url).apply(&batch).await.unwrap_err();
    assert!(!err.is_retriable());
    assert!(err.to_string().contains("keep_raw_json"), "{err}");
}

/// init-scripts/datalake-init.sql creates the same raw and offsets tables
/// the sink creates itself.
#[tokio::test]
async fn init_script_matches_what_the_sink_creates() {
    let scripted = fresh_database("sinks_lake_init_a").await;
    let by_sink = fresh_database("sinks_lake_init_b").await;
    let script =
        std::fs::read_to_string(cdc_core::testing::repo_root().join("init-scripts/datalake-init.sql")).unwrap();
    let a = connect(&scripted).await;
    a.batch_execute(&script).await.unwrap();
    let records = fixture_records("schemas");
    let batch = &batches(&records, 60)[0];
    sink(&by_sink).apply(batch).await.unwrap();
    sink(&scripted).apply(batch).await.unwrap();
    let b = connect(&by_sink).await;
    for (schema, table) in [("cdc_raw", "cdc_events"), ("cdc_meta", "offsets")] {
        assert_eq!(columns(&a, schema, table).await, columns(&b, schema, table).await, "{schema}.{table}");
    }
}

/// A re-snapshot corrects a row a streamed change wrote, and the change of a
/// transaction open when the snapshot began wins over the snapshot's read.
#[tokio::test]
async fn processed_state_ends_as_the_source_at_snapshot_edges() {
    for one_per_record in [false, true] {
        let url = fresh_database(&format!("sinks_datalake_snapshot_edges_{one_per_record}")).await;
        let (batches, expected) = snapshot_edge_batches(one_per_record);
        let mut datalake = sink(&url);
        for batch in &batches {
            datalake.apply(batch).await.unwrap();
        }
        let db = connect(&url).await;
        for (id, wanted) in expected {
            let row = db.query_one("SELECT email FROM cdc_processed.customers WHERE id = $1", &[&(id as i32)]).await;
            let email: String = row.unwrap().get(0);
            assert_eq!(email, wanted, "customer {id}, one batch per record: {one_per_record}");
        }
    }
}
