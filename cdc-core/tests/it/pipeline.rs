//! The pipeline: batching, fan-out, poison isolation, retries, resume.
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cdc_core::memory::MemorySink;
use cdc_core::pipeline::{DeadLetter, DeadLetterStore, MemoryDeadLetters, OnError, Pipeline, RetryPolicy};
use cdc_core::{Batch, Decoder, Error, Offsets, Position, RawRecord, Result, Sink};

use crate::common::*;

/// A memory sink that refuses one position and fails retriably a few times.
#[derive(Clone, Default)]
struct Flaky {
    inner: Arc<Mutex<MemorySink>>,
    refuse: Option<Position>,
    transient_failures: Arc<Mutex<u32>>,
}

#[async_trait]
impl Sink for Flaky {
    fn name(&self) -> &str {
        "flaky"
    }
    async fn durable_offsets(&mut self) -> Result<Offsets> {
        Ok(self.inner.lock().unwrap().offsets.clone())
    }
    async fn apply(&mut self, batch: &Batch) -> Result<()> {
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
struct SharedLetters(Arc<Mutex<Vec<DeadLetter>>>);

#[async_trait]
impl DeadLetterStore for SharedLetters {
    async fn store(&mut self, letter: DeadLetter) -> Result<()> {
        self.0.lock().unwrap().push(letter);
        Ok(())
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy { initial_backoff_ms: 1, max_backoff_ms: 5, max_attempts: Some(10) }
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
    let applied: usize = inner.tables.values().map(|t| t.rows.len()).sum();
    assert!(applied > 20);
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
    assert!(strict.push(bad).await.is_err());
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
