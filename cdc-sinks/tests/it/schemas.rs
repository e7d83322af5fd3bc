//! No Connect schema and value, however odd, panics the decoder, the Arrow
//! conversion or the sinks' type mapping: errors are allowed, panics are not.
//! The schemas span the whole parameter space: every logical type, lengths up
//! to 2147483647, precision 0, scale above precision or negative, nested
//! arrays and structs; the values are either of the schema's shape or any JSON.
use cdc_core::{Decoder, RawRecord, Record};
use proptest::prelude::*;
use serde_json::{Value as Json, json};

fn typed(ty: &str, name: Option<&str>, parameters: Option<Json>) -> Json {
    let mut schema = json!({ "type": ty });
    if let Some(name) = name {
        schema["name"] = json!(name);
    }
    if let Some(parameters) = parameters {
        schema["parameters"] = parameters;
    }
    schema
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Any JSON value, odd numbers and strings included.
fn any_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        prop_oneof![Just(i64::MAX), Just(i64::MIN), Just(0)].prop_map(Json::from),
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(Json::from),
        ".{0,12}".prop_map(Json::from),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(|b| Json::from(base64_of(&b))),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Json::from),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..3).prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// A Connect schema and a value of its shape.
fn typed_leaf() -> impl Strategy<Value = (Json, Json)> {
    let int = |ty: &'static str, name: Option<&'static str>| {
        any::<i64>().prop_map(move |v| (typed(ty, name, None), json!(v)))
    };
    let text = |name: Option<&'static str>, params: Option<Json>| {
        ".{0,16}".prop_map(move |v: String| (typed("string", name, params.clone()), json!(v)))
    };
    let bytes = prop::collection::vec(any::<u8>(), 0..40);
    let lengths =
        prop_oneof![Just(0u32), Just(1), 1u32..100_000, Just(83_886_080), Just(83_886_081), Just(i32::MAX as u32)];
    let scales = prop_oneof![-5i32..60, Just(0), Just(i32::MAX), Just(i32::MIN)];
    let precisions = prop_oneof![Just(0u32), 1u32..80, Just(u32::MAX)];
    prop_oneof![
        int("int8", None),
        int("int16", None),
        int("int32", None),
        int("int64", None),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|v| (typed("float32", None, None), json!(v))),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|v| (typed("float64", None, None), json!(v))),
        any::<bool>().prop_map(|v| (typed("boolean", None, None), json!(v))),
        text(None, None),
        bytes.clone().prop_map(|b| (typed("bytes", None, None), json!(base64_of(&b)))),
        (lengths, bytes.clone(), prop::option::of(prop_oneof![Just("BIT"), Just("VARBIT")])).prop_map(
            |(length, b, source)| {
                let mut parameters = json!({ "length": length.to_string() });
                if let Some(source) = source {
                    parameters["__debezium.source.column.type"] = json!(source);
                }
                (typed("bytes", Some("io.debezium.data.Bits"), Some(parameters)), json!(base64_of(&b)))
            }
        ),
        (scales, precisions, bytes.clone()).prop_map(|(scale, precision, b)| {
            let parameters = json!({ "scale": scale.to_string(), "connect.decimal.precision": precision.to_string() });
            (typed("bytes", Some("org.apache.kafka.connect.data.Decimal"), Some(parameters)), json!(base64_of(&b)))
        }),
        (any::<i32>(), bytes.clone()).prop_map(|(scale, b)| {
            let schema = json!({"type": "struct", "name": "io.debezium.data.VariableScaleDecimal", "fields": [
                {"type": "int32", "optional": false, "field": "scale"},
                {"type": "bytes", "optional": false, "field": "value"}]});
            (schema, json!({ "scale": scale, "value": base64_of(&b) }))
        }),
        int("int32", Some("io.debezium.time.Date")),
        int("int32", Some("org.apache.kafka.connect.data.Date")),
        int("int32", Some("io.debezium.time.Time")),
        int("int32", Some("io.debezium.time.Year")),
        int("int64", Some("io.debezium.time.MicroTime")),
        int("int64", Some("io.debezium.time.NanoTime")),
        int("int64", Some("io.debezium.time.Timestamp")),
        int("int64", Some("io.debezium.time.MicroTimestamp")),
        int("int64", Some("io.debezium.time.NanoTimestamp")),
        int("int64", Some("io.debezium.time.MicroDuration")),
        int("int64", Some("org.apache.kafka.connect.data.Timestamp")),
        int("int32", Some("org.apache.kafka.connect.data.Time")),
        text(Some("io.debezium.time.ZonedTimestamp"), None),
        text(Some("io.debezium.time.ZonedTime"), None),
        text(Some("io.debezium.time.Interval"), None),
        text(Some("io.debezium.data.Json"), None),
        text(Some("io.debezium.data.Uuid"), None),
        text(Some("io.debezium.data.Xml"), None),
        text(Some("io.debezium.data.Enum"), Some(json!({ "allowed": "a,b" }))),
        text(Some("io.debezium.data.EnumSet"), Some(json!({ "allowed": "a,b" }))),
        (bytes, any::<Option<i32>>()).prop_map(|(b, srid)| {
            let schema = json!({"type": "struct", "name": "io.debezium.data.geometry.Geometry", "fields": [
                {"type": "bytes", "optional": false, "field": "wkb"},
                {"type": "int32", "optional": true, "field": "srid"}]});
            (schema, json!({ "wkb": base64_of(&b), "srid": srid }))
        }),
    ]
}

/// Leaves, arrays and structs of them, nested.
fn typed_column() -> impl Strategy<Value = (Json, Json)> {
    typed_leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|items| {
                let element = items.first().map(|(s, _)| s.clone()).unwrap_or_else(|| json!({"type": "int32"}));
                // Values of the first element's schema (others' values test mismatches).
                let values: Vec<Json> = items.into_iter().map(|(_, v)| v).collect();
                (json!({ "type": "array", "items": element }), Json::from(values))
            }),
            prop::collection::vec(inner, 1..3).prop_map(|fields| {
                let schemas: Vec<Json> = fields
                    .iter()
                    .enumerate()
                    .map(|(i, (s, _))| {
                        let mut s = s.clone();
                        s["field"] = json!(format!("f{i}"));
                        s["optional"] = json!(true);
                        s
                    })
                    .collect();
                let values: serde_json::Map<String, Json> =
                    fields.into_iter().enumerate().map(|(i, (_, v))| (format!("f{i}"), v)).collect();
                (json!({ "type": "struct", "fields": schemas }), Json::Object(values))
            }),
        ]
    })
}

fn record(column: &Json, optional: bool, value: Option<&Json>) -> String {
    let mut column = column.clone();
    column["field"] = json!("v");
    column["optional"] = json!(optional);
    let after = json!({"type": "struct", "optional": true, "field": "after",
                       "fields": [{"type": "int32", "optional": false, "field": "id"}, column]});
    let mut row = json!({ "id": 1 });
    if let Some(value) = value {
        row["v"] = value.clone();
    }
    json!({
        "schema": {"type": "struct", "optional": false, "fields": [after]},
        "payload": {"before": null, "after": row, "op": "c",
                    "source": {"schema": "public", "table": "t", "lsn": 10, "txId": 1}}
    })
    .to_string()
}

thread_local! {
    /// The Delta schema of the previous case's column, as a table holding
    /// another type for the same column name.
    static PREVIOUS: std::cell::RefCell<Option<cdc_sinks::delta::deltalake::arrow::datatypes::SchemaRef>> =
        const { std::cell::RefCell::new(None) };
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_schema_or_value_panics(
        (column, typed_value) in typed_column(),
        other in any_json(),
        use_other in any::<bool>(),
        optional in any::<bool>(),
        absent in prop::bool::weighted(0.1),
    ) {
        let value = if use_other { other } else { typed_value };
        PREVIOUS.with(|previous| -> Result<(), TestCaseError> {
        let json = record(&column, optional, (!absent).then_some(&value));
        let raw = RawRecord { topic: "cdc.public.t", partition: 0, offset: 1, key: Some(br#"{"id":1}"#), value: Some(json.as_bytes()) };
        match Decoder::new().decode(raw) {
            Ok(Record::Change(event)) => {
                for field in event.schema.fields() {
                    let _ = cdc_sinks::pg_type(field);
                }
                if let Ok(batch) = cdc_core::arrow::to_record_batch("public.t", &event.schema, &[&event]) {
                    // Delta's type mapping, alone and against a table that
                    // holds another version of the column (any type).
                    if let Ok(converted) = cdc_sinks::delta::for_delta("t", &batch, None, false) {
                        let _ = cdc_sinks::delta::for_delta("t", &batch, Some(&converted.schema()), true);
                        if let Some(previous) = &*previous.borrow() {
                            let _ = cdc_sinks::delta::for_delta("t", &batch, Some(previous), false);
                        }
                        *previous.borrow_mut() = Some(converted.schema());
                    }
                }
            }
            Ok(_) => {}
            Err(error) => prop_assert!(error.position().is_some() || matches!(error, cdc_core::Error::Schema { .. }), "{error}"),
        }
        Ok(())
        })?;
    }
}
