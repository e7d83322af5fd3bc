//! An in-memory [`Sink`] for tests of pipeline logic: holds each table's
//! current rows the way a real sink must (order keys, TOAST, truncate).

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::error::{Position, Result};
use crate::event::{ChangeEvent, Op, OrderKey, supersedes};
use crate::sink::{Batch, Offsets, Sink};
use crate::value::Value;

/// A row by column name.
pub type MemoryRow = BTreeMap<String, Value>;

/// One table's state: live rows and deleted keys, each with the order key of
/// the event that last wrote it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryTable {
    /// Keyed by the debug text of the key values (values hold floats, which
    /// are not `Ord`).
    pub rows: BTreeMap<String, (OrderKey, Option<MemoryRow>)>,
    /// Where each row's last change came from (for [`supersedes`]).
    pub written_at: BTreeMap<String, Position>,
}

impl MemoryTable {
    /// Live rows, in key order.
    pub fn live_rows(&self) -> impl Iterator<Item = &MemoryRow> {
        self.rows.values().filter_map(|(_, row)| row.as_ref())
    }
}

/// Holds tables in memory; `apply` follows the [`Sink`] contract.
#[derive(Debug, Default)]
pub struct MemorySink {
    pub tables: BTreeMap<String, MemoryTable>,
    pub offsets: Offsets,
    /// Batches applied (for tests of the pipeline).
    pub batches: usize,
}

impl MemorySink {
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// Applies one event, ignoring the stored offsets.
    pub fn apply_event(&mut self, event: &ChangeEvent) {
        let table = self.tables.entry(event.table().to_string()).or_default();
        if event.op == Op::Truncate {
            table.rows.clear();
            table.written_at.clear();
            return;
        }
        let Some(key) = &event.key else { return };
        let key = format!("{key:?}");
        let current = table.rows.get(&key);
        let stored = current.map(|(order, _)| *order).zip(table.written_at.get(&key));
        if stored.is_some_and(|old| !supersedes(event.version(), old)) {
            return; // never let an older event overwrite a newer one
        }
        let row = match (&event.op, &event.after) {
            (Op::Delete, _) | (_, None) => None,
            (_, Some(after)) => {
                let previous = current.and_then(|(_, row)| row.as_ref());
                let mut row = MemoryRow::new();
                for (field, value) in event.schema.fields().iter().zip(after) {
                    let value = match (value, previous) {
                        // Unchanged TOAST: keep what we hold.
                        (Value::Unavailable, Some(prev)) => {
                            prev.get(&field.name).cloned().unwrap_or(Value::Unavailable)
                        }
                        _ => value.clone(),
                    };
                    row.insert(field.name.clone(), value);
                }
                Some(row)
            }
        };
        table.written_at.insert(key.clone(), event.position.clone());
        table.rows.insert(key, (event.order, row));
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn name(&self) -> &str {
        "memory"
    }

    async fn durable_offsets(&mut self) -> Result<Offsets> {
        Ok(self.offsets.clone())
    }

    async fn apply(&mut self, batch: &Batch) -> Result<()> {
        let held = self.offsets.clone();
        for event in batch.to_apply(&held) {
            self.apply_event(event);
        }
        self.offsets.merge(&batch.offsets);
        self.batches += 1;
        Ok(())
    }
}
