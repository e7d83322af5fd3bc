//! Decode throughput of real Debezium records of the seed tables (customers,
//! products, orders, order_items from tests/fixtures/debezium), with schemas
//! and without, against parsing the same bytes into `serde_json::Value`.
//!
//!   cargo bench --bench decode
//!
//! Criterion reports bytes/s; events/s is printed per group once (events per
//! iteration divided by the time criterion reports).
use std::hint::black_box;

use cdc_lakehouse::core::{Decoder, RawRecord};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::Deserialize;
use serde_json::value::RawValue;

struct Record {
    topic: String,
    key: Option<String>,
    value: Option<String>,
}

impl Record {
    fn raw(&self, offset: usize) -> RawRecord<'_> {
        RawRecord {
            topic: &self.topic,
            partition: 0,
            offset: offset as i64,
            key: self.key.as_deref().map(str::as_bytes),
            value: self.value.as_deref().map(str::as_bytes),
        }
    }
}

fn seed_records(fixture: &str) -> Vec<Record> {
    #[derive(Deserialize)]
    struct Line<'a> {
        topic: String,
        #[serde(borrow)]
        key: &'a RawValue,
        #[serde(borrow)]
        value: &'a RawValue,
    }
    let path = format!("{}/tests/fixtures/debezium/{fixture}.jsonl", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let seed = ["customers", "products", "orders", "order_items"].map(|t| format!("cdc.public.{t}"));
    text.lines()
        .map(|line| serde_json::from_str::<Line<'_>>(line).unwrap())
        .filter(|l| seed.contains(&l.topic) && l.value.get() != "null")
        .map(|l| Record { topic: l.topic, key: Some(l.key.get().to_owned()), value: Some(l.value.get().to_owned()) })
        .collect()
}

fn bench_fixture(c: &mut Criterion, fixture: &str, group_name: &str) {
    let records = seed_records(fixture);
    let bytes: usize =
        records.iter().map(|r| r.key.as_ref().map_or(0, String::len) + r.value.as_ref().map_or(0, String::len)).sum();
    println!(
        "{group_name}: {} events, {bytes} bytes per iteration ({} bytes/event)",
        records.len(),
        bytes / records.len()
    );
    let mut group = c.benchmark_group(group_name);
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("cdc_core", |b| {
        // Schemaless records are typed as the catalog would type them: by
        // the schemas of the same tables (learnt from records that had them).
        let mut decoder = Decoder::new().type_by_json_shape(fixture == "schemaless");
        if fixture == "schemaless" {
            for (offset, r) in seed_records("schemas").iter().enumerate() {
                decoder.decode(r.raw(offset)).unwrap();
            }
        }
        b.iter(|| {
            for (offset, r) in records.iter().enumerate() {
                black_box(decoder.decode(r.raw(offset)).unwrap());
            }
        })
    });
    group.bench_function("baseline_serde_json_value", |b| {
        b.iter(|| {
            for r in &records {
                let key: serde_json::Value = serde_json::from_slice(r.key.as_deref().unwrap().as_bytes()).unwrap();
                let value: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap().as_bytes()).unwrap();
                black_box((key, value));
            }
        })
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    bench_fixture(c, "schemas", "decode_with_schemas");
    bench_fixture(c, "schemaless", "decode_schemaless");
}

criterion_group!(benches, decode);
criterion_main!(benches);
