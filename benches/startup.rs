//! Start-up on an object store: how long a new Delta sink takes to find the
//! tables under an `s3://` root (one listing of the root, one short listing
//! per table) and read the offsets each holds, with 100 tables (the
//! synthetic records carry no raw JSON: no history table). Needs an
//! S3-protocol server:
//!
//!   BENCH_S3_ENDPOINT=$(scripts/s3-server.sh start /tmp/s3) cargo bench --bench startup
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cdc_lakehouse::core::{Batch, Record, Sink};
use cdc_lakehouse::sinks::delta::time_travel;
use cdc_lakehouse::sinks::{DeltaConfig, DeltaSink};
use support::Generator;

const TABLES: usize = 100;
const ROWS: i64 = 10;

fn main() {
    let endpoint = std::env::var("BENCH_S3_ENDPOINT")
        .expect("BENCH_S3_ENDPOINT: an S3-protocol server, e.g. $(scripts/s3-server.sh start /tmp/s3)");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let mut config = DeltaConfig::new(format!("s3://cdc-test/bench-startup-{nanos}"));
    config.storage_options = HashMap::from(
        [
            ("AWS_ENDPOINT_URL", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "bench"),
            ("AWS_SECRET_ACCESS_KEY", "bench"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    config.history = false;
    let rt = tokio::runtime::Runtime::new().unwrap();

    // 100 tables of 10 rows, each from its own topic, in one batch.
    let mut generator = Generator::default();
    let mut records = Vec::new();
    for table in 0..TABLES {
        for record in generator.snapshot(1..ROWS + 1).events {
            let mut event = record;
            event.source.table = format!("t{table:03}");
            event.position.topic = Arc::from(format!("cdc.public.t{table:03}"));
            records.push(Record::Change(event));
        }
    }
    let written = Instant::now();
    rt.block_on(DeltaSink::new(config.clone()).apply(&Batch::from_records(records))).unwrap();
    println!("wrote {TABLES} tables in {:.1} s", written.elapsed().as_secs_f64());

    let mut listing = Vec::new();
    let mut startup = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let tables = rt.block_on(time_travel::list_tables(&config)).unwrap();
        listing.push(started.elapsed().as_secs_f64());
        assert_eq!(tables.len(), TABLES);

        let started = Instant::now();
        let offsets = rt.block_on(DeltaSink::new(config.clone()).durable_offsets()).unwrap();
        startup.push(started.elapsed().as_secs_f64());
        assert_eq!(offsets.iter().count(), TABLES, "every table's partition");
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("listing the root: median {:.3} s over 5 runs", median(listing));
    println!("start-up (list + every table's offsets): median {:.3} s over 5 runs", median(startup));
}
