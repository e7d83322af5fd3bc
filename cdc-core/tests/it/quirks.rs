//! Debezium behaviours real output shows, each handled on purpose.
use cdc_core::memory::MemorySink;
use cdc_core::{Decoder, Op, Record, Value};

use crate::common::*;

/// Unchanged TOASTed values arrive as `__debezium_unavailable_value` (text),
/// its base64 (bytea), or a one-element array; all mean "keep what you have".
#[test]
fn unchanged_toast_is_unavailable_not_a_value() {
    for name in ["schemas", "schemaless", "modes-string"] {
        let mut decoder = Decoder::new().type_by_json_shape(true);
        if name == "schemaless" {
            learn_schemas(&mut decoder);
        }
        let records = decode_with(&mut decoder, name);
        let updates: Vec<_> =
            table_events(&records, "all_types").into_iter().filter(|e| e.op == Op::Update && id_of(e) == 1).collect();
        assert_eq!(updates.len(), 2, "{name}");
        let first = updates[0];
        assert_eq!(column(first, "c_int4"), &Value::Int(42));
        for col in ["c_big_text", "c_big_bytea", "c_big_arr"] {
            assert_eq!(column(first, col), &Value::Unavailable, "{name}: {col}");
        }
        let second = updates[1];
        assert!(matches!(column(second, "c_big_text"), Value::String(s) if s.ends_with("tail")), "{name}");
        assert_eq!(column(second, "c_big_arr"), &Value::Unavailable);

        // Applying keeps the previous value instead of writing the placeholder.
        let mut sink = MemorySink::new();
        for event in changes(&records) {
            sink.apply_event(event);
        }
        let row = sink.tables["public.all_types"].live_rows().find(|r| r["id"] == Value::Int(1)).unwrap().clone();
        let Value::List(items) = &row["c_big_arr"] else { panic!("{name}: array kept: {:?}", row["c_big_arr"]) };
        assert_eq!(items.len(), 400);
        assert!(!format!("{row:?}").contains(cdc_core::UNAVAILABLE_PLACEHOLDER));
    }
}

/// With base64 binary handling, Debezium 3.6 sends an unchanged TOASTed bytea
/// as null: nothing in the record tells it from a real null.
#[test]
fn base64_mode_loses_unchanged_toast_bytea() {
    let records = decode_all("modes-double");
    let update = table_events(&records, "all_types").into_iter().find(|e| e.op == Op::Update).unwrap();
    assert_eq!(column(update, "c_big_bytea"), &Value::Null);
    assert_eq!(column(update, "c_big_text"), &Value::Unavailable);
}

/// REPLICA IDENTITY DEFAULT: a delete's before-image has the key and filler
/// (empty strings, 0, the schema default) elsewhere; REPLICA IDENTITY FULL
/// (order_items) has the real row.
#[test]
fn key_only_delete_images_are_not_row_values() {
    let records = decode_all("schemas");
    let delete = table_events(&records, "customers").into_iter().find(|e| e.op == Op::Delete).unwrap();
    let before = delete.before.as_ref().unwrap();
    assert_eq!(column(delete, "id"), &Value::Int(5));
    let non_key: Vec<_> = delete.schema.fields().iter().zip(before).filter(|(f, _)| f.name != "id").collect();
    assert!(non_key.iter().all(|(_, v)| v.is_unavailable()), "{non_key:?}");
    // The raw record really carries filler: first_name "" and created_at 0.
    let raw =
        load("schemas").into_iter().find(|r| r.topic == "cdc.public.customers" && r.offset == delete.position.offset);
    let raw = raw.unwrap().value.unwrap();
    assert!(raw.contains(r#""first_name":"","last_name":"""#) && raw.contains(r#""created_at":0"#));

    // all_types declares schema defaults: JsonConverter writes them for nulls.
    let delete = table_events(&records, "all_types").into_iter().find(|e| e.op == Op::Delete).unwrap();
    assert_eq!(column(delete, "c_required"), &Value::Unavailable);

    let full = table_events(&records, "order_items").into_iter().find(|e| e.op == Op::Delete).unwrap();
    assert_eq!(column(full, "quantity"), &Value::Int(2));
    assert_eq!(column(full, "unit_price"), &Value::Decimal(cdc_core::Decimal { unscaled: 1875, scale: 2 }));
}

/// JsonConverter's `replace.null.with.default=true` (its default) writes a
/// column's schema default where the row has NULL: customers.loyalty_points
/// is NULL for Eve in PostgreSQL, 0 in the record. Nothing in the record tells
/// them apart; the connector config in connectors/ turns the option off.
#[test]
fn json_converter_replaces_null_with_schema_default() {
    let records = decode_all("schemas");
    let eve = table_events(&records, "customers").into_iter().find(|e| id_of(e) == 7).unwrap();
    let field = eve.schema.field("loyalty_points").unwrap();
    assert_eq!(field.default, Some(Value::Int(0)));
    assert_eq!(column(eve, "loyalty_points"), &Value::Int(0));
}

/// Schemaless records decode by a schema learnt from a record with schemas,
/// or registered; without one, by the JSON shape.
#[test]
fn schemaless_records_use_known_schemas_else_json_shape() {
    let mut known = Decoder::new().type_by_json_shape(true);
    learn_schemas(&mut known);
    let typed = decode_with(&mut known, "schemaless");
    let by_shape = decode_all("schemaless");
    let price = |records: &[Record]| {
        let event = table_events(records, "products")[0];
        column(event, "price").clone()
    };
    assert_eq!(price(&typed), Value::Decimal(cdc_core::Decimal { unscaled: 129999, scale: 2 }));
    assert_eq!(price(&by_shape), Value::String("AfvP".into()), "decimal.format=BASE64 without a schema is text");
    let with_schemas = decode_all("schemas");
    for table in ["customers", "products", "orders", "order_items", "all_types"] {
        let (typed, with_schemas) = (table_events(&typed, table), table_events(&with_schemas, table));
        assert_eq!(typed.len(), with_schemas.len());
        for (a, b) in typed.iter().zip(with_schemas) {
            assert_eq!((a.op, &a.key), (b.op, &b.key));
            // By name: after a schema change the learnt schema still has dropped columns.
            for (image_a, image_b) in [(&a.before, &b.before), (&a.after, &b.after)] {
                let (Some(image_a), Some(image_b)) = (image_a, image_b) else {
                    assert_eq!(image_a.is_some(), image_b.is_some());
                    continue;
                };
                for (i, field) in b.schema.fields().iter().enumerate() {
                    let j = a.schema.index_of(&field.name).unwrap();
                    // Debug text, so NaN equals NaN.
                    assert_eq!(
                        format!("{:?}", image_a[j]),
                        format!("{:?}", image_b[i]),
                        "{} {}",
                        b.position,
                        field.name
                    );
                }
            }
        }
    }
}

/// PostgreSQL date 'infinity' reaches Debezium's epoch-day conversion as a
/// huge day count wrapped to 32 bits: -622191234, before any date
/// PostgreSQL can hold, so it is read back as infinity.
#[test]
fn date_infinity_arrives_mangled_and_is_restored() {
    let records = decode_all("schemas");
    let row3 = table_events(&records, "all_types").into_iter().find(|e| e.op == Op::Read && id_of(e) == 3).unwrap();
    let raw = load("schemas")
        .into_iter()
        .find(|r| r.offset == row3.position.offset && r.topic == row3.position.topic.as_ref());
    assert!(raw.unwrap().value.unwrap().contains(r#""c_date":-622191234"#));
    assert_eq!(column(row3, "c_date"), &Value::Date(cdc_core::DATE_INFINITY));
    // Timestamps keep their infinities.
    assert_eq!(column(row3, "c_ts"), &Value::Timestamp(cdc_core::TIMESTAMP_INFINITY));
    assert_eq!(column(row3, "c_tstz"), &Value::TimestampTz(cdc_core::TIMESTAMP_NEG_INFINITY));
}

/// Feeds one record of each table with schemas, so the decoder knows the types.
pub fn learn_schemas(decoder: &mut Decoder) {
    let mut seen = std::collections::HashSet::new();
    for record in load("schemas") {
        if record.topic.starts_with("cdc.public.") && record.value.is_some() && seen.insert(record.topic.clone()) {
            decoder.decode(record.raw()).unwrap();
        }
    }
}
