//! The pipeline: batching, fan-out, poison isolation, retries, resume.
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cdc_core::memory::MemorySink;
use cdc_core::pipeline::{DeadLetter, DeadLetterStore, MemoryDeadLetters, OnError, Pipeline, RetryPolicy};
use cdc_core::{Batch, Decoder, Error, Offsets, Position, RawRecord, Result, Sink};

use crate::common::*;
use cdc_core::testing::FixtureRecord;

/// A memory sink that refuses one position and fails retriably a few times.
#[derive(Clone, Default)]
struct Flaky {
    inner: Arc<Mutex<MemorySink>>,
    refuse: Option<Position>,
    /// Fails retriably, with the same message every time, on batches holding
    /// this position (a value the client cannot serialise).
    stuck_on: Option<Position>,
    transient_failures: Arc<Mutex<u32>>,
    /// Outage errors still to return, from `apply` and `durable_offsets`.
    outage: Arc<Mutex<u32>>,
}

impl Flaky {
    fn outage_error(&self) -> Option<Error> {
        let mut outage = self.outage.lock().unwrap();
        (*outage > 0).then(|| {
            *outage -= 1;
            Error::Unavailable { sink: "flaky".into(), message: "connection refused".into() }
        })
    }
}

#[async_trait]
impl Sink for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    async fn durable_offsets(&mut self) -> Result<Offsets> {
        if let Some(error) = self.outage_error() {
            return Err(error);
        }
        Ok(self.inner.lock().unwrap().offsets.clone())
    }
    async fn apply(&mut self, batch: &Batch) -> Result<()> {
        if let Some(error) = self.outage_error() {
            return Err(error);
        }
        if let Some(stuck) = &self.stuck_on
            && batch.events.iter().any(|e| &e.position == stuck)
        {
            return Err(Error::Sink {
                sink: "flaky".into(),
                message: "error serializing parameter 3".into(),
                retriable: true,
            });
        }
        {
            let mut failures = self.transient_failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err(Error::Sink { sink: "flaky".into(), message: "connection lost".into(), retriable: true });
            }
        }
        if let Some(refused) = &self.refuse
            && batch.events.iter().any(|e| &e.position == refused)
        {
            return Err(Error::Sink { sink: "flaky".into(), message: "value does not fit".into(), retriable: false });
        }
        let mut inner = self.inner.lock().unwrap();
        futures_lite_block(inner.apply(batch))
    }
}

fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    // MemorySink::apply never awaits anything: poll it once.
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("MemorySink does not wait"),
    }
}

#[derive(Clone, Default)]
struct SharedLetters(Arc<Mutex<Vec<DeadLetter>>>, Arc<Mutex<bool>>);

#[async_trait]
impl DeadLetterStore for SharedLetters {
    async fn store(&mut self, letter: DeadLetter) -> Result<()> {
        if *self.1.lock().unwrap() {
            return Err(Error::Unavailable { sink: "dead letters".into(), message: "broker down".into() });
        }
        self.0.lock().unwrap().push(letter);
        Ok(())
    }
}

/// The state a sink reaches from `records` without the events at `skip`.
fn expected_without(records: &[FixtureRecord], skip: &[Position]) -> MemorySink {
    let mut decoder = Decoder::new();
    let decoded: Vec<cdc_core::Record> = records.iter().map(|r| decoder.decode(r.raw()).unwrap()).collect();
    let batch = cdc_core::Batch::from_records(decoded.into_iter().filter(|r| !skip.contains(r.position())));
    let mut sink = MemorySink::default();
    futures_lite_block(sink.apply(&batch)).unwrap();
    sink
}

/// The sink's rows, for comparisons; a mismatch prints the rows that differ.
fn rows(sink: &MemorySink) -> Vec<String> {
    sink.tables
        .iter()
        .flat_map(|(t, table)| table.rows.iter().map(move |(k, (order, row))| format!("{t} {k} {order} {row:?}")))
        .collect()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy { initial_backoff_ms: 1, max_backoff_ms: 5, max_attempts: Some(10), ..RetryPolicy::default() }
}

#[tokio::test]
async fn poison_event_is_isolated_and_the_rest_applies() {
    let records = load("schemas");
    let poison = records.iter().find(|r| r.topic == "cdc.public.orders" && r.offset == 5).unwrap();
    let refused = Position::new(poison.topic.as_str(), 0, poison.offset);
    let sink = Flaky { refuse: Some(refused.clone()), transient_failures: Arc::new(Mutex::new(3)), ..Flaky::default() };
    let letters = SharedLetters::default();
    let mut pipeline =
        Pipeline::new(Decoder::new(), vec![Box::new(sink.clone())], Box::new(letters.clone())).with_retry(fast_retry());
    for record in &records {
        pipeline.push(record.raw()).await.unwrap();
    }
    let offsets = pipeline.flush().await.unwrap();
    let letters = letters.0.lock().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].position, refused);
    assert_eq!(letters[0].sink.as_deref(), Some("flaky"));
    assert!(letters[0].value.as_ref().is_some_and(|v| v.starts_with(b"{\"schema\"")), "the original bytes are kept");
    // Everything else applied, and the sink's offsets moved past the poison.
    let inner = sink.inner.lock().unwrap();
    assert_eq!(inner.offsets, offsets);
    assert_eq!(rows(&inner), rows(&expected_without(&records, &[refused])), "every other event applied");
}

#[tokio::test]
async fn an_error_repeating_on_one_event_is_bad_data_not_an_endless_retry() {
    let records = load("schemas");
    let poison = records.iter().find(|r| r.topic == "cdc.public.orders" && r.offset == 5).unwrap();
    let stuck = Position::new(poison.topic.as_str(), 0, poison.offset);
    let sink = Flaky { stuck_on: Some(stuck.clone()), ..Flaky::default() };
    let letters = SharedLetters::default();
    // Unbounded attempts, as by default: only the repetition bound ends it.
    let retry = RetryPolicy { initial_backoff_ms: 1, max_backoff_ms: 1, max_attempts: None, max_identical_errors: 4 };
    let mut pipeline =
        Pipeline::new(Decoder::new(), vec![Box::new(sink.clone())], Box::new(letters.clone())).with_retry(retry);
    for record in &records {
        pipeline.push(record.raw()).await.unwrap();
    }
    let flushed = tokio::time::timeout(std::time::Duration::from_secs(30), pipeline.flush()).await;
    flushed.expect("no endless retry").unwrap();
    let letters = letters.0.lock().unwrap();
    assert_eq!(letters.iter().map(|l| l.position.clone()).collect::<Vec<_>>(), vec![stuck.clone()]);
    assert!(letters[0].error.contains("error serializing parameter 3"), "{}", letters[0].error);
    let inner = sink.inner.lock().unwrap();
    assert_eq!(rows(&inner), rows(&expected_without(&records, &[stuck])));
}

#[tokio::test]
async fn an_outage_never_dead_letters_a_good_event() {
    let records = load("schemas");
    let poison = records.iter().find(|r| r.topic == "cdc.public.orders" && r.offset == 5).unwrap();
    let refused = Position::new(poison.topic.as_str(), 0, poison.offset);
    // The outage starts while the poison is being isolated, and lasts
    // longer than max_attempts.
    let sink = Flaky { refuse: Some(refused), ..Flaky::default() };
    let letters = SharedLetters::default();
    let retry =
        RetryPolicy { initial_backoff_ms: 1, max_backoff_ms: 1, max_attempts: Some(3), max_identical_errors: 2 };
    let mut pipeline =
        Pipeline::new(Decoder::new(), vec![Box::new(sink.clone())], Box::new(letters.clone())).with_retry(retry);
    for record in &records {
        pipeline.push(record.raw()).await.unwrap();
    }
    *sink.outage.lock().unwrap() = 1_000;
    let error = pipeline.flush().await.unwrap_err();
    assert!(error.is_outage(), "{error}");
    assert!(letters.0.lock().unwrap().is_empty(), "nothing dead-lettered during an outage");
    assert!(sink.inner.lock().unwrap().offsets.is_empty(), "no offset moved");
}

#[tokio::test]
async fn no_offset_moves_past_an_event_before_its_dead_letter_is_stored() {
    let records = load("schemas");
    let poison = records.iter().find(|r| r.topic == "cdc.public.orders" && r.offset == 5).unwrap();
    let refused = Position::new(poison.topic.as_str(), 0, poison.offset);
    for on_error in [OnError::DeadLetter, OnError::FailFast] {
        let sink = Flaky { refuse: Some(refused.clone()), ..Flaky::default() };
        let letters = SharedLetters::default();
        *letters.1.lock().unwrap() = true; // the dead-letter store is down
        let mut pipeline = Pipeline::new(Decoder::new(), vec![Box::new(sink.clone())], Box::new(letters.clone()))
            .with_retry(fast_retry())
            .with_on_error(on_error);
        for record in &records {
            pipeline.push(record.raw()).await.unwrap();
        }
        assert!(pipeline.flush().await.is_err(), "{on_error:?}");
        let held = sink.inner.lock().unwrap().offsets.get(&refused.topic, refused.partition);
        assert!(held.is_none_or(|o| o < refused.offset), "{on_error:?}: offset {held:?} passed the refused event");
    }
}

#[tokio::test]
async fn start_up_waits_out_a_sink_outage() {
    let sink = Flaky::default();
    sink.inner.lock().unwrap().offsets.set("cdc.public.a".into(), 0, 50);
    *sink.outage.lock().unwrap() = 30; // longer than any sink-internal retry
    let retry = RetryPolicy { initial_backoff_ms: 1, max_backoff_ms: 1, ..RetryPolicy::default() };
    let mut pipeline =
        Pipeline::new(Decoder::new(), vec![Box::new(sink)], Box::new(MemoryDeadLetters::default())).with_retry(retry);
    let resume = pipeline.resume_offsets().await.unwrap();
    assert_eq!(resume.get("cdc.public.a", 0), Some(50));
}

#[tokio::test]
async fn undecodable_records_are_dead_lettered_with_their_position() {
    let letters = SharedLetters::default();
    let sink = Flaky::default();
    let mut pipeline = Pipeline::new(Decoder::new(), vec![Box::new(sink.clone())], Box::new(letters.clone()));
    let bad = RawRecord { topic: "cdc.public.t", partition: 2, offset: 9, key: None, value: Some(b"{not json") };
    pipeline.push(bad).await.unwrap();
    let offsets = pipeline.flush().await.unwrap();
    assert_eq!(offsets.get("cdc.public.t", 2), Some(9), "its offset is covered");
    let letter = letters.0.lock().unwrap()[0].clone();
    assert_eq!(letter.position, Position::new("cdc.public.t", 2, 9));
    assert!(letter.error.contains("cdc.public.t[2]@9") && letter.sink.is_none(), "{}", letter.error);

    let mut strict =
        Pipeline::new(Decoder::new(), vec![Box::new(Flaky::default())], Box::new(MemoryDeadLetters::default()))
            .with_on_error(OnError::FailFast);
    // Decoded with the records pushed around it, at the latest when the batch is.
    strict.push(bad).await.unwrap();
    let error = strict.flush().await.unwrap_err().to_string();
    assert!(error.contains("cdc.public.t[2]@9"), "{error}");
}

#[tokio::test]
async fn resume_from_the_lowest_offset_any_sink_holds() {
    let ahead = Flaky::default();
    let behind = Flaky::default();
    ahead.inner.lock().unwrap().offsets.set("cdc.public.a".into(), 0, 50);
    ahead.inner.lock().unwrap().offsets.set("cdc.public.b".into(), 0, 7);
    behind.inner.lock().unwrap().offsets.set("cdc.public.a".into(), 0, 20);
    let mut pipeline =
        Pipeline::new(Decoder::new(), vec![Box::new(ahead), Box::new(behind)], Box::new(MemoryDeadLetters::default()));
    let resume = pipeline.resume_offsets().await.unwrap();
    assert_eq!(resume.get("cdc.public.a", 0), Some(20));
    assert_eq!(resume.get("cdc.public.b", 0), None, "one sink holds nothing of it");
}

/// Fixed dead letters replayed in reapply mode are applied although their
/// positions are held; without it they are skipped. The order key still
/// decides, so a fixed letter older than what a row holds changes nothing.
#[tokio::test]
async fn fixed_dead_letters_apply_in_reapply_mode_only() {
    let records = load("schemas");
    let poison = records.iter().find(|r| r.topic == "cdc.public.orders" && r.offset == 5).unwrap();
    let refused = Position::new(poison.topic.as_str(), 0, poison.offset);
    let sink = Flaky { refuse: Some(refused.clone()), ..Flaky::default() };
    let letters = SharedLetters::default();
    let mut pipeline =
        Pipeline::new(Decoder::new(), vec![Box::new(sink.clone())], Box::new(letters.clone())).with_retry(fast_retry());
    for record in &records {
        pipeline.push(record.raw()).await.unwrap();
    }
    pipeline.flush().await.unwrap();
    let letter = letters.0.lock().unwrap()[0].clone();
    let without = rows(&expected_without(&records, std::slice::from_ref(&refused)));
    let with = rows(&expected_without(&records, &[]));
    assert_ne!(without, with, "the refused event matters");
    assert_eq!(rows(&sink.inner.lock().unwrap()), without);

    let fixed = Flaky { inner: sink.inner.clone(), ..Flaky::default() }; // the cause is fixed
    let replay = |reapply: bool| {
        let fixed = fixed.clone();
        let letter = letter.clone();
        async move {
            let mut pipeline =
                Pipeline::new(Decoder::new(), vec![Box::new(fixed)], Box::new(MemoryDeadLetters::default()))
                    .with_reapply(reapply);
            let raw = RawRecord {
                topic: &letter.position.topic,
                partition: letter.position.partition,
                offset: letter.position.offset,
                key: letter.key.as_deref(),
                value: letter.value.as_deref(),
            };
            pipeline.push(raw).await.unwrap();
            pipeline.flush().await.unwrap();
        }
    };
    replay(false).await;
    assert_eq!(rows(&sink.inner.lock().unwrap()), without, "held positions are skipped by default");
    replay(true).await;
    assert_eq!(rows(&sink.inner.lock().unwrap()), with, "applied in reapply mode, by order key");
}

/// A memory sink that applies a batch only once the test opens its gate,
/// and records the batches it applied (their change events' positions).
#[derive(Clone)]
struct Gated {
    inner: Arc<Mutex<MemorySink>>,
    gate: Arc<tokio::sync::Semaphore>,
    applied: Arc<Mutex<Vec<Vec<Position>>>>,
    panics: bool,
}

impl Gated {
    fn new() -> Gated {
        Gated {
            inner: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            applied: Arc::default(),
            panics: false,
        }
    }
}

#[async_trait]
impl Sink for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    async fn durable_offsets(&mut self) -> Result<Offsets> {
        Ok(self.inner.lock().unwrap().offsets.clone())
    }
    async fn apply(&mut self, batch: &Batch) -> Result<()> {
        self.gate.acquire().await.expect("gate open").forget();
        assert!(!self.panics, "a sink bug");
        self.applied.lock().unwrap().push(batch.events.iter().map(|e| e.position.clone()).collect());
        let mut inner = self.inner.lock().unwrap();
        futures_lite_block(inner.apply(batch))
    }
}

fn change_positions(records: &[FixtureRecord]) -> Vec<Position> {
    let mut decoder = Decoder::new();
    let decoded = records.iter().map(|r| decoder.decode(r.raw()).unwrap());
    decoded.filter(|r| matches!(r, cdc_core::Record::Change(_))).map(|r| r.position().clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sinks_apply_a_batch_while_the_next_is_decoded() {
    let records = load("schemas");
    let (first, second) = records.split_at(records.len() / 2);
    let sink = Gated::new();
    let mut pipeline =
        Pipeline::new(Decoder::new(), vec![Box::new(sink.clone())], Box::new(MemoryDeadLetters::default()));
    let wait = std::time::Duration::from_secs(10);
    for record in first {
        pipeline.push(record.raw()).await.unwrap();
    }
    // Handed to the sink, which holds it at its gate: submit does not wait.
    let submitted = tokio::time::timeout(wait, pipeline.submit()).await.expect("submit waits for the sink");
    assert!(submitted.unwrap().is_empty(), "nothing was applied yet");
    // The next batch decodes meanwhile.
    for record in second {
        tokio::time::timeout(wait, pipeline.push(record.raw())).await.expect("push waits for the sink").unwrap();
    }
    assert!(sink.applied.lock().unwrap().is_empty());
    assert!(pipeline.take_applied().await.unwrap().is_empty(), "no offset before the sink holds the batch");
    assert!(pipeline.sinks().is_empty(), "the sinks' task owns them");

    sink.gate.add_permits(2);
    let offsets = pipeline.flush().await.unwrap();
    // Both batches, in order, each whole; their offsets only now.
    let applied = sink.applied.lock().unwrap().clone();
    assert_eq!(applied, vec![change_positions(first), change_positions(second)]);
    let mut expected = Offsets::new();
    for record in &records {
        expected.advance(&record.raw().position());
    }
    assert_eq!(offsets.iter().collect::<Vec<_>>(), expected.iter().collect::<Vec<_>>());
    assert_eq!(rows(&sink.inner.lock().unwrap()), rows(&expected_without(&records, &[])));
    assert_eq!(pipeline.stats().batches, 2);
    assert!(pipeline.take_applied().await.unwrap().is_empty(), "each offset is handed out once");
}

/// A sink that keeps every batch's events, as text.
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Vec<Vec<String>>>>);

#[async_trait]
impl Sink for Recording {
    fn name(&self) -> &str {
        "recording"
    }
    async fn durable_offsets(&mut self) -> Result<Offsets> {
        Ok(Offsets::new())
    }
    async fn apply(&mut self, batch: &Batch) -> Result<()> {
        let events = batch.events.iter().map(comparable_event);
        self.0.lock().unwrap().push(events.collect());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoding_on_several_threads_gives_the_batches_of_one() {
    for fixture in ["schemas", "schemaless", "fidelity-schemas", "fidelity-modes-string"] {
        // Spread over partitions, as a topic's records arrive.
        let records: Vec<FixtureRecord> =
            load(fixture).into_iter().map(|r| FixtureRecord { partition: (r.offset % 3) as i32, ..r }).collect();
        let mut batches = Vec::new();
        for threads in [1, 4] {
            let sink = Recording::default();
            let letters = SharedLetters::default();
            let policy = cdc_core::pipeline::BatchPolicy { max_records: 200, ..Default::default() };
            let mut pipeline = Pipeline::new(
                Decoder::new().keep_raw_json(true),
                vec![Box::new(sink.clone())],
                Box::new(letters.clone()),
            )
            .with_decode_threads(threads)
            .with_policy(policy);
            for record in &records {
                pipeline.push(record.raw()).await.unwrap();
                if pipeline.due() {
                    pipeline.submit().await.unwrap();
                }
            }
            pipeline.flush().await.unwrap();
            let letters: Vec<String> = letters.0.lock().unwrap().iter().map(|l| format!("{l:?}")).collect();
            batches.push((sink.0.lock().unwrap().clone(), letters));
        }
        assert!(batches[0].0.len() > 1, "{fixture}: several batches");
        assert_eq!(batches[0], batches[1], "{fixture}");
    }
}

/// A sink whose apply holds its thread (as CPU work does) until every sink
/// of the batch has started applying, or a timeout passes.
#[derive(Clone, Default)]
struct Rendezvous {
    started: Arc<std::sync::atomic::AtomicUsize>,
    /// Per apply: whether the other sinks had started while this one held its thread.
    met: Arc<Mutex<Vec<bool>>>,
}

#[async_trait]
impl Sink for Rendezvous {
    fn name(&self) -> &str {
        "rendezvous"
    }
    async fn durable_offsets(&mut self) -> Result<Offsets> {
        Ok(Offsets::new())
    }
    async fn apply(&mut self, _batch: &Batch) -> Result<()> {
        use std::sync::atomic::Ordering;
        self.started.fetch_add(1, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.started.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.met.lock().unwrap().push(self.started.load(Ordering::SeqCst) >= 2);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sink_applies_on_its_own_thread_while_the_others_do() {
    let sink = Rendezvous::default();
    let mut pipeline = Pipeline::new(
        Decoder::new(),
        vec![Box::new(sink.clone()), Box::new(sink.clone())],
        Box::new(MemoryDeadLetters::default()),
    );
    for record in &load("schemas") {
        pipeline.push(record.raw()).await.unwrap();
    }
    let offsets = pipeline.flush().await.unwrap();
    assert!(!offsets.is_empty());
    assert_eq!(*sink.met.lock().unwrap(), vec![true, true], "one sink's CPU work held the other back");
    assert_eq!(pipeline.sinks().len(), 2, "both sinks come back, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_in_the_background_stops_the_next_call_and_moves_no_offset() {
    let records = load("schemas");
    let poison = records.iter().find(|r| r.topic == "cdc.public.orders" && r.offset == 5).unwrap();
    let sink = Flaky { refuse: Some(Position::new(poison.topic.as_str(), 0, poison.offset)), ..Flaky::default() };
    let mut pipeline =
        Pipeline::new(Decoder::new(), vec![Box::new(sink.clone())], Box::new(MemoryDeadLetters::default()))
            .with_on_error(OnError::FailFast)
            .with_retry(fast_retry());
    for record in &records {
        pipeline.push(record.raw()).await.unwrap();
    }
    assert!(pipeline.submit().await.unwrap().is_empty());
    let error = pipeline.flush().await.unwrap_err();
    assert!(error.to_string().contains("value does not fit"), "{error}");
    assert!(pipeline.take_applied().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_panics_stops_the_pipeline_for_good() {
    let records = load("schemas");
    let sink = Gated { panics: true, ..Gated::new() };
    sink.gate.add_permits(10);
    let mut pipeline = Pipeline::new(Decoder::new(), vec![Box::new(sink)], Box::new(MemoryDeadLetters::default()));
    let (first, second) = records.split_at(records.len() / 2);
    for record in first {
        pipeline.push(record.raw()).await.unwrap();
    }
    let error = pipeline.flush().await.unwrap_err();
    assert!(error.to_string().contains("sinks' task failed"), "{error}");
    // Its sinks are gone with the task: nothing may count as applied any more.
    for record in second {
        let _ = pipeline.push(record.raw()).await;
    }
    assert!(pipeline.flush().await.is_err(), "a later batch must not pass as applied by no sink");
    assert!(pipeline.resume_offsets().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_given_up_leaves_the_batch_in_flight() {
    let records = load("schemas");
    let sink = Gated::new();
    let mut pipeline =
        Pipeline::new(Decoder::new(), vec![Box::new(sink.clone())], Box::new(MemoryDeadLetters::default()));
    for record in &records {
        pipeline.push(record.raw()).await.unwrap();
    }
    // A shutdown timeout gives up waiting for the sinks.
    let given_up = tokio::time::timeout(std::time::Duration::from_millis(100), pipeline.flush()).await;
    assert!(given_up.is_err(), "the sink is held at its gate");
    // The batch is still the pipeline's: the next wait gets it, and its offsets.
    sink.gate.add_permits(1);
    let offsets = pipeline.flush().await.unwrap();
    assert!(!offsets.is_empty(), "the batch's offsets come with the next wait");
    assert_eq!(sink.applied.lock().unwrap().len(), 1);
    assert_eq!(pipeline.sinks().len(), 1, "the sinks are back");
}
