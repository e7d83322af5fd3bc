-- Source database for the CDC demo: the e-commerce tables Debezium captures.
-- Loaded by docker-compose (postgres-source) and by scripts/e2e-local.sh.

CREATE TABLE IF NOT EXISTS customers (
    id          SERIAL PRIMARY KEY,
    first_name  VARCHAR(50)  NOT NULL,
    last_name   VARCHAR(50)  NOT NULL,
    email       VARCHAR(100) NOT NULL UNIQUE,
    phone       VARCHAR(20),
    address     TEXT,
    created_at  TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at  TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS products (
    id              SERIAL PRIMARY KEY,
    name            VARCHAR(100)   NOT NULL,
    description     TEXT,
    price           DECIMAL(10, 2) NOT NULL,
    stock_quantity  INTEGER        NOT NULL DEFAULT 0,
    category        VARCHAR(50),
    created_at      TIMESTAMP      NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at      TIMESTAMP      NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS orders (
    id                SERIAL PRIMARY KEY,
    customer_id       INTEGER        NOT NULL REFERENCES customers (id),
    order_date        TIMESTAMP      NOT NULL DEFAULT CURRENT_TIMESTAMP,
    status            VARCHAR(20)    NOT NULL DEFAULT 'pending',
    total_amount      DECIMAL(10, 2) NOT NULL,
    shipping_address  TEXT,
    created_at        TIMESTAMP      NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at        TIMESTAMP      NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS order_items (
    id          SERIAL PRIMARY KEY,
    order_id    INTEGER        NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id  INTEGER        NOT NULL REFERENCES products (id),
    quantity    INTEGER        NOT NULL,
    unit_price  DECIMAL(10, 2) NOT NULL,
    created_at  TIMESTAMP      NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- Full before-images for order items, so deletes carry every column.
ALTER TABLE order_items REPLICA IDENTITY FULL;

INSERT INTO customers (first_name, last_name, email, phone, address, created_at, updated_at) VALUES
    ('John',    'Doe',      'john.doe@example.com',       '+1-555-0101', '123 Main St, New York, NY 10001', '2024-01-15 10:30:00', '2024-01-15 10:30:00'),
    ('Jane',    'Smith',    'jane.smith@example.com',     '+1-555-0102', '456 Oak Ave, Los Angeles, CA 90001', '2024-01-15 10:30:00', '2024-01-15 10:30:00'),
    ('Bob',     'Johnson',  'bob.johnson@example.com',    '+1-555-0103', '789 Pine Rd, Chicago, IL 60601', '2024-01-15 10:30:00', '2024-01-15 10:30:00'),
    ('Alice',   'Williams', 'alice.williams@example.com', '+1-555-0104', '321 Elm St, Houston, TX 77001', '2024-01-15 10:30:00', '2024-01-15 10:30:00'),
    ('Charlie', 'Brown',    'charlie.brown@example.com',  NULL,          NULL, '2024-01-15 10:30:00', '2024-01-15 10:30:00');

INSERT INTO products (name, description, price, stock_quantity, category, created_at, updated_at) VALUES
    ('Laptop Pro 15',       'High-performance laptop with 16GB RAM', 1299.99,  50, 'Electronics', '2024-01-10 09:00:00', '2024-01-10 09:00:00'),
    ('Wireless Mouse',      'Ergonomic wireless mouse',                29.99, 200, 'Electronics', '2024-01-10 09:00:00', '2024-01-10 09:00:00'),
    ('USB-C Hub',           '7-in-1 USB-C hub with HDMI',              49.99, 150, 'Electronics', '2024-01-10 09:00:00', '2024-01-10 09:00:00'),
    ('Standing Desk',       'Adjustable height standing desk',        599.00,  25, 'Furniture', '2024-01-10 09:00:00', '2024-01-10 09:00:00'),
    ('Office Chair',        'Ergonomic office chair with lumbar',     349.50,  40, 'Furniture', '2024-01-10 09:00:00', '2024-01-10 09:00:00'),
    ('Coffee Beans 1kg',    NULL,                                      18.75, 500, 'Grocery', '2024-01-10 09:00:00', '2024-01-10 09:00:00');

INSERT INTO orders (customer_id, status, total_amount, shipping_address, order_date, created_at, updated_at) VALUES
    (1, 'completed', 1329.98, '123 Main St, New York, NY 10001', '2024-01-20 14:00:00', '2024-01-20 14:00:00', '2024-01-20 14:00:00'),
    (2, 'pending',    649.99, '456 Oak Ave, Los Angeles, CA 90001', '2024-01-20 14:00:00', '2024-01-20 14:00:00', '2024-01-20 14:00:00'),
    (3, 'shipped',    349.50, '789 Pine Rd, Chicago, IL 60601', '2024-01-20 14:00:00', '2024-01-20 14:00:00', '2024-01-20 14:00:00'),
    (1, 'pending',     37.50, NULL, '2024-01-20 14:00:00', '2024-01-20 14:00:00', '2024-01-20 14:00:00');

INSERT INTO order_items (order_id, product_id, quantity, unit_price, created_at) VALUES
    (1, 1, 1, 1299.99, '2024-01-20 14:00:00'),
    (1, 2, 1,   29.99, '2024-01-20 14:00:00'),
    (2, 4, 1,  599.00, '2024-01-20 14:00:00'),
    (2, 3, 1,   49.99, '2024-01-20 14:00:00'),
    (3, 5, 1,  349.50, '2024-01-20 14:00:00'),
    (4, 6, 2,   18.75, '2024-01-20 14:00:00');
