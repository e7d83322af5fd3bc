//! Apply Debezium change data capture to Delta Lake and PostgreSQL, exactly once.
//!
//! This crate is a facade over the workspace:
//!
//! | crate | what it holds |
//! |---|---|
//! | [`core`] (`cdc-core`) | Debezium envelope model, type-faithful decoding, Arrow conversion, the [`core::Sink`] trait |
//! | [`sinks`] (`cdc-sinks`) | Delta Lake (`delta` feature) and PostgreSQL (`postgres` feature) sinks |
//! | [`kafka`] (`cdc-kafka`) | the Kafka source |
pub use cdc_core as core;
pub use cdc_kafka as kafka;
pub use cdc_sinks as sinks;
