//! Bad input is an error naming the record and field, never a panic.
use cdc_core::{DataType, Decoder, Error, RawRecord, Record};
use proptest::prelude::*;

use crate::common::*;

fn decode(value: &str) -> Result<cdc_core::Record, Error> {
    let record = RawRecord {
        topic: "cdc.public.t",
        partition: 3,
        offset: 42,
        key: Some(br#"{"id":1}"#),
        value: Some(value.as_bytes()),
    };
    Decoder::new().decode(record)
}

fn decode_error(value: &str) -> (String, Option<String>) {
    match decode(value) {
        Err(Error::Decode { position, field, message }) => {
            assert_eq!((&*position.topic, position.partition, position.offset), ("cdc.public.t", 3, 42));
            (message, field)
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
}

const SOURCE: &str = r#"{"version":"3.6.3.Final","connector":"postgresql","name":"cdc","ts_ms":1,"snapshot":"false","db":"d","sequence":"[\"1\",\"2\"]","schema":"public","table":"t","txId":7,"lsn":2}"#;

fn schema_record(field_schema: &str, value: &str) -> String {
    format!(
        r#"{{"schema":{{"type":"struct","fields":[{{"type":"struct","fields":[{{"type":"int64","optional":false,"field":"id"}},{field_schema}],"optional":true,"field":"after"}}],"optional":false}},"payload":{{"before":null,"after":{{"id":1,"v":{value}}},"source":{SOURCE},"op":"c","ts_ms":1}}}}"#
    )
}

#[test]
fn malformed_json_names_the_record() {
    let (message, field) = decode_error(r#"{"payload": "#);
    assert!(message.contains("not JSON"), "{message}");
    assert_eq!(field, None);
    let err = decode(r#"{"payload": "#).unwrap_err();
    assert!(err.to_string().contains("cdc.public.t[3]@42"), "{err}");
}

#[test]
fn unknown_op_and_missing_payload_are_errors() {
    let (message, field) = decode_error(&format!(r#"{{"before":null,"after":null,"source":{SOURCE},"op":"x"}}"#));
    assert!(message.contains("unknown operation `x`"));
    assert_eq!(field.as_deref(), Some("op"));
    let (message, field) = decode_error(r#"{"schema":{"type":"struct","fields":[]}}"#);
    assert!(message.contains("no `payload`"), "{message}");
    assert_eq!(field.as_deref(), Some("payload"));
    let (_, field) = decode_error(&format!(r#"{{"before":null,"after":{{"id":1}},"source":{SOURCE}}}"#));
    assert_eq!(field.as_deref(), Some("op"));
}

#[test]
fn values_that_do_not_fit_their_type_name_the_field() {
    let (message, field) = decode_error(&schema_record(r#"{"type":"int16","optional":true,"field":"v"}"#, "70000"));
    assert!(message.contains("does not fit Int16"), "{message}");
    assert_eq!(field.as_deref(), Some("payload.after.v"));
    let decimal = r#"{"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","parameters":{"scale":"2"},"field":"v"}"#;
    let (message, field) = decode_error(&schema_record(decimal, r#""not base64!""#));
    assert!(message.contains("base64"), "{message}");
    assert_eq!(field.as_deref(), Some("payload.after.v"));
    let zoned = r#"{"type":"string","optional":true,"name":"io.debezium.time.ZonedTimestamp","field":"v"}"#;
    let (message, _) = decode_error(&schema_record(zoned, r#""yesterday""#));
    assert!(message.contains("ZonedTimestamp"), "{message}");
    let (message, _) = decode_error(&schema_record(r#"{"type":"boolean","optional":true,"field":"v"}"#, r#""yes""#));
    assert!(message.contains("invalid type"), "{message}");
}

#[test]
fn a_column_changing_type_in_place_is_an_error() {
    let mut decoder = Decoder::new();
    fn record(value: &str) -> RawRecord<'_> {
        RawRecord { topic: "cdc.public.t", partition: 0, offset: 1, key: None, value: Some(value.as_bytes()) }
    }
    let int = schema_record(r#"{"type":"int32","optional":true,"field":"v"}"#, "5");
    let widened = schema_record(r#"{"type":"int64","optional":true,"field":"v"}"#, "5000000000");
    let changed = schema_record(r#"{"type":"string","optional":true,"field":"v"}"#, r#""five""#);
    decoder.decode(record(&int)).unwrap();
    decoder.decode(record(&widened)).expect("int32 -> int64 widens");
    let err = decoder.decode(record(&changed)).unwrap_err();
    assert!(matches!(err, Error::RecordSchema { .. }), "{err:?}");
    assert!(err.to_string().contains("column `v` of `public.t` changed type in place"), "{err}");
    assert!(!err.is_retriable());
    // It stays an error (the record goes to the dead-letter store each time).
    assert!(decoder.decode(record(&changed)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Any corruption of a real record decodes or fails with the record's position.
    #[test]
    fn corrupted_records_never_panic(index in 0usize..300, cuts in prop::collection::vec((0usize..20_000, any::<u8>()), 1..4)) {
        let fixtures = load("schemas");
        let record = &fixtures[index % fixtures.len()];
        let Some(value) = &record.value else { return Ok(()) };
        let mut bytes = value.clone().into_bytes();
        for (at, byte) in cuts {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        let raw = RawRecord { value: Some(&bytes), ..record.raw() };
        if let Err(err) = Decoder::new().decode(raw) {
            prop_assert_eq!(err.position().map(|p| p.offset), Some(record.offset));
        }
    }

    /// Truncated records too.
    #[test]
    fn truncated_records_never_panic(index in 0usize..300, keep in 0usize..20_000) {
        let fixtures = load("schemaless");
        let record = &fixtures[index % fixtures.len()];
        let Some(value) = &record.value else { return Ok(()) };
        let bytes = &value.as_bytes()[..keep % value.len()];
        let raw = RawRecord { value: Some(bytes), ..record.raw() };
        let err = Decoder::new().decode(raw).unwrap_err();
        prop_assert!(err.position().is_some());
    }
}

#[test]
fn a_required_column_missing_from_the_payload_is_an_error() {
    // `v` is declared required (optional: false) but the payload lacks it.
    let value = format!(
        r#"{{"schema":{{"type":"struct","fields":[{{"type":"struct","fields":[{{"type":"int64","optional":false,"field":"id"}},{{"type":"string","optional":false,"field":"v"}}],"optional":true,"field":"after"}}],"optional":false}},"payload":{{"before":null,"after":{{"id":1}},"source":{SOURCE},"op":"c","ts_ms":1}}}}"#
    );
    let (message, field) = decode_error(&value);
    assert!(message.contains("required"), "{message}");
    assert_eq!(field.as_deref(), Some("payload.after.v"));
    // An optional column may be absent.
    let optional = value.replace(r#""optional":false,"field":"v""#, r#""optional":true,"field":"v""#);
    decode(&optional).unwrap();
}

/// numeric(p,s) widens to numeric(p',s') when neither the digits before nor
/// after the point shrink; anything else is still refused.
#[test]
fn decimal_widening_keeps_every_digit() {
    use cdc_core::DataType::Decimal;
    let decimal = |p: Option<u32>, s: i32| Decimal { precision: p, scale: s };
    assert!(decimal(Some(12), 2).can_widen_to(&decimal(Some(14), 4)));
    assert!(decimal(Some(12), 2).can_widen_to(&decimal(None, 2)));
    assert!(!decimal(Some(12), 2).can_widen_to(&decimal(Some(12), 4)), "integer digits shrink");
    assert!(!decimal(Some(14), 4).can_widen_to(&decimal(Some(14), 2)), "fraction digits shrink");
    assert!(!decimal(None, 2).can_widen_to(&decimal(Some(30), 2)));
}

/// A narrower column type in an event ordered after the first event of the
/// wider type means the source narrowed the column: refused, naming table,
/// column and both types. Ordered before it, it is an older schema version
/// read late from another partition: accepted (its values fit the wider
/// column). Real records of `evolving` (numeric(12,2) widened to (14,4));
/// the narrowing is the old record with an LSN after the widening.
#[test]
fn a_narrowing_at_the_source_is_refused_an_old_version_read_late_is_not() {
    let records = load("fidelity-schemas");
    let total = |record: &cdc_core::testing::FixtureRecord| -> Option<(DataType, u64)> {
        let Ok(Record::Change(event)) = Decoder::new().decode(record.raw()) else { return None };
        let field = event.schema.field("total")?;
        (event.source.table == "evolving").then(|| (field.data_type.clone(), event.order.lsn))
    };
    let wide_type = DataType::Decimal { precision: Some(14), scale: 4 };
    let narrow = records.iter().find(|r| total(r).is_some_and(|(t, _)| t != wide_type)).expect("a numeric(12,2) event");
    let wide = records.iter().find(|r| total(r).is_some_and(|(t, _)| t == wide_type)).expect("a numeric(14,4) event");
    let wide_lsn = total(wide).unwrap().1;

    let mut decoder = Decoder::new();
    decoder.decode(wide.raw()).unwrap();
    decoder.decode(narrow.raw()).expect("an older version read late is accepted");

    let mut value: serde_json::Value = serde_json::from_str(narrow.value.as_deref().unwrap()).unwrap();
    let later = wide_lsn + 1000;
    value["payload"]["source"]["lsn"] = later.into();
    value["payload"]["source"]["sequence"] = format!("[\"{later}\",\"{later}\"]").into();
    let narrowed = cdc_core::testing::FixtureRecord { value: Some(value.to_string()), ..narrow.clone() };
    let error = decoder.decode(narrowed.raw()).expect_err("a narrowing at the source is refused").to_string();
    for part in ["total", "evolving", "narrowed", "precision: Some(14)", "precision: Some(12)", "@"] {
        assert!(error.contains(part), "{part} missing from: {error}");
    }
}
