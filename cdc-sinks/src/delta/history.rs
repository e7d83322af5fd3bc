//! The append-only `cdc_events` table: every change event with its raw JSON,
//! partitioned by source table and event date, so any row's history can be
//! queried.

use std::collections::BTreeSet;
use std::sync::Arc;

use cdc_core::{Batch, ChangeEvent, Error, RawJson, Result};
use deltalake::arrow::array::{
    ArrayRef, Date32Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::operations::write::SchemaMode;
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::SaveMode;

use super::{
    DeltaConfig, LAST_EVENTS_METADATA, NAME, TABLES_METADATA, TableState, delta_error, offsets_commit, offsets_json,
    open_state,
};

/// The history table's name under the root.
pub const TABLE: &str = "cdc_events";

/// The history table, opened on first use.
pub(super) async fn state<'a>(config: &DeltaConfig, slot: &'a mut Option<TableState>) -> Result<&'a mut TableState> {
    match slot {
        Some(state) => Ok(state),
        None => Ok(slot.insert(open_state(config, TABLE).await?)),
    }
}

/// Appends the batch's events the history table does not hold yet, with the
/// batch's offsets (all partitions, heartbeats included) in the same commit.
pub(super) async fn append(config: &DeltaConfig, slot: &mut Option<TableState>, batch: &Batch) -> Result<()> {
    let state = state(config, slot).await?;
    let events: Vec<&ChangeEvent> = batch.to_apply(&state.held).collect();
    if events.is_empty() {
        return Ok(());
    }
    let rows = to_batch(&events)?;
    let tables: BTreeSet<String> =
        events.iter().map(|e| config.table_name(&e.source.schema, &e.source.table)).collect();
    let mut last_events = state.last_events.clone();
    for event in &events {
        last_events.advance(&event.position);
    }
    let extra = vec![(TABLES_METADATA, serde_json::json!(tables)), (LAST_EVENTS_METADATA, offsets_json(&last_events))];
    let (properties, cumulative) = offsets_commit(config, &state.held, &batch.offsets, extra);
    let creating = state.table.version().is_none();
    let mut builder = state
        .table
        .clone()
        .write(vec![rows])
        .with_save_mode(SaveMode::Append)
        .with_schema_mode(SchemaMode::Merge)
        .with_writer_properties(writer_properties())
        .with_commit_properties(properties);
    if creating {
        builder = builder
            .with_partition_columns(["source_table", "event_date"])
            .with_configuration(config.new_table_properties());
    }
    let read = state.table.version();
    match builder.await {
        Ok(table) if super::cache_still_valid(read, table.version()) => {
            state.table = table;
            state.held = cumulative;
            state.last_events = last_events;
            Ok(())
        }
        // Another writer committed in between: read the offsets again.
        Ok(_) => {
            *slot = None;
            Ok(())
        }
        Err(e) => {
            *slot = None; // re-read before the retry
            Err(delta_error(&e))
        }
    }
}

/// The row images and `source` are most of the history's bytes and nothing
/// filters on them: no dictionary, no statistics. Keys and order keys rarely
/// repeat either, but owed-TOAST lookups filter on them: statistics kept.
fn writer_properties() -> WriterProperties {
    let json = ["before", "after", "source"];
    super::writer_properties(&[&json[..], &["record_key", "order_key"]].concat(), &json)
}

fn to_batch(events: &[&ChangeEvent]) -> Result<RecordBatch> {
    let raw = |e: &ChangeEvent| {
        e.raw.clone().ok_or_else(|| Error::Sink {
            sink: NAME.into(),
            message: format!(
                "record {} has no raw JSON: decode with Decoder::keep_raw_json(true) for the cdc_events table",
                e.position
            ),
            retriable: false,
        })
    };
    let raws = events.iter().map(|e| raw(e)).collect::<Result<Vec<_>>>()?;
    let now = chrono::Utc::now().timestamp_micros();
    let event_ts: Vec<Option<i64>> = events.iter().map(|e| e.source.ts_micros()).collect();
    let event_date: Vec<Option<i32>> =
        event_ts.iter().map(|ts| Some(ts.unwrap_or(now).div_euclid(86_400_000_000) as i32)).collect();
    let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
        Field::new("source_schema", DataType::Utf8, false),
        Field::new("source_table", DataType::Utf8, false),
        Field::new("op", DataType::Utf8, false),
        Field::new("record_key", DataType::Utf8, true),
        Field::new("before", DataType::Utf8, true),
        Field::new("after", DataType::Utf8, true),
        Field::new("source", DataType::Utf8, false),
        Field::new("tx_id", DataType::Int64, true),
        Field::new("lsn", DataType::Int64, true),
        Field::new("order_key", DataType::Utf8, false),
        Field::new("event_ts", utc(), true),
        Field::new("ingested_at", utc(), false),
        Field::new("event_date", DataType::Date32, false),
    ]);
    // Straight from the events' text: the raw JSON columns are most of the bytes.
    let events_text = |f: &dyn Fn(&ChangeEvent) -> &str| -> ArrayRef {
        Arc::new(events.iter().map(|e| Some(f(e))).collect::<StringArray>())
    };
    let raw_text = |f: &dyn Fn(&RawJson) -> Option<&str>| -> ArrayRef {
        Arc::new(raws.iter().map(|r| f(r)).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        events_text(&|e| &e.position.topic),
        Arc::new(events.iter().map(|e| e.position.partition).collect::<Int32Array>()),
        Arc::new(events.iter().map(|e| e.position.offset).collect::<Int64Array>()),
        events_text(&|e| &e.source.schema),
        events_text(&|e| &e.source.table),
        events_text(&|e| e.op.code()),
        raw_text(&|r| r.key.as_deref()),
        raw_text(&|r| r.before.as_deref()),
        raw_text(&|r| r.after.as_deref()),
        raw_text(&|r| Some(&r.source)),
        Arc::new(events.iter().map(|e| e.source.tx_id).collect::<Int64Array>()),
        Arc::new(events.iter().map(|e| e.source.lsn).collect::<Int64Array>()),
        Arc::new(events.iter().map(|e| Some(e.order.to_hex())).collect::<StringArray>()),
        Arc::new(TimestampMicrosecondArray::from(event_ts).with_timezone("UTC")),
        Arc::new(TimestampMicrosecondArray::from(vec![now; events.len()]).with_timezone("UTC")),
        Arc::new(Date32Array::from(event_date)),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).map_err(|e| Error::Sink {
        sink: NAME.into(),
        message: e.to_string(),
        retriable: false,
    })
}
