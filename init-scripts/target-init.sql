-- Target database (target_db): a mirror of the source tables, created by the
-- PgTargetSink on first sight in the source's schema (public), plus the offsets
-- that make the consumer exactly-once.

CREATE SCHEMA IF NOT EXISTS cdc_meta;

CREATE TABLE IF NOT EXISTS cdc_meta.offsets (
    consumer        text    NOT NULL,
    topic           text    NOT NULL,
    kafka_partition integer NOT NULL,
    kafka_offset    bigint  NOT NULL,
    updated_at      timestamp with time zone NOT NULL DEFAULT now(),
    kafka_cluster   text,   -- the Kafka cluster id the offset is an offset in
    last_order      text COLLATE "C",   -- greatest order key applied from the partition
    PRIMARY KEY (consumer, topic, kafka_partition)
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'target_user') THEN
        GRANT USAGE, CREATE ON SCHEMA public, cdc_meta TO target_user;
        GRANT ALL ON ALL TABLES IN SCHEMA public, cdc_meta TO target_user;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public, cdc_meta GRANT ALL ON TABLES TO target_user;
    END IF;
END $$;
