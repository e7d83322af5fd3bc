//! An optional Prometheus endpoint: the progress line's figures as metrics,
//! served in the text exposition format on `GET /metrics` (any path answers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use cdc_core::pipeline::PipelineStats;
use cdc_core::{Error, Result};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Labels = Vec<(String, String)>;

/// The consumer's metrics, updated by [`KafkaSource`](crate::KafkaSource).
pub struct Metrics {
    registry: Registry,
    records: Counter,
    batches: Counter,
    dead_letters: Counter,
    events: Family<Labels, Counter>,
    last_batch_seconds: Gauge<f64, AtomicU64>,
    assigned_partitions: Gauge,
    lag: Family<Labels, Gauge>,
    stage_seconds: Family<Labels, Counter<f64, AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let (records, batches, dead_letters) = (Counter::default(), Counter::default(), Counter::default());
        let events = Family::<Labels, Counter>::default();
        let last_batch_seconds = Gauge::<f64, AtomicU64>::default();
        let assigned_partitions = Gauge::default();
        let lag = Family::<Labels, Gauge>::default();
        let stage_seconds = Family::<Labels, Counter<f64, AtomicU64>>::default();
        let mut registry = Registry::with_prefix("cdc");
        registry.register("records", "Kafka records consumed", records.clone());
        registry.register("batches", "Batches applied to every sink", batches.clone());
        registry.register("dead_letters", "Records dead-lettered", dead_letters.clone());
        registry.register("events", "Change events applied, by table and op", events.clone());
        registry.register(
            "last_batch_seconds",
            "Time from a batch's first record to its last commit",
            last_batch_seconds.clone(),
        );
        registry.register("assigned_partitions", "Partitions assigned to this consumer", assigned_partitions.clone());
        registry.register("consumer_lag", "Records not yet durable in every sink, by partition", lag.clone());
        registry.register(
            "sink_stage_seconds",
            "Time each sink spent by stage (Delta: merge, history, maintenance, ...; PostgreSQL: copy, apply, ...)",
            stage_seconds.clone(),
        );
        Metrics {
            registry,
            records,
            batches,
            dead_letters,
            events,
            last_batch_seconds,
            assigned_partitions,
            lag,
            stage_seconds,
        }
    }
}

impl Metrics {
    /// Brings the metrics up to the pipeline's cumulative counters.
    pub(crate) fn update(
        &self,
        stats: &PipelineStats,
        assigned: usize,
        lag: &std::collections::BTreeMap<(String, i32), i64>,
    ) {
        let advance = |counter: &Counter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        advance(&self.records, stats.records);
        advance(&self.batches, stats.batches);
        advance(&self.dead_letters, stats.dead_letters);
        for ((table, op), n) in &stats.events {
            let labels = vec![("table".to_owned(), table.clone()), ("op".to_owned(), (*op).to_owned())];
            advance(&self.events.get_or_create(&labels), *n);
        }
        for (sink, stages) in &stats.sink_stages {
            for (stage, took) in stages.total() {
                let labels = vec![("sink".to_owned(), sink.clone()), ("stage".to_owned(), (*stage).to_owned())];
                let counter = self.stage_seconds.get_or_create(&labels);
                counter.inc_by((took.as_secs_f64() - counter.get()).max(0.0));
            }
        }
        self.last_batch_seconds.set(stats.last_batch.as_secs_f64());
        self.assigned_partitions.set(assigned as i64);
        self.lag.clear();
        for ((topic, partition), records) in lag {
            let labels = vec![("topic".to_owned(), topic.clone()), ("partition".to_owned(), partition.to_string())];
            self.lag.get_or_create(&labels).set(*records);
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(error) = encode(&mut text, &self.registry) {
            tracing::warn!(%error, "encoding the metrics failed");
        }
        text
    }

    /// Serves the metrics on `listen` (`127.0.0.1:9464`; port 0 picks one)
    /// until the process ends; returns the bound address.
    pub async fn serve(self: Arc<Self>, listen: &str) -> Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| Error::Sink {
            sink: "metrics".into(),
            message: format!("cannot listen on {listen}: {e}"),
            retriable: false,
        })?;
        let address = listener.local_addr().map_err(|e| Error::Sink {
            sink: "metrics".into(),
            message: e.to_string(),
            retriable: false,
        })?;
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let metrics = self.clone();
                tokio::spawn(async move {
                    // One request per connection; its path does not matter.
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    let body = metrics.render();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        tracing::info!(%address, "serving Prometheus metrics");
        Ok(address)
    }
}
