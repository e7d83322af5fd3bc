//! SQL over the Delta tables with DataFusion, with time travel: the Rust
//! replacement of the seed's PySpark notebook.
//!
//! Needs Delta tables under `--root` (default `./deltalake`), for example
//! from `cargo run --release --example consumer -- --demo`.
//!
//! ```sh
//! cargo run --example query -- "SELECT id, email, _cdc_op FROM customers ORDER BY id"
//! cargo run --example query -- --version 0 "SELECT count(*) FROM customers"
//! cargo run --example query -- --timestamp 2026-11-25T12:00:00Z "SELECT * FROM orders"
//! cargo run --example query -- --consistent "SELECT o.id, count(i.id) FROM orders o LEFT JOIN order_items i ON i.order_id = o.id GROUP BY o.id"
//! cargo run --example query -- --consistent-lsn 26770000 "SELECT count(*) FROM orders"
//! cargo run --example query -- --history customers
//! cargo run --example query -- --tables
//! ```
use anyhow::Context;
use cdc_lakehouse::sinks::delta::consistency::{self, PointAt};
use cdc_lakehouse::sinks::delta::deltalake::arrow::util::pretty::pretty_format_batches;
use cdc_lakehouse::sinks::delta::time_travel::{self, AsOf};
use clap::Parser;
use config::delta_config;

// The consumer's configuration; only its [delta] section is read here.
#[allow(dead_code)]
mod config;

/// Query the Delta tables written by the consumer.
#[derive(Parser)]
struct Args {
    /// SQL to run; every table under the root is registered by its name.
    sql: Option<String>,
    /// The consumer's configuration file, for its `[delta]` root and
    /// storage options (object-store credentials and endpoint).
    #[arg(long, env = "CDC_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Root of the Delta tables (a path or an object-store URL), instead of
    /// the configuration's (`CDC_DELTA_ROOT`, `./deltalake` by default).
    #[arg(long)]
    root: Option<String>,
    /// Read every table as of this version.
    #[arg(long, conflicts_with = "timestamp")]
    version: Option<u64>,
    /// Read every table as of this time (RFC 3339, e.g. 2026-11-25T12:00:00Z).
    #[arg(long)]
    timestamp: Option<chrono::DateTime<chrono::Utc>>,
    /// Read every table at the newest transaction-consistent read point
    /// (`delta.read_points`): the source as of one transaction boundary.
    #[arg(long, conflicts_with_all = ["version", "timestamp"])]
    consistent: bool,
    /// As `--consistent`, at the newest read point at or before this source LSN.
    #[arg(long, value_name = "LSN", conflicts_with_all = ["version", "timestamp", "consistent_time"])]
    consistent_lsn: Option<i64>,
    /// As `--consistent`, at the newest read point whose transaction was
    /// processed at or before this time (RFC 3339).
    #[arg(long, value_name = "TIME", conflicts_with_all = ["version", "timestamp"])]
    consistent_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Print a table's history (version, time, operation, rows) instead.
    #[arg(long, value_name = "TABLE")]
    history: Option<String>,
    /// List the tables under the root.
    #[arg(long)]
    tables: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = delta_config(args.config.as_deref(), args.root.as_deref())?;
    if args.tables {
        for name in time_travel::list_tables(&config).await? {
            println!("{name}");
        }
        return Ok(());
    }
    if let Some(table) = &args.history {
        println!("{:>8}  {:<25}  {:<14}  {:>8}", "version", "timestamp", "operation", "rows");
        for entry in time_travel::history(&config, table).await? {
            let when = entry.timestamp.map(|t| t.to_rfc3339()).unwrap_or_default();
            let rows = entry.rows_affected.map(|r| r.to_string()).unwrap_or_default();
            println!("{:>8}  {:<25}  {:<14}  {:>8}", entry.version, when, entry.operation, rows);
        }
        return Ok(());
    }
    let sql = args.sql.context("give the SQL to run, or --history TABLE, or --tables")?;
    let point_at = match (args.consistent, args.consistent_lsn, args.consistent_time) {
        (_, Some(lsn), _) => Some(PointAt::Lsn(lsn)),
        (_, _, Some(time)) => Some(PointAt::Time(time)),
        (true, _, _) => Some(PointAt::Latest),
        _ => None,
    };
    if let Some(at) = point_at {
        let point = consistency::as_of(&config, at)
            .await?
            .context("no read point: is delta.read_points on, and the transaction topic consumed?")?;
        let (lsn, ts) = (point.boundary.lsn, point.boundary.ts_ms);
        eprintln!("read point: transaction {} (LSN {lsn:?}, ts_ms {ts:?})", point.boundary.id);
        let batches = consistency::query(&config, &sql, &point).await?;
        println!("{}", pretty_format_batches(&batches)?);
        return Ok(());
    }
    let as_of = match (args.version, args.timestamp) {
        (Some(v), _) => AsOf::Version(v),
        (_, Some(t)) => AsOf::Timestamp(t),
        _ => AsOf::Latest,
    };
    let batches = time_travel::query(&config, &sql, as_of).await?;
    println!("{}", pretty_format_batches(&batches)?);
    Ok(())
}
