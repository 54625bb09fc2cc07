-- Sample shop database for `make demo`: several tables, ~340k rows, varied types,
-- a partitioned table and an awkward identifier. Deterministic (setseed).
SELECT setseed(0.42);
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'returned');

CREATE TABLE customers (
    id bigint PRIMARY KEY,
    uid uuid NOT NULL,
    name text NOT NULL,
    email varchar(120),
    country char(2),
    vip boolean NOT NULL DEFAULT false,
    tags text[],
    profile jsonb,
    created_at timestamptz NOT NULL
);
INSERT INTO customers
SELECT g, md5('c' || g)::uuid, 'Customer ' || g, 'c' || g || '@example.com',
       (ARRAY['DE','FR','US','JP','BR'])[1 + g % 5], g % 17 = 0,
       CASE WHEN g % 3 = 0 THEN ARRAY['newsletter', 'beta'] END,
       jsonb_build_object('score', round((random() * 100)::numeric, 2), 'lang', 'en'),
       timestamptz '2020-01-01 00:00:00+00' + g * interval '7 minutes'
FROM generate_series(1, 20000) g;

CREATE TABLE products (
    id int PRIMARY KEY,
    sku varchar(16) NOT NULL,
    price numeric(10,2) NOT NULL,
    weight_kg double precision,
    image bytea
);
INSERT INTO products
SELECT g, 'SKU-' || lpad(g::text, 6, '0'), round((random() * 500)::numeric, 2), random() * 20,
       decode(md5(g::text), 'hex')
FROM generate_series(1, 2000) g;

CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL,
    status order_status NOT NULL,
    total numeric(12,2) NOT NULL,
    ordered_at timestamptz NOT NULL,
    shipped_on date,
    note text
);
INSERT INTO orders
SELECT g, 1 + (g * 7919) % 20000, (ARRAY['new','paid','shipped','returned'])[1 + g % 4]::order_status,
       round((random() * 1000)::numeric, 2),
       timestamptz '2023-01-01 00:00:00+00' + g * interval '90 seconds',
       CASE WHEN g % 4 >= 2 THEN date '2023-01-03' + g / 1000 END,
       CASE WHEN g % 10 = 0 THEN 'gift wrap, "please"' END
FROM generate_series(1, 200000) g;

CREATE TABLE events (
    id bigint,
    at timestamptz NOT NULL,
    kind text,
    ip inet,
    payload jsonb
) PARTITION BY RANGE (at);
CREATE TABLE events_2024_q1 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2024-04-01');
CREATE TABLE events_2024_q2 PARTITION OF events FOR VALUES FROM ('2024-04-01') TO ('2024-07-01');
INSERT INTO events
SELECT g, timestamptz '2024-01-01 00:00:00+00' + g * interval '2 minutes',
       (ARRAY['view','click','buy'])[1 + g % 3], ('10.0.' || g % 256 || '.' || g % 199)::inet,
       jsonb_build_object('page', '/p/' || g % 500, 'ms', g % 1000)
FROM generate_series(1, 100000) g;

CREATE TABLE "Audit Log" (
    "Entry ID" int GENERATED ALWAYS AS IDENTITY,
    "took" interval,
    "détails" text
);
INSERT INTO "Audit Log" ("took", "détails")
SELECT g * interval '1.5 seconds', 'entrée ' || g FROM generate_series(1, 20000) g;

CREATE VIEW big_spenders AS SELECT customer_id, sum(total) FROM orders GROUP BY 1;  -- not dumped
ANALYZE;
