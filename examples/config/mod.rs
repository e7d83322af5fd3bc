//! The consumer's configuration (shared by `consumer` and `replay`): a TOML
//! file and/or `CDC_*` environment variables over the seed deployment's
//! defaults. See `examples/consumer.example.toml`.

use anyhow::{Context, bail};
use cdc_lakehouse::core::catalog::HandlingModes;
use cdc_lakehouse::core::pipeline::{BatchPolicy, DeadLetterStore, OnError, Pipeline, RetryPolicy};
use cdc_lakehouse::core::renames::RenameDetection;
use cdc_lakehouse::core::{Decoder, Sink};
use cdc_lakehouse::kafka::KafkaConfig;
use cdc_lakehouse::sinks::delta::maintenance::MaintenancePolicy;
use cdc_lakehouse::sinks::{
    DeltaConfig, DeltaSink, PgConnectionConfig, PgDatalakeSink, PgSourceCatalog, PgTargetSink, PgUrl, TableConfig,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The consumer's configuration. Every key is optional, in every section:
/// a file's keys are laid over the defaults (the seed deployment's) section
/// by section, so `[kafka] topics = [...]` keeps the default brokers and
/// `[datalake] enabled = false` needs nothing else.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub batch: BatchPolicy,
    /// `dead-letter` (default) or `fail-fast`.
    pub on_error: OnError,
    /// Backoff for sink outages (retriable errors).
    pub retry: RetryPolicy,
    pub delta: Toggle<DeltaConfig>,
    pub target: Toggle<TargetConfig>,
    pub datalake: Toggle<PgConnectionConfig>,
    /// Column types of schemaless topics (`value.converter.schemas.enable=false`).
    pub source: SourceConfig,
    /// When the Delta sink compacts, checkpoints, cleans the log and vacuums.
    pub maintenance: MaintenancePolicy,
}

/// The `[source]` section: where schemaless records get their column types.
#[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The source database, read (catalog only) for the column types of
    /// schemaless records. Without it such records are dead-lettered.
    pub schema_url: Option<PgUrl>,
    /// A file holding `schema_url` instead (a mounted secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_url_file: Option<std::path::PathBuf>,
    /// A file holding the source database's password, so the URL needs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_password_file: Option<std::path::PathBuf>,
    /// The connector's `decimal.handling.mode`, `time.precision.mode`,
    /// `interval.handling.mode` and `binary.handling.mode` (snake_case
    /// values), which decide how each type is encoded.
    #[serde(flatten)]
    pub modes: HandlingModes,
    /// Type schemaless columns of unknown type by their JSON shape instead
    /// (decimals stay base64 text, timestamps integers): for sources that
    /// are not a database whose catalog can be read.
    #[serde(default)]
    pub json_shape: bool,
    /// How column renames at the source are told from drops: `catalog`
    /// (column numbers, with `schema_url`; otherwise a renamed column is a
    /// new column) or `same_position` (also: one column gone and one new of
    /// the same type at the same position in one schema change).
    #[serde(default)]
    pub rename_detection: RenameDetection,
}

/// The `[target]` section: the connection, and per-table settings
/// (`[target.tables.<table>] mode = "scd2"`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct TargetConfig {
    #[serde(flatten)]
    pub connection: PgConnectionConfig,
    /// By source table name or `schema.table`.
    #[serde(default)]
    pub tables: BTreeMap<String, TableConfig>,
}

/// A sink section: `enabled = false` switches it off.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
pub struct Toggle<T> {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(flatten)]
    pub settings: T,
}

fn yes() -> bool {
    true
}

impl SourceConfig {
    /// The source catalog's connection, if one is configured.
    pub fn catalog_connection(&self) -> Option<PgConnectionConfig> {
        if self.schema_url.is_none() && self.schema_url_file.is_none() {
            return None;
        }
        let url = self.schema_url.as_ref().map(|url| url.expose().to_owned()).unwrap_or_default();
        let mut connection = PgConnectionConfig::new(url);
        connection.url_file.clone_from(&self.schema_url_file);
        connection.password_file.clone_from(&self.schema_password_file);
        Some(connection)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kafka: KafkaConfig::new("localhost:29092", "cdc-rust-consumer"),
            batch: BatchPolicy::default(),
            on_error: OnError::default(),
            retry: RetryPolicy::default(),
            delta: Toggle { enabled: true, settings: DeltaConfig::new("./deltalake") },
            target: Toggle {
                enabled: true,
                settings: TargetConfig {
                    connection: PgConnectionConfig::new(
                        "postgres://target_user:target_password@localhost:5435/target_db",
                    ),
                    tables: BTreeMap::new(),
                },
            },
            datalake: Toggle {
                enabled: true,
                settings: PgConnectionConfig::new(
                    "postgres://datalake_user:datalake_password@localhost:5434/datalake_db",
                ),
            },
            source: SourceConfig::default(),
            maintenance: MaintenancePolicy::default(),
        }
    }
}

impl Config {
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                Config::from_toml(&text).with_context(|| format!("invalid configuration in {}", path.display()))?
            }
            None => Config::default(),
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(v) = env("CDC_BROKERS") {
            config.kafka.brokers = v;
        }
        if let Some(v) = env("CDC_GROUP_ID") {
            config.kafka.group_id = v;
        }
        if let Some(v) = env("CDC_METRICS_LISTEN") {
            config.kafka.metrics_listen = Some(v);
        }
        if let Some(v) = env("CDC_DELTA_ROOT") {
            config.delta.settings.root = v;
        }
        if let Some(v) = env("CDC_TARGET_URL") {
            config.target.settings.connection.url = PgUrl::new(v);
        }
        if let Some(v) = env("CDC_DATALAKE_URL") {
            config.datalake.settings.url = PgUrl::new(v);
        }
        if let Some(v) = env("CDC_SOURCE_SCHEMA_URL") {
            config.source.schema_url = Some(PgUrl::new(v));
        }
        // Secrets from files (mounted secrets), never inline.
        for (prefix, connection) in
            [("CDC_TARGET", &mut config.target.settings.connection), ("CDC_DATALAKE", &mut config.datalake.settings)]
        {
            if let Some(v) = env(&format!("{prefix}_URL_FILE")) {
                connection.url_file = Some(v.into());
            }
            if let Some(v) = env(&format!("{prefix}_PASSWORD_FILE")) {
                connection.password_file = Some(v.into());
            }
        }
        if let Some(v) = env("CDC_SOURCE_SCHEMA_URL_FILE") {
            config.source.schema_url_file = Some(v.into());
        }
        if let Some(v) = env("CDC_SOURCE_SCHEMA_PASSWORD_FILE") {
            config.source.schema_password_file = Some(v.into());
        }
        // CDC_KAFKA_SASL_PASSWORD=... sets the librdkafka property
        // sasl.password: any property, from the environment.
        for (name, value) in std::env::vars() {
            if let Some(property) = name.strip_prefix("CDC_KAFKA_").filter(|_| !value.is_empty()) {
                config.kafka.properties.insert(property.to_ascii_lowercase().replace('_', "."), value);
            }
        }
        for (name, toggle) in [
            ("CDC_DELTA", &mut config.delta.enabled),
            ("CDC_TARGET", &mut config.target.enabled),
            ("CDC_DATALAKE", &mut config.datalake.enabled),
        ] {
            if let Some(v) = env(&format!("{name}_ENABLED")) {
                *toggle = match v.as_str() {
                    "1" | "true" | "yes" => true,
                    "0" | "false" | "no" => false,
                    other => bail!("{name}_ENABLED must be true or false, not {other:?}"),
                };
            }
        }
        Ok(config)
    }

    /// A configuration file's text, laid over the defaults.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let file: toml::Table = toml::from_str(text)?;
        let mut merged = toml::Table::try_from(Config::default())?;
        lay_over(&mut merged, file);
        Ok(Config::deserialize(merged)?)
    }

    /// The pipeline into the enabled sinks, with this configuration's
    /// decoding, batching, retry and error settings.
    pub fn pipeline(&self, dead_letters: Box<dyn DeadLetterStore>) -> Pipeline {
        let decoder = Decoder::new().keep_raw_json(true).type_by_json_shape(self.source.json_shape);
        let mut pipeline = Pipeline::new(decoder, self.sinks(), dead_letters)
            .with_policy(self.batch.clone())
            .with_retry(self.retry.clone())
            .with_on_error(self.on_error)
            .with_rename_detection(self.source.rename_detection);
        if let Some(connection) = self.source.catalog_connection() {
            pipeline = pipeline.with_catalog(Box::new(PgSourceCatalog::new(connection, self.source.modes.clone())));
        }
        pipeline
    }

    pub fn sinks(&self) -> Vec<Box<dyn Sink>> {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if self.delta.enabled {
            sinks
                .push(Box::new(DeltaSink::new(self.delta.settings.clone()).with_maintenance(self.maintenance.clone())));
        }
        if self.target.enabled {
            sinks.push(Box::new(
                PgTargetSink::new(self.target.settings.connection.clone())
                    .with_handling_modes(self.source.modes.clone())
                    .with_tables(self.target.settings.tables.clone()),
            ));
        }
        if self.datalake.enabled {
            sinks.push(Box::new(PgDatalakeSink::new(self.datalake.settings.clone())));
        }
        sinks
    }
}

/// Lays `file` over `defaults`: a table merges key by key, any other value
/// (arrays included) replaces the default.
fn lay_over(defaults: &mut toml::Table, file: toml::Table) {
    for (key, value) in file {
        match (defaults.get_mut(&key), value) {
            (Some(toml::Value::Table(default)), toml::Value::Table(table)) => lay_over(default, table),
            (_, value) => {
                defaults.insert(key, value);
            }
        }
    }
}

/// The Delta settings of the configuration at `path` (or of the defaults
/// and `CDC_*` variables), with `root` instead of its root if given: the
/// tables the consumer writes, for the tools that read or maintain them.
#[allow(dead_code)] // query and maintain; the consumer and replay load the whole configuration
pub fn delta_config(path: Option<&std::path::Path>, root: Option<&str>) -> anyhow::Result<DeltaConfig> {
    let mut delta = Config::load(path)?.delta.settings;
    if let Some(root) = root {
        delta.root = root.to_owned();
    }
    Ok(delta)
}
