//! Column types of schemaless records, read from the source database's
//! catalog (`source_schema_url`): the columns of a table, their types with
//! length, precision and scale, enum labels, NOT NULL, defaults and the
//! primary key. Read-only queries of `pg_catalog`, which every role may read.

use std::collections::HashMap;

use async_trait::async_trait;
use cdc_core::catalog::{CatalogColumn, HandlingModes, SchemaCatalog, connect_columns};
use cdc_core::{Result, TableSchema};
use tokio::sync::Mutex;
use tokio_postgres::Client;

use super::{Connection, PgConnectionConfig, sink_error};

const NAME: &str = "source-catalog";

/// One row per column, domains resolved to their base type (an array's
/// element type, for arrays), in column order.
const COLUMNS: &str = "\
    SELECT a.attname, \
           base.typname AS base_type, \
           t.typname AS declared_type, \
           t.typcategory = 'A' AS is_array, \
           CASE WHEN a.atttypmod <> -1 THEN a.atttypmod \
                WHEN elem.typtype = 'd' THEN elem.typtypmod ELSE -1 END AS type_modifier, \
           ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = base.oid ORDER BY e.enumsortorder) \
               AS enum_labels, \
           a.attnotnull, \
           pg_get_expr(d.adbin, d.adrelid) AS default_expression \
    FROM pg_attribute a \
    JOIN pg_class c ON c.oid = a.attrelid \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_type t ON t.oid = a.atttypid \
    JOIN pg_type elem ON elem.oid = CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE t.oid END \
    JOIN pg_type base ON base.oid = CASE WHEN elem.typtype = 'd' THEN elem.typbasetype ELSE elem.oid END \
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
    WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
    ORDER BY a.attnum";

const COLUMN_NUMBERS: &str = "\
    SELECT a.attname::text, a.attnum::int4 \
    FROM pg_attribute a \
    JOIN pg_class c ON c.oid = a.attrelid \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped";

const PRIMARY_KEY: &str = "\
    SELECT a.attname \
    FROM pg_index i \
    JOIN pg_class c ON c.oid = i.indrelid \
    JOIN pg_namespace n ON n.oid = c.relnamespace \
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
    WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary \
    ORDER BY array_position(i.indkey::int2[], a.attnum)";

/// The source database's catalog as a [`SchemaCatalog`].
pub struct PgSourceCatalog {
    connection: Mutex<Connection>,
    modes: HandlingModes,
}

impl PgSourceCatalog {
    /// `config.url` is the source database; `modes` are the connector's
    /// handling modes, which decide how each type is encoded.
    pub fn new(config: PgConnectionConfig, modes: HandlingModes) -> PgSourceCatalog {
        PgSourceCatalog { connection: Mutex::new(Connection::new(config, NAME)), modes }
    }

    /// The columns of `schema.table` as the catalog has them; empty when
    /// there is no such table.
    pub async fn columns(&self, schema: &str, table: &str) -> Result<(Vec<CatalogColumn>, Vec<String>)> {
        let mut connection = self.connection.lock().await;
        let outcome = async { read_columns(connection.client().await?, NAME, schema, table).await }.await;
        if outcome.is_err() {
            connection.reset();
        }
        outcome
    }
}

/// The columns of `schema.table` in the database `client` is connected to,
/// with its primary key; empty when there is no such table.
pub(super) async fn read_columns(
    client: &Client,
    sink: &str,
    schema: &str,
    table: &str,
) -> Result<(Vec<CatalogColumn>, Vec<String>)> {
    let rows = client.query(COLUMNS, &[&schema, &table]).await.map_err(|e| sink_error(sink, &e))?;
    let key = client.query(PRIMARY_KEY, &[&schema, &table]).await.map_err(|e| sink_error(sink, &e))?;
    let columns = rows
        .iter()
        .map(|row| CatalogColumn {
            name: row.get(0),
            base_type: row.get(1),
            declared_type: row.get(2),
            array: row.get(3),
            type_modifier: row.get(4),
            enum_labels: row.get(5),
            not_null: row.get(6),
            default_expression: row.get(7),
        })
        .collect();
    Ok((columns, key.iter().map(|row| row.get(0)).collect()))
}

#[async_trait]
impl SchemaCatalog for PgSourceCatalog {
    async fn table_schema(&self, table: &str) -> Result<Option<TableSchema>> {
        // Debezium names tables `schema.table`; PostgreSQL schema names
        // rarely hold a dot, table names may.
        let Some((schema, name)) = table.split_once('.') else { return Ok(None) };
        let (columns, key) = self.columns(schema, name).await?;
        if columns.is_empty() {
            return Ok(None);
        }
        let key: Vec<&str> = key.iter().map(String::as_str).collect();
        connect_columns(&columns, &key, &self.modes).map(Some)
    }

    fn name(&self) -> &str {
        NAME
    }

    async fn column_numbers(&self, table: &str) -> Result<Option<HashMap<String, i32>>> {
        let Some((schema, name)) = table.split_once('.') else { return Ok(None) };
        let mut connection = self.connection.lock().await;
        let outcome = async {
            let client = connection.client().await?;
            client.query(COLUMN_NUMBERS, &[&schema, &name]).await.map_err(|e| sink_error(NAME, &e))
        }
        .await;
        match outcome {
            Ok(rows) if rows.is_empty() => Ok(None),
            Ok(rows) => Ok(Some(rows.iter().map(|row| (row.get(0), row.get(1))).collect())),
            Err(error) => {
                connection.reset();
                Err(error)
            }
        }
    }
}
