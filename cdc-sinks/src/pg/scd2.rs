//! SCD type 2 tables of the PostgreSQL target (`[target.tables.<name>]
//! mode = "scd2"`): the rule of [`cdc_core::scd2`], applied inside the
//! batch's transaction, as the Delta sink applies it.
//!
//! Per run of a table's changes (between truncates): every change is staged
//! (binary COPY, as for current-state tables) and read back typed as the
//! table's columns, with the stored versions of the same keys that may
//! neighbour them (open, or ending after the run's oldest change);
//! [`cdc_core::scd2::sequence`] works out every version; they are copied
//! back into a scratch table, and one DELETE (stored versions folded away)
//! and one upsert on (key, `__start_order`) write them. Values travel in
//! PostgreSQL's binary format ([`Binary`]), so each is compared and
//! written back exactly as the table holds it, never converted. A truncate
//! opens a deleted version for every live row older than it, and for rows
//! read later that turn out older (`deleted_keys` remembers it).

use std::borrow::Cow;
use std::collections::HashMap;

use cdc_core::scd2::{Columns, Entry, Sequence, Tracked};
use cdc_core::{ChangeEvent, DataType, Field, Op, Position, Result, RowChange, StageTimes, Value};
use futures::pin_mut;
use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{FromSql, ToSql, Type};

use super::apply::{Staged, StateTables, default_value};
use super::connection::sink_error;
use super::copy::{Binary, Cell as CopyCell};
use super::offsets::DELETED_KEYS;
use super::types::{cast_staged, quote_ident, quote_literal};

pub(super) use cdc_core::scd2::{END_AT, END_ORDER, IS_CURRENT, START_AT, START_ORDER};

/// The columns an SCD2 table has besides the metadata of current-state
/// tables.
pub(super) const VERSION_COLUMNS: [(&str, &str); 6] = [
    ("_cdc_deleted", "boolean NOT NULL DEFAULT false"),
    (START_ORDER, "text COLLATE \"C\" NOT NULL"),
    (END_ORDER, "text COLLATE \"C\""),
    (START_AT, "timestamp with time zone"),
    (END_AT, "timestamp with time zone"),
    (IS_CURRENT, "boolean NOT NULL DEFAULT false"),
];

/// What a staged change is, per metadata column of the table.
fn staged_metadata(name: &str) -> Option<&'static str> {
    Some(match name {
        "_cdc_op" => "s._cdc_op",
        "_cdc_order" => "s._cdc_order",
        "_cdc_source_ts" => "s._cdc_source_ts",
        "_cdc_lsn" => "s._cdc_lsn",
        "_cdc_tx_id" => "s._cdc_tx_id",
        "_cdc_synced_at" => "now()",
        "_cdc_topic" => "s._cdc_topic",
        "_cdc_partition" => "s._cdc_partition",
        "_cdc_offset" => "s._cdc_offset",
        "_cdc_pending" => "NULL::text[]",
        "_cdc_pending_at" => "NULL::text",
        "_cdc_deleted" => "s._cdc_op = 'd'",
        START_ORDER => "s._cdc_order",
        END_ORDER => "NULL::text",
        START_AT => "s._cdc_source_ts",
        END_AT => "NULL::timestamptz",
        IS_CURRENT => "false",
        _ => return None,
    })
}

/// A value; `None` for null.
type Cell = Option<Binary>;

/// The table's columns as it holds them, and its primary key (without
/// `__start_order`).
struct Layout {
    table: String,
    names: Vec<String>,
    types: Vec<Type>,
    index: HashMap<String, usize>,
    key: Vec<usize>,
}

/// Rows of one layout: their values and what sequencing reads of each.
#[derive(Default)]
struct Rows {
    values: Vec<Vec<Cell>>,
    meta: Vec<Meta>,
}

/// What [`Entry`] borrows of a row.
#[derive(Clone)]
struct Meta {
    key: Vec<u8>,
    start: String,
    order: String,
    truncate: bool,
    deleted: bool,
    topic: String,
    partition: i32,
    offset: i64,
    unavailable: Vec<usize>,
}

impl Meta {
    fn entry(&self) -> Entry<'_> {
        Entry {
            key: &self.key,
            start: &self.start,
            order: &self.order,
            truncate: self.truncate,
            deleted: self.deleted,
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            unavailable: &self.unavailable,
        }
    }
}

impl Layout {
    fn column(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn cell(&self, values: &[Cell], name: &str) -> Option<Binary> {
        self.column(name).and_then(|i| values.get(i)).cloned().flatten()
    }

    fn decoded<T: for<'a> FromSql<'a>>(&self, values: &[Cell], name: &str, ty: &Type) -> Option<T> {
        self.cell(values, name).and_then(|b| T::from_sql(ty, &b.0).ok())
    }

    /// Adds a row read in this layout (`unavailable`: the columns a change
    /// did not send).
    fn push(&self, rows: &mut Rows, values: Vec<Cell>, unavailable: &[String]) {
        let text = |name: &str| self.decoded::<String>(&values, name, &Type::TEXT).unwrap_or_default();
        let meta = Meta {
            key: self.key_bytes(&values),
            start: text(START_ORDER),
            order: text("_cdc_order"),
            truncate: text("_cdc_op") == Op::Truncate.code(),
            deleted: self.decoded(&values, "_cdc_deleted", &Type::BOOL).unwrap_or(false),
            topic: text("_cdc_topic"),
            partition: self.decoded(&values, "_cdc_partition", &Type::INT4).unwrap_or_default(),
            offset: self.decoded(&values, "_cdc_offset", &Type::INT8).unwrap_or_default(),
            unavailable: unavailable.iter().filter_map(|name| self.column(name)).collect(),
        };
        rows.values.push(values);
        rows.meta.push(meta);
    }

    /// The key's values as bytes equal exactly when the keys are (each
    /// length-prefixed).
    fn key_bytes(&self, values: &[Cell]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for cell in self.key.iter().map(|&i| values.get(i).and_then(Option::as_ref)) {
            match cell {
                Some(value) => {
                    bytes.extend((value.0.len() as u64).to_be_bytes());
                    bytes.extend(&value.0);
                }
                None => bytes.extend(u64::MAX.to_be_bytes()),
            }
        }
        bytes
    }

    /// The key columns, `alias.`-qualified unless `alias` is empty.
    fn key_list(&self, alias: &str) -> Result<String> {
        let prefix = if alias.is_empty() { String::new() } else { format!("{alias}.") };
        let names = self
            .key
            .iter()
            .filter_map(|&i| self.names.get(i))
            .map(|n| Ok(format!("{prefix}{}", quote_ident(n)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(names.join(", "))
    }

    /// `t.k1 = d.k1 AND ...` over the key columns.
    fn key_match(&self, left: &str, right: &str) -> Result<String> {
        let parts = self
            .key
            .iter()
            .filter_map(|&i| self.names.get(i))
            .map(|name| Ok(format!("{left}.{name} = {right}.{name}", name = quote_ident(name)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(parts.join(" AND "))
    }

    /// The deleted versions a truncate (order key `hex`, commit time `at`)
    /// opens for `rows`' rows `which`.
    fn truncated_versions(
        &self,
        rows: &Rows,
        which: impl IntoIterator<Item = usize>,
        (hex, at): (&str, &Cell),
        position: Option<&Position>,
    ) -> Rows {
        let mut markers = Rows::default();
        for row in which {
            if let (Some(values), Some(meta)) = (rows.values.get(row), rows.meta.get(row)) {
                let (values, meta) = self.truncated_version((values, meta), (hex, at), position);
                markers.values.push(values);
                markers.meta.push(meta);
            }
        }
        markers
    }

    /// A row's cells, read in this layout.
    fn cells(&self, row: &tokio_postgres::Row) -> Vec<Cell> {
        (0..self.names.len()).map(|i| row.get::<_, Cell>(i)).collect()
    }

    /// A deleted version opened by a truncate (order key `hex`, commit time
    /// `at`) for the row `values` (kept, as a delete's before-image): at the
    /// truncate's position where known, else at the row's own, so it
    /// follows the row in its partition.
    fn truncated_version(
        &self,
        (values, meta): (&[Cell], &Meta),
        (hex, at): (&str, &Cell),
        position: Option<&Position>,
    ) -> (Vec<Cell>, Meta) {
        let mut values = values.to_vec();
        let mut meta = meta.clone();
        let mut set = |name: &str, value: Cell| {
            if let Some(slot) = self.column(name).and_then(|i| values.get_mut(i)) {
                *slot = value;
            }
        };
        set("_cdc_order", Some(Binary::text(hex)));
        set(START_ORDER, Some(Binary::text(hex)));
        set("_cdc_op", Some(Binary::text(Op::Truncate.code())));
        set("_cdc_deleted", Binary::of(&true, &Type::BOOL));
        set(START_AT, at.clone());
        set("_cdc_source_ts", at.clone());
        if let Some(position) = position {
            set("_cdc_topic", Some(Binary::text(&position.topic)));
            set("_cdc_partition", Binary::of(&position.partition, &Type::INT4));
            set("_cdc_offset", Binary::of(&position.offset, &Type::INT8));
            meta.topic = position.topic.to_string();
            meta.partition = position.partition;
            meta.offset = position.offset;
        }
        meta.start = hex.to_owned();
        meta.order = hex.to_owned();
        meta.truncate = true;
        meta.deleted = true;
        meta.unavailable.clear();
        (values, meta)
    }

    /// The versions to write (identity from their start, values from their
    /// sources, ends from the next version), then the stored versions to
    /// drop (flagged).
    fn output(&self, all: &Rows, sequence: &Sequence) -> Vec<(Vec<Cell>, bool)> {
        let start_order = self.column(START_ORDER);
        let start_at = self.column(START_AT);
        let value = |row: usize, column: usize| all.values.get(row).and_then(|v| v.get(column)).cloned().flatten();
        let place = |row: usize| sequence.starts.get(row).map(|s| Binary::text(s));
        let versions = sequence.versions.iter().enumerate().map(|(v, version)| {
            let next = sequence.next.get(v).copied().flatten().and_then(|n| sequence.versions.get(n));
            let cells = (0..self.names.len())
                .map(|i| match self.names.get(i).map(String::as_str) {
                    _ if Some(i) == start_order => place(version.start),
                    _ if Some(i) == start_at => value(version.start, i),
                    Some(END_ORDER) => next.and_then(|n| place(n.start)),
                    Some(END_AT) => next.and_then(|n| start_at.and_then(|at| value(n.start, at))),
                    Some(IS_CURRENT) => Binary::of(&sequence.is_current(v), &Type::BOOL),
                    _ => value(version.source(i), i),
                })
                .collect();
            (cells, false)
        });
        let drops = sequence.drops.iter().map(|&row| (all.values.get(row).cloned().unwrap_or_default(), true));
        versions.chain(drops).collect()
    }
}

/// [`cdc_core::scd2::sequence`] over `all` (its first `stored` rows are
/// stored versions), with `track`'s columns compared by value.
fn sequence(layout: &Layout, all: &Rows, stored: usize, track: Option<&[String]>) -> Sequence {
    let tracked: Vec<usize> = track.unwrap_or_default().iter().filter_map(|name| layout.column(name)).collect();
    let same = |column: usize, a: usize, b: usize| {
        let value = |row: usize| all.values.get(row).and_then(|v| v.get(column));
        value(a) == value(b)
    };
    let columns = Columns {
        width: layout.names.len(),
        order: layout.column("_cdc_order"),
        tracked: track.map(|_| Tracked { columns: &tracked, same: &same }),
    };
    let entries: Vec<Entry<'_>> = all.meta.iter().map(Meta::entry).collect();
    cdc_core::scd2::sequence(&entries, stored, &columns)
}

impl StateTables {
    /// Applies one SCD2 table's events of a batch inside `tx`: runs of
    /// changes (every one a version, none collapsed) and truncates, in
    /// arrival order.
    pub(super) async fn apply_versions(
        &mut self,
        tx: &Transaction<'_>,
        table: &str,
        columns: &[(Field, String)],
        events: &[&ChangeEvent],
        track: Option<&[String]>,
        stages: &mut StageTimes,
    ) -> Result<()> {
        if events.iter().any(|e| e.op != Op::Truncate && e.key.is_none()) {
            return Err(self.error(format!(
                "table {table} has no primary key: Debezium sent no record key, so versions cannot be matched"
            )));
        }
        let layout = self.layout(tx, table).await?;
        let mut run: Vec<&ChangeEvent> = Vec::new();
        for &event in events {
            if event.op != Op::Truncate {
                run.push(event);
                continue;
            }
            self.write_changes(tx, &layout, columns, &std::mem::take(&mut run), track, stages).await?;
            self.truncate_versions(tx, &layout, event, stages).await?;
            self.record_truncate(tx, table, event).await?;
        }
        self.write_changes(tx, &layout, columns, &run, track, stages).await
    }

    /// The table's columns, as it holds them, and its primary key.
    async fn layout(&self, tx: &Transaction<'_>, table: &str) -> Result<Layout> {
        let sink = self.sink_name();
        let statement =
            tx.prepare(&format!("SELECT * FROM {table} LIMIT 0")).await.map_err(|e| sink_error(sink, &e))?;
        let names: Vec<String> = statement.columns().iter().map(|c| c.name().to_owned()).collect();
        let types: Vec<Type> = statement.columns().iter().map(|c| c.type_().clone()).collect();
        let index: HashMap<String, usize> = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        let rows = tx
            .query(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
                 AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
                 ORDER BY array_position(i.indkey, a.attnum)",
                &[&table],
            )
            .await
            .map_err(|e| sink_error(sink, &e))?;
        let key: Vec<usize> = rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .filter(|name| name != START_ORDER)
            .filter_map(|name| index.get(&name).copied())
            .collect();
        if key.is_empty() {
            return Err(self.error(format!("SCD2 table {table} has no primary key")));
        }
        Ok(Layout { table: table.to_owned(), names, types, index, key })
    }

    /// Stages a run of changes, reads them back as rows of the table, adds
    /// the versions an earlier truncate opens after the ones read late, and
    /// writes them.
    async fn write_changes(
        &mut self,
        tx: &Transaction<'_>,
        layout: &Layout,
        columns: &[(Field, String)],
        run: &[&ChangeEvent],
        track: Option<&[String]>,
        stages: &mut StageTimes,
    ) -> Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let sink = self.sink_name();
        // Deletes stage their before-image, as the version they open holds.
        let changes: Vec<RowChange<'_>> = run
            .iter()
            .map(|&event| RowChange {
                event,
                after: event.after.as_ref().map(Cow::Borrowed),
                before: event.after.is_none().then_some(event.before.as_ref()).flatten().map(Cow::Borrowed),
                owed_since: None,
            })
            .collect();
        let Staged { name: staging, missing } = self.stage(tx, columns, &changes, stages).await?;
        let mut select = Vec::new();
        for name in &layout.names {
            let quoted = quote_ident(name)?;
            let expression = match columns.iter().find(|(c, _)| &c.name == name) {
                Some((column, ty)) => {
                    let cast = cast_staged(&format!("s.{quoted}"), &column.data_type, ty);
                    // A column the change's schema version lacks: its
                    // default, as the source gave its rows when it was added.
                    match default_value(column, ty).filter(|_| missing.contains(&column.name)) {
                        Some(default) => format!(
                            "CASE WHEN s._cdc_missing::text[] @> ARRAY[{literal}] THEN {default} ELSE {cast} END",
                            literal = quote_literal(&column.name),
                        ),
                        None => cast,
                    }
                }
                None => staged_metadata(name)
                    .ok_or_else(|| self.error(format!("SCD2 table {}: unknown column {name}", layout.table)))?
                    .to_owned(),
            };
            select.push(format!("{expression} AS {quoted}"));
        }
        let sql = format!(
            "SELECT {select}, s._cdc_unavailable::text[] FROM {staging} s ORDER BY s.ctid",
            select = select.join(", ")
        );
        let statement = tx.prepare(&sql).await.map_err(|e| sink_error(sink, &e))?;
        for (column, ty) in statement.columns().iter().zip(&layout.types) {
            if column.type_() != ty {
                return Err(self.error(format!(
                    "SCD2 table {}: column {} is {ty} but its changes stage as {}",
                    layout.table,
                    column.name(),
                    column.type_()
                )));
            }
        }
        let mut opened = Rows::default();
        for row in tx.query(&statement, &[]).await.map_err(|e| sink_error(sink, &e))? {
            // The column after the table's: what the change did not send.
            let unavailable: Vec<String> = row.get::<_, Option<Vec<String>>>(layout.names.len()).unwrap_or_default();
            layout.push(&mut opened, layout.cells(&row), &unavailable);
        }
        // Rows read late, from before the table's newest truncate, are
        // history too: their versions end at the truncate.
        let truncated = tx
            .query_opt(
                &format!(
                    "SELECT order_key::text, source_ts FROM {DELETED_KEYS} WHERE table_name = $1 AND row_key = ''"
                ),
                &[&layout.table],
            )
            .await
            .map_err(|e| sink_error(sink, &e))?;
        if let Some(truncated) = truncated {
            let below: String = truncated.get(0);
            let at: Cell = truncated.get(1);
            let entries: Vec<Entry<'_>> = opened.meta.iter().map(Meta::entry).collect();
            let ended = cdc_core::scd2::ended_by_truncate(&entries, &below);
            let markers = layout.truncated_versions(&opened, ended, (&below, &at), None);
            opened.values.extend(markers.values);
            opened.meta.extend(markers.meta);
        }
        self.write_versions(tx, layout, opened, track, stages).await
    }

    /// A truncate ends every current version older than it: each gets a
    /// deleted version opened by the truncate.
    async fn truncate_versions(
        &mut self,
        tx: &Transaction<'_>,
        layout: &Layout,
        event: &ChangeEvent,
        stages: &mut StageTimes,
    ) -> Result<()> {
        let hex = event.order.to_hex();
        let sql =
            format!("SELECT * FROM {table} t WHERE t.{IS_CURRENT} AND t.{START_ORDER} < $1", table = layout.table);
        let current = tx.query(&sql, &[&hex]).await.map_err(|e| sink_error(self.sink_name(), &e))?;
        let at: Cell = event.source.ts_micros().and_then(|us| {
            let value = Value::TimestampTz(us);
            let cell = CopyCell { value: &value, data_type: &DataType::TimestampTz, geometry_as_point: false };
            Binary::of(&cell, &Type::TIMESTAMPTZ)
        });
        let mut stored = Rows::default();
        for row in &current {
            layout.push(&mut stored, layout.cells(row), &[]);
        }
        let markers = layout.truncated_versions(&stored, 0..stored.values.len(), (&hex, &at), Some(&event.position));
        self.write_versions(tx, layout, markers, None, stages).await
    }

    /// Sequences `opened` (new versions) with the stored versions they
    /// neighbour and writes the result.
    async fn write_versions(
        &mut self,
        tx: &Transaction<'_>,
        layout: &Layout,
        opened: Rows,
        track: Option<&[String]>,
        stages: &mut StageTimes,
    ) -> Result<()> {
        let Some(oldest) = opened.meta.iter().map(|m| m.start.clone()).min() else { return Ok(()) };
        let sink = self.sink_name();
        let sequencing = std::time::Instant::now();
        // The batch's keys, copied in; their stored neighbours read back.
        let scratch = self.scratch_table("_cdc_versions");
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE {scratch} (LIKE {table}) ON COMMIT DROP; \
             ALTER TABLE {scratch} ADD COLUMN _cdc_drop boolean NOT NULL DEFAULT false",
            table = layout.table,
        ))
        .await
        .map_err(|e| sink_error(sink, &e))?;
        self.copy_rows(tx, layout, &scratch, opened.values.iter().map(|v| (v.as_slice(), false))).await?;
        let sql = format!(
            "SELECT t.* FROM {table} t WHERE ({t_key}) IN (SELECT {k_key} FROM {scratch} k) \
             AND (t.{END_ORDER} IS NULL OR t.{END_ORDER} > $1)",
            table = layout.table,
            t_key = layout.key_list("t")?,
            k_key = layout.key_list("k")?,
        );
        let mut all = Rows::default();
        for row in tx.query(&sql, &[&oldest]).await.map_err(|e| sink_error(sink, &e))? {
            layout.push(&mut all, layout.cells(&row), &[]);
        }
        let stored = all.values.len();
        all.values.extend(opened.values);
        all.meta.extend(opened.meta);
        let sequence = sequence(layout, &all, stored, track);
        let output = layout.output(&all, &sequence);
        stages.add("scd2 sequence", sequencing.elapsed());

        let writing = std::time::Instant::now();
        tx.batch_execute(&format!("TRUNCATE {scratch}")).await.map_err(|e| sink_error(sink, &e))?;
        self.copy_rows(tx, layout, &scratch, output.iter().map(|(v, drop)| (v.as_slice(), *drop))).await?;
        let names: Vec<String> = layout.names.iter().map(|n| quote_ident(n)).collect::<Result<_>>()?;
        let values: Vec<String> = layout
            .names
            .iter()
            .zip(&names)
            .map(|(name, quoted)| if name == "_cdc_synced_at" { "now()".to_owned() } else { format!("v.{quoted}") })
            .collect();
        let updates: Vec<String> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| !layout.key.contains(i) && layout.names.get(*i).is_some_and(|n| n != START_ORDER))
            .map(|(_, name)| format!("{name} = EXCLUDED.{name}"))
            .collect();
        let write = format!(
            "DELETE FROM {table} t USING {scratch} d WHERE d._cdc_drop AND {key_match} \
             AND t.{START_ORDER} = d.{START_ORDER};\n\
             INSERT INTO {table} ({names}) SELECT {values} FROM {scratch} v WHERE NOT v._cdc_drop \
             ON CONFLICT ({key}, {START_ORDER}) DO UPDATE SET {updates}",
            table = layout.table,
            key_match = layout.key_match("t", "d")?,
            names = names.join(", "),
            values = values.join(", "),
            key = layout.key_list("")?,
            updates = updates.join(", "),
        );
        tx.batch_execute(&write).await.map_err(|e| sink_error(sink, &e))?;
        stages.add("apply", writing.elapsed());
        Ok(())
    }

    /// Copies rows of the table's layout, each with its drop flag, into
    /// `scratch` (binary COPY of the values as read).
    async fn copy_rows<'r>(
        &self,
        tx: &Transaction<'_>,
        layout: &Layout,
        scratch: &str,
        rows: impl Iterator<Item = (&'r [Cell], bool)>,
    ) -> Result<()> {
        let sink = self.sink_name();
        let copy = tx.copy_in(&format!("COPY {scratch} FROM STDIN BINARY")).await.map_err(|e| sink_error(sink, &e))?;
        let mut types = layout.types.clone();
        types.push(Type::BOOL);
        let writer = BinaryCopyInWriter::new(copy, &types);
        pin_mut!(writer);
        for (values, drop) in rows {
            let mut params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            params.push(&drop);
            writer.as_mut().write(&params).await.map_err(|e| sink_error(sink, &e))?;
        }
        writer.finish().await.map_err(|e| sink_error(sink, &e))?;
        Ok(())
    }
}
