//! Recorded Kafka records as JSON Lines: what `examples/replay.rs` reads,
//! what the fixtures hold, what `kcat -J` writes.
//!
//! A line is either a Kafka record object (`topic`, optional `partition` and
//! `offset`, `key`, and `value` or `payload`) whose key and value are JSON
//! values or strings holding serialized JSON, or a bare Debezium envelope
//! (with or without the `schema`/`payload` wrapper). Key and value bytes are
//! kept exactly as written, so a replay decodes the same bytes Kafka carried.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::pipeline::{DeadLetter, DeadLetterStore, Pipeline, PipelineStats};
use crate::{Error, Position, RawRecord, Result};

/// One recorded Kafka record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<String>,
}

impl KafkaRecord {
    pub fn raw(&self) -> RawRecord<'_> {
        RawRecord {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref().map(str::as_bytes),
            value: self.value.as_deref().map(str::as_bytes),
        }
    }
}

/// Any line: a record object whose key and value are JSON values or strings
/// holding serialized JSON, or a bare envelope.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    partition: Option<i32>,
    offset: Option<i64>,
    #[serde(borrow)]
    key: Option<&'a RawValue>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Source<'a> {
    name: Option<&'a str>,
    schema: Option<&'a str>,
    table: Option<&'a str>,
}

/// Which string of a record object a [`KnownPrefix`] belongs to.
const KEY: usize = 0;
const VALUE: usize = 1;

/// The `{"schema":S,"payload":` start of a topic's last key or value string,
/// escaped as the line holds it and unescaped. Records of a topic repeat
/// their schema (most of a record's bytes and escapes), so a string that
/// starts with the same escaped bytes has the same unescaped start: copied,
/// and only the payload after it is read (see [`LineParser::string_at`]).
struct KnownPrefix {
    escaped: Box<str>,
    plain: Box<str>,
}

impl KnownPrefix {
    /// The prefix of `plain` (an unescaped key or value) if it is a schema
    /// wrapper whose start `escaped` (the string's text between its quotes)
    /// holds as the same bytes a JSON writer would write.
    fn of(plain: &str, escaped: &str) -> Option<KnownPrefix> {
        const SCHEMA: &str = "{\"schema\":";
        const PAYLOAD: &str = ",\"payload\":";
        let after_key = plain.strip_prefix(SCHEMA)?;
        let mut reader = serde_json::Deserializer::from_str(after_key);
        let schema = <&RawValue>::deserialize(&mut reader).ok()?;
        let end = SCHEMA.len() + schema.get().len();
        if !plain.get(end..)?.starts_with(PAYLOAD) {
            return None;
        }
        let plain = plain.get(..end + PAYLOAD.len())?;
        let quoted = serde_json::to_string(plain).ok()?;
        let escaped_prefix = quoted.get(1..quoted.len() - 1)?;
        // Always true of a JSON writer's `,\"payload\":`; the fast path relies on it.
        let ends_with_quote_colon = escaped_prefix.ends_with("\":");
        (ends_with_quote_colon && escaped.starts_with(escaped_prefix))
            .then(|| KnownPrefix { escaped: escaped_prefix.into(), plain: plain.into() })
    }
}

/// Parses lines in order, remembering each topic's key and value schema
/// prefixes ([`KnownPrefix`]) so that a string repeating them is unescaped
/// only past them. Gives the same records as [`parse_line`].
#[derive(Default)]
pub struct LineParser {
    known: HashMap<String, [Option<KnownPrefix>; 2]>,
}

impl LineParser {
    pub fn new() -> LineParser {
        LineParser::default()
    }

    /// Parses one line. `input` names the file and `number` is the line's
    /// number (from 0): a record object without an offset gets the line
    /// number, a bare envelope gets topic `<name>.<schema>.<table>` from its
    /// `source`, partition 0 and the line number.
    pub fn parse(&mut self, line: &str, input: &str, number: u64) -> Result<KafkaRecord> {
        let error = |message: String| Error::Decode {
            position: Position::new(input, 0, number as i64),
            field: None,
            message: format!("line {}: {message}", number + 1),
        };
        if let Some(record) = self.record_object(line, number) {
            return Ok(record);
        }
        let parsed: Line<'_> = serde_json::from_str(line).map_err(|e| error(format!("not a JSON object: {e}")))?;
        if let Some(topic) = parsed.topic {
            let (value, field) = match parsed.value {
                Some(value) => (Some(value), "value"),
                None => (parsed.payload, "payload"),
            };
            let key = text(parsed.key).map_err(|e| error(format!("field `key`: {e}")))?;
            let value = text(value).map_err(|e| error(format!("field `{field}`: {e}")))?;
            return Ok(KafkaRecord {
                topic: topic.into_owned(),
                partition: parsed.partition.unwrap_or(0),
                offset: parsed.offset.unwrap_or(number as i64),
                key,
                value,
            });
        }
        // A bare envelope: `source` at the top, or inside the schema wrapper's payload.
        let source = match (parsed.source, parsed.payload) {
            (Some(source), _) => source,
            (None, Some(payload)) => serde_json::from_str::<Line<'_>>(payload.get())
                .ok()
                .and_then(|p| p.source)
                .ok_or_else(|| error("`payload` has no `source`".into()))?,
            (None, None) => {
                return Err(error("neither a Kafka record (`topic`) nor a Debezium envelope (`source`)".into()));
            }
        };
        let source: Source<'_> =
            serde_json::from_str(source.get()).map_err(|e| error(format!("field `source`: {e}")))?;
        let topic = format!(
            "{}.{}.{}",
            source.name.unwrap_or("cdc"),
            source.schema.unwrap_or("public"),
            source.table.ok_or_else(|| error("`source` has no `table`".into()))?
        );
        Ok(KafkaRecord { topic, partition: 0, offset: number as i64, key: None, value: Some(line.to_owned()) })
    }

    /// A record object (the usual line) read field by field, each byte once:
    /// a key or value string that repeats its topic's [`KnownPrefix`] is not
    /// even scanned up to the payload. `None` for any other line (a bare
    /// envelope, a duplicate field, bad JSON): the general parse handles it
    /// and words its errors.
    fn record_object(&mut self, line: &str, number: u64) -> Option<KafkaRecord> {
        let mut cursor = Cursor { line, at: 0 };
        cursor.expect(b'{')?;
        let (mut topic, mut partition, mut offset) = (None::<Cow<'_, str>>, None, None);
        let (mut key, mut value, mut payload) = (None, None, None);
        if cursor.peek()? == b'}' {
            cursor.at += 1;
        } else {
            loop {
                let name: Cow<'_, str> = cursor.read()?;
                cursor.expect(b':')?;
                let known = topic.as_deref();
                match name.as_ref() {
                    "topic" if topic.is_none() => topic = Some(cursor.read()?),
                    "partition" if partition.is_none() => partition = Some(cursor.read::<Option<i32>>()?),
                    "offset" if offset.is_none() => offset = Some(cursor.read::<Option<i64>>()?),
                    "key" if key.is_none() => key = Some(self.string_at(&mut cursor, known, KEY)?),
                    "value" if value.is_none() => value = Some(self.string_at(&mut cursor, known, VALUE)?),
                    "payload" if payload.is_none() => payload = Some(self.string_at(&mut cursor, known, VALUE)?),
                    "topic" | "partition" | "offset" | "key" | "value" | "payload" | "source" => return None,
                    _ => _ = cursor.read::<serde::de::IgnoredAny>()?,
                }
                match cursor.next_byte()? {
                    b',' => continue,
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        if cursor.rest().trim_start().is_empty() {
            Some(KafkaRecord {
                topic: topic?.into_owned(),
                partition: partition.flatten().unwrap_or(0),
                offset: offset.flatten().unwrap_or(number as i64),
                key: key.flatten(),
                value: value.flatten().or(payload.flatten()),
            })
        } else {
            None
        }
    }

    /// A key or value at the cursor: a string holding serialized JSON (as
    /// kcat writes it) unescaped, `null` as none, any other JSON value as
    /// written. A string starting with its topic's known prefix is read from
    /// the quote of the prefix's closing `\":` (JSON text of its own, `":…"`),
    /// so only the payload is scanned; the prefix's unescaped bytes are copied.
    fn string_at(&mut self, cursor: &mut Cursor<'_>, topic: Option<&str>, which: usize) -> Option<Option<String>> {
        let start = cursor.skip_whitespace();
        if !cursor.rest().starts_with('"') {
            let raw: &RawValue = cursor.read()?;
            return Some((raw.get() != "null").then(|| raw.get().to_owned()));
        }
        let known = topic.and_then(|t| self.known.get(t)?.get(which)?.as_ref());
        if let Some(known) = known
            && cursor.rest().get(1..).is_some_and(|string| string.starts_with(&*known.escaped))
        {
            cursor.at = start + known.escaped.len() - 1;
            let colon_and_payload: Cow<'_, str> = cursor.read()?;
            let plain_before_colon = known.plain.strip_suffix(':')?;
            let mut text = String::with_capacity(plain_before_colon.len() + colon_and_payload.len());
            text.push_str(plain_before_colon);
            text.push_str(&colon_and_payload);
            return Some(Some(text));
        }
        let text: String = cursor.read()?;
        let escaped = cursor.line.get(start + 1..cursor.at - 1)?;
        if let Some(topic) = topic
            && let Some(prefix) = KnownPrefix::of(&text, escaped)
        {
            let prefixes = match self.known.get_mut(topic) {
                Some(prefixes) => prefixes,
                None => self.known.entry(topic.to_owned()).or_default(),
            };
            if let Some(slot) = prefixes.get_mut(which) {
                *slot = Some(prefix);
            }
        }
        Some(Some(text))
    }
}

/// A key or value's bytes: a string holding serialized JSON (as kcat
/// writes it) unescaped, any other JSON value as written.
fn text(raw: Option<&RawValue>) -> serde_json::Result<Option<String>> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(quoted) if quoted.starts_with('"') => serde_json::from_str(quoted).map(Some),
        Some(json) => Ok(Some(json.to_owned())),
    }
}

/// A position in a line being read one JSON value at a time.
struct Cursor<'a> {
    line: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn rest(&self) -> &'a str {
        self.line.get(self.at..).unwrap_or_default()
    }

    /// Skips whitespace; returns the position after it.
    fn skip_whitespace(&mut self) -> usize {
        self.at = self.line.len() - self.rest().trim_start_matches([' ', '\t', '\n', '\r']).len();
        self.at
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.rest().bytes().next()
    }

    fn next_byte(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next_byte()? == byte).then_some(())
    }

    /// The JSON value at the cursor, which moves past it.
    fn read<T: Deserialize<'a>>(&mut self) -> Option<T> {
        let mut values = serde_json::Deserializer::from_str(self.rest()).into_iter::<T>();
        let value = values.next()?.ok()?;
        self.at += values.byte_offset();
        Some(value)
    }
}
/// Parses one line on its own (see [`LineParser::parse`]).
pub fn parse_line(line: &str, input: &str, number: u64) -> Result<KafkaRecord> {
    LineParser::new().parse(line, input, number)
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Time spent waiting for the reader thread's parsed lines.
    pub waiting_for_input: std::time::Duration,
    /// Lines pushed through the pipeline (dead letters included).
    pub records: u64,
    /// Lines every sink already held (a replay resumed after a stop).
    pub skipped: u64,
}

impl ReplaySummary {
    /// Where a replay's time went: decoding, waiting for the reader thread
    /// and for the sinks, then a line per sink with its stages.
    pub fn describe_time(&self, stats: &PipelineStats) -> String {
        let mut text = format!(
            "decoding {:.1}s, waiting for parsed lines {:.1}s, waiting for the sinks {:.1}s",
            stats.decoding.as_secs_f64(),
            self.waiting_for_input.as_secs_f64(),
            stats.waiting_for_sinks.as_secs_f64()
        );
        for (sink, stages) in &stats.sink_stages {
            text.push_str(&format!("\n  {sink:<10} {}", crate::StageTimes::describe(stages.total())));
        }
        text
    }
}

/// A line read and parsed by [`replay`]'s reader thread.
enum ParsedLine {
    Record(KafkaRecord),
    Unreadable { number: u64, line: String, error: Error },
}

/// Applies the records of a JSON Lines input through `pipeline`: the same
/// decoding, batching, ordering and sinks as the Kafka consumer, so the final
/// state equals consuming the same records from Kafka. Records every sink
/// holds are skipped; a line that cannot be parsed is dead-lettered (or,
/// fail-fast, stops the replay) with its line number.
///
/// A thread reads and parses the lines ahead (a few thousand at most) while
/// this task decodes and the sinks apply the batch before.
pub async fn replay(
    input: impl std::io::BufRead + Send + 'static,
    name: &str,
    pipeline: &mut Pipeline,
) -> Result<ReplaySummary> {
    const LINES_PER_CHUNK: usize = 512;
    const CHUNKS_AHEAD: usize = 8;
    let replay_error = |e: &dyn std::fmt::Display| Error::Sink {
        sink: "replay".into(),
        message: format!("{name}: {e}"),
        retriable: false,
    };
    let resume = pipeline.resume_offsets().await?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<std::io::Result<Vec<ParsedLine>>>(CHUNKS_AHEAD);
    let input_name = name.to_owned();
    let reader = std::thread::Builder::new().name("jsonl-reader".into()).spawn(move || {
        let mut chunk = Vec::with_capacity(LINES_PER_CHUNK);
        let mut parser = LineParser::new();
        // One buffer for every line: a line read into a new string grows it
        // (and copies it) a dozen times.
        let mut buffer = String::new();
        let mut input = input;
        for number in 0u64.. {
            buffer.clear();
            match input.read_line(&mut buffer) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) => {
                    let _ = sender.blocking_send(Err(error));
                    return;
                }
            }
            let line = buffer.strip_suffix('\n').map_or(buffer.as_str(), |l| l.strip_suffix('\r').unwrap_or(l));
            if line.trim().is_empty() {
                continue;
            }
            chunk.push(match parser.parse(line, &input_name, number) {
                Ok(record) => ParsedLine::Record(record),
                Err(error) => ParsedLine::Unreadable { number, line: line.to_owned(), error },
            });
            // A closed channel: the replay stopped.
            if chunk.len() == LINES_PER_CHUNK && sender.blocking_send(Ok(std::mem::take(&mut chunk))).is_err() {
                return;
            }
        }
        let _ = sender.blocking_send(Ok(chunk));
    });
    reader.map_err(|e| replay_error(&e))?;
    let mut summary = ReplaySummary::default();
    loop {
        let waiting = std::time::Instant::now();
        let Some(chunk) = receiver.recv().await else { break };
        summary.waiting_for_input += waiting.elapsed();
        let chunk = chunk.map_err(|e| replay_error(&e))?;
        for parsed in chunk {
            match parsed {
                ParsedLine::Record(record) if !pipeline.reapplies() && resume.holds(&record.raw().position()) => {
                    summary.skipped += 1
                }
                ParsedLine::Record(record) => {
                    summary.records += 1;
                    let (key, value) = (record.key.map(String::into_bytes), record.value.map(String::into_bytes));
                    pipeline.push_owned(&record.topic, (record.partition, record.offset), key, value).await?;
                }
                ParsedLine::Unreadable { number, line, error } => {
                    summary.records += 1;
                    let raw = RawRecord {
                        topic: name,
                        partition: 0,
                        offset: number as i64,
                        key: None,
                        value: Some(line.as_bytes()),
                    };
                    pipeline.reject(raw, error).await?;
                }
            }
            if pipeline.due() {
                // The sinks apply it while the next batch is read.
                pipeline.submit().await?;
            }
        }
    }
    pipeline.flush().await?;
    Ok(summary)
}

/// Dead letters appended to a JSON Lines file (created on the first one), each
/// line a Kafka record object that [`parse_line`] reads back (so a fixed file
/// can be replayed) plus `error` and `sink`.
pub struct JsonlDeadLetters {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl JsonlDeadLetters {
    pub fn new(path: impl Into<std::path::PathBuf>) -> JsonlDeadLetters {
        JsonlDeadLetters { path: path.into(), file: None }
    }
}

#[async_trait::async_trait]
impl DeadLetterStore for JsonlDeadLetters {
    async fn store(&mut self, letter: DeadLetter) -> Result<()> {
        use std::io::Write;
        let io_error = |e: std::io::Error| Error::Sink {
            sink: "dead-letters".into(),
            message: format!("{}: {e}", self.path.display()),
            retriable: false,
        };
        let file = match self.file.take() {
            Some(file) => file,
            None => std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(io_error)?,
        };
        let text = |bytes: &Option<Vec<u8>>| bytes.as_deref().map(|b| String::from_utf8_lossy(b).into_owned());
        let line = serde_json::json!({
            "topic": &*letter.position.topic,
            "partition": letter.position.partition,
            "offset": letter.position.offset,
            "key": text(&letter.key),
            "value": text(&letter.value),
            "error": letter.error,
            "sink": letter.sink,
        });
        let file = self.file.insert(file);
        writeln!(file, "{line}").and_then(|()| file.sync_data()).map_err(io_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_objects_keep_the_bytes() {
        let line = r#"{"topic":"cdc.public.t","partition":2,"offset":7,"key":{"id":1},"value":{"b":1,"a":2}}"#;
        let record = parse_line(line, "f", 0).unwrap();
        assert_eq!((record.topic.as_str(), record.partition, record.offset), ("cdc.public.t", 2, 7));
        assert_eq!(record.key.as_deref(), Some(r#"{"id":1}"#));
        assert_eq!(record.value.as_deref(), Some(r#"{"b":1,"a":2}"#), "key order and spacing as written");
    }

    #[test]
    fn kcat_strings_and_tombstones() {
        let line = r#"{"topic":"cdc.public.t","partition":0,"offset":3,"tstype":"create","ts":1,"broker":1,"key":"{\"id\":1}","payload":null}"#;
        let record = parse_line(line, "f", 0).unwrap();
        assert_eq!(record.key.as_deref(), Some(r#"{"id":1}"#));
        assert_eq!(record.value, None);
    }

    #[test]
    fn bare_envelopes_take_the_topic_from_source() {
        let line = r#"{"schema":{},"payload":{"op":"c","source":{"name":"cdc","schema":"public","table":"orders"}}}"#;
        let record = parse_line(line, "f", 4).unwrap();
        assert_eq!((record.topic.as_str(), record.offset), ("cdc.public.orders", 4));
        assert_eq!(record.value.as_deref(), Some(line));
        let bare = r#"{"op":"d","source":{"schema":"inv","table":"t"}}"#;
        assert_eq!(parse_line(bare, "f", 0).unwrap().topic, "cdc.inv.t");
    }

    #[test]
    fn bad_lines_name_the_input_and_line() {
        let error = parse_line("{\"op\":\"c\"}", "dump.jsonl", 9).unwrap_err().to_string();
        assert!(error.contains("dump.jsonl[0]@9") && error.contains("line 10"), "{error}");
        assert!(parse_line("not json", "f", 0).is_err());
        assert!(parse_line(r#"{"topic":"t","key":"{broken"}"#, "f", 0).is_ok(), "a string key is opaque bytes");
    }
}
