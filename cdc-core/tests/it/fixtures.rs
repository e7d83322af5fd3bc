//! Every captured record decodes, and decodes to what it should be.
use cdc_core::{DataType, Decoder, Op, RawRecord, Record, TimeUnit, TransactionStatus, Value};

use crate::common::*;

const FIXTURES: [&str; 4] = ["schemas", "schemaless", "modes-string", "modes-double"];

#[test]
fn every_fixture_record_decodes() {
    for name in FIXTURES {
        let records = decode_all(name);
        assert_eq!(records.len(), load(name).len());
        let count = |f: fn(&Record) -> bool| records.iter().filter(|r| f(r)).count();
        assert!(count(|r| matches!(r, Record::Heartbeat { .. })) > 0, "{name}: heartbeats");
        assert!(count(|r| matches!(r, Record::Tombstone { .. })) > 0, "{name}: tombstones");
        assert!(count(|r| matches!(r, Record::Transaction(_))) > 0, "{name}: transaction markers");
        let changes = changes(&records);
        for op in [Op::Read, Op::Create, Op::Update, Op::Delete] {
            assert!(changes.iter().any(|e| e.op == op), "{name}: no {op:?} event");
        }
        for event in &changes {
            assert_eq!(event.source.connector, "postgresql");
            assert_eq!(event.source.db, "source_db");
            assert!(event.source.tx_id.is_some());
            if event.op != Op::Truncate {
                assert_eq!(event.schema.key_names().collect::<Vec<_>>(), ["id"], "{name}: key of {}", event.table());
                assert!(event.key.as_ref().is_some_and(|k| k.len() == 1 && matches!(k[0], Value::Int(_))));
            }
            for image in [&event.before, &event.after].into_iter().flatten() {
                assert_eq!(image.len(), event.schema.fields().len());
            }
        }
    }
}

#[test]
fn seed_tables_cover_every_operation_with_schemas() {
    let records = decode_all("schemas");
    let items = table_events(&records, "order_items");
    assert!(items.iter().any(|e| e.op == Op::Truncate && e.key.is_none() && e.before.is_none() && e.after.is_none()));
    let customers = table_events(&records, "customers");
    assert_eq!(customers.iter().filter(|e| e.op == Op::Read).count(), 5);
    assert_eq!(customers.iter().filter(|e| e.op == Op::Read && e.source.is_snapshot()).count(), 5);
    // Primary-key change: a delete of the old key and a create of the new one.
    let delete = customers.iter().position(|e| e.op == Op::Delete).expect("delete");
    assert_eq!(customers[delete].key, Some(vec![Value::Int(5)]));
    assert_eq!(customers[delete + 1].op, Op::Create);
    assert_eq!(customers[delete + 1].key, Some(vec![Value::Int(100)]));
    assert_eq!(customers[delete].source.tx_id, customers[delete + 1].source.tx_id);
}

#[test]
fn column_types_follow_connect_logical_types() {
    let records = decode_all("schemas");
    let event = table_events(&records, "all_types")[0];
    let ty = |name: &str| event.schema.field(name).unwrap().data_type.clone();
    assert_eq!(ty("c_num"), DataType::Decimal { precision: Some(20), scale: 5 });
    assert_eq!(ty("c_num38"), DataType::Decimal { precision: Some(38), scale: 0 });
    assert_eq!(ty("c_num_any"), DataType::VariableDecimal);
    assert_eq!(ty("c_time"), DataType::Time(TimeUnit::Micros));
    assert_eq!(ty("c_time3"), DataType::Time(TimeUnit::Millis));
    assert_eq!(ty("c_ts"), DataType::Timestamp(TimeUnit::Micros));
    assert_eq!(ty("c_ts3"), DataType::Timestamp(TimeUnit::Millis));
    assert_eq!(ty("c_tstz"), DataType::TimestampTz);
    assert_eq!(ty("c_timetz"), DataType::ZonedTime);
    assert_eq!(ty("c_interval"), DataType::Duration);
    assert_eq!(ty("c_jsonb"), DataType::Json);
    assert_eq!(ty("c_uuid"), DataType::Uuid);
    assert_eq!(ty("c_xml"), DataType::Xml);
    assert_eq!(ty("c_enum"), DataType::Enum { allowed: vec!["sad".into(), "ok".into(), "happy".into()] });
    assert_eq!(ty("c_bit"), DataType::Bits { length: 4, varying: false });
    assert_eq!(ty("c_varbit"), DataType::Bits { length: 16, varying: true });
    assert_eq!(ty("c_int_arr"), DataType::Array(Box::new(DataType::Int32)));
    assert_eq!(ty("c_point"), DataType::Geometry);
    let source = event.schema.field("c_num").unwrap().source.clone().unwrap();
    assert_eq!((source.type_name.as_str(), source.length, source.scale), ("NUMERIC", Some(20), Some(5)));

    let string_modes = decode_all("modes-string");
    let event = table_events(&string_modes, "all_types")[0];
    let ty = |name: &str| event.schema.field(name).unwrap().data_type.clone();
    assert_eq!(ty("c_num"), DataType::String, "decimal.handling.mode=string");
    assert_eq!(ty("c_time"), DataType::Time(TimeUnit::Millis), "time.precision.mode=connect");
    assert_eq!(ty("c_ts"), DataType::Timestamp(TimeUnit::Millis));
    assert_eq!(ty("c_interval"), DataType::Interval, "interval.handling.mode=string");
    assert_eq!(
        column(event, "c_interval"),
        &Value::Interval(cdc_core::Interval { months: 14, days: 3, micros: 14_706_789_000 })
    );

    let double_modes = decode_all("modes-double");
    let event = table_events(&double_modes, "all_types")[0];
    assert_eq!(event.schema.field("c_num").unwrap().data_type, DataType::Float64, "decimal.handling.mode=double");
    assert_eq!(column(event, "c_num"), &Value::Float(12345.67891));
}

#[test]
fn transaction_markers_count_their_events() {
    let records = decode_all("schemas");
    let markers: Vec<_> = records
        .iter()
        .filter_map(|r| match r {
            Record::Transaction(m) => Some(m),
            _ => None,
        })
        .collect();
    let changes = changes(&records);
    let mut checked = 0;
    for end in markers.iter().filter(|m| m.status == TransactionStatus::End) {
        let tx = end.tx_id().expect("txId:lsn");
        let data_events = changes.iter().filter(|e| e.tx_id() == Some(tx)).count() as i64;
        let captured: i64 =
            end.data_collections.iter().filter(|(c, _)| c != "public.capture_marker").map(|(_, n)| n).sum();
        assert_eq!(data_events, captured, "transaction {}", end.id);
        checked += usize::from(captured > 0);
    }
    assert!(checked >= 10, "only {checked} data transactions");
    // Events of one multi-statement transaction share txId, not transaction.id.
    let first_tx = changes.iter().find(|e| e.op == Op::Create).unwrap().tx_id();
    let same: Vec<_> = changes.iter().filter(|e| e.tx_id() == first_tx).collect();
    assert!(same.len() >= 5, "BEGIN..COMMIT with 6 changes");
    let ids: std::collections::HashSet<_> = same.iter().map(|e| &e.transaction.as_ref().unwrap().id).collect();
    assert!(ids.len() > 1, "transaction.id is txId:lsn and varies inside one transaction");
}

/// A table's schema written as Connect schema JSON (what sinks keep to type
/// schemaless records later) reads back as the same schema: every column
/// type, nullability, default, source type and key of every fixture, under
/// every converter mode captured.
#[test]
fn schemas_written_as_connect_json_read_back_the_same() {
    let mut compared = 0;
    for name in ["schemas", "modes-string", "modes-double", "fidelity-schemas", "fidelity-modes-string"] {
        let mut seen: Vec<std::sync::Arc<cdc_core::TableSchema>> = Vec::new();
        for event in changes(&decode_all(name)) {
            if seen.iter().any(|s| std::sync::Arc::ptr_eq(s, &event.schema)) || event.schema.fields().is_empty() {
                continue;
            }
            seen.push(event.schema.clone());
            let json = cdc_core::connect::schema_to_json(&event.schema).expect("every column has a Connect form");
            let back = cdc_core::connect::schema_from_json(&json).unwrap();
            for (a, b) in back.fields().iter().zip(event.schema.fields()) {
                assert_eq!(a, b, "{name}: {} column {}", event.table(), b.name);
            }
            assert_eq!(back, *event.schema, "{name}: {}", event.table());
            compared += event.schema.fields().len();
        }
    }
    assert!(compared > 300, "{compared} columns compared");
}

/// The decoder reads a record whose schema is its topic's last one without
/// scanning the schema (`split_known_wrapper`): every record of every fixture
/// with schemas decodes the same as by a decoder that never saw its topic,
/// and a record that only starts like a known wrapper is read in full.
#[test]
fn records_after_a_known_schema_decode_as_the_first_of_their_topic() {
    for fixture in ["schemas", "modes-string", "modes-double", "fidelity-schemas", "fidelity-modes-string"] {
        let records = cdc_core::testing::load(fixture);
        let mut warm = Decoder::new().keep_raw_json(true);
        let mut fast = 0;
        for record in &records {
            let cold_result = Decoder::new().keep_raw_json(true).decode(record.raw());
            let warm_result = warm.decode(record.raw());
            assert_eq!(comparable(&warm_result), comparable(&cold_result), "{fixture} {}", record.offset);
            fast += usize::from(
                warm_result.is_ok() && record.value.as_deref().is_some_and(|v| v.starts_with("{\"schema\":{")),
            );
        }
        assert!(fast > records.len() / 2, "{fixture}: {fast} of {} records with schemas", records.len());
    }
    // After a known schema: a payload with trailing members, a broken payload.
    let records = cdc_core::testing::load("schemas");
    let record = records.iter().find(|r| r.value.as_deref().is_some_and(|v| v.contains("\"op\":\"u\""))).unwrap();
    let value = record.value.clone().unwrap();
    let mut decoder = Decoder::new().keep_raw_json(true);
    decoder.decode(record.raw()).unwrap();
    let with_extra = format!("{},\"extra\":1}}", value.strip_suffix('}').unwrap());
    let broken = format!("{}}}", value.strip_suffix("}}").unwrap());
    for (changed, ok) in [(with_extra, true), (broken, false)] {
        let raw = RawRecord { value: Some(changed.as_bytes()), ..record.raw() };
        let (warm_result, cold_result) = (decoder.decode(raw), Decoder::new().keep_raw_json(true).decode(raw));
        assert_eq!(comparable(&warm_result), comparable(&cold_result));
        assert_eq!(warm_result.is_ok(), ok, "{}", comparable(&warm_result));
    }
}

/// kcat's form of a record: key and value as strings holding their JSON.
fn kcat_line(record: &cdc_core::jsonl::KafkaRecord) -> String {
    serde_json::json!({
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "key": record.key, "value": record.value,
    })
    .to_string()
}

#[test]
fn lines_after_a_known_schema_prefix_parse_as_the_first_of_their_topic() {
    use cdc_core::jsonl::{LineParser, parse_line};
    for fixture in ["schemas", "modes-string", "fidelity-schemas", "schemaless"] {
        let lines: Vec<String> = cdc_core::testing::load(fixture).iter().map(kcat_line).collect();
        let records = cdc_core::testing::load(fixture);
        let mut warm = LineParser::new();
        for (number, (line, record)) in lines.iter().zip(&records).enumerate() {
            let cold = parse_line(line, fixture, number as u64).unwrap();
            assert_eq!(&cold, record, "{fixture} line {number}");
            assert_eq!(warm.parse(line, fixture, number as u64).unwrap(), cold, "{fixture} line {number}");
        }
    }
    // After a known prefix: another payload, a schema that differs only
    // past the prefix's start, quotes escaped another way, a broken escape.
    let record = cdc_core::testing::load("schemas").into_iter().find(|r| r.value.is_some()).unwrap();
    let line = kcat_line(&record);
    let value = record.value.clone().unwrap();
    let other_payload = kcat_line(&cdc_core::jsonl::KafkaRecord {
        value: Some(value.replacen("\"payload\":{", "\"payload\":{\"x\":\"\\u00e9\\\"\",", 1)),
        ..record.clone()
    });
    let other_schema = kcat_line(&cdc_core::jsonl::KafkaRecord {
        value: Some(value.replacen("\"optional\":false", "\"optional\":true", 1)),
        ..record.clone()
    });
    let unicode_quotes = line.replace("\\\"schema\\\"", "\\u0022schema\\u0022");
    let broken = line.replacen("\\\"payload\\\":{", "\\\"payload\\\":{\\x", 1);
    for (changed, ok) in [(other_payload, true), (other_schema, true), (unicode_quotes, true), (broken, false)] {
        let mut warm = LineParser::new();
        warm.parse(&line, "f", 0).unwrap();
        let (warm, cold) = (warm.parse(&changed, "f", 1), parse_line(&changed, "f", 1));
        assert_eq!(warm.is_ok(), ok, "{changed}");
        assert_eq!(warm.ok(), cold.ok(), "{changed}");
    }
}

/// However a record object is written (whitespace, field order, kcat's
/// extra fields, `payload` for `value`), it gives the same record; a line
/// that is not one JSON object with one of each field is refused.
#[test]
fn record_objects_parse_the_same_however_they_are_written() {
    use cdc_core::jsonl::{KafkaRecord, LineParser};
    let record = cdc_core::testing::load("schemas").into_iter().find(|r| r.key.is_some()).unwrap();
    let key = serde_json::to_string(&record.key).unwrap();
    let value = serde_json::to_string(&record.value).unwrap();
    let topic = record.topic.clone();
    let (partition, offset) = (record.partition, record.offset);
    let parse = |line: &str| {
        // Warm: the same line read before, so known prefixes apply.
        let mut parser = LineParser::new();
        let _ = parser.parse(line, "f", 0);
        parser.parse(line, "f", 9)
    };
    let same = [
        format!(r#"{{"topic":"{topic}","partition":{partition},"offset":{offset},"key":{key},"value":{value}}}"#),
        format!(
            " {{ \"value\" :\t{value} ,\r\n \"topic\" : \"{topic}\" , \"key\" : {key} , \"offset\" : {offset} , \"partition\" : {partition} }} "
        ),
        format!(
            r#"{{"topic":"{topic}","partition":{partition},"offset":{offset},"tstype":"create","ts":1,"broker":0,"headers":["h",{{"a":[1]}}],"key":{key},"payload":{value}}}"#
        ),
        format!(
            r#"{{"topic":"{topic}","partition":{partition},"offset":{offset},"key":{key},"value":null,"payload":{value}}}"#
        ),
    ];
    for line in &same {
        assert_eq!(parse(line).unwrap(), record, "{line}");
    }
    let object_value = format!(r#"{{"topic":"{topic}","key":null,"value":{{"a": [1, "x"]}}}}"#);
    let expected =
        KafkaRecord { partition: 0, offset: 9, key: None, value: Some(r#"{"a": [1, "x"]}"#.into()), ..record };
    assert_eq!(parse(&object_value).unwrap(), expected);
    for bad in [
        format!(r#"{{"topic":"{topic}","topic":"x","key":{key},"value":{value}}}"#),
        format!(r#"{{"topic":"{topic}","key":{key},"value":{value}}} x"#),
        format!(r#"{{"topic":"{topic}","key":{key},"value":{value}"#),
        format!(r#"{{"topic":"{topic}","key":{key} "value":{value}}}"#),
        "{}".to_owned(),
    ] {
        assert!(parse(&bad).is_err(), "{bad}");
    }
}

/// A decoded record as text.
fn comparable(result: &cdc_core::Result<Record>) -> String {
    match result {
        Ok(Record::Change(e)) => comparable_event(e),
        Ok(other) => format!("{other:?}"),
        Err(error) => format!("error: {error}"),
    }
}
