use std::path::PathBuf;

use cdc_core::{ChangeEvent, Decoder, RawRecord, Record};
use serde::Deserialize;
use serde_json::value::RawValue;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// One captured Kafka record, key and value as the exact bytes JsonConverter wrote.
pub struct FixtureRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<String>,
}

impl FixtureRecord {
    pub fn raw(&self) -> RawRecord<'_> {
        RawRecord {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref().map(str::as_bytes),
            value: self.value.as_deref().map(str::as_bytes),
        }
    }
}

/// Loads `tests/fixtures/debezium/<name>.jsonl`.
pub fn load(name: &str) -> Vec<FixtureRecord> {
    #[derive(Deserialize)]
    struct Line<'a> {
        topic: String,
        partition: i32,
        offset: i64,
        #[serde(borrow)]
        key: &'a RawValue,
        #[serde(borrow)]
        value: &'a RawValue,
    }
    let path = repo_root().join("tests/fixtures/debezium").join(format!("{name}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let l: Line<'_> = serde_json::from_str(line).expect("fixture line");
            let opt = |raw: &RawValue| (raw.get() != "null").then(|| raw.get().to_owned());
            FixtureRecord {
                topic: l.topic,
                partition: l.partition,
                offset: l.offset,
                key: opt(l.key),
                value: opt(l.value),
            }
        })
        .collect()
}

/// Decodes every record of a fixture; any error fails the test.
pub fn decode_all(name: &str) -> Vec<Record> {
    decode_with(&mut Decoder::new(), name)
}

pub fn decode_with(decoder: &mut Decoder, name: &str) -> Vec<Record> {
    load(name).iter().map(|r| decoder.decode(r.raw()).unwrap_or_else(|e| panic!("{name}: {e}"))).collect()
}

pub fn changes(records: &[Record]) -> Vec<&ChangeEvent> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Change(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// The events of one table.
pub fn table_events<'a>(records: &'a [Record], table: &str) -> Vec<&'a ChangeEvent> {
    changes(records).into_iter().filter(|e| e.source.table == table).collect()
}

/// Value of column `name` in an event's after-image (or before-image).
pub fn column<'a>(event: &'a ChangeEvent, name: &str) -> &'a cdc_core::Value {
    let i = event.schema.index_of(name).unwrap_or_else(|| panic!("no column {name}"));
    &event.image().expect("row image")[i]
}

pub fn id_of(event: &ChangeEvent) -> i64 {
    match column(event, "id") {
        cdc_core::Value::Int(i) => *i,
        other => panic!("id is {other:?}"),
    }
}
