//! Helpers for tests across the workspace: the real-Debezium fixtures in
//! `tests/fixtures/debezium/` (captured by `tests/capture/capture.sh`).

#![allow(clippy::expect_used, clippy::panic, clippy::indexing_slicing)] // test helpers: failing loudly is the point

use std::path::PathBuf;

use crate::{ChangeEvent, Decoder, Record};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// One captured Kafka record, key and value as the exact bytes JsonConverter wrote.
pub type FixtureRecord = crate::jsonl::KafkaRecord;

/// Loads `tests/fixtures/debezium/<name>.jsonl`.
/// A record as Kafka Connect's JsonConverter writes it with
/// `schemas.enable=false`: the key and value without the schema envelope
/// (the payload, byte for byte).
pub fn without_schemas(record: &FixtureRecord) -> FixtureRecord {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        payload: &'a serde_json::value::RawValue,
    }
    let strip = |json: &Option<String>| {
        json.as_deref().map(|text| match serde_json::from_str::<Envelope<'_>>(text) {
            Ok(envelope) => envelope.payload.get().to_owned(),
            Err(_) => text.to_owned(),
        })
    };
    FixtureRecord { key: strip(&record.key), value: strip(&record.value), ..record.clone() }
}

pub fn load(name: &str) -> Vec<FixtureRecord> {
    let path = repo_root().join("tests/fixtures/debezium").join(format!("{name}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(number, line)| crate::jsonl::parse_line(line, name, number as u64).expect("fixture line"))
        .collect()
}

/// Decodes every record of a fixture; any error panics.
pub fn decode_with(decoder: &mut Decoder, name: &str) -> Vec<Record> {
    load(name).iter().map(|r| decoder.decode(r.raw()).unwrap_or_else(|e| panic!("{name}: {e}"))).collect()
}

/// The change events among `records`.
pub fn changes(records: &[Record]) -> Vec<&ChangeEvent> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Change(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// The SQL that produced the fixtures, in order: the seed tables, the
/// all-types table, the workload. The workload's two concurrent sessions
/// touch different rows, so they run one after the other here.
pub fn capture_sql() -> Vec<(&'static str, String)> {
    ["init-scripts/source-init.sql", "tests/capture/types-init.sql", "tests/capture/workload.sql"]
        .into_iter()
        .map(|file| {
            let sql = std::fs::read_to_string(repo_root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            (file, sql.replace("SELECT pg_sleep(2);", ""))
        })
        .collect()
}

/// The snapshot's LSN in the fixture (every read carries `[null, "26761800"]`).
const FIXTURE_SNAPSHOT_LSN: u64 = 26_761_800;

/// Real customer snapshot reads, edited into the cases a naive order gets
/// wrong, in the order a consumer reads them:
/// 1. customer 1: its snapshot read, a streamed update, then the read of a
///    re-snapshot (a new replication slot after a lost one, `[null, S2]`
///    with S2 beyond every LSN so far) with another email, from another
///    partition (the topics were recreated with more partitions, so only
///    the order key can tell): the re-snapshot is the source's state.
/// 2. customer 2, in one partition: its snapshot read, then the update of a
///    transaction that was open when the snapshot began and committed after
///    it (`[null, l]`, l below the snapshot's LSN): the update is the
///    source's state, which only the later offset tells.
///
/// Returns the decoded records and the email each customer id must end with.
pub fn snapshot_edges() -> (Vec<Record>, Vec<(i64, &'static str)>) {
    let reads: Vec<FixtureRecord> = load("schemas")
        .into_iter()
        .filter(|r| r.topic == "cdc.public.customers" && r.value.as_deref().is_some_and(|v| v.contains("\"op\":\"r\"")))
        .take(2)
        .collect();
    let [first, second] = <[FixtureRecord; 2]>::try_from(reads).expect("two customer snapshot reads");
    let edit = |read: &FixtureRecord, (partition, offset), op: &str, sequence: [Option<u64>; 2], email: &str| {
        let mut value: serde_json::Value =
            serde_json::from_str(read.value.as_deref().expect("a value")).expect("JSON value");
        let payload = &mut value["payload"];
        payload["op"] = op.into();
        payload["after"]["email"] = email.into();
        let source = &mut payload["source"];
        source["snapshot"] = if op == "r" { "true" } else { "false" }.into();
        let text = |lsn: Option<u64>| lsn.map(|l| l.to_string());
        source["sequence"] = serde_json::to_string(&[text(sequence[0]), text(sequence[1])]).expect("JSON").into();
        source["lsn"] = sequence[1].into();
        FixtureRecord { partition, offset, value: Some(value.to_string()), ..read.clone() }
    };
    let s = FIXTURE_SNAPSHOT_LSN;
    let edited = [
        edit(&first, (0, 0), "r", [None, Some(s)], "snapshot@example.com"),
        edit(&second, (0, 1), "r", [None, Some(s)], "snapshot@example.com"),
        edit(&first, (0, 2), "u", [Some(s + 40_000), Some(s + 40_100)], "streamed@example.com"),
        // Open since before the snapshot: its change's LSN is below it.
        edit(&second, (0, 3), "u", [None, Some(s - 800)], "in-flight@example.com"),
        edit(&first, (1, 0), "r", [None, Some(s + 500_000)], "resnapshot@example.com"),
    ];
    let mut decoder = Decoder::new().keep_raw_json(true);
    let records = edited.iter().map(|r| decoder.decode(r.raw()).expect("an edited fixture record")).collect();
    (records, vec![(1, "resnapshot@example.com"), (2, "in-flight@example.com")])
}

/// A real order's snapshot read, then updates whose schemas widen columns
/// as `ALTER COLUMN ... TYPE` at the source would: `total_amount`
/// numeric(10,2) -> numeric(14,4) with a value that needs it, `status`
/// varchar(20) -> varchar(40) -> text. One partition, in offset order.
///
/// Returns the decoded records and the final (total_amount, status) as
/// PostgreSQL renders them.
pub fn widening_changes() -> (Vec<Record>, (&'static str, String)) {
    let read = load("schemas")
        .into_iter()
        .find(|r| r.topic == "cdc.public.orders" && r.value.as_deref().is_some_and(|v| v.contains("\"op\":\"r\"")))
        .expect("an order's snapshot read");
    let long_status = "x".repeat(30);
    let edit =
        |offset: i64, lsn: u64, precision: u32, scale: u32, amount: &str, status_type: (&str, &str), status: &str| {
            let mut value: serde_json::Value =
                serde_json::from_str(read.value.as_deref().expect("a value")).expect("JSON value");
            for field in value["schema"]["fields"].as_array_mut().expect("envelope fields") {
                if field["field"] != "after" && field["field"] != "before" {
                    continue;
                }
                for column in field["fields"].as_array_mut().expect("row fields") {
                    let name = column["field"].as_str().unwrap_or_default().to_owned();
                    let parameters = &mut column["parameters"];
                    if name == "total_amount" {
                        parameters["scale"] = scale.to_string().into();
                        parameters["connect.decimal.precision"] = precision.to_string().into();
                        parameters["__debezium.source.column.length"] = precision.to_string().into();
                        parameters["__debezium.source.column.scale"] = scale.to_string().into();
                    }
                    if name == "status" {
                        parameters["__debezium.source.column.type"] = status_type.0.into();
                        parameters["__debezium.source.column.length"] = status_type.1.into();
                    }
                }
            }
            let payload = &mut value["payload"];
            payload["after"]["total_amount"] = amount.into();
            payload["after"]["status"] = status.into();
            if offset > 0 {
                payload["op"] = "u".into();
                payload["source"]["snapshot"] = "false".into();
                payload["source"]["sequence"] = format!("[\"{lsn}\",\"{lsn}\"]").into();
                payload["source"]["lsn"] = lsn.into();
            }
            FixtureRecord { offset, value: Some(value.to_string()), ..read.clone() }
        };
    // 12345.6789 needs numeric(14,4): unscaled 123456789 = 0x075BCD15.
    let edited = [
        edit(0, 0, 10, 2, "AgeG", ("VARCHAR", "20"), "pending"),
        edit(1, 30_000_000, 14, 4, "B1vNFQ==", ("VARCHAR", "40"), &long_status),
        edit(2, 30_000_100, 14, 4, "B1vNFQ==", ("TEXT", "2147483647"), &"y".repeat(300)),
    ];
    let mut decoder = Decoder::new().keep_raw_json(true);
    let records = edited.iter().map(|r| decoder.decode(r.raw()).expect("an edited fixture record")).collect();
    (records, ("12345.6789", "y".repeat(300)))
}
