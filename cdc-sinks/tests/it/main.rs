//! cdc-sinks integration tests against the test command's throwaway
//! PostgreSQL (`CDC_TEST_PG_URL`).

mod catalog;
#[cfg(feature = "delta")]
mod change_feed;
#[cfg(feature = "delta")]
mod delta;
mod fidelity;
mod interleavings;
mod pg_datalake;
mod pg_target;
mod pk_change;
#[cfg(feature = "delta")]
mod read_points;
#[cfg(feature = "delta")]
mod scd2;
mod schemas;
#[cfg(feature = "delta")]
mod store;
mod support;
mod tls;
