-- The fidelity scenario's changes (see init.sql), applied after the snapshot.

-- step: odd types change and return to NULL
UPDATE odd_types SET c_num_free = 1e-30, c_text_arr = '{NULL}', c_enum_arr = '{green}', c_hstore = 'k=>v',
    c_interval = '-178000000 years' WHERE id = 1;
UPDATE odd_types SET c_date = '4713-01-01 BC' WHERE id = 5;
UPDATE odd_types SET c_num_free = NULL, c_money = NULL, c_tstzrange = NULL WHERE id = 2;
INSERT INTO odd_types (id, c_num_free, c_num_arr, c_varbit_free) VALUES (4, 99999999999999999999999999999999999999.5, '{0.01}', B'1');
DELETE FROM odd_types WHERE id = 3;
UPDATE odd_types SET c_date = '-infinity', c_ts = 'infinity', c_tstz = '-infinity', c_time0 = '23:59:60' WHERE id = 4;

-- step: odd names and keys
UPDATE "Odd Names ü" SET "Mixed Case" = 'B', "ñandú" = 'ñandú' WHERE "Key Col" = 1;
DELETE FROM "Odd Names ü" WHERE "Key Col" = 2;
UPDATE key_numeric SET v = 'updated' WHERE k = 1.5;
UPDATE key_numeric SET k = 2.5 WHERE k = -0.00001;
UPDATE key_uuid SET v = 'updated' WHERE k = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11';
DELETE FROM key_uuid WHERE k = '00000000-0000-0000-0000-000000000000';
UPDATE key_text SET v = 'updated' WHERE k = '00123';
DELETE FROM key_text WHERE k = '123';
UPDATE key_text SET k = 'renamed key' WHERE k = '';
UPDATE key_composite SET v = 'updated' WHERE a = 1 AND b = 'y';
UPDATE key_composite SET b = 'z' WHERE a = 2 AND b = 'x';
DELETE FROM key_composite WHERE a = 1 AND b = 'x';
UPDATE key_negative SET v = 'updated' WHERE k = -9223372036854775808;
DELETE FROM key_negative WHERE k = -1;

-- step: primary-key changes of rows whose TOASTed value did not change
UPDATE toasty SET id = 2 WHERE id = 1;
BEGIN;
UPDATE toasty SET id = 20, note = 'twentieth' WHERE id = 10;
UPDATE toasty SET note = 'twentieth, again' WHERE id = 20;
COMMIT;

-- step: schema changes while streaming
ALTER TABLE evolving ALTER COLUMN total TYPE numeric(14, 4);
UPDATE evolving SET total = 11.1234 WHERE id = 1;
ALTER TABLE evolving ALTER COLUMN qty TYPE bigint;
UPDATE evolving SET qty = 5000000000 WHERE id = 2;
ALTER TABLE evolving ALTER COLUMN ratio TYPE double precision;
UPDATE evolving SET ratio = 0.1 WHERE id = 3;
ALTER TABLE evolving ALTER COLUMN code TYPE varchar(40);
UPDATE evolving SET code = 'a code longer than ten' WHERE id = 1;
ALTER TABLE evolving ADD COLUMN discontinued boolean NOT NULL DEFAULT false;
UPDATE evolving SET discontinued = true WHERE id = 3;
ALTER TABLE evolving RENAME COLUMN status TO order_status;
UPDATE evolving SET order_status = 'closed' WHERE id = 1;
INSERT INTO evolving (id, order_status, total, qty, ratio, code) VALUES (4, 'new', 1.5, 1, 1, 'D');
