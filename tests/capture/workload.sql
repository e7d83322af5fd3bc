-- The change workload captured as fixtures (after the snapshot of
-- init-scripts/source-init.sql + tests/capture/types-init.sql). Every statement
-- is deterministic so tests can replay it into a fresh database and compare.
-- capture.sh runs it in sections separated by '-- step:' lines; the concurrent
-- section runs from two sessions (see capture.sh).

-- step: inserts, updates and a delete in multi-statement transactions
BEGIN;
INSERT INTO customers (first_name, last_name, email, phone, address, created_at, updated_at)
    VALUES ('Diana', 'Prince', 'diana.prince@example.com', '+1-555-0106', '1 Paradise Is', '2024-03-01 08:00:00', '2024-03-01 08:00:00');
INSERT INTO orders (customer_id, status, total_amount, shipping_address, order_date, created_at, updated_at)
    VALUES (6, 'pending', 1349.98, '1 Paradise Is', '2024-03-01 08:05:00', '2024-03-01 08:05:00', '2024-03-01 08:05:00');
INSERT INTO order_items (order_id, product_id, quantity, unit_price, created_at)
    VALUES (5, 1, 1, 1299.99, '2024-03-01 08:05:00'), (5, 3, 1, 49.99, '2024-03-01 08:05:00');
UPDATE products SET stock_quantity = stock_quantity - 1, updated_at = '2024-03-01 08:05:00' WHERE id IN (1, 3);
COMMIT;
UPDATE orders SET status = 'shipped', updated_at = '2024-03-02 10:00:00' WHERE id = 2;
UPDATE products SET price = 1199.99, description = 'Now with 32GB RAM', updated_at = '2024-03-02 11:00:00' WHERE id = 1;
UPDATE customers SET phone = NULL, updated_at = '2024-03-02 12:00:00' WHERE id = 4;
BEGIN;
DELETE FROM order_items WHERE order_id = 4;
DELETE FROM orders WHERE id = 4;
COMMIT;

-- step: primary-key change
UPDATE customers SET id = 100, updated_at = '2024-03-03 09:00:00' WHERE id = 5;

-- step: TOAST (unchanged large values arrive as placeholders)
UPDATE all_types SET c_int4 = 42 WHERE id = 1;
UPDATE all_types SET c_big_text = c_big_text || 'tail', c_int4 = 43 WHERE id = 1;

-- step: all-types inserts, update to nulls, delete with REPLICA IDENTITY DEFAULT
INSERT INTO all_types SELECT 5, c_bool, c_int2, c_int4, c_int8, c_float4, c_float8, c_num, c_num38, c_num_any,
    c_varchar, c_char, c_text, c_bytea, c_date, c_time, c_time3, c_timetz, c_ts, c_ts3, c_tstz, c_interval,
    c_json, c_jsonb, c_uuid, c_xml, c_enum, c_bit, c_varbit, c_int_arr, c_text_arr, c_point, c_inet,
    c_required, c_required_ts, NULL, NULL, NULL FROM all_types WHERE id = 2;
UPDATE all_types SET c_text = NULL, c_num = NULL, c_tstz = NULL WHERE id = 4;
DELETE FROM all_types WHERE id = 3;

-- step: concurrent transactions (session A starts first, commits last)
-- session A
BEGIN;
UPDATE products SET stock_quantity = 1, updated_at = '2024-03-04 00:00:01' WHERE id = 2;
SELECT pg_sleep(2);
UPDATE products SET stock_quantity = 2, updated_at = '2024-03-04 00:00:03' WHERE id = 2;
COMMIT;
-- session B
BEGIN;
UPDATE products SET stock_quantity = 3, updated_at = '2024-03-04 00:00:02' WHERE id = 4;
UPDATE orders SET status = 'completed', updated_at = '2024-03-04 00:00:02' WHERE id = 3;
COMMIT;
-- end sessions

-- step: truncate
TRUNCATE order_items;
INSERT INTO order_items (order_id, product_id, quantity, unit_price, created_at)
    VALUES (1, 2, 3, 29.99, '2024-03-05 00:00:00');

-- step: schema change (add, drop, widen a column)
ALTER TABLE customers ADD COLUMN loyalty_points INTEGER DEFAULT 0;
UPDATE customers SET loyalty_points = 10, updated_at = '2024-03-06 00:00:00' WHERE id = 1;
ALTER TABLE products DROP COLUMN category;
UPDATE products SET stock_quantity = 99, updated_at = '2024-03-06 00:00:00' WHERE id = 6;
ALTER TABLE products ALTER COLUMN stock_quantity TYPE BIGINT;
UPDATE products SET stock_quantity = 5000000000, updated_at = '2024-03-06 00:00:01' WHERE id = 6;
INSERT INTO customers (first_name, last_name, email, created_at, updated_at, loyalty_points)
    VALUES ('Eve', 'Adams', 'eve@example.com', '2024-03-06 00:00:02', '2024-03-06 00:00:02', NULL);
