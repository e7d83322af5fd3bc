//! The sequencing rule of SCD type 2 tables, shared by every sink that
//! keeps them (Delta, the PostgreSQL target): each sink reads its stored
//! versions and the batch's changes into [`Entry`]s, [`sequence`] works out
//! every version, and the sink writes the result its own way.
//!
//! A version is identified by the row's key and `__start_order`, its place
//! in the row's sequence. `__end_order` is the next version's start;
//! `__start_at` / `__end_at` are the source commit times of the changes
//! that open and close it; `__is_current` marks the open version of a live
//! row. A delete opens a version flagged deleted (never current): it records
//! where the row did not exist, so a change read late (from another
//! partition) lands in the interval it belongs to instead of becoming
//! current. A truncate opens such a version for every live row.

use std::collections::HashMap;

pub const START_AT: &str = "__start_at";
pub const END_AT: &str = "__end_at";
pub const START_ORDER: &str = "__start_order";
pub const END_ORDER: &str = "__end_order";
pub const IS_CURRENT: &str = "__is_current";

/// What sequencing needs of one row: a stored version or a change of the
/// batch. Columns are named by their index in the sink's row layout.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The row's key, as bytes equal exactly when the keys are.
    pub key: &'a [u8],
    /// A stored version's `__start_order`; a change's order key (hex).
    pub start: &'a str,
    /// The order key of the change its values come from (`_cdc_order`).
    pub order: &'a str,
    pub truncate: bool,
    /// A delete (or a truncate's version): the row did not exist from here.
    pub deleted: bool,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// Columns whose value the change did not send (unchanged TOAST).
    pub unavailable: &'a [usize],
}

/// One version of a row: the row it is identified by (`start`: its key,
/// `__start_order` and `__start_at`), and per column the row its value
/// comes from.
#[derive(Debug, Clone)]
pub struct Version {
    pub start: usize,
    pub sources: Vec<usize>,
    pub deleted: bool,
}

impl Version {
    /// The row column `i`'s value comes from.
    pub fn source(&self, i: usize) -> usize {
        self.sources.get(i).copied().unwrap_or(self.start)
    }
}

/// Every version of the batch's keys, worked out by [`sequence`].
#[derive(Debug, Clone, Default)]
pub struct Sequence {
    /// Each entry's place in its row's sequence (`__start_order`).
    pub starts: Vec<String>,
    /// The versions to write, per key in sequence.
    pub versions: Vec<Version>,
    /// Per version, the version after it (where it ends); `None` for the
    /// last of a key.
    pub next: Vec<Option<usize>>,
    /// Stored versions to remove: folded into the version before them, or
    /// a truncate's version with nothing live to end.
    pub drops: Vec<usize>,
}

impl Sequence {
    /// Whether version `v` is the open version of a live row.
    pub fn is_current(&self, v: usize) -> bool {
        self.next.get(v).is_some_and(Option::is_none) && self.versions.get(v).is_some_and(|v| !v.deleted)
    }
}

/// How [`sequence`] reads the rows' values: `width` columns per row, the
/// index of `_cdc_order` among them, and the `track_history_columns`
/// (`None`: every change opens a version).
pub struct Columns<'f> {
    pub width: usize,
    pub order: Option<usize>,
    pub tracked: Option<Tracked<'f>>,
}

/// The `track_history_columns` (indexes), and `same(column, a, b)`: whether
/// rows `a` and `b` hold the same value in `column`.
pub struct Tracked<'f> {
    pub columns: &'f [usize],
    pub same: &'f dyn Fn(usize, usize, usize) -> bool,
}

/// Works out every version of the batch's keys: `entries` holds first the
/// `stored` versions that may neighbour the batch's changes (every version
/// of their keys ending after the oldest change), then the changes in
/// arrival order.
///
/// Per key, entries are sequenced by place ([`places`]); a change the table
/// holds already (same place: a replayed batch) is skipped; unchanged TOAST
/// values come from the version before; with tracked columns, a change that
/// leaves them all equal folds into the version before (which takes its
/// values and keeps its start); a truncate ends a live row only.
pub fn sequence(entries: &[Entry<'_>], stored: usize, columns: &Columns<'_>) -> Sequence {
    let starts = places(entries, stored);
    // Per key, by place; a stored version before a change of the same place
    // (the change is held already).
    let mut sorted: Vec<usize> = (0..entries.len()).collect();
    let sort_key = |row: &usize| {
        let entry = entries.get(*row);
        (entry.map(|e| e.key), starts.get(*row), *row >= stored)
    };
    sorted.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    let mut versions: Vec<Version> = Vec::new();
    let mut next: Vec<Option<usize>> = Vec::new();
    let mut drops: Vec<usize> = Vec::new();
    let mut group_start = 0;
    let mut before: Option<usize> = None;
    for &row in &sorted {
        let Some(entry) = entries.get(row) else { continue };
        let seen = before.replace(row);
        match seen.and_then(|s| Some((s, entries.get(s)?))) {
            Some((seen, previous)) if previous.key == entry.key => {
                if starts.get(seen) == starts.get(row) {
                    continue; // held already (or twice in a replayed batch)
                }
            }
            _ => group_start = versions.len(),
        }
        let previous = versions.get(group_start..).and_then(<[Version]>::last).filter(|v| !v.deleted);
        // A truncate ends a live row; after a delete (a change read late
        // that turned out to precede it) it has nothing to end.
        if previous.is_none() && entry.truncate {
            if row < stored {
                drops.push(row);
            }
            continue;
        }
        let mut sources = vec![row; columns.width];
        if let Some(previous) = previous {
            // Unchanged TOAST: the version before holds the value.
            for &i in entry.unavailable {
                if let Some(slot) = sources.get_mut(i) {
                    *slot = previous.source(i);
                }
            }
        }
        let fold = !entry.deleted
            && previous.is_some_and(|p| {
                columns.tracked.as_ref().is_some_and(|tracked| {
                    !tracked.columns.is_empty()
                        && tracked
                            .columns
                            .iter()
                            .all(|&i| (tracked.same)(i, p.source(i), sources.get(i).copied().unwrap_or(row)))
                })
            });
        if fold && let Some(previous) = versions.last_mut() {
            // Its values become the newer change's; it keeps its start.
            let order_of = |r: usize| entries.get(r).map(|e| e.order);
            let values_order = columns.order.map(|i| order_of(previous.source(i)));
            if values_order.is_none_or(|held| order_of(row) > held) {
                previous.sources = sources;
            }
            if row < stored {
                drops.push(row);
            }
            continue;
        }
        // The version before (of the same key) ends where this one starts.
        if versions.len() > group_start
            && let Some(slot) = next.last_mut()
        {
            *slot = Some(versions.len());
        }
        versions.push(Version { start: row, sources, deleted: entry.deleted });
        next.push(None);
    }
    Sequence { starts, versions, next, drops }
}

/// The place of each entry in its row's sequence (`__start_order`). Stored
/// versions keep theirs. A change's is its order key, except where a change
/// of the same row came before it in the same partition with a later order
/// key (a transaction open when the snapshot began orders below the
/// snapshot's reads, yet Debezium emits the row's changes in commit order):
/// it then follows that one (its place plus a suffix), as `supersedes` rules.
pub fn places(entries: &[Entry<'_>], stored: usize) -> Vec<String> {
    // Per (key, topic, partition): the place of the change at the highest
    // offset seen. A truncate's versions sit at its order key: it reached
    // every partition's rows at once.
    let mut latest: HashMap<(&[u8], &str, i32), (String, i64)> = HashMap::new();
    let mut places = Vec::with_capacity(entries.len());
    for (row, entry) in entries.iter().enumerate() {
        let own = entry.start.to_owned();
        if entry.truncate {
            places.push(own);
            continue;
        }
        let at = (entry.key, entry.topic, entry.partition);
        let place = match latest.get(&at) {
            // Later in the partition, lower in order: it follows that one. A
            // change at a lower offset is one held already (a replay).
            Some((before, before_offset)) if row >= stored && entry.offset > *before_offset && own <= *before => {
                format!("{before}.{own}")
            }
            _ => own,
        };
        if latest.get(&at).is_none_or(|(_, before_offset)| entry.offset > *before_offset) {
            latest.insert(at, (place.clone(), entry.offset));
        }
        places.push(place);
    }
    places
}

/// The changes a truncate at order key `below` ends, read after it (late,
/// from another partition): per key, the newest change older than the
/// truncate, unless it is a delete. Each gets a deleted version opened by
/// the truncate. Indexes into `changes`, ascending.
pub fn ended_by_truncate(changes: &[Entry<'_>], below: &str) -> Vec<usize> {
    let mut newest: HashMap<&[u8], usize> = HashMap::new();
    for (row, change) in changes.iter().enumerate().filter(|(_, c)| c.order < below) {
        let slot = newest.entry(change.key).or_insert(row);
        if changes.get(*slot).is_some_and(|held| change.order > held.order) {
            *slot = row;
        }
    }
    let mut ended: Vec<usize> =
        newest.into_values().filter(|&row| changes.get(row).is_some_and(|c| !c.deleted)).collect();
    ended.sort_unstable();
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change<'a>(key: &'a [u8], order: &'a str, offset: i64) -> Entry<'a> {
        Entry {
            key,
            start: order,
            order,
            truncate: false,
            deleted: false,
            topic: "t",
            partition: 0,
            offset,
            unavailable: &[],
        }
    }

    #[test]
    fn versions_chain_per_key_and_a_delete_is_never_current() {
        let mut deleted = change(b"a", "03", 2);
        deleted.deleted = true;
        let entries = [change(b"a", "02", 1), change(b"b", "01", 0), deleted, change(b"a", "01", 5)];
        let sequence = sequence(&entries, 0, &Columns { width: 1, order: None, tracked: None });
        let starts: Vec<&str> = sequence.versions.iter().map(|v| sequence.starts[v.start].as_str()).collect();
        // "01" of a, later in the partition than the delete, follows it.
        assert_eq!(starts, ["02", "03", "03.01", "01"]);
        assert_eq!(sequence.next, [Some(1), Some(2), None, None]);
        let current: Vec<bool> = (0..4).map(|v| sequence.is_current(v)).collect();
        assert_eq!(current, [false, false, true, true]);
    }
}
