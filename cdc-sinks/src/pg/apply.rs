//! Current-state tables: created and grown from event schemas, loaded
//! through a staging table and merged with the ordering rule, deletes,
//! tombstones and truncates.

use std::collections::{BTreeMap, HashMap};

use crate::tables::{TableConfig, TableMode, table_config};
use cdc_core::{
    ChangeEvent, DataType, Error, Field, Result, SqlVersion, TableChange, TableSchema, Value, supersedes_sql,
};
use futures::pin_mut;
use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::connection::*;
use super::copy::*;
use super::offsets::*;
use super::scd2;
use super::types::*;

/// How deletes land in a current-state table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeleteMode {
    /// Remove the row (the target mirror).
    Hard,
    /// Keep the row, flagged `_cdc_deleted` (the data lake's processed tables).
    Soft,
}

/// A current-state table as it exists in the database.
#[derive(Debug, Clone)]
pub(super) struct KnownTable {
    /// Column name -> `format_type` text.
    columns: BTreeMap<String, String>,
}

/// Writes current-state tables: one per source table, created on first
/// sight, grown with new columns, updated set-based from a staging table.
pub(crate) struct StateTables {
    sink: &'static str,
    /// Schema for every table; `None` mirrors the source schema.
    schema: Option<String>,
    delete_mode: DeleteMode,
    /// Per-table settings (`[target.tables.<name>]`): the mode.
    tables: BTreeMap<String, TableConfig>,
    known: HashMap<(String, String), KnownTable>,
    staging_counter: u64,
}

/// A batch's changes of one table staged for set-based statements.
pub(super) struct Staged {
    /// The staging table's name.
    pub name: String,
    /// Table columns some staged change's schema version lacks.
    pub missing: Vec<String>,
}

/// Metadata columns of a current-state table and their types.
pub(super) fn metadata_columns(mode: DeleteMode) -> Vec<(&'static str, &'static str)> {
    let mut columns = vec![
        ("_cdc_op", "text"),
        ("_cdc_order", "text COLLATE \"C\""),
        ("_cdc_source_ts", "timestamp with time zone"),
        ("_cdc_lsn", "bigint"),
        ("_cdc_tx_id", "bigint"),
        ("_cdc_synced_at", "timestamp with time zone"),
        // The Kafka position of the last change: a later offset of the same
        // partition is newer whatever the order keys say (`supersedes`).
        ("_cdc_topic", "text"),
        ("_cdc_partition", "integer"),
        ("_cdc_offset", "bigint"),
        // Columns a primary-key change left unavailable (unchanged TOAST):
        // owed by the old key's row, deleted at the same LSN, `_cdc_pending_at`
        // (the change's commit LSN and LSN, as in `_cdc_order`).
        ("_cdc_pending", "text[]"),
        ("_cdc_pending_at", "text COLLATE \"C\""),
    ];
    if mode == DeleteMode::Soft {
        columns.push(("_cdc_deleted", "boolean NOT NULL DEFAULT false"));
        columns.push(("_cdc_deleted_at", "timestamp with time zone"));
    }
    columns
}

impl StateTables {
    /// The schema this sink keeps tables of source schema `source_schema` in.
    pub fn schema_name(&self, source_schema: &str) -> String {
        self.schema.clone().unwrap_or_else(|| source_schema.to_owned())
    }

    pub fn new(sink: &'static str, schema: Option<String>, delete_mode: DeleteMode) -> StateTables {
        StateTables { sink, schema, delete_mode, tables: BTreeMap::new(), known: HashMap::new(), staging_counter: 0 }
    }

    /// Per-table settings: SCD2 tables (`mode = "scd2"`), by table name or
    /// `schema.table` of the source.
    pub fn set_table_configs(&mut self, tables: BTreeMap<String, TableConfig>) {
        self.tables = tables;
    }

    /// Keeps every table in `schema` instead of the source's.
    pub fn set_schema(&mut self, schema: String) {
        self.schema = Some(schema);
        self.known.clear();
    }

    /// Forgets what it knew of existing tables (after a rollback).
    pub fn forget(&mut self) {
        self.known.clear();
    }

    /// A fresh name for a temporary table of this transaction.
    pub(super) fn scratch_table(&mut self, prefix: &str) -> String {
        self.staging_counter += 1;
        format!("{prefix}_{}", self.staging_counter)
    }

    pub(super) fn sink_name(&self) -> &'static str {
        self.sink
    }

    pub(super) fn error(&self, message: String) -> Error {
        Error::Sink { sink: self.sink.to_owned(), message, retriable: false }
    }

    /// Applies one table's events of a batch inside `tx`.
    /// Times its stages (`copy`, `apply`) in `stages`.
    pub async fn apply(
        &mut self,
        tx: &Transaction<'_>,
        events: &[&ChangeEvent],
        stages: &mut cdc_core::StageTimes,
    ) -> Result<()> {
        let Some(first) = events.first() else { return Ok(()) };
        let schema_name = self.schema.clone().unwrap_or_else(|| first.source.schema.clone());
        let table_name = first.source.table.clone();
        let source_name = format!("{}.{table_name}", first.source.schema);
        let config = table_config(&self.tables, &[&source_name, &table_name]);
        let columns = self.ensure_table(tx, &schema_name, &table_name, events, config.mode).await?;
        let table = format!("{}.{}", quote_ident(&schema_name)?, quote_ident(&table_name)?);
        if config.mode == TableMode::Scd2 {
            let track = config.track_history_columns.as_deref();
            return self.apply_versions(tx, &table, &columns, events, track, stages).await;
        }
        for change in cdc_core::collapse(events) {
            match change {
                TableChange::Truncate(event) => {
                    // By order, not by arrival: rows changed after the truncate
                    // (consumed earlier from another partition) stay, and the
                    // marker keeps older rows consumed later out.
                    let order = quote_literal(&event.order.to_hex());
                    let wipe = match self.delete_mode {
                        DeleteMode::Hard => format!("DELETE FROM {table} WHERE _cdc_order < {order}"),
                        DeleteMode::Soft => format!(
                            "UPDATE {table} SET _cdc_deleted = true, _cdc_deleted_at = now(), _cdc_op = 't', \
                             _cdc_synced_at = now() WHERE NOT _cdc_deleted AND _cdc_order < {order}"
                        ),
                    };
                    tx.batch_execute(&wipe).await.map_err(|e| sink_error(self.sink, &e))?;
                    self.record_truncate(tx, &table, event).await?;
                }
                TableChange::Rows(rows) => {
                    if rows.iter().any(|r| r.event.key.is_none()) {
                        return Err(self.error(format!(
                            "table {schema_name}.{table_name} has no primary key: Debezium sent no record key, \
                             so rows cannot be matched"
                        )));
                    }
                    self.apply_rows(tx, &table, &columns, &rows, stages).await?;
                }
            }
        }
        Ok(())
    }

    /// The metadata columns of a table of `mode`.
    pub(super) fn metadata_columns(&self, mode: TableMode) -> Vec<(&'static str, &'static str)> {
        let mut columns = metadata_columns(self.delete_mode);
        if mode == TableMode::Scd2 {
            columns.retain(|(name, _)| !scd2::VERSION_COLUMNS.iter().any(|(n, _)| n == name));
            columns.extend(scd2::VERSION_COLUMNS);
        }
        columns
    }

    /// A table keeps the mode it was created in: a current-state upsert on
    /// an SCD2 table would hit every version of a key, and SCD2 needs its
    /// version columns. A mismatch is the configuration's, not the events':
    /// reported as an outage (retried, logged, never dead-lettered).
    fn mode_matches_table(
        &self,
        schema_name: &str,
        table_name: &str,
        existing: &BTreeMap<String, String>,
        mode: TableMode,
    ) -> Result<()> {
        let holds_versions = existing.contains_key(scd2::START_ORDER);
        if holds_versions == (mode == TableMode::Scd2) {
            return Ok(());
        }
        let (was, now) = if holds_versions { ("an SCD2", "current") } else { ("a current-state", "scd2") };
        Err(Error::Unavailable {
            sink: self.sink.to_owned(),
            message: format!(
                "table {schema_name}.{table_name} is {was} table but its configured mode \
                 ([target.tables.{table_name}] mode) is {now}: a table keeps its mode; give the new mode a table \
                 of its own (another database or schema) or restore the mode"
            ),
        })
    }

    /// Remembers the table's newest truncate (`row_key = ''`): rows older by
    /// order key, read later from another partition, are held out (or, in
    /// an SCD2 table, end there).
    pub(super) async fn record_truncate(&self, tx: &Transaction<'_>, table: &str, event: &ChangeEvent) -> Result<()> {
        let sql = format!(
            "INSERT INTO {DELETED_KEYS} (table_name, row_key, order_key, source_ts) \
             VALUES ($1, '', $2, timestamptz 'epoch' + $3::bigint * interval '1 microsecond') \
             ON CONFLICT (table_name, row_key) DO UPDATE \
             SET order_key = GREATEST({DELETED_KEYS}.order_key, EXCLUDED.order_key), \
                 source_ts = CASE WHEN EXCLUDED.order_key > {DELETED_KEYS}.order_key THEN EXCLUDED.source_ts \
                             ELSE {DELETED_KEYS}.source_ts END"
        );
        let order = event.order.to_hex();
        tx.execute(&sql, &[&table, &order, &event.source.ts_micros()]).await.map_err(|e| sink_error(self.sink, &e))?;
        Ok(())
    }

    /// Creates the table or adds missing columns; returns the data columns
    /// the staging table carries, key columns first, each with its column
    /// type in the table.
    async fn ensure_table(
        &mut self,
        tx: &Transaction<'_>,
        schema_name: &str,
        table_name: &str,
        events: &[&ChangeEvent],
        mode: TableMode,
    ) -> Result<Vec<(Field, String)>> {
        // Every column of every schema version in the batch; the last wins,
        // unless another version has it wider (versions read out of order).
        let Some(newest) = events.last().map(|e| &e.schema) else { return Ok(Vec::new()) };
        let schema =
            TableSchema::union(events.iter().rev().map(|e| &*e.schema)).map_err(|e| self.error(e.to_string()))?;
        let mut columns: Vec<Field> = schema.fields().to_vec();
        let key: Vec<&str> = newest.key_names().collect();
        columns.sort_by_key(|c| !key.contains(&c.name.as_str()));

        let id = (schema_name.to_owned(), table_name.to_owned());
        if !self.known.contains_key(&id) {
            let existing =
                existing_columns(tx, schema_name, table_name).await.map_err(|e| sink_error(self.sink, &e))?;
            if existing.is_empty() {
                self.create_table(tx, schema_name, table_name, &columns, &key, mode).await?;
            } else {
                self.mode_matches_table(schema_name, table_name, &existing, mode)?;
                self.add_missing_metadata(tx, schema_name, table_name, &existing, mode).await?;
                self.known.insert(id.clone(), KnownTable { columns: existing });
            }
        }
        let table = format!("{}.{}", quote_ident(schema_name)?, quote_ident(table_name)?);
        let mut known = self.known.get(&id).cloned().unwrap_or(KnownTable { columns: BTreeMap::new() });
        // A column renamed at the source is renamed here, keeping its values.
        for (new, old) in schema.renames() {
            if !known.columns.contains_key(new)
                && let Some(ty) = known.columns.remove(old)
            {
                let sql = format!("ALTER TABLE {table} RENAME COLUMN {} TO {}", quote_ident(old)?, quote_ident(new)?);
                tx.batch_execute(&sql).await.map_err(|e| sink_error(self.sink, &e))?;
                known.columns.insert(new.clone(), ty);
            }
        }
        let mut changed = known.clone();
        for column in &columns {
            let wanted = pg_type(column);
            match known.columns.get(&column.name) {
                None => {
                    // `ADD COLUMN ... DEFAULT v` at the source fills the rows
                    // it holds without emitting events: so does this (the
                    // Connect schema carries the default).
                    let default = column_default(column, &wanted);
                    let sql = format!(
                        "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {} {wanted}{default}",
                        quote_ident(&column.name)?
                    );
                    tx.batch_execute(&sql).await.map_err(|e| sink_error(self.sink, &e))?;
                    changed.columns.insert(column.name.clone(), wanted);
                }
                Some(current) if *current == wanted => {}
                Some(current) if widens(current, &wanted) => {
                    let name = quote_ident(&column.name)?;
                    let sql = format!("ALTER TABLE {table} ALTER COLUMN {name} TYPE {wanted} USING {name}::{wanted}");
                    tx.batch_execute(&sql).await.map_err(|e| sink_error(self.sink, &e))?;
                    changed.columns.insert(column.name.clone(), wanted);
                }
                // An event of an older schema version (the table was widened
                // since), or a narrowing at the source: every value it can
                // carry fits the wider column, which stays.
                Some(current) if widens(&wanted, current) || same_family(current, &wanted) => {}
                // Made by an earlier version of this mapping (`bit(1)` was
                // boolean): it holds every value.
                Some(current) if current == "boolean" && wanted == "bit(1)" => {}
                Some(current) => {
                    return Err(self.error(format!(
                        "column {} of {schema_name}.{table_name} is {current} in PostgreSQL but events now carry \
                         {wanted}: not a widening PostgreSQL can do in place",
                        column.name
                    )));
                }
            }
        }
        // Columns the table has but no event of the batch carries (dropped at
        // the source) are written as null, typed as they are in the table.
        for name in changed.columns.keys() {
            if !is_metadata_column(name) && !columns.iter().any(|c| &c.name == name) {
                columns.push(Field {
                    name: name.clone(),
                    data_type: DataType::Dynamic,
                    nullable: true,
                    default: None,
                    source: None,
                });
            }
        }
        let typed = columns
            .into_iter()
            .map(|c| {
                let ty = changed.columns.get(&c.name).cloned().unwrap_or_else(|| pg_type(&c));
                (c, ty)
            })
            .collect();
        self.known.insert(id, changed);
        Ok(typed)
    }

    /// Tables created by an older version lack newer metadata columns.
    async fn add_missing_metadata(
        &self,
        tx: &Transaction<'_>,
        schema_name: &str,
        table_name: &str,
        existing: &BTreeMap<String, String>,
        mode: TableMode,
    ) -> Result<()> {
        let table = format!("{}.{}", quote_ident(schema_name)?, quote_ident(table_name)?);
        for (name, ty) in self.metadata_columns(mode) {
            if !existing.contains_key(name) {
                let sql = format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {ty}");
                tx.batch_execute(&sql).await.map_err(|e| sink_error(self.sink, &e))?;
            }
        }
        if !existing.contains_key("_cdc_pending") {
            tx.batch_execute(&pending_index(schema_name, table_name)?).await.map_err(|e| sink_error(self.sink, &e))?;
        }
        Ok(())
    }

    async fn create_table(
        &mut self,
        tx: &Transaction<'_>,
        schema_name: &str,
        table_name: &str,
        columns: &[Field],
        key: &[&str],
        mode: TableMode,
    ) -> Result<()> {
        let mut definitions = Vec::new();
        let mut known = BTreeMap::new();
        for column in columns {
            let ty = pg_type(column);
            let not_null = if key.contains(&column.name.as_str()) { " NOT NULL" } else { "" };
            // Rows of events from before the source added the column take
            // its default, as the source's rows did.
            let default = column_default(column, &ty);
            definitions.push(format!("{} {ty}{not_null}{default}", quote_ident(&column.name)?));
            known.insert(column.name.clone(), ty);
        }
        for (name, ty) in self.metadata_columns(mode) {
            definitions.push(format!("{name} {ty}"));
        }
        if !key.is_empty() {
            let mut key: Vec<String> = key.iter().map(|k| quote_ident(k)).collect::<Result<_>>()?;
            // Every version of a row: identified by its place too.
            if mode == TableMode::Scd2 {
                key.push(scd2::START_ORDER.to_owned());
            }
            definitions.push(format!("PRIMARY KEY ({})", key.join(", ")));
        }
        // Room on each page for HOT updates: a CDC mirror is mostly updates of
        // rows whose key does not change, and HOT skips the index insert.
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE TABLE IF NOT EXISTS {schema}.{table} ({}) WITH (fillfactor = 85)",
            definitions.join(", "),
            schema = quote_ident(schema_name)?,
            table = quote_ident(table_name)?,
        );
        tx.batch_execute(&sql).await.map_err(|e| sink_error(self.sink, &e))?;
        tx.batch_execute(&pending_index(schema_name, table_name)?).await.map_err(|e| sink_error(self.sink, &e))?;
        self.known.insert((schema_name.to_owned(), table_name.to_owned()), KnownTable { columns: known });
        Ok(())
    }

    async fn apply_rows(
        &mut self,
        tx: &Transaction<'_>,
        table: &str,
        columns: &[(Field, String)],
        rows: &[cdc_core::RowChange<'_>],
        stages: &mut cdc_core::StageTimes,
    ) -> Result<()> {
        let Some(first) = rows.first() else { return Ok(()) };
        let key_count = first.event.schema.key_indices().len();
        let Staged { name: staging, missing } = self.stage(tx, columns, rows, stages).await?;
        let mut sql = self.apply_sql(table, &staging, columns, key_count)?;
        // A column the event's schema version lacks takes the column's
        // default (null without one): an event from before `ADD COLUMN ...
        // DEFAULT v` (read late, from another partition) describes a row the
        // source gave `v` when the column was added.
        let key = columns.iter().take(key_count);
        let key_match = key
            .map(|(column, ty)| Ok(format!("t.{name} = s.{name}::{ty}", name = quote_ident(&column.name)?)))
            .collect::<Result<Vec<_>>>()?
            .join(" AND ");
        for name in missing {
            sql.push_str(&format!(
                "\nUPDATE {table} AS t SET {column} = DEFAULT FROM {staging} s WHERE {key_match} \
                 AND s._cdc_missing::text[] @> ARRAY[{literal}] AND t._cdc_order = s._cdc_order;",
                column = quote_ident(&name)?,
                literal = quote_literal(&name),
            ));
        }
        stages.time("apply", tx.batch_execute(&sql)).await.map_err(|e| sink_error(self.sink, &e))
    }

    /// Loads `rows` into a new staging table (binary COPY): per row its
    /// image in `columns`, its metadata, the columns it did not send
    /// (`_cdc_unavailable`) and those its schema version lacks
    /// (`_cdc_missing`).
    pub(super) async fn stage(
        &mut self,
        tx: &Transaction<'_>,
        columns: &[(Field, String)],
        rows: &[cdc_core::RowChange<'_>],
        stages: &mut cdc_core::StageTimes,
    ) -> Result<Staged> {
        let copying = std::time::Instant::now();
        let staging = self.scratch_table("_cdc_stage");
        let mut definitions = Vec::new();
        let mut types = Vec::new();
        for (column, _) in columns {
            let ty = staging_type(&column.data_type);
            definitions.push(format!("{} {}", quote_ident(&column.name)?, ty.name()));
            types.push(ty);
        }
        for (name, ty) in [
            ("_cdc_op", Type::TEXT),
            ("_cdc_order", Type::TEXT),
            ("_cdc_source_ts", Type::TIMESTAMPTZ),
            ("_cdc_lsn", Type::INT8),
            ("_cdc_tx_id", Type::INT8),
            ("_cdc_topic", Type::TEXT),
            ("_cdc_partition", Type::INT4),
            ("_cdc_offset", Type::INT8),
            ("_cdc_unavailable", Type::TEXT),
            ("_cdc_missing", Type::TEXT),
            ("_cdc_owed", Type::TEXT),
        ] {
            // The order key compares byte-wise, like the table's column.
            let collate = if matches!(name, "_cdc_order" | "_cdc_owed") { " COLLATE \"C\"" } else { "" };
            definitions.push(format!("{name} {}{collate}", ty.name()));
            types.push(ty);
        }
        let create = format!("CREATE TEMP TABLE {staging} ({}) ON COMMIT DROP", definitions.join(", "));
        tx.batch_execute(&create).await.map_err(|e| sink_error(self.sink, &e))?;

        let sink =
            tx.copy_in(&format!("COPY {staging} FROM STDIN BINARY")).await.map_err(|e| sink_error(self.sink, &e))?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        pin_mut!(writer);
        let null = Value::Null;
        let points: Vec<bool> = columns
            .iter()
            .map(|(c, _)| c.source.as_ref().is_some_and(|s| s.type_name.eq_ignore_ascii_case("POINT")))
            .collect();
        // Table columns some staged row's schema version lacks.
        let mut missing_anywhere: Vec<&str> = Vec::new();
        for row in rows {
            let event = row.event;
            // Deletes stage their before-image (the key, or the whole row with
            // REPLICA IDENTITY FULL, filled from the batch's older changes).
            let image = match (&row.after, &row.before) {
                (Some(after), _) => Some(after.as_ref()),
                (None, Some(before)) => Some(before.as_ref()),
                (None, None) => event.before.as_ref(),
            };
            let mut unavailable = Vec::new();
            let mut missing = Vec::new();
            let mut cells = Vec::with_capacity(types.len());
            for ((column, _), &point) in columns.iter().zip(&points) {
                if event.schema.index_of(&column.name).is_none() {
                    missing.push(column.name.as_str());
                    if !missing_anywhere.contains(&column.name.as_str()) {
                        missing_anywhere.push(&column.name);
                    }
                }
                let value = match (event.schema.index_of(&column.name), image) {
                    (Some(i), Some(image)) => image.get(i).unwrap_or(&null),
                    _ => &null,
                };
                if value.is_unavailable() {
                    unavailable.push(column.name.as_str());
                }
                cells.push(Cell { value, data_type: &column.data_type, geometry_as_point: point });
            }
            let order = event.order.to_hex();
            let unavailable = (!unavailable.is_empty()).then(|| array_literal(&unavailable));
            let missing = (!missing.is_empty()).then(|| array_literal(&missing));
            let op = event.op.code();
            let source_ts = event.source.ts_micros().map(Value::TimestampTz).unwrap_or(Value::Null);
            let mut params: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            let topic: &str = &event.position.topic;
            let owed = row.owed_since.map(|order| order.to_hex().chars().take(32).collect::<String>());
            let meta: [&(dyn ToSql + Sync); 11] = [
                &op,
                &order,
                &Cell { value: &source_ts, data_type: &DataType::TimestampTz, geometry_as_point: false },
                &event.source.lsn,
                &event.source.tx_id,
                &topic,
                &event.position.partition,
                &event.position.offset,
                &unavailable,
                &missing,
                &owed,
            ];
            params.extend(meta);
            writer.as_mut().write(&params).await.map_err(|e| {
                let mut error = sink_error(self.sink, &e);
                if let Error::Sink { message, .. } = &mut error {
                    message.push_str(&format!(" (record {})", event.position));
                }
                error
            })?;
        }
        writer.finish().await.map_err(|e| sink_error(self.sink, &e))?;
        stages.add("copy", copying.elapsed());
        Ok(Staged { name: staging, missing: missing_anywhere.into_iter().map(str::to_owned).collect() })
    }

    /// A primary-key change of a row whose TOASTed value did not change
    /// arrives as a delete of the old key and a create of the new one, at
    /// the same LSN, the create carrying Debezium's placeholder: the value
    /// exists only in the old key's row. Creates write what they have and
    /// mark the rest owed (`_cdc_pending`); these statements pay what is
    /// owed from the old row, wherever it is: still in the table (its delete
    /// in this batch: the create came first or in the same batch), kept by
    /// a soft delete, or in the tombstone of an earlier batch's delete.
    fn owed_values_sql(
        &self,
        table: &str,
        staging: &str,
        columns: &[(Field, String)],
        key_count: usize,
    ) -> Result<String> {
        let mut from_delete = Vec::new();
        let mut from_row = Vec::new();
        let mut staged_keys = Vec::new();
        for (i, (column, ty)) in columns.iter().enumerate() {
            let name = quote_ident(&column.name)?;
            if i < key_count {
                staged_keys.push((name, column, ty));
                continue;
            }
            let literal = quote_literal(&column.name);
            let owed = format!("n._cdc_pending @> ARRAY[{literal}]");
            // The staged delete's value, where its image had one; else the old row's.
            let staged = cast_staged(&format!("d.{name}"), &column.data_type, ty);
            from_delete.push(format!(
                "{name} = CASE WHEN NOT {owed} THEN n.{name} \
                 WHEN coalesce(d._cdc_unavailable::text[] @> ARRAY[{literal}], false) \
                   OR coalesce(d._cdc_missing::text[] @> ARRAY[{literal}], false) THEN o.{name} \
                 ELSE {staged} END"
            ));
            from_row.push(format!("{name} = CASE WHEN {owed} THEN o.{name} ELSE n.{name} END"));
        }
        if from_row.is_empty() {
            return Ok(String::new());
        }
        let key_match = |row: &str, staged: &str| {
            staged_keys
                .iter()
                .map(|(name, column, ty)| {
                    format!("{row}.{name} = {}", cast_staged(&format!("{staged}.{name}"), &column.data_type, ty))
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let same_change = |other: &str| {
            format!(
                "n._cdc_pending IS NOT NULL AND n._cdc_pending_at = left({other}._cdc_order, 32) \
                 AND n._cdc_topic = {other}._cdc_topic"
            )
        };
        // The delete is in this batch: its image, or the old row still in the table.
        let mut sql = format!(
            "UPDATE {table} AS n SET {fill}, _cdc_pending = NULL \
             FROM {staging} d LEFT JOIN {table} o ON {old_key} \
             WHERE d._cdc_op = 'd' AND {same};\n",
            fill = from_delete.join(", "),
            old_key = key_match("o", "d"),
            same = same_change("d"),
        );
        // The delete was in an earlier batch: the row kept flagged, or its tombstone's image.
        let this_batch = format!("s._cdc_unavailable IS NOT NULL AND {}", key_match("n", "s"));
        let fill = from_row.join(", ");
        sql.push_str(&match self.delete_mode {
            DeleteMode::Soft => format!(
                "UPDATE {table} AS n SET {fill}, _cdc_pending = NULL FROM {staging} s, {table} o \
                 WHERE {this_batch} AND o._cdc_deleted AND {same};\n",
                same = same_change("o"),
            ),
            DeleteMode::Hard => format!(
                "UPDATE {table} AS n SET {fill}, _cdc_pending = NULL FROM {staging} s, {DELETED_KEYS} k, \
                 LATERAL jsonb_populate_record(NULL::{table}, k.image) o \
                 WHERE {this_batch} AND k.table_name = {table_literal} AND k.image IS NOT NULL \
                 AND k._cdc_topic = n._cdc_topic \
                 AND k.order_key >= n._cdc_pending_at AND k.order_key < n._cdc_pending_at || 'g' \
                 AND n._cdc_pending IS NOT NULL;\n",
                table_literal = quote_literal(table),
            ),
        });
        Ok(sql)
    }

    /// The set-based statements that move a staged batch into the table.
    fn apply_sql(&self, table: &str, staging: &str, columns: &[(Field, String)], key_count: usize) -> Result<String> {
        let mut names = Vec::new();
        let mut casts = Vec::new();
        for (column, ty) in columns {
            let name = quote_ident(&column.name)?;
            casts.push(cast_staged(&format!("s.{name}"), &column.data_type, ty));
            names.push(name);
        }
        // Key columns come first (`ensure_table`).
        let key = || names.iter().zip(&casts).take(key_count);
        // Rows the UPDATE did not touch are new, or older than what the table
        // holds (the INSERT's ON CONFLICT skips those).
        let returning = key().map(|(name, _)| format!("t.{name}")).collect::<Vec<_>>().join(", ");
        let staged_key = key().map(|(_, cast)| cast.as_str()).collect::<Vec<_>>().join(", ");
        let key_match = key().map(|(name, cast)| format!("t.{name} = {cast}")).collect::<Vec<_>>().join(" AND ");
        let sets: Vec<String> = names
            .iter()
            .zip(&casts)
            .zip(columns)
            .skip(key_count)
            .map(|((name, cast), (column, _))| {
                format!(
                    "{name} = CASE WHEN s._cdc_unavailable::text[] @> ARRAY[{literal}] THEN t.{name} ELSE {cast} END",
                    literal = quote_literal(&column.name),
                )
            })
            .collect();
        let meta = "_cdc_op = s._cdc_op, _cdc_order = s._cdc_order, _cdc_source_ts = s._cdc_source_ts, \
                    _cdc_lsn = s._cdc_lsn, _cdc_tx_id = s._cdc_tx_id, _cdc_topic = s._cdc_topic, \
                    _cdc_partition = s._cdc_partition, _cdc_offset = s._cdc_offset, _cdc_synced_at = now()";
        let undelete =
            if self.delete_mode == DeleteMode::Soft { ", _cdc_deleted = false, _cdc_deleted_at = NULL" } else { "" };
        let mut sets_sql = sets.join(", ");
        if !sets_sql.is_empty() {
            sets_sql.push_str(", ");
        }
        // Owed: what a primary-key change's create lacked; still owed,
        // what was owed and this change did not send either.
        sets_sql.push_str(
            "_cdc_pending = CASE WHEN s._cdc_owed IS NOT NULL THEN s._cdc_unavailable::text[] \
             ELSE NULLIF(ARRAY(SELECT unnest(t._cdc_pending) \
             INTERSECT SELECT unnest(s._cdc_unavailable::text[])), '{}') END, \
             _cdc_pending_at = COALESCE(s._cdc_owed, t._cdc_pending_at), ",
        );
        let insert_columns = format!(
            "{}, _cdc_op, _cdc_order, _cdc_source_ts, _cdc_lsn, _cdc_tx_id, _cdc_topic, _cdc_partition, \
             _cdc_offset, _cdc_synced_at, _cdc_pending, _cdc_pending_at",
            names.join(", ")
        );
        let insert_values = format!(
            "{}, s._cdc_op, s._cdc_order, s._cdc_source_ts, s._cdc_lsn, s._cdc_tx_id, s._cdc_topic, \
             s._cdc_partition, s._cdc_offset, now(), \
             CASE WHEN s._cdc_owed IS NOT NULL THEN s._cdc_unavailable::text[] END, s._cdc_owed",
            casts.join(", ")
        );
        // A batch touches few rows of a large table: probe the primary key
        // per staged row rather than hash the whole table (the planner
        // otherwise picks a sequential scan of the target for a few
        // thousand staged rows). Local to this transaction.
        // Never let an older event overwrite a newer one (`supersedes`).
        // A key deleted by a newer event stays deleted: an older event of it
        // arriving later, from another partition, finds the tombstone
        // instead of an absent row. A truncate's marker (row key '') holds
        // rows older by order key out (a truncate's transaction cannot
        // overlap another writing the table, so order keys order it).
        let newer = supersedes_sql(&SqlVersion::of("s"), &SqlVersion::of("t"));
        let table_literal = quote_literal(table);
        let row_key = format!("ROW({staged_key})::text");
        let tombstone = SqlVersion { order: "d.order_key".into(), ..SqlVersion::of("d") };
        // Two probes of the tombstones' primary key: one `OR` of them makes
        // PostgreSQL scan every tombstone of the table for each staged row.
        let not_buried = format!(
            "NOT EXISTS (SELECT 1 FROM {DELETED_KEYS} d WHERE d.table_name = {table_literal} \
             AND d.row_key = {row_key} AND NOT {newer_than_tombstone}) \
             AND NOT EXISTS (SELECT 1 FROM {DELETED_KEYS} d WHERE d.table_name = {table_literal} \
             AND d.row_key = '' AND d.order_key >= s._cdc_order)",
            newer_than_tombstone = supersedes_sql(&SqlVersion::of("s"), &tombstone),
        );
        let keep_newer_tombstone = supersedes_sql(
            &SqlVersion { order: "EXCLUDED.order_key".into(), ..SqlVersion::of("EXCLUDED") },
            &SqlVersion { order: format!("{DELETED_KEYS}.order_key"), ..SqlVersion::of(DELETED_KEYS) },
        );
        let mut sql = format!(
            "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; SET LOCAL jit = off;\n\
             WITH updated AS (UPDATE {table} AS t SET {sets_sql}{meta}{undelete} FROM {staging} s \
             WHERE {key_match} AND s._cdc_op <> 'd' AND {newer} AND {not_buried} \
             RETURNING {returning}) \
             INSERT INTO {table} ({insert_columns}) SELECT {insert_values} FROM {staging} s \
             WHERE s._cdc_op <> 'd' AND ({staged_key}) NOT IN (SELECT * FROM updated) AND {not_buried} \
             ON CONFLICT DO NOTHING;\n"
        );
        sql.push_str(&self.owed_values_sql(table, staging, columns, key_count)?);
        match self.delete_mode {
            // The tombstone keeps the deleted row (`image`): the new key of a
            // primary-key change read in a later batch takes its values.
            // Deletes that found no row (or only a newer one) keep their
            // staged image; the second statement's conflict check leaves the
            // first's tombstones (same position, not newer) as they are.
            DeleteMode::Hard => {
                let insert_tombstones = |from: &str| {
                    format!(
                        "INSERT INTO {DELETED_KEYS} \
                         (table_name, row_key, order_key, _cdc_topic, _cdc_partition, _cdc_offset, image) \
                         SELECT {table_literal}, {from}\n\
                         ON CONFLICT (table_name, row_key) DO UPDATE \
                         SET order_key = EXCLUDED.order_key, _cdc_topic = EXCLUDED._cdc_topic, \
                             _cdc_partition = EXCLUDED._cdc_partition, _cdc_offset = EXCLUDED._cdc_offset, \
                             image = EXCLUDED.image \
                         WHERE {keep_newer_tombstone};\n"
                    )
                };
                sql.push_str(&format!(
                    "WITH gone AS (DELETE FROM {table} AS t USING {staging} s WHERE {key_match} \
                     AND s._cdc_op = 'd' AND {newer} RETURNING {row_key} AS row_key, s._cdc_order, s._cdc_topic, \
                     s._cdc_partition, s._cdc_offset, to_jsonb(t) AS image) {}",
                    insert_tombstones("row_key, _cdc_order, _cdc_topic, _cdc_partition, _cdc_offset, image FROM gone")
                ));
                sql.push_str(&insert_tombstones(&format!(
                    "{row_key}, s._cdc_order, s._cdc_topic, s._cdc_partition, s._cdc_offset, to_jsonb(s) \
                     FROM {staging} s WHERE s._cdc_op = 'd'"
                )));
            }
            DeleteMode::Soft => sql.push_str(&format!(
                "UPDATE {table} AS t SET {meta}, _cdc_deleted = true, _cdc_deleted_at = s._cdc_source_ts \
                 FROM {staging} s WHERE {key_match} AND s._cdc_op = 'd' AND {newer};\n\
                 INSERT INTO {table} ({insert_columns}, _cdc_deleted, _cdc_deleted_at) \
                 SELECT {insert_values}, true, s._cdc_source_ts FROM {staging} s \
                 WHERE s._cdc_op = 'd' AND NOT EXISTS (SELECT 1 FROM {table} t WHERE {key_match}) ON CONFLICT DO NOTHING;"
            )),
        }
        Ok(sql)
    }
}

/// `character varying(50)` vs `character varying(100)` and the like: the
/// same type family with another modifier is left as it is.
/// ` DEFAULT v` for a column whose schema has a default, else nothing.
fn column_default(column: &Field, ty: &str) -> String {
    default_value(column, ty).map(|value| format!(" DEFAULT {value}")).unwrap_or_default()
}

/// The column's default (from its schema) as an expression of type `ty`.
pub(super) fn default_value(column: &Field, ty: &str) -> Option<String> {
    column.default.as_ref().and_then(|value| pg_text(&column.data_type, value, false)).map(|text| {
        let staged = format!("{}::{}", quote_literal(&text), staging_type(&column.data_type).name());
        cast_staged(&staged, &column.data_type, ty)
    })
}

/// Whether a table column is the sink's, not the source's: CDC metadata
/// and SCD2 version columns.
pub(super) fn is_metadata_column(name: &str) -> bool {
    name.starts_with("_cdc_") || scd2::VERSION_COLUMNS.iter().any(|(n, _)| *n == name)
}

/// The index that finds rows still owed TOASTed values by a primary-key
/// change (`_cdc_pending`), by the LSN of the change: few rows, small index.
fn pending_index(schema_name: &str, table_name: &str) -> Result<String> {
    Ok(format!(
        "CREATE INDEX IF NOT EXISTS {index} ON {schema}.{table} (_cdc_pending_at) WHERE _cdc_pending IS NOT NULL",
        index = quote_ident(&format!("{table_name}_cdc_pending"))?,
        schema = quote_ident(schema_name)?,
        table = quote_ident(table_name)?,
    ))
}

/// Whether two column types differ only in their modifiers (`varchar(20)`
/// and `varchar(40)`, `timestamp(3) without time zone` and `timestamp
/// without time zone`); numerics, whose scale changes values, never do.
pub(super) fn same_family(current: &str, wanted: &str) -> bool {
    let family = |t: &str| {
        let mut depth = 0;
        let bare: String = t
            .chars()
            .filter(|c| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => return depth == 0,
                }
                false
            })
            .collect();
        bare.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    family(current) == family(wanted) && !family(current).starts_with("numeric")
}

pub(super) fn array_literal(items: &[&str]) -> String {
    let quoted: Vec<String> =
        items.iter().map(|i| format!("\"{}\"", i.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("{{{}}}", quoted.join(","))
}

pub(super) async fn existing_columns(
    tx: &Transaction<'_>,
    schema: &str,
    table: &str,
) -> std::result::Result<BTreeMap<String, String>, tokio_postgres::Error> {
    let rows = tx
        .query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            &[&schema, &table],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect())
}
