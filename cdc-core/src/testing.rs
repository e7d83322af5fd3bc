//! Helpers for tests across the workspace: the real-Debezium fixtures in
//! `tests/fixtures/debezium/` (captured by `tests/capture/capture.sh`).

#![allow(clippy::expect_used, clippy::panic)] // test helpers: failing loudly is the point

use std::path::PathBuf;

use crate::{ChangeEvent, Decoder, Record};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// One captured Kafka record, key and value as the exact bytes JsonConverter wrote.
pub type FixtureRecord = crate::jsonl::KafkaRecord;

/// Loads `tests/fixtures/debezium/<name>.jsonl`.
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
