//! Column renames at the source (`ALTER TABLE ... RENAME COLUMN x TO y`).
//!
//! Debezium's records only show that column `x` is gone and column `y` is
//! new: a drop and an add look the same. Taken as such, rows not changed
//! after the rename keep their value in the old column only. A rename is
//! told apart exactly by the source's catalog: PostgreSQL keeps a column's
//! number (`attnum`) across a rename and never reuses the number of a dropped
//! column. Without a catalog, an opt-in rule ([`RenameDetection::SamePosition`])
//! takes as a rename one schema change where exactly one column is gone and
//! one is new, of the same type at the same position.
//!
//! Once known, the rename is applied to every event of the table in one
//! place: events of the old schema (read late, from another partition) have
//! the column under its new name, and schemas holding the new name say what
//! it was called ([`TableSchema::renamed_from`]), so a sink renames its
//! column instead of adding one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::{ChangeEvent, OrderKey};
use crate::schema::{SchemaRef, TableSchema};

/// How renames are recognised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RenameDetection {
    /// From the source catalog's column numbers only (`[source] schema_url`);
    /// without a catalog a renamed column is a new column.
    #[default]
    Catalog,
    /// Also without a catalog: exactly one column gone and one new in one
    /// schema change, with the same type at the same position.
    SamePosition,
}

/// What is known of the columns of each table, across events.
#[derive(Debug, Default)]
pub struct Renames {
    rule: RenameDetection,
    tables: HashMap<String, TableColumns>,
    /// Whether any table has a rename: most streams never do, and then
    /// rewriting costs nothing per event.
    any_renamed: bool,
}

#[derive(Debug, Default)]
struct TableColumns {
    /// The newest event's schema (by order key).
    newest: Option<(OrderKey, SchemaRef)>,
    /// Every column name seen in an event.
    seen: HashSet<String>,
    /// Column numbers from the catalog, by every name a column had while
    /// the catalog was read (a renamed column keeps its number).
    numbers: HashMap<String, i32>,
    /// (old, new) renames found.
    renamed: Vec<(String, String)>,
    /// Schemas rewritten for the renames: (as decoded, as passed on).
    rewritten: Vec<(SchemaRef, SchemaRef)>,
}

impl Renames {
    pub fn new(rule: RenameDetection) -> Renames {
        Renames { rule, tables: HashMap::new(), any_renamed: false }
    }

    /// Whether the catalog's column numbers of the event's table are needed
    /// before [`apply`](Renames::apply): the table is new, or the event has a
    /// column not seen before.
    pub fn wants_numbers(&self, event: &ChangeEvent) -> bool {
        match self.tables.get(&event.table().to_string()) {
            None => true,
            Some(table) => event.schema.fields().iter().any(|f| !table.seen.contains(&f.name)),
        }
    }

    /// Records the catalog's column numbers of `table`, read now.
    pub fn learn_numbers(&mut self, table: &str, numbers: HashMap<String, i32>) {
        self.tables.entry(table.to_owned()).or_default().numbers.extend(numbers);
    }

    /// Finds renames the event shows and gives it the schema with every
    /// known rename of its table applied.
    pub fn apply(&mut self, event: &mut ChangeEvent) -> crate::Result<()> {
        let name = event.table().to_string();
        let table = self.tables.entry(name.clone()).or_default();
        let schema = event.schema.clone();
        let new_columns: Vec<&str> =
            schema.fields().iter().map(|f| f.name.as_str()).filter(|n| !table.seen.contains(*n)).collect();
        if let Some((newest_order, newest)) = &table.newest
            && !new_columns.is_empty()
            && event.order > *newest_order
        {
            let gone: Vec<&str> = newest
                .fields()
                .iter()
                .map(|f| f.name.as_str())
                .filter(|n| schema.index_of(n).is_none() && !table.renamed.iter().any(|(old, _)| old == n))
                .collect();
            for (old, new) in find_renames(self.rule, &table.numbers, newest, &schema, &gone, &new_columns) {
                tracing::info!(table = %name, old, new, "column renamed at the source");
                table.renamed.push((old, new));
                table.rewritten.clear();
                self.any_renamed = true;
            }
        }
        table.seen.extend(new_columns.iter().map(|n| (*n).to_owned()));
        if table.newest.as_ref().is_none_or(|(order, _)| event.order > *order) {
            table.newest = Some((event.order, schema.clone()));
        }
        self.rewrite(event)
    }

    /// Gives the event the schema with every rename known for its table
    /// applied (an event pushed before a rename was found is rewritten when
    /// its batch is applied).
    pub fn rewrite(&mut self, event: &mut ChangeEvent) -> crate::Result<()> {
        if !self.any_renamed {
            return Ok(());
        }
        let Some(table) = self.tables.get_mut(&event.table().to_string()) else { return Ok(()) };
        if table.renamed.is_empty() {
            return Ok(());
        }
        let schema = event.schema.clone();
        if let Some((_, rewritten)) = table.rewritten.iter().find(|(decoded, _)| Arc::ptr_eq(decoded, &schema)) {
            event.schema = rewritten.clone();
            return Ok(());
        }
        let mut rewritten: TableSchema = (*schema).clone();
        for (old, new) in &table.renamed {
            let (has_old, has_new) = (rewritten.index_of(old).is_some(), rewritten.index_of(new).is_some());
            if has_old != has_new {
                rewritten = rewritten.with_rename(old, new)?;
            }
        }
        let rewritten = Arc::new(rewritten);
        table.rewritten.push((schema, rewritten.clone()));
        event.schema = rewritten;
        Ok(())
    }
}

/// The (old, new) renames among columns `gone` from `before` and columns
/// `new` in `after`.
fn find_renames(
    rule: RenameDetection,
    numbers: &HashMap<String, i32>,
    before: &TableSchema,
    after: &TableSchema,
    gone: &[&str],
    new: &[&str],
) -> Vec<(String, String)> {
    let by_number: Vec<(String, String)> = gone
        .iter()
        .filter_map(|old| {
            let number = numbers.get(*old)?;
            let new = new.iter().find(|n| numbers.get(**n) == Some(number))?;
            Some(((*old).to_owned(), (*new).to_owned()))
        })
        .collect();
    if !by_number.is_empty() || rule != RenameDetection::SamePosition {
        return by_number;
    }
    let ([old], [new]) = (gone, new) else { return Vec::new() };
    let (Some(i), Some(j)) = (before.index_of(old), after.index_of(new)) else { return Vec::new() };
    let same_type = before.fields().get(i).map(|f| &f.data_type) == after.fields().get(j).map(|f| &f.data_type);
    if i == j && same_type { vec![((*old).to_owned(), (*new).to_owned())] } else { Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{DataType, Field};

    fn schema(columns: &[(&str, DataType)]) -> TableSchema {
        let fields = columns
            .iter()
            .map(|(name, data_type)| Field {
                name: (*name).into(),
                data_type: data_type.clone(),
                nullable: true,
                default: None,
                source: None,
            })
            .collect();
        TableSchema::new(fields, &["id"]).unwrap()
    }

    #[test]
    fn by_position_only_one_gone_one_new_same_type_same_place() {
        use DataType::{Int32, String as Text};
        let before = schema(&[("id", Int32), ("status", Text), ("total", Int32)]);
        let renamed = schema(&[("id", Int32), ("order_status", Text), ("total", Int32)]);
        let rule = RenameDetection::SamePosition;
        let none = HashMap::new();
        let found = find_renames(rule, &none, &before, &renamed, &["status"], &["order_status"]);
        assert_eq!(found, [("status".to_owned(), "order_status".to_owned())]);
        // Another type, another place, or more than one change: a drop and an add.
        let retyped = schema(&[("id", Int32), ("order_status", Int32), ("total", Int32)]);
        assert!(find_renames(rule, &none, &before, &retyped, &["status"], &["order_status"]).is_empty());
        let moved = schema(&[("id", Int32), ("total", Int32), ("order_status", Text)]);
        assert!(find_renames(rule, &none, &before, &moved, &["status"], &["order_status"]).is_empty());
        let two = schema(&[("id", Int32), ("a", Text), ("b", Int32)]);
        assert!(find_renames(rule, &none, &before, &two, &["status", "total"], &["a", "b"]).is_empty());
        // The default rule guesses nothing.
        assert!(
            find_renames(RenameDetection::Catalog, &none, &before, &renamed, &["status"], &["order_status"]).is_empty()
        );
    }

    #[test]
    fn by_column_number_whatever_the_position() {
        use DataType::{Int32, String as Text};
        let before = schema(&[("id", Int32), ("status", Text), ("total", Int32)]);
        // `total` dropped and `status` renamed in one change, `note` added.
        let after = schema(&[("id", Int32), ("order_status", Text), ("note", Text)]);
        let numbers: HashMap<String, i32> = [("id", 1), ("status", 2), ("total", 3), ("order_status", 2), ("note", 4)]
            .map(|(n, i)| (n.into(), i))
            .into();
        let found = find_renames(
            RenameDetection::Catalog,
            &numbers,
            &before,
            &after,
            &["status", "total"],
            &["order_status", "note"],
        );
        assert_eq!(found, [("status".to_owned(), "order_status".to_owned())]);
    }
}
