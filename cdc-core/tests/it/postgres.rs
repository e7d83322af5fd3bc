//! Decoded fixture values against what PostgreSQL itself returns for the same
//! rows: the capture's SQL is replayed into a fresh database of the test
//! cluster, the fixture's events are applied to a memory sink, and every
//! column of every row is compared with PostgreSQL's text output.

use std::collections::BTreeMap;

use cdc_core::memory::{MemoryRow, MemorySink};
use cdc_core::{DataType, Decoder, Field, TableSchema, Value};
use chrono::{DateTime, NaiveDate, NaiveTime};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::common::*;

/// Known, documented Debezium losses: (fixtures, table, id, column, why).
/// The test asserts that each really differs, so the list stays true.
const DEBEZIUM_LOSSES: &[(&[&str], &str, i64, &str, &str)] = &[
    (PRECISE, "all_types", 2, "c_num_any", "numeric NaN has no precise-mode encoding: Debezium sends null"),
    (PRECISE, "all_types", 5, "c_num_any", "numeric NaN has no precise-mode encoding: Debezium sends null"),
    (NUMERIC_INTERVAL, "all_types", 4, "c_interval", "-178000000 years overflows MicroDuration's int64 micros"),
    (PRECISE, "customers", 7, "loyalty_points", "JsonConverter writes the schema default (0) for NULL"),
    (BASE64_BINARY, "all_types", 1, "c_big_bytea", "base64 binary mode sends unchanged TOASTed bytea as null"),
    (CONNECT_TIME, "all_types", 1, "c_time", "time.precision.mode=connect keeps milliseconds"),
    (CONNECT_TIME, "all_types", 1, "c_ts", "time.precision.mode=connect keeps milliseconds"),
    (CONNECT_TIME, "all_types", 2, "c_ts", "time.precision.mode=connect keeps milliseconds"),
    (CONNECT_TIME, "all_types", 5, "c_ts", "time.precision.mode=connect keeps milliseconds"),
];
const PRECISE: &[&str] = &["schemas", "schemaless"];
const NUMERIC_INTERVAL: &[&str] = &["schemas", "schemaless", "modes-double"];
const CONNECT_TIME: &[&str] = &["modes-string"];
const BASE64_BINARY: &[&str] = &["modes-double"];

/// Connects to a fresh database of the test cluster (`CDC_TEST_PG_URL`).
pub async fn fresh_database(name: &str) -> Client {
    let url = std::env::var("CDC_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "CDC_TEST_PG_URL is not set: run the tests with scripts/test.sh, which starts a throwaway \
             PostgreSQL, or point CDC_TEST_PG_URL at a PostgreSQL 13+ server you may create databases on"
        )
    });
    let admin = connect(&url).await;
    let db = format!("{name}_{}", std::process::id());
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db}")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    let (base, _) = url.rsplit_once('/').expect("URL with a database");
    connect(&format!("{base}/{db}")).await
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL: {e}"));
    tokio::spawn(connection);
    client
}

/// Replays the SQL that produced the fixtures.
async fn replay_capture_sql(client: &Client) {
    for (file, sql) in cdc_core::testing::capture_sql() {
        client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    client.batch_execute("SET TimeZone = 'UTC'; SET IntervalStyle = 'iso_8601'; SET DateStyle = 'ISO'").await.unwrap();
}

/// `column -> text` for every row of a table, by id.
async fn pg_rows(client: &Client, table: &str) -> BTreeMap<i64, BTreeMap<String, Option<String>>> {
    let mut rows = BTreeMap::new();
    for message in client.simple_query(&format!("SELECT * FROM {table}")).await.unwrap() {
        if let SimpleQueryMessage::Row(row) = message {
            let columns: BTreeMap<String, Option<String>> = row
                .columns()
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name().to_owned(), row.get(i).map(str::to_owned)))
                .collect();
            let id = columns["id"].as_ref().unwrap().parse().unwrap();
            rows.insert(id, columns);
        }
    }
    rows
}

fn memory_rows(sink: &MemorySink, table: &str) -> BTreeMap<i64, MemoryRow> {
    sink.tables[&format!("public.{table}")]
        .live_rows()
        .map(|row| match row["id"] {
            Value::Int(id) => (id, row.clone()),
            ref other => panic!("id {other:?}"),
        })
        .collect()
}

/// Applies a fixture and compares every table with PostgreSQL.
async fn compare_fixture(client: &Client, decoder: &mut Decoder, fixture: &str, tables: &[&str]) -> usize {
    let records = decode_with(decoder, fixture);
    let mut sink = MemorySink::new();
    let mut fields: BTreeMap<(String, String), Field> = BTreeMap::new();
    for event in changes(&records) {
        sink.apply_event(event);
        for field in event.schema.fields() {
            fields.insert((event.source.table.clone(), field.name.clone()), field.clone());
        }
    }
    let mut compared = 0;
    let mut losses_seen = Vec::new();
    for table in tables {
        let pg = pg_rows(client, table).await;
        let ours = memory_rows(&sink, table);
        assert_eq!(pg.keys().collect::<Vec<_>>(), ours.keys().collect::<Vec<_>>(), "{fixture}: ids of {table}");
        for (id, pg_row) in &pg {
            for (column, pg_text) in pg_row {
                let field = &fields[&(table.to_string(), column.clone())];
                let context = format!("{fixture}: {table} id={id} {column}");
                let Some(value) = ours[id].get(column) else {
                    // Added with a DEFAULT after the row's last change: PostgreSQL
                    // backfills it without a change event.
                    assert_eq!(pg_text.as_deref(), Some("0"), "{context}: never sent");
                    continue;
                };
                let matched = matches_pg(&field.data_type, value, pg_text.as_deref());
                let loss = DEBEZIUM_LOSSES
                    .iter()
                    .find(|(f, t, i, c, _)| f.contains(&fixture) && t == table && i == id && c == column);
                match loss {
                    Some(loss) => {
                        assert!(!matched, "{context}: listed as a Debezium loss ({}) but matches", loss.4);
                        losses_seen.push(loss);
                    }
                    _ => assert!(
                        matched,
                        "{context}: decoded {} ({:?}), PostgreSQL has {}",
                        short(&format!("{value:?}")),
                        field.data_type,
                        short(&format!("{pg_text:?}"))
                    ),
                }
                compared += 1;
            }
        }
    }
    for loss in DEBEZIUM_LOSSES.iter().filter(|l| l.0.contains(&fixture) && tables.contains(&l.1)) {
        assert!(losses_seen.contains(&loss), "{fixture}: {loss:?} not checked");
    }
    compared
}

#[tokio::test]
async fn decoded_values_equal_postgres_rows() {
    let client = fresh_database("cdc_core_fixtures").await;
    replay_capture_sql(&client).await;
    let all = ["customers", "products", "orders", "order_items", "all_types"];
    let compared = compare_fixture(&client, &mut Decoder::new(), "schemas", &all).await;
    assert!(compared > 250, "compared {compared} values");
    // Schemaless, typed by the schemas learnt from records that had them.
    let mut decoder = Decoder::new().type_by_json_shape(true);
    crate::quirks::learn_schemas(&mut decoder);
    compare_fixture(&client, &mut decoder, "schemaless", &all).await;
    // The other decimal, time and interval modes.
    compare_fixture(&client, &mut Decoder::new(), "modes-string", &["all_types"]).await;
    compare_fixture(&client, &mut Decoder::new(), "modes-double", &["all_types"]).await;
}

/// A schema registered by the user (for example read from the target table)
/// types schemaless records; a column it does not name is refused, naming
/// the column and the two ways to type it, unless typing by JSON shape was
/// asked for.
#[tokio::test]
async fn registered_schema_types_schemaless_records() {
    let products: Vec<_> =
        cdc_core::testing::load("schemaless").into_iter().filter(|r| r.topic == "cdc.public.products").collect();
    let mut decoder = Decoder::new();
    let field =
        |name: &str, data_type| Field { name: name.into(), data_type, nullable: true, default: None, source: None };
    let schema = TableSchema::new(
        vec![
            field("id", DataType::Int32),
            field("price", DataType::Decimal { precision: Some(10), scale: 2 }),
            field("created_at", DataType::Timestamp(cdc_core::TimeUnit::Micros)),
        ],
        &["id"],
    )
    .unwrap();
    decoder.register_schema("public.products", schema.clone());
    let refused = decoder.decode(products[0].raw()).unwrap_err();
    assert!(matches!(&refused, cdc_core::Error::Untyped { column, .. } if column == "name"), "{refused}");
    let message = refused.to_string();
    for needle in ["cdc.public.products[0]@", "field `after.name`", "source_schema_url", "schemas.enable=true"] {
        assert!(message.contains(needle), "{needle} not in: {message}");
    }

    let mut decoder = Decoder::new().type_by_json_shape(true);
    decoder.register_schema("public.products", schema);
    let records: Vec<_> = products.iter().map(|r| decoder.decode(r.raw()).unwrap()).collect();
    let first = table_events(&records, "products")[0];
    assert_eq!(column(first, "price"), &Value::Decimal(cdc_core::Decimal { unscaled: 129999, scale: 2 }));
    assert_eq!(column(first, "created_at"), &Value::Timestamp(1_704_877_200_000_000));
    // Columns it did not name are typed by their JSON shape.
    assert_eq!(first.schema.field("name").unwrap().data_type, DataType::Dynamic);
    assert_eq!(column(first, "name"), &Value::String("Laptop Pro 15".into()));
}

/// Whether a decoded value equals PostgreSQL's text output for it.
fn matches_pg(data_type: &DataType, value: &Value, pg: Option<&str>) -> bool {
    let Some(pg) = pg else { return value.is_null() };
    match (data_type, value) {
        (_, Value::Null | Value::Unavailable) => false,
        (DataType::Array(element), Value::List(items)) => {
            let pg_items = parse_pg_array(pg);
            pg_items.len() == items.len()
                && items.iter().zip(&pg_items).all(|(v, p)| matches_pg(element, v, p.as_deref()))
        }
        (DataType::Bits { length, varying }, Value::Bytes(b)) => {
            cdc_core::arrow::bit_string(b, *length, *varying) == pg
        }
        (DataType::ZonedTime, Value::String(s)) => s.strip_suffix('Z').is_some_and(|t| t == timetz_to_utc(pg)),
        (DataType::Float32, Value::Float(f)) => pg.parse::<f32>().is_ok_and(|p| p.to_bits() == (*f as f32).to_bits()),
        // Also decimal.handling.mode=double: the nearest double of the numeric.
        (_, Value::Float(f)) => {
            pg.parse::<f64>().is_ok_and(|p| p.to_bits() == f.to_bits() || (p.is_nan() && f.is_nan()))
        }
        (DataType::Geometry, Value::Geometry { wkb, .. }) => {
            let (x, y) = pg.trim_matches(['(', ')']).split_once(',').unwrap();
            wkb.len() == 21
                && f64::from_le_bytes(wkb[5..13].try_into().unwrap()) == x.parse::<f64>().unwrap()
                && f64::from_le_bytes(wkb[13..21].try_into().unwrap()) == y.parse::<f64>().unwrap()
        }
        (DataType::Boolean, Value::Bool(b)) => pg == if *b { "t" } else { "f" },
        (_, Value::Int(i)) => pg.parse::<i64>() == Ok(*i),
        (_, Value::Decimal(d)) => d.to_string() == pg,
        // VariableScaleDecimal drops trailing fractional zeros.
        (_, Value::BigDecimal(d)) => &**d == pg || strip_zeros(d) == strip_zeros(pg),
        // binary.handling.mode=hex or base64 sends bytea as text.
        (_, Value::String(s)) if pg.starts_with("\\x") => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD.decode(&**s).unwrap_or_default();
            pg[2..] == **s || pg[2..] == hex_string(&bytes)
        }
        (_, Value::String(s)) => &**s == pg || normalise_special(s) == pg,
        (_, Value::Bytes(b)) => pg.strip_prefix("\\x").is_some_and(|hex| hex == hex_string(b)),
        (_, Value::Date(cdc_core::DATE_INFINITY)) => pg == "infinity",
        (_, Value::Date(d)) => {
            (NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Duration::days(i64::from(*d)))
                .format("%Y-%m-%d")
                .to_string()
                == pg
        }
        (_, Value::Time(t)) => time_text(*t) == pg,
        (_, Value::Timestamp(t)) => timestamp_text(*t, "") == pg,
        (_, Value::TimestampTz(t)) => timestamp_text(*t, "+00") == pg,
        (_, Value::Interval(i)) => cdc_core::Interval::parse_iso8601(pg).as_ref() == Some(i),
        (_, Value::Duration(micros)) => {
            // MicroDuration counts a month as 365.25 / 12 days.
            let i = cdc_core::Interval::parse_iso8601(pg).unwrap();
            let month = 30.4375 * 86_400e6;
            let expected = i.months as f64 * month + i.days as f64 * 86_400e6 + i.micros as f64;
            expected == *micros as f64
        }
        _ => false,
    }
}

fn short(text: &str) -> &str {
    &text[..text.char_indices().nth(200).map_or(text.len(), |(i, _)| i)]
}

fn strip_zeros(decimal: &str) -> &str {
    if decimal.contains('.') { decimal.trim_end_matches('0').trim_end_matches('.') } else { decimal }
}

/// decimal.handling.mode=string spells NaN and the infinities its own way.
fn normalise_special(s: &str) -> &str {
    match s {
        "NAN" => "NaN",
        "POSITIVE_INFINITY" => "Infinity",
        "NEGATIVE_INFINITY" => "-Infinity",
        other => other,
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn trim_fraction(text: String) -> String {
    match text.split_once('.') {
        Some((whole, frac)) if frac.trim_end_matches('0').is_empty() => whole.to_owned(),
        Some((whole, frac)) => format!("{whole}.{}", frac.trim_end_matches('0')),
        None => text,
    }
}

fn time_text(micros: i64) -> String {
    if micros == 86_400_000_000 {
        return "24:00:00".into();
    }
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    trim_fraction(format!("{:02}:{:02}:{:02}.{frac:06}", secs / 3600, secs / 60 % 60, secs % 60))
}

fn timestamp_text(micros: i64, zone: &str) -> String {
    match micros {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let t = DateTime::from_timestamp_micros(micros).unwrap().naive_utc();
    format!("{}{zone}", trim_fraction(t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()))
}

/// `13:45:30.5+02` -> `11:45:30.5`.
fn timetz_to_utc(pg: &str) -> String {
    let at = pg.rfind(['+', '-']).unwrap();
    let (time, offset) = pg.split_at(at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut parts = offset[1..].split(':').map(|p| p.parse::<i64>().unwrap());
    let offset_secs = sign * (parts.next().unwrap() * 3600 + parts.next().unwrap_or(0) * 60);
    let t = NaiveTime::parse_from_str(time, "%H:%M:%S%.f").unwrap();
    let utc = t - chrono::Duration::seconds(offset_secs);
    trim_fraction(utc.format("%H:%M:%S%.6f").to_string())
}

/// PostgreSQL array text `{1,NULL,"a b","q\"uote"}` into its elements.
fn parse_pg_array(text: &str) -> Vec<Option<String>> {
    let inner = &text[1..text.len() - 1];
    let mut items = Vec::new();
    if inner.is_empty() {
        return items;
    }
    let mut chars = inner.chars().peekable();
    loop {
        let mut item = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => item.push(chars.next().unwrap()),
                    '"' => break,
                    c => item.push(c),
                }
            }
        }
        for c in chars.by_ref() {
            if c == ',' {
                break;
            }
            item.push(c);
        }
        items.push(if !quoted && item == "NULL" { None } else { Some(item) });
        if chars.peek().is_none() {
            break;
        }
    }
    items
}
