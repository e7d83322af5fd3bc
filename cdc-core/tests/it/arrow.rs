//! Events to Arrow record batches.
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Decimal128Type, Int32Type, TimeUnit, TimestampMicrosecondType};
use cdc_core::Op;
use cdc_core::arrow::{UNAVAILABLE_COLUMN, to_record_batch};

use crate::common::*;

#[test]
fn seed_table_batches_keep_exact_types() {
    let records = decode_all("schemas");
    let all_products = table_events(&records, "products");
    let schema = all_products[0].schema.clone();
    let products: Vec<_> = all_products.iter().copied().filter(|e| e.schema == schema).collect();
    let batch = to_record_batch("public.products", &schema, &products).unwrap();
    assert_eq!(batch.num_rows(), products.len());
    let arrow_schema = batch.schema();
    assert_eq!(arrow_schema.field_with_name("price").unwrap().data_type(), &DataType::Decimal128(10, 2));
    assert_eq!(
        arrow_schema.field_with_name("created_at").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, None)
    );
    assert_eq!(
        arrow_schema.field_with_name("_cdc_source_ts").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    let price = batch.column_by_name("price").unwrap().as_primitive::<Decimal128Type>();
    assert_eq!(price.value(0), 129999);
    assert_eq!(price.value_as_string(0), "1299.99");
    let created = batch.column_by_name("created_at").unwrap().as_primitive::<TimestampMicrosecondType>();
    assert_eq!(created.value(0), 1_704_877_200_000_000, "2024-01-10 09:00:00");
    let ops = batch.column_by_name("_cdc_op").unwrap().as_string::<i32>();
    assert_eq!(ops.value(0), "r");
    let partitions = batch.column_by_name("_cdc_partition").unwrap().as_primitive::<Int32Type>();
    assert_eq!(partitions.value(0), 0);
    // Events written before the schema change fill the dropped/added columns by name.
    let latest = all_products.last().unwrap().schema.clone();
    assert!(latest.field("category").is_none());
    let batch = to_record_batch("public.products", &latest, &all_products).unwrap();
    assert_eq!(batch.column_by_name("stock_quantity").unwrap().data_type(), &DataType::Int64);
    assert_eq!(batch.num_rows(), all_products.len());
    // The values of the first schema version do not fit a narrower column.
    let err = to_record_batch("public.products", &schema, &all_products).unwrap_err();
    assert!(err.to_string().contains("column `stock_quantity`"), "{err}");
}

#[test]
fn all_types_convert_and_mark_unavailable_columns() {
    let records = decode_all("schemas");
    let events: Vec<_> = table_events(&records, "all_types").into_iter().filter(|e| e.op != Op::Truncate).collect();
    let batch = to_record_batch("public.all_types", &events[0].schema, &events).unwrap();
    let schema = batch.schema();
    let ty = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
    assert_eq!(ty("c_num38"), DataType::Decimal128(38, 0));
    assert_eq!(ty("c_num_any"), DataType::Utf8);
    assert_eq!(ty("c_tstz"), DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())));
    assert_eq!(ty("c_date"), DataType::Date32);
    assert_eq!(ty("c_time"), DataType::Time64(TimeUnit::Microsecond));
    assert_eq!(ty("c_interval"), DataType::Duration(TimeUnit::Microsecond));
    assert_eq!(ty("c_bytea"), DataType::Binary);
    assert!(matches!(ty("c_int_arr"), DataType::List(f) if f.data_type() == &DataType::Int32));
    let num38 = batch.column_by_name("c_num38").unwrap().as_primitive::<Decimal128Type>();
    assert_eq!(num38.value_as_string(1), "-99999999999999999999999999999999999999");
    let any = batch.column_by_name("c_num_any").unwrap().as_string::<i32>();
    // Debezium's VariableScaleDecimal strips the trailing zero PostgreSQL keeps.
    assert_eq!(any.value(0), "3.1415926535897932384626433832795028841971693993751");
    let bits = batch.column_by_name("c_bit").unwrap().as_string::<i32>();
    assert_eq!(bits.value(0), "1010");
    let tstz = batch.column_by_name("c_tstz").unwrap().as_primitive::<TimestampMicrosecondType>();
    assert_eq!(tstz.value(1), -1, "1969-12-31 23:59:59.999999+00 floors to -1us");
    assert_eq!(tstz.value(2), i64::MIN, "-infinity");
    let unavailable = batch.column_by_name(UNAVAILABLE_COLUMN).unwrap().as_list::<i32>();
    let toast_row = events.iter().position(|e| e.op == Op::Update).unwrap();
    let names = unavailable.value(toast_row);
    let names: Vec<_> = names.as_string::<i32>().iter().flatten().collect();
    assert_eq!(names, ["c_big_text", "c_big_bytea", "c_big_arr"]);
    assert!(batch.column_by_name("c_big_text").unwrap().is_null(toast_row));
    assert!(unavailable.is_null(0));
}

/// `bit varying` without a length: Debezium sends length 2147483647. The
/// value is its own bits, never a 2 GiB string (which overflowed Arrow's
/// offsets and aborted the process).
#[test]
fn bit_varying_without_a_length_is_its_bit_string() {
    let value = |offset: i64, bits: &str| {
        let json = format!(
            r#"{{"schema":{{"type":"struct","optional":false,"fields":[{{"type":"struct","optional":true,"field":"after","fields":[
                {{"type":"int32","optional":false,"field":"id"}},
                {{"type":"bytes","optional":true,"name":"io.debezium.data.Bits","version":1,"parameters":{{"length":"2147483647"}},"field":"b"}}]}}]}},
               "payload":{{"before":null,"after":{{"id":{offset},"b":"{bits}"}},
               "source":{{"schema":"public","table":"t","lsn":{offset},"txId":1}},"op":"c"}}}}"#
        );
        let raw = cdc_core::RawRecord {
            topic: "cdc.public.t",
            partition: 0,
            offset,
            key: None,
            value: Some(json.as_bytes()),
        };
        match cdc_core::Decoder::new().decode(raw).unwrap() {
            cdc_core::Record::Change(event) => event,
            other => panic!("{other:?}"),
        }
    };
    // 0x33 = 110011, 0x01 0x80 = 1000000000000001 (little-endian bytes).
    let events = [value(1, "Mw=="), value(2, "AYA=")];
    let refs: Vec<_> = events.iter().collect();
    let batch = to_record_batch("public.t", &events[0].schema, &refs).unwrap();
    let bits = batch.column_by_name("b").unwrap().as_string::<i32>();
    assert_eq!((bits.value(0), bits.value(1)), ("110011", "1000000000000001"));
}
