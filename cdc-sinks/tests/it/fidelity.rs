//! The fidelity scenario (tests/capture/fidelity): real Debezium output for
//! the type surface the base fixtures miss, odd names, key types, primary-key
//! changes of rows with unchanged TOASTed values and schema changes while
//! streaming, replayed into the PostgreSQL target and compared cell by cell
//! with the source's final state, as PostgreSQL renders both.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cdc_core::catalog::{HandlingModes, SchemaCatalog};
use cdc_core::pipeline::{DeadLetter, DeadLetterStore, Pipeline};
use cdc_core::renames::RenameDetection;
use cdc_core::testing::{FixtureRecord, load, repo_root};
use cdc_core::{Decoder, Sink, TableSchema};
use cdc_sinks::{PgConnectionConfig, PgSourceCatalog, PgTargetSink};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::{connect, fresh_database};

fn scenario_sql(file: &str) -> String {
    let path = repo_root().join("tests/capture/fidelity").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The workload as units a source runs one after the other: a statement, or
/// a BEGIN ... COMMIT block; `true` for those that change rows.
fn workload_units() -> Vec<(String, bool)> {
    let text = scenario_sql("workload.sql");
    let mut units = Vec::new();
    let mut block: Option<String> = None;
    let mut statement = String::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("--") && !l.trim().is_empty()) {
        statement.push_str(line);
        statement.push('\n');
        if !line.trim_end().ends_with(';') {
            continue;
        }
        let done = std::mem::take(&mut statement);
        let upper = done.trim().to_ascii_uppercase();
        match &mut block {
            None if upper == "BEGIN;" => block = Some(done),
            None => {
                let changes = ["INSERT", "UPDATE", "DELETE"].iter().any(|k| upper.starts_with(k));
                units.push((done, changes));
            }
            Some(sql) => {
                sql.push_str(&done);
                if upper == "COMMIT;" {
                    units.push((block.take().unwrap_or_default(), true));
                }
            }
        }
    }
    units
}

/// A source database that runs the workload as the records arrive: before a
/// record of the n-th transaction after the snapshot is decoded, the first n
/// row-changing units (and the schema changes before them) have run. Its
/// catalog is what a consumer with no lag reads.
struct LiveSource {
    client: Client,
    units: Vec<(String, bool)>,
    ran: usize,
    transactions: Vec<i64>,
}

impl LiveSource {
    async fn new(name: &str) -> (LiveSource, String) {
        let url = fresh_database(name).await;
        let client = connect(&url).await;
        client.batch_execute(&scenario_sql("init.sql")).await.unwrap();
        (LiveSource { client, units: workload_units(), ran: 0, transactions: Vec::new() }, url)
    }

    async fn before(&mut self, record: &FixtureRecord) {
        let Some(value) = &record.value else { return };
        let json: serde_json::Value = serde_json::from_str(value).unwrap();
        let envelope = json.get("payload").unwrap_or(&json);
        let (Some(op), Some(tx)) = (envelope["op"].as_str(), envelope["source"]["txId"].as_i64()) else { return };
        if op == "r" || self.transactions.contains(&tx) {
            return;
        }
        self.transactions.push(tx);
        let mut changing = 0;
        while changing < self.transactions.len() {
            let (sql, _) = self.units.get(self.ran).cloned().expect("a unit for every transaction");
            self.client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            self.ran += 1;
            changing = self.units[..self.ran].iter().filter(|(_, c)| *c).count();
        }
    }
}

#[derive(Clone, Default)]
struct Letters(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl DeadLetterStore for Letters {
    async fn store(&mut self, letter: DeadLetter) -> cdc_core::Result<()> {
        self.0.lock().unwrap().push(letter.error);
        Ok(())
    }
}

/// A catalog shared with the test, which keeps the source moving.
struct Shared(Arc<PgSourceCatalog>);

#[async_trait]
impl SchemaCatalog for Shared {
    async fn table_schema(&self, table: &str) -> cdc_core::Result<Option<TableSchema>> {
        self.0.table_schema(table).await
    }
    fn name(&self) -> &str {
        self.0.name()
    }
    async fn column_numbers(&self, table: &str) -> cdc_core::Result<Option<std::collections::HashMap<String, i32>>> {
        self.0.column_numbers(table).await
    }
}

/// Replays `fixture` into a fresh PostgreSQL target in batches of `batch`
/// records; with `catalog`, with a live source's catalog (types of
/// schemaless records, renames by column number), else renames by position.
async fn replay(fixture: &str, target: &str, batch: usize, catalog: bool) -> Vec<String> {
    let sink: Box<dyn Sink> = Box::new(PgTargetSink::new(PgConnectionConfig::new(target)));
    let live = format!("{}_live", target.rsplit('/').next().unwrap());
    replay_into(fixture, sink, &live, batch, catalog).await
}

/// Replays `fixture` into `sink` (see [`replay`]); `live` names the live
/// source database used with `catalog`. Refused records are dead-lettered.
async fn replay_into(fixture: &str, sink: Box<dyn Sink>, live: &str, batch: usize, catalog: bool) -> Vec<String> {
    let letters = Letters::default();
    let rule = if catalog { RenameDetection::Catalog } else { RenameDetection::SamePosition };
    let mut pipeline = Pipeline::new(Decoder::new().keep_raw_json(true), vec![sink], Box::new(letters.clone()))
        .with_rename_detection(rule)
        .with_on_error(cdc_core::pipeline::OnError::DeadLetter);
    let live_name = live;
    let mut live = None;
    if catalog {
        let (source, url) = LiveSource::new(live_name).await;
        let catalog = Arc::new(PgSourceCatalog::new(PgConnectionConfig::new(&url), HandlingModes::default()));
        pipeline = pipeline.with_catalog(Box::new(Shared(catalog)));
        live = Some(source);
    }
    for (i, record) in load(fixture).iter().enumerate() {
        if let Some(live) = &mut live {
            live.before(record).await;
        }
        pipeline.push(record.raw()).await.unwrap();
        if i % batch == batch - 1 {
            pipeline.flush().await.unwrap();
        }
    }
    pipeline.flush().await.unwrap();
    letters.0.lock().unwrap().clone()
}

/// Each table of `schema` as PostgreSQL renders it: rows by primary key,
/// cells by column, normalised where two renderings of one value differ
/// (numeric scale, time zones, money, hstore as JSON).
async fn render(client: &Client, schema: &str, only: Option<&[String]>) -> BTreeMap<String, Vec<String>> {
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 \
             AND table_name <> 'capture_marker' ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .filter(|t: &String| only.is_none_or(|only| only.contains(t)))
        .collect();
    let mut out = BTreeMap::new();
    for table in tables {
        let columns = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text FROM pg_attribute a \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass \
                 AND a.attnum > 0 AND NOT a.attisdropped AND a.attname NOT LIKE '\\_cdc\\_%' ORDER BY a.attnum",
                &[&schema, &table],
            )
            .await
            .unwrap();
        let key: Vec<String> = client
            .query(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
                 AND a.attnum = ANY (i.indkey) WHERE i.indrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass \
                 AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&schema, &table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let quote = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
        let cells: Vec<String> = columns
            .iter()
            .map(|row| {
                let (name, ty, base): (String, String, String) = (row.get(0), row.get(1), row.get(2));
                let q = quote(&name);
                let expr = match (ty.as_str(), base.as_str()) {
                    (_, "numeric") => format!("trim_scale({q})::text"),
                    (_, "money") => format!("trim_scale({q}::numeric)::text"),
                    (_, "hstore") => format!("hstore_to_json({q})::jsonb::text"),
                    (_, "timetz") => format!("({q} AT TIME ZONE 'UTC')::text"),
                    (_, "_numeric") => format!("(SELECT array_agg(trim_scale(x)) FROM unnest({q}) x)::text"),
                    _ => format!("{q}::text"),
                };
                format!("'{}' || '=' || coalesce({expr}, 'NULL')", name.replace('\'', "''"))
            })
            .collect();
        let key_expr: Vec<String> = key.iter().map(|k| format!("{}::text", quote(k))).collect();
        let sql = format!(
            "SET TimeZone = 'UTC'; SET extra_float_digits = 0; SELECT concat_ws('|', {}) || ': ' || concat_ws(', ', {}) \
             FROM {}.{} ORDER BY 1",
            key_expr.join(", "),
            cells.join(", "),
            quote(schema),
            quote(&table)
        );
        let mut rows = Vec::new();
        for message in client.simple_query(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")) {
            if let SimpleQueryMessage::Row(row) = message {
                rows.push(row.get(0).unwrap_or_default().to_owned());
            }
        }
        out.insert(table, rows);
    }
    out
}

/// What Debezium's records cannot carry in some converter modes, and the
/// one schemaless limit (see docs/DESIGN.md): (fixtures, table, key, column,
/// why). Each must differ, and nothing else may.
const LOSSES: &[(&[&str], &str, &str, &str, &str)] = &[
    (NUMERIC_INTERVALS, "odd_types", "1", "c_interval", "MicroDuration cannot hold -178000000 years"),
    (NUMERIC_INTERVALS, "odd_types", "2", "c_interval", "MicroDuration counts a month as 30.4375 days"),
    (&["fidelity-modes-string"], "odd_types", "1", "c_time", "time.precision.mode=connect keeps milliseconds"),
    (&["fidelity-modes-string"], "odd_types", "1", "c_ts", "time.precision.mode=connect keeps milliseconds"),
    (
        &["fidelity-schemaless"],
        "evolving",
        "2",
        "total",
        "numeric(12,2) -> (14,4) at the source: precise decimals without schemas carry no scale",
    ),
];
const NUMERIC_INTERVALS: &[&str] = &["fidelity-schemas", "fidelity-schemaless"];

/// Every row of the source, cell for cell, in the mirror (whose tables may
/// hold more: metadata, dropped columns), apart from the fixture's listed
/// losses (which must differ); the differences, one per line.
async fn differences(fixture: &str, source: &Client, mirror: &Client) -> (Vec<String>, usize) {
    let expected = render(source, "public", None).await;
    let tables: Vec<String> = expected.keys().cloned().collect();
    let actual = render(mirror, "public", Some(&tables)).await;
    let mut differences = Vec::new();
    let mut cells = 0;
    for (table, rows) in &expected {
        let mirrored = actual.get(table).cloned().unwrap_or_default();
        for row in rows {
            cells += row.matches(", ").count() + 1;
            let key = row.split(": ").next().unwrap_or_default();
            let found = mirrored.iter().find(|r| r.split(": ").next() == Some(key));
            match found {
                None => differences.push(format!("{table} {key}: missing in the mirror")),
                Some(found) => {
                    let theirs: Vec<&str> = found.split_once(": ").map(|(_, c)| c).unwrap_or("").split(", ").collect();
                    for cell in row.split_once(": ").map(|(_, c)| c).unwrap_or("").split(", ") {
                        let column = cell.split('=').next().unwrap_or_default();
                        let lost = LOSSES
                            .iter()
                            .find(|l| l.0.contains(&fixture) && l.1 == table && l.2 == key && l.3 == column);
                        if let Some(loss) = lost
                            && theirs.contains(&cell)
                        {
                            differences.push(format!("{table} {key} {column}: listed as lost ({}) but equal", loss.4));
                        }
                        if !theirs.contains(&cell) && lost.is_none() {
                            let mirror_cell = theirs.iter().find(|c| c.split('=').next() == Some(column));
                            let short = |t: &str| t.chars().take(90).collect::<String>();
                            let mirror_cell = mirror_cell.map(|c| short(c));
                            differences.push(format!("{table} {key}: source {} / mirror {mirror_cell:?}", short(cell)));
                        }
                    }
                }
            }
        }
        for row in &mirrored {
            let key = row.split(": ").next().unwrap_or_default();
            if !rows.iter().any(|r| r.split(": ").next() == Some(key)) {
                differences.push(format!("{table} {key}: in the mirror only"));
            }
        }
    }
    (differences, cells)
}

#[tokio::test]
async fn fidelity_fixtures_mirror_the_source_in_postgres() {
    let source_url = fresh_database("fidelity_source").await;
    let source = connect(&source_url).await;
    source.batch_execute(&scenario_sql("init.sql")).await.unwrap();
    source.batch_execute(&scenario_sql("workload.sql")).await.unwrap();
    let mut report = Vec::new();
    for (fixture, catalog) in
        [("fidelity-schemas", false), ("fidelity-modes-string", false), ("fidelity-schemaless", true)]
    {
        for batch in [1000, 7] {
            let target = fresh_database(&format!("fidelity_{}_{batch}", fixture.replace('-', "_"))).await;
            let letters = replay(fixture, &target, batch, catalog).await;
            let (diffs, cells) = differences(fixture, &source, &connect(&target).await).await;
            report.push(format!(
                "{fixture} (batches of {batch}): {} of {cells} cells differ, {} dead letters\n  {}\n  {}",
                diffs.len(),
                letters.len(),
                diffs.join("\n  "),
                letters.join("\n  ")
            ));
        }
    }
    println!("{}", report.join("\n"));
    assert!(report.iter().all(|r| r.contains(": 0 of") && r.contains(", 0 dead letters")), "{}", report.join("\n"));
}

/// The three fidelity fixtures (schemas; string/connect/hex modes;
/// schemaless typed from a live source catalog) into Delta, in batches of
/// 1000 and 7: every table holds what the source holds, cell for cell, as
/// PostgreSQL renders the source and DataFusion the Delta tables (types
/// Delta stores in another form rendered alike on both sides), and the
/// Python `deltalake` package reads the same.
#[cfg(feature = "delta")]
#[tokio::test]
async fn fidelity_fixtures_mirror_the_source_in_delta() {
    use cdc_sinks::delta::deltalake::arrow::array::Array;
    use cdc_sinks::delta::deltalake::arrow::util::display::array_value_to_string;
    use cdc_sinks::delta::time_travel::{self, AsOf};
    use cdc_sinks::{DeltaConfig, DeltaSink};

    let source_url = fresh_database("fidelity_delta_source").await;
    let source = connect(&source_url).await;
    source.batch_execute(&scenario_sql("init.sql")).await.unwrap();
    source.batch_execute(&scenario_sql("workload.sql")).await.unwrap();
    // (table, PostgreSQL select, DataFusion select): the same columns as text.
    let tables = [
        (
            "evolving",
            "SELECT id, order_status, trim_scale(total)::text, qty, ratio::text, code, discontinued::text FROM evolving",
            "SELECT id, order_status, CAST(total AS VARCHAR), qty, CAST(ratio AS VARCHAR), code, discontinued FROM evolving",
        ),
        ("toasty", "SELECT id, md5(big), note FROM toasty", "SELECT id, md5(big), note FROM toasty"),
        (
            "odd_types",
            "SELECT id, trim_scale(c_num_free)::text, c_domain, c_domain_text, c_uuid::text, c_inet, c_cidr::text, \
             c_macaddr::text, c_int4range::text, c_numrange::text, c_tsvector::text, c_char, c_bit12::text, \
             c_varbit_free::text, c_xml::text, trim_scale(c_money::numeric)::text FROM odd_types",
            "SELECT id, CAST(c_num_free AS VARCHAR), c_domain, c_domain_text, c_uuid, c_inet, c_cidr, c_macaddr, \
             c_int4range, c_numrange, c_tsvector, c_char, c_bit12, c_varbit_free, c_xml, CAST(c_money AS VARCHAR) \
             FROM odd_types",
        ),
        // The types Delta stores in another form, rendered alike: bit(1) as
        // a boolean, arrays as lists, hstore as JSON, point as WKB, time of
        // day and MicroDuration as microseconds, zoned time as UTC text,
        // date and timestamp infinities as the first/last instant Delta has.
        (
            "odd_types",
            "SELECT id, (c_bit1 = B'1')::text, array_to_string(c_num_arr, ',', '∅'), \
             array_to_string(c_enum_arr, ',', '∅'), array_to_string(c_text_arr, ',', '∅'), \
             hstore_to_json(c_hstore)::text, c_tstzrange::text, c_macaddr8::text, c_point::text, \
             {interval}, \
             (extract(epoch from c_time0) * 1000000)::bigint::text, {time_us}, \
             (c_timetz3 AT TIME ZONE 'UTC')::time::text, (c_timetz AT TIME ZONE 'UTC')::time::text, \
             CASE WHEN c_date = 'infinity' THEN '9999-12-31' WHEN c_date = '-infinity' THEN '0001-01-01' \
               ELSE c_date::text END, \
             CASE WHEN c_ts = 'infinity' THEN '9999-12-31 23:59:59.999999' WHEN c_ts = '-infinity' \
               THEN '0001-01-01 00:00:00' ELSE {ts}::text END, \
             CASE WHEN c_tstz = 'infinity' THEN '9999-12-31 23:59:59.999999' WHEN c_tstz = '-infinity' \
               THEN '0001-01-01 00:00:00' ELSE c_tstz::text END, \
             c_citext_like FROM odd_types",
            "SELECT id, c_bit1, array_to_string(c_num_arr, ',', '∅'), array_to_string(c_enum_arr, ',', '∅'), \
             array_to_string(c_text_arr, ',', '∅'), c_hstore, c_tstzrange, c_macaddr8, encode(c_point, 'hex'), \
             CASE WHEN {overflow} THEN 'overflow' ELSE CAST(c_interval AS VARCHAR) END, \
             CAST(c_time0 AS VARCHAR), CAST(c_time AS VARCHAR), c_timetz3, c_timetz, CAST(c_date AS VARCHAR), \
             CAST(c_ts AS VARCHAR), CAST(c_tstz AS VARCHAR), c_citext_like FROM odd_types",
        ),
        ("key_text", "SELECT k, v FROM key_text", "SELECT k, v FROM key_text"),
        (
            "key_numeric",
            "SELECT trim_scale(k)::text, v FROM key_numeric",
            "SELECT CAST(k AS VARCHAR), v FROM key_numeric",
        ),
        ("key_uuid", "SELECT k::text, v FROM key_uuid", "SELECT k, v FROM key_uuid"),
        ("key_composite", "SELECT a, b, v FROM key_composite", "SELECT a, b, v FROM key_composite"),
        ("key_negative", "SELECT k, v FROM key_negative", "SELECT k, v FROM key_negative"),
        (
            "Odd Names ü",
            "SELECT \"Key Col\", \"Mixed Case\", \"with space\", \"quo\"\"te\", \"ñandú\" FROM \"Odd Names ü\"",
            "SELECT \"Key Col\", \"Mixed Case\", \"with space\", \"quo\"\"te\", \"ñandú\" FROM \"Odd Names ü\"",
        ),
    ];
    let normal = comparable;
    let runs = [("fidelity-schemas", false), ("fidelity-modes-string", false), ("fidelity-schemaless", true)];
    // What the converter modes send: intervals as MicroDuration (a month is
    // 30.4375 days; -178000000 years overflows) or exact (months, days,
    // time); times to the microsecond, or the millisecond (connect mode).
    let micro_duration = "CASE WHEN id = 1 THEN 'overflow' ELSE ((extract(year from c_interval) * 12 \
        + extract(month from c_interval)) * 30.4375 * 86400000000 + extract(day from c_interval) * 86400000000 \
        + extract(hour from c_interval) * 3600000000 + extract(minute from c_interval) * 60000000 \
        + extract(microseconds from c_interval))::bigint::text END";
    let exact_interval = "(extract(year from c_interval) * 12 + extract(month from c_interval))::bigint || '/' \
        || extract(day from c_interval)::bigint || '/' || (extract(hour from c_interval) * 3600000000 \
        + extract(minute from c_interval) * 60000000 + extract(microseconds from c_interval))::bigint";
    let queries = |connect_mode: bool| -> Vec<(&str, String, String)> {
        let pg = |sql: &str| {
            sql.replace("{interval}", if connect_mode { exact_interval } else { micro_duration })
                .replace(
                    "{time_us}",
                    if connect_mode {
                        "(floor(extract(epoch from c_time) * 1000) * 1000)::bigint::text"
                    } else {
                        "(extract(epoch from c_time) * 1000000)::bigint::text"
                    },
                )
                .replace("{ts}", if connect_mode { "date_trunc('milliseconds', c_ts)" } else { "c_ts" })
        };
        let datafusion = |sql: &str| sql.replace("{overflow}", if connect_mode { "false" } else { "id = 1" });
        tables.iter().map(|(table, p, d)| (*table, pg(p), datafusion(d))).collect()
    };
    for ((fixture, catalog), batch) in runs.into_iter().flat_map(|run| [(run, 1000), (run, 7)]) {
        let tables = queries(fixture == "fidelity-modes-string");
        let mut expected = Vec::new();
        for (_, pg, _) in &tables {
            let mut rows = Vec::new();
            for message in source.simple_query(&format!("SET TimeZone = 'UTC'; {pg}")).await.unwrap() {
                if let SimpleQueryMessage::Row(row) = message {
                    let cells: Vec<String> =
                        (0..row.len()).map(|i| normal(row.get(i).unwrap_or("NULL").to_owned())).collect();
                    rows.push(cells.join("|"));
                }
            }
            rows.sort();
            expected.push(rows);
        }
        let run = format!("{fixture}, batches of {batch}");
        let (mut compared, mut python_cells) = (0, 0);
        let dir = tempfile::tempdir().unwrap();
        let config = DeltaConfig::new(dir.path().to_str().unwrap());
        let live = format!("fidelity_delta_{}_{batch}_live", fixture.replace('-', "_"));
        let refused = replay_into(fixture, Box::new(DeltaSink::new(config.clone())), &live, batch, catalog).await;
        // odd_types row 5 holds BC dates, which Delta cannot store: its two
        // events are refused for Delta (dead-lettered, naming the column),
        // never stored as other dates; the PostgreSQL target keeps them.
        assert_eq!(refused.len(), 2, "{run}: {refused:?}");
        assert!(
            refused.iter().all(|e| e.contains("odd_types") && e.contains("outside what Delta stores")),
            "{refused:?}"
        );
        // The one schemaless limit (docs/DESIGN.md): evolving.total of row 2,
        // numeric(12,2) -> (14,4) at the source, carries no scale without
        // schemas. Listed: it must differ, and nothing else may.
        let lost = |table: &str| (fixture == "fidelity-schemaless" && table == "evolving").then_some(("2|", 2));
        // Another reader, the Python `deltalake` package, sees the same rows.
        let names: Vec<&str> = tables.iter().map(|(table, _, _)| *table).collect();
        let python = python_rows(dir.path(), &names, fixture != "fidelity-modes-string");
        for ((table, rows), wanted) in names.iter().zip(python).zip(&expected) {
            let rows: Vec<String> = rows
                .into_iter()
                .map(|row| row.split('|').map(|c| normal(c.to_owned())).collect::<Vec<_>>().join("|"))
                .collect();
            let wanted: Vec<String> =
                wanted.iter().filter(|r| *table != "odd_types" || !r.starts_with("5|")).cloned().collect();
            let wanted = without_lost(&wanted, &rows, lost(table), &run);
            assert_eq!(without_lost(&rows, &[], lost(table), &run), wanted, "Python deltalake, {run}, {table}");
            python_cells += rows.iter().map(|r| r.split('|').count()).sum::<usize>();
        }
        for ((table, _, datafusion), wanted) in tables.iter().zip(&expected) {
            let found = time_travel::query(&config, datafusion, AsOf::Latest)
                .await
                .unwrap_or_else(|e| panic!("{run}, {table}: {e}"));
            let mut rows: Vec<String> = found
                .iter()
                .flat_map(|b| {
                    (0..b.num_rows()).map(move |i| {
                        (0..b.num_columns())
                            .map(|c| {
                                let cell = array_value_to_string(b.column(c), i).unwrap();
                                if b.column(c).is_null(i) { "NULL".to_owned() } else { cell }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .map(|cells| cells.into_iter().map(normal).collect::<Vec<_>>().join("|"))
                .collect();
            rows.sort();
            let wanted: Vec<String> =
                wanted.iter().filter(|r| *table != "odd_types" || !r.starts_with("5|")).cloned().collect();
            let wanted = without_lost(&wanted, &rows, lost(table), &run);
            let rows = without_lost(&rows, &[], lost(table), &run);
            assert_eq!(rows, wanted, "{run}, {table}");
            compared += rows.iter().map(|r| r.split('|').count()).sum::<usize>();
        }
        println!(
            "{run}: {compared} cells equal the source through DataFusion, {python_cells} through Python deltalake"
        );
    }
}

/// `rows` with the listed lost cell (row key prefix, cell index) blanked;
/// asserts that `other` (the sink's rows, when given) differs there.
#[cfg(feature = "delta")]
fn without_lost(rows: &[String], other: &[String], lost: Option<(&str, usize)>, run: &str) -> Vec<String> {
    let Some((key, index)) = lost else { return rows.to_vec() };
    let cell = |rows: &[String]| {
        rows.iter().find(|r| r.starts_with(key)).and_then(|r| r.split('|').nth(index).map(str::to_owned))
    };
    if !other.is_empty() {
        assert_ne!(cell(rows), cell(other), "{run}: the listed lost cell {key}{index} is equal");
    }
    rows.iter()
        .map(|row| {
            if !row.starts_with(key) {
                return row.clone();
            }
            let cells: Vec<&str> =
                row.split('|').enumerate().map(|(i, c)| if i == index { "LOST" } else { c }).collect();
            cells.join("|")
        })
        .collect()
}

/// A cell as PostgreSQL and DataFusion both print it: numbers and time
/// fractions without trailing zeros, timestamps with a space and no UTC
/// suffix, JSON objects canonical, a WKB point as PostgreSQL prints a point.
#[cfg(feature = "delta")]
fn comparable(cell: String) -> String {
    if cell.starts_with('{')
        && let Ok(json) = serde_json::from_str::<serde_json::Value>(&cell)
    {
        return json.to_string();
    }
    if let Some(point) = wkb_point(&cell) {
        return point;
    }
    if let Some(interval) = arrow_interval(&cell) {
        return interval;
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let is_date_time = cell.len() > 11 && cell.get(..10).is_some_and(|d| digits(&d.replace('-', "")));
    let is_time = cell.get(..8).is_some_and(|t| t.as_bytes().get(2) == Some(&b':') && digits(&t.replace(':', "")));
    let mut cell = cell;
    if is_date_time || is_time {
        if is_date_time && cell.as_bytes().get(10) == Some(&b'T') {
            cell.replace_range(10..11, " ");
        }
        for suffix in ["Z", "+00:00", "+00"] {
            if let Some(stripped) = cell.strip_suffix(suffix) {
                cell = stripped.to_owned();
                break;
            }
        }
    }
    match cell.split_once('.') {
        Some((whole, fraction)) if digits(fraction) => {
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() { whole.to_owned() } else { format!("{whole}.{fraction}") }
        }
        _ => cell,
    }
}

/// `months/days/micros` from Arrow's text of a month-day-nano interval
/// (`-1 mons 2 days -1.000000000 secs`; zero parts may be left out).
#[cfg(feature = "delta")]
fn arrow_interval(text: &str) -> Option<String> {
    let words: Vec<&str> = text.split(' ').collect();
    if words.is_empty() || !words.len().is_multiple_of(2) {
        return None;
    }
    let (mut months, mut days, mut micros) = (0i64, 0i64, 0i64);
    for pair in words.chunks(2) {
        let [number, unit] = pair else { return None };
        match *unit {
            "mons" => months = number.parse().ok()?,
            "days" => days = number.parse().ok()?,
            "secs" => {
                let negative = number.starts_with('-');
                let (whole, fraction) = number.trim_start_matches('-').split_once('.').unwrap_or((number, "0"));
                let fraction = format!("{fraction:0<6}");
                let value = whole.parse::<i64>().ok()? * 1_000_000 + fraction.get(..6)?.parse::<i64>().ok()?;
                micros = if negative { -value } else { value };
            }
            _ => return None,
        }
    }
    Some(format!("{months}/{days}/{micros}"))
}

/// `(x,y)` from the hex of a 2D WKB point, either byte order.
#[cfg(feature = "delta")]
fn wkb_point(hex: &str) -> Option<String> {
    if hex.len() != 42 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Vec<u8> =
        (0..21).map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect::<Option<_>>()?;
    let little = *bytes.first()? == 1;
    let number = |at: usize| -> Option<f64> {
        let raw: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
        Some(if little { f64::from_le_bytes(raw) } else { f64::from_be_bytes(raw) })
    };
    Some(format!("({},{})", number(5)?, number(13)?))
}

/// The columns the Python check reads of each query above (in order), by
/// the query's index: every query but the primary-key changes' (`toasty`'s
/// values are compared by md5, as the others).
#[cfg(feature = "delta")]
const PYTHON_COLUMNS: &[&[&str]] = &[
    &["id", "order_status", "total", "qty", "ratio", "code", "discontinued"],
    &["id", "big", "note"],
    &[
        "id",
        "c_num_free",
        "c_domain",
        "c_domain_text",
        "c_uuid",
        "c_inet",
        "c_cidr",
        "c_macaddr",
        "c_int4range",
        "c_numrange",
        "c_tsvector",
        "c_char",
        "c_bit12",
        "c_varbit_free",
        "c_xml",
        "c_money",
    ],
    &[
        "id",
        "c_bit1",
        "c_num_arr",
        "c_enum_arr",
        "c_text_arr",
        "c_hstore",
        "c_tstzrange",
        "c_macaddr8",
        "c_point",
        "c_interval",
        "c_time0",
        "c_time",
        "c_timetz3",
        "c_timetz",
        "c_date",
        "c_ts",
        "c_tstz",
        "c_citext_like",
    ],
    &["k", "v"],
    &["k", "v"],
    &["k", "v"],
    &["a", "b", "v"],
    &["k", "v"],
    &["Key Col", "Mixed Case", "with space", "quo\"te", "ñandú"],
];

/// Each query's table as the Python `deltalake` package reads it: the
/// columns of `PYTHON_COLUMNS`, rendered as the queries render them, rows
/// sorted; aligned with `tables`. `overflow`: row 1's MicroDuration
/// overflowed (rendered `overflow`, as the queries do).
#[cfg(feature = "delta")]
fn python_rows(root: &std::path::Path, tables: &[&str], overflow: bool) -> Vec<Vec<String>> {
    let script = r#"
import decimal, hashlib, json, os, sys
from deltalake import DeltaTable
root, spec, overflow = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "true"
def scalar(v):
    if isinstance(v, bool): return "true" if v else "false"
    if isinstance(v, decimal.Decimal): return format(v, "f")
    if isinstance(v, bytes): return v.hex()
    return str(v)
def render(column, row):
    v = row[column]
    if column == "c_interval" and overflow and row.get("id") == 1: return "overflow"
    if v is None: return "NULL"
    if column == "big": return hashlib.md5(v.encode()).hexdigest()
    if isinstance(v, list): return ",".join("∅" if x is None else scalar(x) for x in v)
    return scalar(v)
out = []
for name, columns in spec:
    rows = DeltaTable(os.path.join(root, name)).to_pyarrow_table(columns=columns).to_pylist()
    out.append(sorted("|".join(render(c, r) for c in columns) for r in rows))
print(json.dumps(out), flush=True)
# The package's runtime threads can abort the interpreter at exit: leave first.
os._exit(0)
"#;
    let spec: Vec<(&str, &[&str])> = tables.iter().copied().zip(PYTHON_COLUMNS.iter().copied()).collect();
    assert_eq!(spec.len(), tables.len(), "a Python column list per query");
    let spec = serde_json::to_string(&spec).unwrap();
    let overflow = if overflow { "true" } else { "false" };
    serde_json::from_value(crate::support::python_json(script, &[root.to_str().unwrap(), &spec, overflow])).unwrap()
}
