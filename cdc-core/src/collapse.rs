//! Collapsing a batch to one change per row, so that set-based writers (SQL
//! `INSERT ... ON CONFLICT`, Delta MERGE) never see a key twice.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::event::{ChangeEvent, Op, OrderKey, Row, supersedes};
use crate::value::Value;

/// What a sink applies for one table, in order.
#[derive(Debug)]
pub enum TableChange<'a> {
    /// At most one change per key: the newest by [`supersedes`].
    Rows(Vec<RowChange<'a>>),
    /// Empty the table (everything before it in the batch is already applied).
    Truncate(&'a ChangeEvent),
}

/// The newest change of one row in a batch.
#[derive(Debug, Clone)]
pub struct RowChange<'a> {
    /// The newest event (its op, order key, position and metadata).
    pub event: &'a ChangeEvent,
    /// Its after-image with unchanged-TOAST columns filled from older events
    /// of the same row in the batch where they had the value; `None` for a
    /// delete. Columns no event of the batch had stay [`Value::Unavailable`].
    pub after: Option<Cow<'a, Row>>,
    /// For a delete, the row it deletes as far as the batch knows: its
    /// before-image (key only with REPLICA IDENTITY DEFAULT) filled from an
    /// older change of the row in the batch. `None` for other changes.
    pub before: Option<Cow<'a, Row>>,
    /// Set when the row was created in the batch by a create that carried
    /// unavailable values and the newest state still lacks them: the order
    /// key of that create. In PostgreSQL only a primary-key change does
    /// this (REPLICA IDENTITY DEFAULT, unchanged TOAST): the values are in
    /// the old key's row, deleted at the same LSN (`commit_lsn`, `lsn`).
    pub owed_since: Option<OrderKey>,
}

impl RowChange<'_> {
    pub fn is_delete(&self) -> bool {
        self.event.op == Op::Delete
    }

    /// The row's key values.
    pub fn key(&self) -> &[Value] {
        self.event.key.as_deref().unwrap_or_default()
    }
}

/// Collapses one table's events (in batch order) into runs of row changes
/// separated by truncates. Events without a key (tables without a primary
/// key) cannot be collapsed and are returned each on its own.
pub fn collapse<'a>(events: &[&'a ChangeEvent]) -> Vec<TableChange<'a>> {
    let mut out = Vec::new();
    let mut rows: Vec<RowChange<'a>> = Vec::new();
    let mut by_key: HashMap<Vec<u8>, usize> = HashMap::new();
    for &event in events {
        if event.op == Op::Truncate {
            if !rows.is_empty() {
                out.push(TableChange::Rows(std::mem::take(&mut rows)));
            }
            by_key.clear();
            out.push(TableChange::Truncate(event));
            continue;
        }
        let delete = event.op == Op::Delete;
        let after = if delete { None } else { event.after.as_ref().map(Cow::Borrowed) };
        let before = if delete { event.before.as_ref().map(Cow::Borrowed) } else { None };
        let owes = event.op == Op::Create && after.as_ref().is_some_and(|a| a.iter().any(Value::is_unavailable));
        let change = RowChange { event, after, before, owed_since: owes.then_some(event.order) };
        let Some(key) = event.key.as_deref() else {
            rows.push(change);
            continue;
        };
        let key = key_bytes(key);
        match by_key.get(&key) {
            None => {
                by_key.insert(key, rows.len());
                rows.push(change);
            }
            Some(&i) => {
                // `by_key` holds indices into `rows`, which only grows.
                let Some(slot) = rows.get_mut(i) else { continue };
                let existing = std::mem::replace(slot, change.clone());
                let (older, newer) = if supersedes(change.event.version(), existing.event.version()) {
                    (existing, change)
                } else {
                    (change, existing)
                };
                *slot = fill_unavailable(newer, &older);
            }
        }
    }
    if !rows.is_empty() {
        pay_owed_values(&mut rows);
        out.push(TableChange::Rows(rows));
    }
    out
}

/// A primary-key change's create owes the values its old key's row had
/// (see [`RowChange::owed_since`]): where the batch holds that row (the
/// delete at the same LSN, its before-image filled from the batch), the
/// create takes them here; sinks look for the rest in what they store.
fn pay_owed_values(rows: &mut [RowChange<'_>]) {
    let same_change = |a: OrderKey, b: OrderKey| a.commit_lsn == b.commit_lsn && a.lsn == b.lsn;
    let deletes: Vec<(OrderKey, Arc<crate::TableSchema>, Row)> = rows
        .iter()
        .filter(|r| r.is_delete())
        .filter_map(|r| Some((r.event.order, r.event.schema.clone(), r.before.as_deref()?.clone())))
        .collect();
    if deletes.is_empty() {
        return;
    }
    for row in rows.iter_mut() {
        let Some(owed) = row.owed_since else { continue };
        let Some((_, old_schema, old_row)) = deletes.iter().find(|(order, _, _)| same_change(*order, owed)) else {
            continue;
        };
        let schema = row.event.schema.clone();
        let Some(after) = row.after.as_mut() else { continue };
        let after = after.to_mut();
        for (i, value) in after.iter_mut().enumerate() {
            if !value.is_unavailable() {
                continue;
            }
            let old = schema.fields().get(i).and_then(|f| old_schema.index_of(&f.name)).and_then(|j| old_row.get(j));
            if let Some(old) = old.filter(|v| !v.is_unavailable()) {
                *value = old.clone();
            }
        }
        if !after.iter().any(Value::is_unavailable) {
            row.owed_since = None;
        }
    }
}

/// Fills the newer change's unavailable columns (of its after-image, or of
/// a delete's before-image) from the older change's after-image.
fn fill_unavailable<'a>(mut newer: RowChange<'a>, older: &RowChange<'a>) -> RowChange<'a> {
    let Some(older_after) = older.after.as_ref() else { return newer };
    let (schema, older_schema) = (&newer.event.schema, &older.event.schema);
    let same_schema = Arc::ptr_eq(schema, older_schema);
    let image = match (newer.after.as_mut(), newer.before.as_mut()) {
        (Some(after), _) => after,
        (None, Some(before)) => before,
        (None, None) => return newer,
    };
    if !image.iter().any(Value::is_unavailable) {
        return newer;
    }
    let row = image.to_mut();
    for (i, value) in row.iter_mut().enumerate() {
        if !value.is_unavailable() {
            continue;
        }
        let j = if same_schema {
            Some(i)
        } else {
            schema.fields().get(i).and_then(|field| older_schema.index_of(&field.name))
        };
        if let Some(previous) = j.and_then(|j| older_after.get(j)) {
            *value = previous.clone();
        }
    }
    let still_owed = row.iter().any(Value::is_unavailable);
    // What the older create owed, the newer change still owes (if it lacks anything).
    newer.owed_since = if still_owed && newer.after.is_some() { newer.owed_since.or(older.owed_since) } else { None };
    newer
}

/// A hashable encoding of key values (floats are not `Hash`).
pub fn key_bytes(key: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 * key.len());
    for value in key {
        match value {
            Value::Int(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Value::String(s) => {
                out.push(2);
                out.extend_from_slice(&(s.len() as u64).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            other => {
                let text = format!("{other:?}");
                out.push(3);
                out.extend_from_slice(&(text.len() as u64).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decoder, RawRecord, Record};

    /// Decodes schemaless events of table `t` (key `id`, column `big`).
    fn events(specs: &[(&str, i64, Option<&str>, i64)]) -> Vec<ChangeEvent> {
        let mut decoder = Decoder::new().type_by_json_shape(true);
        specs
            .iter()
            .enumerate()
            .map(|(offset, (op, id, big, lsn))| {
                let row = match big {
                    Some(big) => format!(r#"{{"id":{id},"big":"{big}"}}"#),
                    None => format!(r#"{{"id":{id}}}"#),
                };
                let (before, after) = if *op == "d" { (row, "null".into()) } else { ("null".into(), row) };
                let value = format!(
                    r#"{{"before":{before},"after":{after},"source":{{"schema":"s","table":"t","lsn":{lsn}}},"op":"{op}"}}"#
                );
                let key = format!(r#"{{"id":{id}}}"#);
                let raw = RawRecord {
                    topic: "cdc.s.t",
                    partition: 0,
                    offset: offset as i64,
                    key: (*op != "t").then_some(key.as_bytes()),
                    value: Some(value.as_bytes()),
                };
                match decoder.decode(raw).unwrap() {
                    Record::Change(e) => e,
                    other => panic!("{other:?}"),
                }
            })
            .collect()
    }

    fn rows<'a>(changes: &'a [TableChange<'a>], i: usize) -> &'a [RowChange<'a>] {
        match &changes[i] {
            TableChange::Rows(rows) => rows,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keeps_the_newest_change_per_key_and_fills_toast_from_older_ones() {
        let placeholder = crate::UNAVAILABLE_PLACEHOLDER;
        let events = events(&[
            ("c", 1, Some("v1"), 10),
            ("u", 2, Some("w1"), 11),
            ("u", 1, Some(placeholder), 12),
            ("d", 2, None, 13),
        ]);
        let refs: Vec<&ChangeEvent> = events.iter().collect();
        let changes = collapse(&refs);
        assert_eq!(changes.len(), 1);
        let rows = rows(&changes, 0);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].event.source.lsn, Some(12));
        assert_eq!(rows[0].after.as_ref().unwrap()[1], Value::String("v1".into()), "TOAST filled from the create");
        assert!(rows[1].is_delete() && rows[1].after.is_none());
    }

    #[test]
    fn an_older_event_of_another_partition_later_in_the_batch_does_not_win() {
        let mut events = events(&[("u", 1, Some("new"), 20), ("u", 1, Some("old"), 10)]);
        events[1].position.partition = 1;
        let refs: Vec<&ChangeEvent> = events.iter().collect();
        let changes = collapse(&refs);
        assert_eq!(rows(&changes, 0)[0].after.as_ref().unwrap()[1], Value::String("new".into()));
    }

    /// A transaction open when the snapshot began commits after it: its
    /// change orders below the snapshot read (its LSN is older) but comes
    /// later in the same partition, which is what decides.
    #[test]
    fn a_later_offset_of_the_same_partition_wins_over_a_higher_order_key() {
        let events = events(&[("r", 1, Some("snapshot"), 20), ("u", 1, Some("committed later"), 10)]);
        assert!(events[1].order < events[0].order);
        let refs: Vec<&ChangeEvent> = events.iter().collect();
        let changes = collapse(&refs);
        assert_eq!(rows(&changes, 0)[0].after.as_ref().unwrap()[1], Value::String("committed later".into()));
    }

    #[test]
    fn truncate_splits_the_batch() {
        let events = events(&[("c", 1, Some("a"), 1), ("t", 0, None, 2), ("c", 1, Some("b"), 3)]);
        let refs: Vec<&ChangeEvent> = events.iter().collect();
        let changes = collapse(&refs);
        assert_eq!(changes.len(), 3);
        assert!(matches!(changes[1], TableChange::Truncate(_)));
        assert_eq!(rows(&changes, 2)[0].after.as_ref().unwrap()[1], Value::String("b".into()));
    }
}
