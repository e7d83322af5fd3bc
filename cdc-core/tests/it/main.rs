//! cdc-core integration tests: real Debezium fixtures (tests/fixtures/debezium,
//! captured by tests/capture/capture.sh) decoded and checked against a real
//! PostgreSQL holding the same rows.

mod arrow;
mod common;
mod consistency;
mod errors;
mod fixtures;
mod ordering;
mod pipeline;
mod postgres;
mod quirks;
mod sink;
