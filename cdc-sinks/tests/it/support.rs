use std::collections::BTreeMap;

use cdc_core::testing::{capture_sql, decode_with};
use cdc_core::{Batch, ChangeEvent, Decoder, Record};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The admin URL of the test cluster.
pub fn admin_url() -> String {
    std::env::var("CDC_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "CDC_TEST_PG_URL is not set: run the tests with scripts/test.sh, which starts a throwaway \
             PostgreSQL, or point CDC_TEST_PG_URL at a PostgreSQL 13+ server you may create databases on"
        )
    })
}

/// Creates a fresh database; returns its URL.
pub async fn fresh_database(name: &str) -> String {
    let url = admin_url();
    let admin = connect(&url).await;
    let db = format!("{name}_{}", std::process::id());
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    let (base, _) = url.rsplit_once('/').expect("URL with a database");
    format!("{base}/{db}")
}

pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL: {e}"));
    tokio::spawn(connection);
    client
}

/// A database holding what the source held at the end of the capture.
pub async fn source_database(name: &str) -> Client {
    let client = connect(&fresh_database(name).await).await;
    for (file, sql) in capture_sql() {
        client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    client
}

/// The records of a fixture, decoded keeping raw JSON.
pub fn fixture_records(name: &str) -> Vec<Record> {
    decode_with(&mut Decoder::new().keep_raw_json(true), name)
}

/// The change events of one source table in a fixture, as records.
pub fn table_records(fixture: &str, table: &str) -> Vec<Record> {
    fixture_records(fixture).into_iter().filter(|r| matches!(r, Record::Change(e) if e.source.table == table)).collect()
}

/// Runs a Python script with the interpreter the test command installs the
/// `deltalake` package into (`CDC_TEST_PYTHON`); returns the JSON it prints.
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let python = std::env::var("CDC_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    assert!(
        output.status.success(),
        "{python} failed (scripts/test.sh installs deltalake into .venv and sets CDC_TEST_PYTHON): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{python} printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

/// Splits records into batches of `size` records.
pub fn batches(records: &[Record], size: usize) -> Vec<Batch> {
    records.chunks(size).map(|chunk| Batch::from_records(chunk.iter().cloned())).collect()
}

pub fn change_count(records: &[Record]) -> usize {
    records.iter().filter(|r| matches!(r, Record::Change(_))).count()
}

/// Every row of `schema.table` as text, by `id`, with the columns of
/// `columns` rendered comparably (numerics without trailing zeros, time
/// with zone in UTC, intervals as seconds).
pub async fn dump(
    client: &Client,
    schema: &str,
    table: &str,
    columns: &[(String, String)],
) -> BTreeMap<i64, BTreeMap<String, Option<String>>> {
    let sql = format!(
        "SET TimeZone = 'UTC'; SELECT id::text, {} FROM \"{schema}\".\"{table}\" ORDER BY id",
        column_texts(columns).join(", ")
    );
    let mut rows = BTreeMap::new();
    for message in client.simple_query(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
        if let SimpleQueryMessage::Row(row) = message {
            let id: i64 = row.get(0).unwrap().parse().unwrap();
            let values =
                columns.iter().enumerate().map(|(i, (name, _))| (name.clone(), row.get(i + 1).map(str::to_owned)));
            rows.insert(id, values.collect());
        }
    }
    rows
}

/// Every row of any table (whatever its key) as comparable text, sorted.
pub async fn dump_rows(
    client: &Client,
    schema: &str,
    table: &str,
    columns: &[(String, String)],
) -> Vec<Vec<Option<String>>> {
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let sql = format!(
        "SET TimeZone = 'UTC'; SELECT {} FROM {}.{}",
        column_texts(columns).join(", "),
        quote(schema),
        quote(table)
    );
    let mut rows: Vec<Vec<Option<String>>> = Vec::new();
    for message in client.simple_query(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
        if let SimpleQueryMessage::Row(row) = message {
            rows.push((0..columns.len()).map(|i| row.get(i).map(str::to_owned)).collect());
        }
    }
    rows.sort();
    rows
}

/// Each column as text PostgreSQL renders the same for equal values.
fn column_texts(columns: &[(String, String)]) -> Vec<String> {
    columns
        .iter()
        .map(|(name, ty)| {
            let quoted = format!("\"{}\"", name.replace('"', "\"\""));
            match ty.as_str() {
                "numeric" => format!("trim_scale({quoted})::text"),
                "time with time zone" => format!("({quoted} AT TIME ZONE 'UTC')::text"),
                "interval" => format!("extract(epoch from {quoted})::text"),
                _ => format!("{quoted}::text"),
            }
        })
        .collect()
}

/// Column names and base types (no modifiers) of a table.
pub async fn columns(client: &Client, schema: &str, table: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT column_name::text, CASE WHEN data_type = 'USER-DEFINED' THEN 'text' ELSE data_type::text END \
             FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&schema, &table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Known differences between the source and any mirror built from these
/// Debezium records: (table, id, column, why). See docs/DESIGN.md.
pub const DEBEZIUM_LOSSES: &[(&str, i64, &str, &str)] = &[
    ("all_types", 2, "c_num_any", "numeric NaN arrives as null in precise mode"),
    ("all_types", 5, "c_num_any", "numeric NaN arrives as null in precise mode"),
    ("all_types", 1, "c_interval", "MicroDuration counts a month as 30.4375 days"),
    ("all_types", 4, "c_interval", "-178000000 years overflows MicroDuration"),
    ("customers", 7, "loyalty_points", "JsonConverter writes the schema default (0) for NULL"),
];

pub const TABLES: [&str; 5] = ["customers", "products", "orders", "order_items", "all_types"];

/// Asserts that `schema.<table>` in `mirror` equals `public.<table>` in
/// `source` for every table, column by column, apart from the known losses.
/// `live` restricts the mirror to rows not flagged deleted.
pub async fn assert_mirrors_source(source: &Client, mirror: &Client, schema: &str, live_filter: bool) {
    let differences = mirror_differences(source, mirror, schema, live_filter).await;
    assert!(differences.is_empty(), "the mirror differs from the source:\n{}", differences.join("\n"));
}

/// Where `schema.<table>` in `mirror` differs from `public.<table>` in
/// `source`, apart from the known losses (which must differ), one line each.
pub async fn mirror_differences(source: &Client, mirror: &Client, schema: &str, live_filter: bool) -> Vec<String> {
    let mut differences = Vec::new();
    for table in TABLES {
        let columns = columns(source, "public", table).await;
        let expected = dump(source, "public", table, &columns).await;
        let mut actual = dump(mirror, schema, table, &columns).await;
        if live_filter {
            let deleted = mirror
                .query(&format!("SELECT id::bigint FROM \"{schema}\".\"{table}\" WHERE _cdc_deleted"), &[])
                .await
                .unwrap();
            for row in deleted {
                actual.remove(&row.get::<_, i64>(0));
            }
        }
        if expected.keys().ne(actual.keys()) {
            let ids = |rows: &BTreeMap<i64, _>| rows.keys().copied().collect::<Vec<_>>();
            differences.push(format!(
                "ids of {table}: {:?} in the source, {:?} in the mirror",
                ids(&expected),
                ids(&actual)
            ));
            continue;
        }
        for (id, row) in &expected {
            for (column, value) in row {
                let mirrored = actual.get(id).and_then(|row| row.get(column));
                let loss = DEBEZIUM_LOSSES.iter().find(|(t, i, c, _)| *t == table && i == id && c == column);
                match loss {
                    Some(loss) if Some(value) == mirrored => {
                        differences.push(format!("{table} id={id} {column}: listed as lost ({}) but equal", loss.3))
                    }
                    None if Some(value) != mirrored => differences
                        .push(format!("{table} id={id} {column}: {value:?} in the source, {mirrored:?} in the mirror")),
                    _ => {}
                }
            }
        }
    }
    differences
}

/// A copy of `event` at another position (for out-of-order tests).
pub fn moved(event: &ChangeEvent, partition: i32, offset: i64) -> ChangeEvent {
    let mut event = event.clone();
    event.position = cdc_core::Position::new(event.position.topic.clone(), partition, offset);
    event
}

/// [`cdc_core::testing::snapshot_edges`] as the sinks get it: all in one
/// batch (the collapse decides), or one batch per record (the stored rows
/// decide).
pub fn snapshot_edge_batches(one_per_record: bool) -> (Vec<Batch>, Vec<(i64, &'static str)>) {
    let (records, expected) = cdc_core::testing::snapshot_edges();
    (batches(&records, if one_per_record { 1 } else { records.len() }), expected)
}
