//! `consumer --check`: the configuration and everything it points at,
//! checked before a run, each finding with what to fix.

use std::time::Duration;

use cdc_lakehouse::core::pipeline::MemoryDeadLetters;
use cdc_lakehouse::kafka::{self, ClusterView};
use cdc_lakehouse::sinks::delta::time_travel;
use cdc_lakehouse::sinks::{DeltaConfig, PgConnectionConfig};

use crate::config::Config;

/// One finding: what was checked, whether it passed, and what was seen (or
/// what to fix).
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub subject: String,
    pub ok: bool,
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:<4}  {}: {}", if self.ok { "ok" } else { "FAIL" }, self.subject, self.detail)
    }
}

fn finding(subject: impl Into<String>, ok: bool, detail: impl Into<String>) -> Finding {
    Finding { subject: subject.into(), ok, detail: detail.into() }
}

/// Every check, in order: the brokers and the topics they hold, each
/// PostgreSQL with the privileges its sink needs, the Delta root, and the
/// sinks' stored offsets against the cluster. URLs are shown without
/// passwords. Reading the sinks' offsets may create their bookkeeping
/// tables (`cdc_meta.offsets`), as a first run would.
pub async fn run(config: &Config, wait: Duration) -> Vec<Finding> {
    let mut findings = vec![finding("configuration", true, describe(config))];
    let view = match kafka::inspect(&config.kafka, wait).await {
        Ok(view) => {
            findings.push(topics_finding(config, &view));
            Some(view)
        }
        Err(error) => {
            findings.push(finding(
                format!("kafka {}", config.kafka.brokers),
                false,
                format!(
                    "{error}. Fix kafka.brokers (CDC_BROKERS; from the host the compose Kafka is localhost:29092) \
                     or the security settings in [kafka.properties]"
                ),
            ));
            None
        }
    };
    for (name, enabled, connection) in [
        ("target", config.target.enabled, &config.target.settings.connection),
        ("datalake", config.datalake.enabled, &config.datalake.settings),
    ] {
        if enabled {
            findings.push(postgres(name, connection, true).await);
        }
    }
    if let Some(connection) = config.source.catalog_connection() {
        findings.push(postgres("source catalog", &connection, false).await);
    }
    if config.delta.enabled {
        findings.push(delta_root(&config.delta.settings).await);
    }
    if let Some(view) = &view {
        findings.push(stored_offsets(config, view).await);
    }
    findings
}

fn describe(config: &Config) -> String {
    let sinks: Vec<String> = [
        config.delta.enabled.then(|| format!("delta {}", config.delta.settings.root)),
        config.target.enabled.then(|| format!("target {}", config.target.settings.connection.describe())),
        config.datalake.enabled.then(|| format!("datalake {}", config.datalake.settings.describe())),
    ]
    .into_iter()
    .flatten()
    .collect();
    format!(
        "group {} on {}, topics {:?}; sinks: {}",
        config.kafka.group_id,
        config.kafka.brokers,
        config.kafka.topics,
        if sinks.is_empty() { "none (enable at least one)".into() } else { sinks.join(", ") }
    )
}

fn topics_finding(config: &Config, view: &ClusterView) -> Finding {
    let subject = format!("kafka {}", config.kafka.brokers);
    let missing: Vec<&String> = view.selected.iter().filter(|(_, ends)| ends.is_empty()).map(|(t, _)| t).collect();
    if view.selected.is_empty() || !missing.is_empty() {
        let mut existing: Vec<&str> =
            view.existing.iter().map(String::as_str).filter(|t| !t.starts_with("__")).collect();
        existing.truncate(20);
        return finding(
            subject,
            false,
            format!(
                "no topic for {:?}{}; the cluster has {existing:?}. Fix kafka.topics, or register the Debezium \
                 connector (scripts/start.sh) so that it creates them",
                if missing.is_empty() {
                    config.kafka.topics.clone()
                } else {
                    missing.iter().map(|t| t.to_string()).collect()
                },
                if missing.is_empty() { "" } else { " (named but absent)" },
            ),
        );
    }
    let partitions: usize = view.selected.values().map(Vec::len).sum();
    let records: i64 = view.selected.values().flatten().sum();
    finding(
        subject,
        true,
        format!(
            "reachable, cluster {}; {} topics selected ({partitions} partitions, {records} records up to their ends): {}",
            view.cluster.as_deref().unwrap_or("of unknown id"),
            view.selected.len(),
            view.selected.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    )
}

/// Connects; a sink's database must let its user create schemas and tables
/// (unless the sink's `cdc_meta` schema is there already).
async fn postgres(name: &str, connection: &PgConnectionConfig, writes: bool) -> Finding {
    let subject = format!("{name} {}", connection.describe());
    let connected = tokio::time::timeout(Duration::from_secs(10), connection.connect("cdc-check")).await;
    let client = match connected {
        Ok(Ok(client)) => client,
        // The message names the cause: refused, authentication, TLS (which certificate check failed).
        Ok(Err(error)) => {
            return finding(
                subject,
                false,
                format!("cannot connect: {error}. Fix the URL (sslmode, sslrootcert), the server or pg_hba.conf"),
            );
        }
        Err(_) => return finding(subject, false, "no answer in 10 s. Fix the host and port"),
    };
    let sql = "SELECT current_user::text, has_database_privilege(current_user, current_database(), 'CREATE'), \
               EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'cdc_meta'), current_setting('server_version')";
    match client.query_one(sql, &[]).await {
        Ok(row) => {
            let (user, create, prepared, version): (String, bool, bool, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if writes && !create && !prepared {
                finding(
                    subject,
                    false,
                    format!("user {user} may not create schemas here. Fix: GRANT CREATE ON DATABASE ... TO {user}"),
                )
            } else {
                finding(subject, true, format!("connected as {user} (PostgreSQL {version})"))
            }
        }
        Err(error) => finding(subject, false, format!("connected, but the check query failed: {error}")),
    }
}

/// The root must take a write (a local folder or an object store alike):
/// a probe object is written and deleted, and the tables are listed.
async fn delta_root(config: &DeltaConfig) -> Finding {
    let subject = format!("delta root {}", config.root);
    match tokio::time::timeout(Duration::from_secs(30), time_travel::probe_root(config)).await {
        Ok(Ok(tables)) => finding(subject, true, format!("writable, {tables} tables")),
        Ok(Err(error)) => finding(
            subject,
            false,
            format!(
                "not writable: {error}. Fix delta.root (CDC_DELTA_ROOT) or delta.storage_options (credentials, endpoint)"
            ),
        ),
        Err(_) => finding(subject, false, "no answer in 30 s. Fix the endpoint in delta.storage_options"),
    }
}

/// The sinks' stored offsets must belong to this cluster and lie within
/// each partition (else a run would refuse to start, or skip records).
async fn stored_offsets(config: &Config, view: &ClusterView) -> Finding {
    let mut pipeline = config.pipeline(Box::new(MemoryDeadLetters::default()));
    if let Some(cluster) = &view.cluster {
        pipeline.set_cluster(cluster);
    }
    let resume = match tokio::time::timeout(Duration::from_secs(60), pipeline.resume_offsets()).await {
        Ok(Ok(resume)) => resume,
        Ok(Err(error)) => return finding("stored offsets", false, error.to_string()),
        Err(_) => return finding("stored offsets", false, "the sinks did not answer in 60 s"),
    };
    let mut held = 0;
    for (topic, partition, offset) in resume.iter() {
        let end = view.selected.get(topic).and_then(|ends| ends.get(usize::try_from(partition).ok()?));
        if let Some(&end) = end {
            // The consumer's own rule and words (it refuses to start on this).
            if let Some(error) = kafka::beyond_partition_end(topic, partition, offset, end) {
                return finding("stored offsets", false, error.to_string());
            }
            held += 1;
        }
    }
    let partitions: usize = view.selected.values().map(Vec::len).sum();
    finding(
        "stored offsets",
        true,
        format!(
            "consistent with cluster {}: {held} of {partitions} partitions resume after stored offsets, the rest from their start",
            view.cluster.as_deref().unwrap_or("of unknown id")
        ),
    )
}
