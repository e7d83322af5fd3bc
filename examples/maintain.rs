//! Delta table maintenance: compaction (optionally Z-ordered by key),
//! checkpoints, log cleanup and vacuum, for every table under the root. The
//! consumer runs the same between batches on its `[maintenance]` schedule;
//! this runs it once, by hand.
//!
//! ```sh
//! cargo run --example maintain -- --root ./deltalake --zorder-by id --vacuum-hours 168
//! ```
use cdc_lakehouse::sinks::delta::maintenance::{self, MaintenancePolicy};
use clap::Parser;
use config::delta_config;

// The consumer's configuration; only its [delta] section is read here.
#[allow(dead_code)]
mod config;

/// Compact, checkpoint and vacuum the Delta tables.
#[derive(Parser)]
struct Args {
    /// The consumer's configuration file, for its `[delta]` root and
    /// storage options (object-store credentials and endpoint).
    #[arg(long, env = "CDC_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Root of the Delta tables (a path or an object-store URL), instead of
    /// the configuration's (`CDC_DELTA_ROOT`, `./deltalake` by default).
    #[arg(long)]
    root: Option<String>,
    /// Compact a table once it has at least this many files.
    #[arg(long, default_value_t = 2)]
    min_files: usize,
    /// Z-order compacted files by these columns (repeatable), e.g. the key.
    #[arg(long)]
    zorder_by: Vec<String>,
    /// Delete files older than this that no retained version needs.
    #[arg(long, default_value_t = 168)]
    vacuum_hours: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = delta_config(args.config.as_deref(), args.root.as_deref())?;
    let policy = MaintenancePolicy {
        optimize_min_files: args.min_files,
        zorder_by: args.zorder_by,
        vacuum_retention_hours: args.vacuum_hours,
        ..MaintenancePolicy::default()
    };
    for (table, report) in maintenance::run(&config, &policy).await? {
        println!(
            "{table}: compacted {} files into {}, checkpoint at {}, {} log files deleted, vacuumed {} files",
            report.files_removed,
            report.files_added,
            report.checkpoint_version.map(|v| format!("v{v}")).unwrap_or_else(|| "-".into()),
            report.logs_deleted,
            report.files_vacuumed
        );
    }
    Ok(())
}
