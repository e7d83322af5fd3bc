-- The CDC walk-through (scripts/test-cdc.sh, scripts/e2e-local.sh): inserts,
-- updates and deletes on each captured table, one multi-table transaction.
-- Repeatable: new rows get unique emails.
INSERT INTO customers (first_name, last_name, email, phone, address) VALUES
    ('Test', 'Buyer', 'buyer.' || txid_current() || '@example.com', '+1-555-9001', '1 Test Way, Springfield'),
    ('Test', 'Leaver', 'leaver.' || txid_current() || '@example.com', NULL, NULL);
INSERT INTO products (name, description, price, stock_quantity, category) VALUES
    ('Walkthrough Widget', repeat('A long description. ', 200), 19.99, 10, 'Testing');
UPDATE products SET price = price * 1.10, stock_quantity = stock_quantity - 1, updated_at = now()
    WHERE id = (SELECT min(id) FROM products);
UPDATE customers SET phone = '+1-555-0000', updated_at = now() WHERE id = (SELECT min(id) FROM customers);
BEGIN;
INSERT INTO orders (customer_id, status, total_amount, shipping_address)
    SELECT max(id), 'pending', 39.98, '1 Test Way, Springfield' FROM customers WHERE last_name = 'Buyer';
INSERT INTO order_items (order_id, product_id, quantity, unit_price)
    SELECT (SELECT max(id) FROM orders), max(id), 2, 19.99 FROM products;
UPDATE orders SET status = 'shipped', updated_at = now() WHERE id = (SELECT min(id) FROM orders);
COMMIT;
DELETE FROM customers WHERE last_name = 'Leaver';
DELETE FROM order_items WHERE id = (SELECT min(id) FROM order_items);
