//! Sinks that apply Debezium change events: Delta Lake (`delta` feature) and
//! PostgreSQL (`postgres` feature). Each implements [`cdc_core::Sink`].
