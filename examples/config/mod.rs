//! The consumer's configuration (shared by `consumer` and `replay`): a TOML
//! file and/or `CDC_*` environment variables over the seed deployment's
//! defaults. See `examples/consumer.example.toml`.

use anyhow::{Context, bail};
use cdc_lakehouse::core::Sink;
use cdc_lakehouse::core::pipeline::{BatchPolicy, OnError, RetryPolicy};
use cdc_lakehouse::kafka::KafkaConfig;
use cdc_lakehouse::sinks::{DeltaConfig, DeltaSink, PgConnectionConfig, PgDatalakeSink, PgTargetSink, PgUrl};
use serde::Deserialize;

/// The consumer's configuration. Every key is optional; defaults are the
/// seed deployment's.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub batch: BatchPolicy,
    /// `dead-letter` (default) or `fail-fast`.
    pub on_error: OnError,
    /// Backoff for sink outages (retriable errors).
    pub retry: RetryPolicy,
    pub delta: Toggle<DeltaConfig>,
    pub target: Toggle<PgConnectionConfig>,
    pub datalake: Toggle<PgConnectionConfig>,
}

/// A sink section: `enabled = false` switches it off.
#[derive(Debug, Deserialize, PartialEq)]
pub struct Toggle<T> {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(flatten)]
    pub settings: T,
}

fn yes() -> bool {
    true
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
                settings: PgConnectionConfig::new("postgres://target_user:target_password@localhost:5435/target_db"),
            },
            datalake: Toggle {
                enabled: true,
                settings: PgConnectionConfig::new(
                    "postgres://datalake_user:datalake_password@localhost:5434/datalake_db",
                ),
            },
        }
    }
}

impl Config {
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("invalid configuration in {}", path.display()))?
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
            config.target.settings.url = PgUrl::new(v);
        }
        if let Some(v) = env("CDC_DATALAKE_URL") {
            config.datalake.settings.url = PgUrl::new(v);
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

    pub fn sinks(&self) -> Vec<Box<dyn Sink>> {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if self.delta.enabled {
            sinks.push(Box::new(DeltaSink::new(self.delta.settings.clone())));
        }
        if self.target.enabled {
            sinks.push(Box::new(PgTargetSink::new(self.target.settings.clone())));
        }
        if self.datalake.enabled {
            sinks.push(Box::new(PgDatalakeSink::new(self.datalake.settings.clone())));
        }
        sinks
    }
}
