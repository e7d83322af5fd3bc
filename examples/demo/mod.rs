//! The embedded demo's event stream: Debezium records for the seed's four
//! tables, built from the records real Debezium 3.6 wrote in
//! `tests/fixtures/debezium/schemas.jsonl` (their schemas, envelope and
//! source block), with generated rows, in transactions.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("../../tests/fixtures/debezium/schemas.jsonl");
pub const TABLES: [&str; 4] = ["customers", "products", "orders", "order_items"];
/// librdkafka's mock cluster keeps about 5 MB per partition (older records
/// are dropped); records with schemas are ~5 KB, so the demo spreads them.
pub const PARTITIONS: i32 = 32;

/// One Kafka record to publish.
pub struct DemoRecord {
    pub topic: String,
    pub partition: i32,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// How many rows and changes to generate.
pub struct Volume {
    pub customers: i64,
    pub products: i64,
    pub orders: i64,
}

impl Default for Volume {
    fn default() -> Self {
        Volume { customers: 2_000, products: 500, orders: 6_000 }
    }
}

/// The snapshot record of each seed table (the schema before the capture's
/// schema changes).
fn templates() -> BTreeMap<String, (Value, Value)> {
    let mut templates = BTreeMap::new();
    for line in FIXTURE.lines() {
        let record: Value = serde_json::from_str(line).expect("fixture line");
        let Some(table) = record["topic"].as_str().and_then(|t| t.strip_prefix("cdc.public.")) else { continue };
        if TABLES.contains(&table) && record["value"]["payload"]["op"] == "r" && !templates.contains_key(table) {
            templates.insert(table.to_owned(), (record["key"].clone(), record["value"].clone()));
        }
    }
    templates
}

fn decimal(cents: i64) -> String {
    let bytes = cents.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count().min(7);
    let skip = if bytes[skip] & 0x80 != 0 { skip - 1 } else { skip };
    base64::engine::general_purpose::STANDARD.encode(&bytes[skip..])
}

/// Builds the stream.
pub struct Generator {
    templates: BTreeMap<String, (Value, Value)>,
    lsn: i64,
    tx: i64,
    now_us: i64,
    pub records: Vec<DemoRecord>,
}

impl Generator {
    pub fn new() -> Generator {
        Generator {
            templates: templates(),
            lsn: 30_000_000,
            tx: 1_000,
            now_us: 1_764_000_000_000_000,
            records: Vec::new(),
        }
    }

    fn begin(&mut self) -> i64 {
        self.tx += 1;
        self.tx
    }

    /// Appends one change event in the fixture's exact envelope.
    fn event(&mut self, table: &str, op: &str, id: i64, before: Option<Value>, after: Option<Value>, commit_lsn: i64) {
        let (key_template, value_template) = &self.templates[table];
        self.lsn += 56;
        self.now_us += 1_000;
        let mut value = value_template.clone();
        let payload = &mut value["payload"];
        payload["op"] = json!(op);
        payload["before"] = before.unwrap_or(Value::Null);
        payload["after"] = after.unwrap_or(Value::Null);
        payload["ts_ms"] = json!(self.now_us / 1000);
        payload["ts_us"] = json!(self.now_us);
        payload["ts_ns"] = json!(self.now_us * 1000);
        let source = &mut payload["source"];
        source["snapshot"] = json!("false");
        source["txId"] = json!(self.tx);
        source["lsn"] = json!(self.lsn);
        source["sequence"] = json!(format!("[\"{commit_lsn}\",\"{}\"]", self.lsn));
        source["ts_ms"] = json!(self.now_us / 1000);
        source["ts_us"] = json!(self.now_us);
        source["ts_ns"] = json!(self.now_us * 1000);
        let mut key = key_template.clone();
        key["payload"]["id"] = json!(id);
        let partition = (id % i64::from(PARTITIONS)) as i32;
        let topic = format!("cdc.public.{table}");
        let key = serde_json::to_vec(&key).expect("json");
        self.records.push(DemoRecord {
            topic: topic.clone(),
            partition,
            key: key.clone(),
            value: Some(serde_json::to_vec(&value).expect("json")),
        });
        if op == "d" {
            // Debezium follows a delete with a tombstone.
            self.records.push(DemoRecord { topic, partition, key, value: None });
        }
    }

    fn customer(&self, id: i64, updated: i64) -> Value {
        json!({"id": id, "first_name": format!("First{id}"), "last_name": format!("Last{}", id % 97),
               "email": format!("user{id}@example.com"), "phone": if id % 5 == 0 { Value::Null } else { json!(format!("+1-555-{:04}", id % 10_000)) },
               "address": format!("{id} Main St"), "created_at": 1_705_314_600_000_000i64 + id * 1_000_000, "updated_at": updated})
    }

    fn product(&self, id: i64, price_cents: i64, stock: i64, updated: i64) -> Value {
        let category = ["Electronics", "Furniture", "Grocery"][(id % 3) as usize];
        json!({"id": id, "name": format!("Product {id}"), "description": if id % 7 == 0 { Value::Null } else { json!(format!("Description of product {id}")) },
               "price": decimal(price_cents), "stock_quantity": stock, "category": category,
               "created_at": 1_704_877_200_000_000i64, "updated_at": updated})
    }

    fn order(&self, id: i64, customer: i64, status: &str, total_cents: i64, updated: i64) -> Value {
        json!({"id": id, "customer_id": customer, "order_date": 1_705_759_200_000_000i64 + id * 60_000_000, "status": status,
               "total_amount": decimal(total_cents), "shipping_address": format!("{customer} Main St"),
               "created_at": 1_705_759_200_000_000i64 + id * 60_000_000, "updated_at": updated})
    }

    fn item(&self, id: i64, order: i64, product: i64, quantity: i64, price_cents: i64) -> Value {
        json!({"id": id, "order_id": order, "product_id": product, "quantity": quantity,
               "unit_price": decimal(price_cents), "created_at": 1_705_759_200_000_000i64 + order * 60_000_000})
    }

    /// Customers and products, then orders with two items each (one
    /// transaction per order), status updates, price changes and deletes.
    pub fn generate(mut self, volume: &Volume) -> Vec<DemoRecord> {
        self.begin();
        let commit = self.lsn;
        for id in 1..=volume.customers {
            let row = self.customer(id, self.now_us);
            self.event("customers", "c", id, None, Some(row), commit);
        }
        self.begin();
        let commit = self.lsn;
        for id in 1..=volume.products {
            let row = self.product(id, 999 + id * 37 % 100_000, 100 + id % 50, self.now_us);
            self.event("products", "c", id, None, Some(row), commit);
        }
        let mut item_id = 0;
        for id in 1..=volume.orders {
            self.begin();
            let commit = self.lsn;
            let customer = 1 + id % volume.customers;
            let mut total = 0;
            for n in 0..2 {
                item_id += 1;
                let product = 1 + (id * 7 + n) % volume.products;
                let price = 999 + product * 37 % 100_000;
                total += price * (1 + n);
                let row = self.item(item_id, id, product, 1 + n, price);
                self.event("order_items", "c", item_id, None, Some(row), commit);
            }
            let row = self.order(id, customer, "pending", total, self.now_us);
            self.event("orders", "c", id, None, Some(row), commit);
            // Orders placed a while ago move on.
            if id > 50 && id % 2 == 0 {
                let old = id - 50;
                let before = None; // REPLICA IDENTITY DEFAULT: no before-image on updates
                let status = if old % 4 == 0 { "shipped" } else { "completed" };
                let row = self.order(old, 1 + old % volume.customers, status, 1_000 + old, self.now_us);
                self.begin();
                let commit = self.lsn;
                self.event("orders", "u", old, before, Some(row), commit);
            }
            if id % 40 == 0 {
                self.begin();
                let commit = self.lsn;
                let product = 1 + id % volume.products;
                let row = self.product(product, 1_499 + id, 10 + id % 90, self.now_us);
                self.event("products", "u", product, None, Some(row), commit);
            }
            if id % 100 == 0 {
                // A cancelled order's items are removed.
                self.begin();
                let commit = self.lsn;
                // order_items has REPLICA IDENTITY FULL: the before-image is the row.
                let doomed = item_id - 1;
                let product = 1 + (id * 7) % volume.products;
                let before = self.item(doomed, id, product, 1, 999 + product * 37 % 100_000);
                self.event("order_items", "d", doomed, Some(before), None, commit);
            }
        }
        self.records
    }
}
