//! The dead-letter topics: every refused record stored once, on
//! `<topic><suffix>`, with its original key and value, the error and its
//! position in headers.
//!
//! A record whose letter is stored but whose offset is not durable in the
//! sinks yet (the consumer was killed, or lost the partition in a
//! rebalance) is refused again by whoever redoes it. So before storing, the
//! store reads what was added to the dead-letter topic since it last looked
//! (the last [`FIRST_LOOK`] letters per partition the first time) and skips
//! a letter the topic already holds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cdc_core::pipeline::{DeadLetter, DeadLetterStore};
use cdc_core::{Error, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::{KafkaConfig, kafka_error};

/// How many letters per dead-letter partition are read the first time a
/// topic is used: a letter stored twice comes from the same batch redone,
/// which is far fewer records than this.
const FIRST_LOOK: i64 = 10_000;
/// How long reading a dead-letter topic's new letters may take before the
/// store counts as unavailable (the pipeline then retries it).
const READ_LIMIT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Which record a letter is about, and which sink refused it (two sinks may
/// each refuse the same record: two letters).
type LetterId = (String, i32, i64, Option<String>);

/// Dead letters as Kafka records on `<topic><suffix>`, each stored once.
pub struct KafkaDeadLetters {
    producer: FutureProducer,
    suffix: String,
    reader: Arc<BaseConsumer>,
    /// Per dead-letter topic: what it holds, as far as read.
    topics: HashMap<String, TopicLetters>,
}

#[derive(Debug, Default)]
struct TopicLetters {
    /// Per partition, the next offset to read.
    next: HashMap<i32, i64>,
    stored: HashSet<LetterId>,
}

impl KafkaDeadLetters {
    pub fn new(config: &KafkaConfig, suffix: impl Into<String>) -> Result<KafkaDeadLetters> {
        let producer: FutureProducer = config
            .client()?
            .set("message.timeout.ms", "30000")
            // Internal retries of a send must not store a letter twice either.
            .set("enable.idempotence", "true")
            .create()
            .map_err(kafka_error)?;
        let reader: BaseConsumer = config
            .client()?
            .set("group.id", format!("{}.dead-letter-reader", config.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(kafka_error)?;
        Ok(KafkaDeadLetters { producer, suffix: suffix.into(), reader: Arc::new(reader), topics: HashMap::new() })
    }

    /// Reads the letters added to `topic` since the last look.
    async fn read_new(&mut self, topic: &str) -> Result<&TopicLetters> {
        let state = self.topics.remove(topic).unwrap_or_default();
        let (reader, name) = (self.reader.clone(), topic.to_owned());
        let read = tokio::task::spawn_blocking(move || {
            let mut state = state;
            let result = read_new(&reader, &name, &mut state);
            (state, result)
        })
        .await;
        let (state, result) = read.map_err(|e| Error::Unavailable { sink: "kafka".into(), message: e.to_string() })?;
        let state = self.topics.entry(topic.to_owned()).or_insert(state);
        result.map(|()| &*state)
    }
}

#[async_trait]
impl DeadLetterStore for KafkaDeadLetters {
    /// Stores the letter with its original key and value, unless the topic
    /// holds it already; a record too big for the dead-letter topic is
    /// stored without them, as a reference to the original
    /// (`cdc.topic`/`cdc.partition`/`cdc.offset`) with `cdc.omitted` giving
    /// their sizes, so a dead letter is always storable.
    async fn store(&mut self, letter: DeadLetter) -> Result<()> {
        let topic = format!("{}{}", letter.position.topic, self.suffix);
        let id: LetterId =
            (letter.position.topic.to_string(), letter.position.partition, letter.position.offset, letter.sink.clone());
        if self.read_new(&topic).await?.stored.contains(&id) {
            tracing::info!(position = %letter.position, topic, "already dead-lettered (a batch redone): not stored again");
            return Ok(());
        }
        match send(&self.producer, &topic, &letter, true).await {
            Err(error) if is_too_large(&error) => {
                tracing::warn!(position = %letter.position, "dead letter too large for its topic: storing a reference");
                send(&self.producer, &topic, &letter, false).await.map_err(kafka_error)?;
            }
            result => result.map_err(kafka_error)?,
        }
        self.topics.entry(topic).or_default().stored.insert(id);
        Ok(())
    }
}

fn is_too_large(error: &rdkafka::error::KafkaError) -> bool {
    error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge)
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    letter: &DeadLetter,
    with_bytes: bool,
) -> std::result::Result<(), rdkafka::error::KafkaError> {
    let partition = letter.position.partition.to_string();
    let offset = letter.position.offset.to_string();
    let size = |bytes: &Option<Vec<u8>>| bytes.as_ref().map_or(0, Vec::len);
    let omitted = format!("key={} value={}", size(&letter.key), size(&letter.value));
    let mut headers = OwnedHeaders::new()
        .insert(Header { key: "cdc.error", value: Some(letter.error.as_str()) })
        .insert(Header { key: "cdc.topic", value: Some(&*letter.position.topic) })
        .insert(Header { key: "cdc.partition", value: Some(partition.as_str()) })
        .insert(Header { key: "cdc.offset", value: Some(offset.as_str()) })
        .insert(Header { key: "cdc.sink", value: letter.sink.as_deref() });
    if !with_bytes {
        headers = headers.insert(Header { key: "cdc.omitted", value: Some(omitted.as_str()) });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
    if with_bytes {
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        if let Some(value) = &letter.value {
            record = record.payload(value.as_slice());
        }
    }
    producer.send(record, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
}

/// Reads every partition of `topic` from where `state` stopped (the last
/// [`FIRST_LOOK`] letters the first time) to its current end. A topic that
/// does not exist yet holds nothing.
fn read_new(reader: &BaseConsumer, topic: &str, state: &mut TopicLetters) -> Result<()> {
    let metadata = reader.fetch_metadata(Some(topic), REQUEST_TIMEOUT).map_err(kafka_error)?;
    let Some(partitions) = metadata.topics().first().filter(|t| t.error().is_none()).map(|t| t.partitions()) else {
        return Ok(());
    };
    let mut list = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for partition in partitions.iter().map(|p| p.id()) {
        let (low, high) = reader.fetch_watermarks(topic, partition, REQUEST_TIMEOUT).map_err(kafka_error)?;
        let start = state.next.get(&partition).copied().unwrap_or(high - FIRST_LOOK).max(low);
        if start < high {
            list.add_partition_offset(topic, partition, Offset::Offset(start)).map_err(kafka_error)?;
            ends.insert(partition, high);
        }
        state.next.insert(partition, start);
    }
    if ends.is_empty() {
        return Ok(());
    }
    reader.assign(&list).map_err(kafka_error)?;
    let started = Instant::now();
    while !ends.is_empty() {
        if started.elapsed() > READ_LIMIT {
            return Err(Error::Unavailable {
                sink: "kafka".into(),
                message: format!("reading dead-letter topic {topic} to its end took over {READ_LIMIT:?}"),
            });
        }
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                if let Some(id) = letter_id(&message) {
                    state.stored.insert(id);
                }
                state.next.insert(message.partition(), message.offset() + 1);
            }
            Some(Err(error)) => return Err(kafka_error(error)),
            None => {}
        }
        // Done with a partition once read to its end (by position: control
        // records and compaction leave offsets without messages).
        let positions = reader.position().map_err(kafka_error)?;
        ends.retain(|partition, end| {
            let at = match positions.find_partition(topic, *partition).map(|p| p.offset()) {
                Some(Offset::Offset(at)) => at,
                _ => 0,
            };
            let read_to = at.max(state.next.get(partition).copied().unwrap_or(0));
            state.next.insert(*partition, read_to);
            read_to < *end
        });
    }
    reader.unassign().map_err(kafka_error)
}

/// The record a letter is about, from its headers.
fn letter_id(message: &impl Message) -> Option<LetterId> {
    let headers = message.headers()?;
    let header = |name: &str| {
        headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let partition = header("cdc.partition")?.parse().ok()?;
    let offset = header("cdc.offset")?.parse().ok()?;
    Some((header("cdc.topic")?, partition, offset, header("cdc.sink")))
}
