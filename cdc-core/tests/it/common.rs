use cdc_core::{ChangeEvent, Decoder, Record};

pub use cdc_core::testing::{changes, decode_with, load};

/// Decodes every record of a fixture; any error fails the test. Schemaless
/// columns of unknown type are typed by their JSON shape.
pub fn decode_all(name: &str) -> Vec<Record> {
    decode_with(&mut Decoder::new().type_by_json_shape(true), name)
}

/// The events of one table.
pub fn table_events<'a>(records: &'a [Record], table: &str) -> Vec<&'a ChangeEvent> {
    changes(records).into_iter().filter(|e| e.source.table == table).collect()
}

/// Value of column `name` in an event's after-image (or before-image).
pub fn column<'a>(event: &'a ChangeEvent, name: &str) -> &'a cdc_core::Value {
    let i = event.schema.index_of(name).unwrap_or_else(|| panic!("no column {name}"));
    &event.image().expect("row image")[i]
}

pub fn id_of(event: &ChangeEvent) -> i64 {
    match column(event, "id") {
        cdc_core::Value::Int(i) => *i,
        other => panic!("id is {other:?}"),
    }
}

/// A change event as text, every field compared (its schema's name index, a
/// hash map, left out).
pub fn comparable_event(e: &ChangeEvent) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        e.position,
        e.op,
        e.schema.fields(),
        e.schema.key_indices(),
        e.before,
        e.after,
        e.key,
        e.source,
        e.ts_ms,
        e.order,
        e.raw
    )
}
