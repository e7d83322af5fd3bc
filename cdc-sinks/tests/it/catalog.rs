//! Schemaless records typed from the source's catalog (`source_schema_url`)
//! decode, and apply, exactly as the same records with schemas.
use cdc_core::catalog::{BinaryMode, DecimalMode, HandlingModes, IntervalMode, SchemaCatalog, TimePrecisionMode};
use std::sync::{Arc, Mutex};

use cdc_core::pipeline::{DeadLetter, DeadLetterStore, Pipeline};
use cdc_core::testing::{FixtureRecord, capture_sql, load, without_schemas};
use cdc_core::{Decoder, Record, Sink, TableSchema};
use cdc_sinks::{PgConnectionConfig, PgSourceCatalog, PgTargetSink, pg_type};
use tokio_postgres::Client;

use crate::support::{TABLES, connect, dump, dump_rows, fixture_records, fresh_database};

/// A source database whose catalog is what a live consumer reads while the
/// fixture's records arrive: the final schema, but with the column the
/// workload drops at its very end still there (a catalog read after the
/// drop cannot type records written before it; see docs/DESIGN.md).
async fn live_source(name: &str) -> (String, Client) {
    let url = fresh_database(name).await;
    let client = connect(&url).await;
    for (file, sql) in capture_sql() {
        let sql = sql.replace("ALTER TABLE products DROP COLUMN category;", "");
        client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    (url, client)
}

fn catalog(url: &str, modes: HandlingModes) -> PgSourceCatalog {
    PgSourceCatalog::new(PgConnectionConfig::new(url), modes)
}

/// Each table's schema in the last record of the fixture that has it.
fn final_record_schemas(fixture: &str) -> Vec<(String, TableSchema)> {
    let records = fixture_records(fixture);
    let mut last = std::collections::BTreeMap::new();
    for record in &records {
        if let Record::Change(event) = record
            && !event.schema.fields().is_empty()
        {
            last.insert(event.source.table.clone(), (*event.schema).clone());
        }
    }
    last.into_iter().collect()
}

/// Every column the catalog types is typed as Debezium typed it in the
/// records with schemas: same type, nullability, default and PostgreSQL
/// column type, under each converter mode the fixtures were captured with.
#[tokio::test]
async fn catalog_types_equal_the_record_schemas() {
    let url = fresh_database("catalog_types").await;
    let client = connect(&url).await;
    for (file, sql) in capture_sql() {
        client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let string_modes = HandlingModes {
        decimal_handling_mode: DecimalMode::String,
        time_precision_mode: TimePrecisionMode::Connect,
        interval_handling_mode: IntervalMode::String,
        binary_handling_mode: BinaryMode::Hex,
    };
    let double_modes = HandlingModes {
        decimal_handling_mode: DecimalMode::Double,
        binary_handling_mode: BinaryMode::Base64,
        ..HandlingModes::default()
    };
    let mut compared = 0;
    let mut differences = Vec::new();
    for (fixture, modes) in
        [("schemas", HandlingModes::default()), ("modes-string", string_modes), ("modes-double", double_modes)]
    {
        let catalog = catalog(&url, modes);
        for (table, record_schema) in final_record_schemas(fixture) {
            if table == "capture_marker" {
                continue;
            }
            let typed = catalog.table_schema(&format!("public.{table}")).await.unwrap().expect("table in the catalog");
            let names = |s: &TableSchema| s.fields().iter().map(|f| f.name.clone()).collect::<Vec<_>>();
            assert_eq!(names(&typed), names(&record_schema), "{fixture} {table}: columns");
            for (catalog_field, record_field) in typed.fields().iter().zip(record_schema.fields()) {
                compared += 1;
                let seen = |f: &cdc_core::Field| (f.data_type.clone(), f.nullable, f.default.clone(), pg_type(f));
                if seen(catalog_field) != seen(record_field) {
                    differences.push(format!(
                        "{fixture} {table}.{}: catalog {:?}, records {:?}",
                        record_field.name,
                        seen(catalog_field),
                        seen(record_field)
                    ));
                }
            }
        }
    }
    assert!(differences.is_empty(), "{} of {compared} columns differ:\n{}", differences.len(), differences.join("\n"));
    assert!(compared > 100, "compared {compared} columns");
}

/// Dead letters kept where the test can read them after the pipeline.
#[derive(Clone, Default)]
struct Letters(Arc<Mutex<Vec<DeadLetter>>>);

#[async_trait::async_trait]
impl DeadLetterStore for Letters {
    async fn store(&mut self, letter: DeadLetter) -> cdc_core::Result<()> {
        self.0.lock().unwrap().push(letter);
        Ok(())
    }
}

impl Letters {
    fn errors(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|l| l.error.clone()).collect()
    }
}

/// Applies every record of `fixture` through a pipeline into `sink`.
async fn replay(fixture: &str, sink: Box<dyn Sink>, catalog: Option<PgSourceCatalog>) -> Letters {
    replay_records(&load(fixture), sink, catalog).await
}

async fn replay_records(records: &[FixtureRecord], sink: Box<dyn Sink>, catalog: Option<PgSourceCatalog>) -> Letters {
    let letters = Letters::default();
    let mut pipeline = Pipeline::new(Decoder::new().keep_raw_json(true), vec![sink], Box::new(letters.clone()));
    if let Some(catalog) = catalog {
        pipeline = pipeline.with_catalog(Box::new(catalog));
    }
    for (i, record) in records.iter().enumerate() {
        pipeline.push(record.raw()).await.unwrap();
        if i % 25 == 24 {
            pipeline.flush().await.unwrap();
        }
    }
    pipeline.flush().await.unwrap();
    letters
}

/// Column names and types (with modifiers) of a mirror table.
async fn column_types(client: &Client, table: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = ('public.' || quote_ident($1))::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The schemaless fixture, typed from the catalog, gives the PostgreSQL
/// target the same tables as the fixture with schemas: same columns, same
/// types, same values; nothing dead-lettered. Without the catalog, every
/// change record is refused (dead-lettered naming its column), none written.
#[tokio::test]
async fn schemaless_with_the_catalog_mirrors_like_schemas() {
    let (source_url, _source) = live_source("catalog_live_source").await;
    let with_schemas = fresh_database("catalog_mirror_schemas").await;
    let schemaless = fresh_database("catalog_mirror_schemaless").await;
    let sink = |url: &str| Box::new(PgTargetSink::new(PgConnectionConfig::new(url))) as Box<dyn Sink>;

    let letters = replay("schemas", sink(&with_schemas), None).await;
    assert!(letters.errors().is_empty());
    let letters = replay("schemaless", sink(&schemaless), Some(catalog(&source_url, HandlingModes::default()))).await;
    assert!(letters.errors().is_empty(), "dead-lettered: {:?}", letters.errors().first());

    let (a, b) = (connect(&with_schemas).await, connect(&schemaless).await);
    let mut cells = 0;
    for table in TABLES {
        let types = column_types(&a, table).await;
        assert_eq!(column_types(&b, table).await, types, "{table}: column types");
        // The two fixtures are two captures: their metadata (snapshot LSNs,
        // times) differ, the source's columns must not.
        let columns: Vec<(String, String)> = crate::support::columns(&a, "public", table)
            .await
            .into_iter()
            .filter(|(name, _)| !name.starts_with("_cdc_"))
            .collect();
        let rows = dump(&a, "public", table, &columns).await;
        assert_eq!(dump(&b, "public", table, &columns).await, rows, "{table}: rows");
        cells += rows.len() * columns.len();
    }
    assert!(cells > 250, "compared {cells} cells");

    let untyped = fresh_database("catalog_mirror_untyped").await;
    let letters = replay("schemaless", sink(&untyped), None).await;
    // A truncate carries no row, so nothing of unknown type.
    let rows = fixture_records("schemas")
        .iter()
        .filter(|r| matches!(r, Record::Change(e) if e.op != cdc_core::Op::Truncate))
        .count();
    let errors = letters.errors();
    assert_eq!(errors.len(), rows, "every change record carrying a row is refused");
    assert!(errors.iter().all(|e| e.contains("has no known type") && e.contains("source_schema_url")), "{errors:?}");
    let untyped = connect(&untyped).await;
    for table in TABLES {
        let sql = format!("SELECT count(*) FROM public.{table}");
        let rows: i64 = untyped.query_one(&sql, &[]).await.map(|r| r.get(0)).unwrap_or(0);
        assert_eq!(rows, 0, "{table}: nothing of unknown meaning is written");
    }
}

/// Without a source catalog, schemaless records take their types from the
/// table the PostgreSQL target already holds (which keeps columns the
/// source dropped since): emptied and refilled from the schemaless fixture,
/// the mirror holds what the fixture with schemas gave it.
#[tokio::test]
async fn schemaless_records_take_types_from_the_target_table() {
    let with_schemas = fresh_database("catalog_fallback_schemas").await;
    let refilled = fresh_database("catalog_fallback_refilled").await;
    let sink = |url: &str| Box::new(PgTargetSink::new(PgConnectionConfig::new(url))) as Box<dyn Sink>;
    assert!(replay("schemas", sink(&with_schemas), None).await.errors().is_empty());
    assert!(replay("schemas", sink(&refilled), None).await.errors().is_empty());
    let b = connect(&refilled).await;
    for table in TABLES {
        b.batch_execute(&format!("TRUNCATE public.{table}")).await.unwrap();
    }
    b.batch_execute("DELETE FROM cdc_meta.offsets; DELETE FROM cdc_meta.deleted_keys").await.unwrap();

    let letters = replay("schemaless", sink(&refilled), None).await;
    assert!(letters.errors().is_empty(), "dead-lettered: {:?}", letters.errors().first());
    let a = connect(&with_schemas).await;
    for table in TABLES {
        let columns: Vec<(String, String)> = crate::support::columns(&a, "public", table)
            .await
            .into_iter()
            .filter(|(name, _)| !name.starts_with("_cdc_"))
            .collect();
        assert_eq!(dump(&b, "public", table, &columns).await, dump(&a, "public", table, &columns).await, "{table}");
    }
}

/// The mirror fallback decodes values as the connector encoded them: records
/// captured with decimal=string, time=connect, interval=string, binary=hex,
/// sent without schemas (as the JsonConverter with `schemas.enable=false`
/// writes them: the payload), refill the mirror exactly when the sink is
/// told those modes.
#[tokio::test]
async fn schemaless_mirror_fallback_follows_the_connectors_modes() {
    let modes = HandlingModes {
        decimal_handling_mode: DecimalMode::String,
        time_precision_mode: TimePrecisionMode::Connect,
        interval_handling_mode: IntervalMode::String,
        binary_handling_mode: BinaryMode::Hex,
    };
    let sink = |url: &str| {
        Box::new(PgTargetSink::new(PgConnectionConfig::new(url)).with_handling_modes(modes.clone())) as Box<dyn Sink>
    };
    for fixture in ["modes-string", "fidelity-modes-string"] {
        let database = fixture.replace('-', "_");
        let with_schemas = fresh_database(&format!("fallback_{database}")).await;
        let refilled = fresh_database(&format!("fallback_{database}_refilled")).await;
        let letters = replay(fixture, sink(&with_schemas), None).await;
        assert!(letters.errors().is_empty(), "{fixture}: {:?}", letters.errors());
        assert!(replay(fixture, sink(&refilled), None).await.errors().is_empty());
        let tables: std::collections::BTreeSet<String> =
            load(fixture).iter().filter_map(|r| Some(r.topic.strip_prefix("cdc.public.")?.to_owned())).collect();
        let b = connect(&refilled).await;
        let a = connect(&with_schemas).await;
        let names = table_names(&a).await;
        for table in &names {
            b.batch_execute(&format!("TRUNCATE public.{}", quote(table))).await.unwrap();
        }
        b.batch_execute("DELETE FROM cdc_meta.offsets; DELETE FROM cdc_meta.deleted_keys").await.unwrap();

        let schemaless: Vec<FixtureRecord> = load(fixture).iter().map(without_schemas).collect();
        assert!(schemaless.iter().all(|r| r.value.as_deref().is_none_or(|v| !v.starts_with("{\"schema\":"))));
        let letters = replay_records(&schemaless, sink(&refilled), None).await;
        assert!(letters.errors().is_empty(), "{fixture}: dead-lettered: {:?}", letters.errors().first());
        assert_eq!(names.len(), tables.len(), "{fixture}: {names:?}");
        for table in &names {
            let columns: Vec<(String, String)> = crate::support::columns(&a, "public", table)
                .await
                .into_iter()
                .filter(|(name, _)| !name.starts_with("_cdc_"))
                .collect();
            let expected = dump_rows(&a, "public", table, &columns).await;
            assert!(!expected.is_empty(), "{fixture}: {table} is empty");
            assert_eq!(dump_rows(&b, "public", table, &columns).await, expected, "{fixture}: {table}");
        }
    }
}

/// The tables of the `public` schema.
async fn table_names(client: &Client) -> Vec<String> {
    let rows = client
        .query("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", &[])
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Delta keeps each table's source types in its commits (`cdc.schema`):
/// tables written from the stream with schemas, emptied, then refilled by a
/// new consumer from the same records without schemas (the payload, as the
/// JsonConverter writes with `schemas.enable=false`) and no source catalog,
/// end as the tables written with schemas.
#[cfg(feature = "delta")]
#[tokio::test]
async fn schemaless_records_take_types_from_the_delta_tables() {
    use cdc_sinks::delta::time_travel::{self, AsOf};
    use cdc_sinks::{DeltaConfig, DeltaSink};
    let records = load("schemas");
    let with_schemas = tempfile::tempdir().unwrap();
    let refilled = tempfile::tempdir().unwrap();
    let delta = |dir: &tempfile::TempDir| DeltaConfig::new(dir.path().to_str().unwrap());
    let sink = |config: &DeltaConfig| Box::new(DeltaSink::new(config.clone())) as Box<dyn Sink>;
    for dir in [&with_schemas, &refilled] {
        let letters = replay_records(&records, sink(&delta(dir)), None).await;
        assert!(letters.errors().is_empty(), "{:?}", letters.errors().first());
    }
    for table in TABLES {
        let stored = time_travel::open(&delta(&refilled), table).await.unwrap();
        let (emptied, _) = stored.delete().await.unwrap();
        assert_eq!(emptied.snapshot().unwrap().log_data().num_files(), 0, "{table} emptied");
    }
    let mut second = delta(&refilled);
    second.consumer = "second".into();
    let schemaless: Vec<FixtureRecord> = records.iter().map(without_schemas).collect();
    let letters = replay_records(&schemaless, sink(&second), None).await;
    assert!(letters.errors().is_empty(), "dead-lettered: {:?}", letters.errors().first());

    for table in TABLES {
        let dump = |config: DeltaConfig| async move {
            let found = time_travel::query(&config, &format!("SELECT * FROM {table}"), AsOf::Latest).await.unwrap();
            let mut rows: Vec<Vec<String>> = Vec::new();
            for batch in &found {
                let schema = batch.schema();
                for i in 0..batch.num_rows() {
                    let row = schema
                        .fields()
                        .iter()
                        .zip(batch.columns())
                        .filter(|(f, _)| f.name() != "_cdc_applied_at")
                        .map(|(f, c)| {
                            let text = cdc_sinks::delta::deltalake::arrow::util::display::array_value_to_string(c, i);
                            format!("{}={}", f.name(), text.unwrap())
                        })
                        .collect();
                    rows.push(row);
                }
            }
            rows.sort();
            rows
        };
        let expected = dump(delta(&with_schemas)).await;
        assert!(!expected.is_empty(), "{table} is empty");
        assert_eq!(dump(delta(&refilled)).await, expected, "{table}");
    }
}
