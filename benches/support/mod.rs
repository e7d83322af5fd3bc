//! Synthetic Debezium records in the shape real Debezium writes (schemas on,
//! Connect Decimal, MicroTimestamp, sequence), decoded by the real decoder.
// Each bench uses part of this module.
#![allow(dead_code)]

use std::process::Command;

use cdc_lakehouse::core::{Batch, Decoder, RawRecord, Record};

const SCHEMA: &str = r#"{"type":"struct","fields":[{"type":"struct","optional":true,"field":"before","fields":[{"type":"int64","optional":false,"field":"id"},{"type":"string","optional":true,"field":"name","parameters":{"__debezium.source.column.type":"VARCHAR","__debezium.source.column.length":"100"}},{"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"2","connect.decimal.precision":"10"},"field":"price"},{"type":"int32","optional":true,"field":"quantity"},{"type":"int64","optional":true,"name":"io.debezium.time.MicroTimestamp","field":"updated_at"}]},{"type":"struct","optional":true,"field":"after","fields":[{"type":"int64","optional":false,"field":"id"},{"type":"string","optional":true,"field":"name","parameters":{"__debezium.source.column.type":"VARCHAR","__debezium.source.column.length":"100"}},{"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"2","connect.decimal.precision":"10"},"field":"price"},{"type":"int32","optional":true,"field":"quantity"},{"type":"int64","optional":true,"name":"io.debezium.time.MicroTimestamp","field":"updated_at"}]},{"type":"struct","optional":false,"field":"source","fields":[]},{"type":"string","optional":false,"field":"op"}],"optional":false,"name":"cdc.public.bench_items.Envelope"}"#;

/// Makes records with increasing LSNs and offsets.
pub struct Generator {
    decoder: Decoder,
    lsn: i64,
    offset: i64,
}

impl Default for Generator {
    fn default() -> Self {
        Generator { decoder: Decoder::new(), lsn: 1_000_000, offset: 0 }
    }
}

fn price(cents: i64) -> String {
    use base64::Engine as _;
    let bytes = cents.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count().min(6);
    base64::engine::general_purpose::STANDARD.encode(&bytes[skip..])
}

impl Generator {
    /// One change (`op` c, u, d or r) of row `id` of table `bench_items`.
    pub fn record(&mut self, op: &str, id: i64, round: u64) -> Record {
        self.lsn += 8;
        self.offset += 1;
        let lsn = self.lsn;
        let row = format!(
            r#"{{"id":{id},"name":"item {id} r{round}","price":"{}","quantity":{},"updated_at":{}}}"#,
            price(id % 100_000 + round as i64),
            id % 50,
            1_700_000_000_000_000 + lsn
        );
        let (before, after) =
            if op == "d" { (format!(r#"{{"id":{id}}}"#), "null".to_string()) } else { ("null".into(), row) };
        let sequence = if op == "r" { format!(r#"[null,\"{lsn}\"]"#) } else { format!(r#"[\"{lsn}\",\"{lsn}\"]"#) };
        let value = format!(
            r#"{{"schema":{SCHEMA},"payload":{{"before":{before},"after":{after},"source":{{"schema":"public","table":"bench_items","lsn":{lsn},"txId":{round},"sequence":"{sequence}"}},"op":"{op}"}}}}"#
        );
        let key = format!(r#"{{"id":{id}}}"#);
        let raw = RawRecord {
            topic: "cdc.public.bench_items",
            partition: 0,
            offset: self.offset,
            key: Some(key.as_bytes()),
            value: Some(value.as_bytes()),
        };
        self.decoder.decode(raw).expect("bench record")
    }

    /// A snapshot of rows `ids`.
    pub fn snapshot(&mut self, ids: std::ops::Range<i64>) -> Batch {
        Batch::from_records(ids.map(|id| self.record("r", id, 0)).collect::<Vec<_>>())
    }

    /// `size` mixed changes: 60% updates and 20% deletes of keys in
    /// `existing`, 20% inserts of new keys from `*next_new`.
    pub fn mixed(&mut self, size: usize, existing: std::ops::Range<i64>, next_new: &mut i64, round: u64) -> Batch {
        let span = (existing.end - existing.start).max(1);
        let records: Vec<Record> = (0..size)
            .map(|i| {
                let old = existing.start + (i as i64 * 7919 + round as i64 * 104_729).rem_euclid(span);
                match i % 5 {
                    0 => self.record("d", old, round),
                    1 => {
                        *next_new += 1;
                        self.record("c", *next_new, round)
                    }
                    _ => self.record("u", old, round),
                }
            })
            .collect();
        Batch::from_records(records)
    }
}

/// The PostgreSQL at CDC_TEST_PG_URL, or a throwaway cluster started with
/// scripts/pg-cluster.sh (installing Debian's PostgreSQL if needed).
pub fn database_url() -> String {
    if let Ok(url) = std::env::var("CDC_TEST_PG_URL") {
        return url;
    }
    let dir = std::env::temp_dir().join(format!("cdc-bench-pg-{}", std::process::id()));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg-cluster.sh");
    let out = Command::new("bash").arg(script).arg("start").arg(&dir).output().expect("scripts/pg-cluster.sh");
    assert!(out.status.success(), "starting PostgreSQL failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub async fn fresh_database(admin_url: &str, name: &str) -> String {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0)
}

pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next());
    kib.and_then(|k| k.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}

pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
