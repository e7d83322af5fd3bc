//! Per-table settings shared by the sinks that keep tables of their own
//! (`[delta.tables.<name>]`, `[target.tables.<name>]`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How one table is written.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    #[serde(default)]
    pub mode: TableMode,
    /// SCD2 only: the columns whose changes open a new version. A change to
    /// other columns alone updates the current version in place (Databricks'
    /// `TRACK HISTORY ON`). Unset: every change opens a version.
    #[serde(default)]
    pub track_history_columns: Option<Vec<String>>,
}

/// What a table holds.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TableMode {
    /// One row per key: its current state (deleted rows removed, or flagged
    /// with `soft_delete`).
    #[default]
    Current,
    /// Slowly changing dimension type 2: every version of every row, with
    /// `__start_at` / `__end_at` / `__is_current` (see [`cdc_core::scd2`]).
    Scd2,
}

/// The settings of a table named `name` (`table`, or `schema.table` where
/// that is what the sink names it), defaults where it has none.
pub fn table_config(tables: &BTreeMap<String, TableConfig>, names: &[&str]) -> TableConfig {
    names.iter().find_map(|name| tables.get(*name)).cloned().unwrap_or_default()
}
