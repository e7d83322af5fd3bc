-- The fidelity scenario (tests/capture/capture.sh fidelity): the type surface
-- the base fixtures miss, odd names, key types, a primary-key change of a row
-- with an unchanged TOASTed value, and schema changes while streaming. Every
-- value is a literal so a replay of this file and workload.sql into a fresh
-- database gives the source's final state.
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TYPE colour AS ENUM ('red', 'green', 'blue');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE DOMAIN short_code AS varchar(8);
CREATE TABLE capture_marker (id SERIAL PRIMARY KEY, tag TEXT NOT NULL);

CREATE TABLE odd_types (
    id              bigint PRIMARY KEY,
    c_bit1          bit(1),
    c_bit12         bit(12),
    c_varbit_free   bit varying,
    c_num_free      numeric,
    c_num_arr       numeric(10, 2)[],
    c_enum_arr      colour[],
    c_text_arr      text[],
    c_domain        positive_int,
    c_domain_text   short_code,
    c_money         money,
    c_hstore        hstore,
    c_int4range     int4range,
    c_numrange      numrange,
    c_tstzrange     tstzrange,
    c_tsvector      tsvector,
    c_xml           xml,
    c_uuid          uuid,
    c_inet          inet,
    c_cidr          cidr,
    c_macaddr       macaddr,
    c_macaddr8      macaddr8,
    c_point         point,
    c_interval      interval,
    c_time0         time(0),
    c_time          time,
    c_timetz3       timetz(3),
    c_timetz        timetz,
    c_date          date,
    c_ts            timestamp,
    c_tstz          timestamptz,
    c_char          char(3),
    c_citext_like   varchar
);

INSERT INTO odd_types VALUES
(1, B'1', B'101010101010', B'1011', 0.000000000000000000000000000000000001,
 '{1.50,NULL,-2.25}', '{red,NULL,blue}', '{"a",NULL,"","NULL","x y"}', 7, 'AB-12',
 12345.67, 'a=>1, "b c"=>NULL', '[1,10)', '(1.5,2.5]', '["2024-01-01 00:00:00+00","2024-06-01 00:00:00+00")',
 'a fat cat sat on a mat', '<r a="1"/>', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
 '10.1.2.3/16', '10.1.0.0/16', '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05', '(-1.5,2)',
 '1 year 2 mons 3 days 04:05:06.5', '13:45:30', '13:45:30.123456', '13:45:30.123+02', '13:45:30.123456-05:30',
 '2024-02-29', '1999-12-31 23:59:59.999999', '2016-12-31 23:59:60+00', 'ab', 'plain'),
(2, B'0', B'000000000000', B'', 123456789012345678901234567890123456789012345678901234567890.123456789,
 '{}', '{}', '{}', 1, '',
 -92233720368547758.08, '', 'empty', '(,)', '[-infinity,infinity)',
 '', '<a>&amp;</a>', '00000000-0000-0000-0000-000000000000',
 '::1', '::/0', '00:00:00:00:00:00', '00:00:00:00:00:00:00:00', '(0,0)',
 '-1 mons +2 days -00:00:01', '00:00:00', '24:00:00', '00:00:00+14', '23:59:59.999999-14',
 'infinity', '-infinity', 'infinity', '', ''),
(3, NULL, NULL, NULL, -0.5, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL, '-infinity', NULL, NULL, NULL, NULL);
-- BC dates on a row of their own: Delta cannot store them and refuses the
-- row, which must not hide the other types from its cross-check.
INSERT INTO odd_types (id, c_date, c_ts) VALUES (5, '0044-03-15 BC', '0001-01-01 00:00:00 BC');

CREATE TABLE "Odd Names ü" (
    "Key Col"       integer PRIMARY KEY,
    "Mixed Case"    text,
    "with space"    integer,
    "quo""te"       text,
    "ñandú"         varchar(10)
);
INSERT INTO "Odd Names ü" VALUES (1, 'A', 1, 'it''s "q"', 'ñ'), (2, NULL, -2, NULL, 'ü');

CREATE TABLE key_numeric (k numeric(20, 5) PRIMARY KEY, v text);
INSERT INTO key_numeric VALUES (1.5, 'one and a half'), (-0.00001, 'tiny'), (123456789012345.12345, 'big');
CREATE TABLE key_uuid (k uuid PRIMARY KEY, v text);
INSERT INTO key_uuid VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'a'), ('00000000-0000-0000-0000-000000000000', 'zero');
CREATE TABLE key_text (k text PRIMARY KEY, v text);
INSERT INTO key_text VALUES ('00123', 'numeric-looking'), ('123', 'number'), ('abc', 'word'), ('with space', 's'), ('', 'empty');
CREATE TABLE key_composite (a integer, b text, v text, PRIMARY KEY (a, b));
INSERT INTO key_composite VALUES (1, 'x', 'first'), (1, 'y', 'second'), (2, 'x', 'third');
CREATE TABLE key_negative (k bigint PRIMARY KEY, v text);
INSERT INTO key_negative VALUES (-9223372036854775808, 'min'), (-1, 'minus one'), (9223372036854775807, 'max');

CREATE TABLE toasty (id integer PRIMARY KEY, big text, note text);
INSERT INTO toasty VALUES
 (1, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g), 'first'),
 (10, (SELECT string_agg(md5(g::text), '') FROM generate_series(301, 600) g), 'tenth');

CREATE TABLE evolving (
    id      integer PRIMARY KEY,
    status  varchar(20) NOT NULL,
    total   numeric(12, 2),
    qty     integer,
    ratio   real,
    code    varchar(10)
);
INSERT INTO evolving VALUES (1, 'new', 10.50, 1, 0.5, 'A'), (2, 'paid', 20.25, 2, 1.5, 'B'), (3, 'sent', 30.00, 3, 2.5, 'C');
