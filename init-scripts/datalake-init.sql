-- Data-lake database (datalake_db): raw events, processed current state, and
-- the offsets that make the consumer exactly-once. The PgDatalakeSink creates
-- what is missing itself; this script lets a DBA create it up front with grants.

CREATE SCHEMA IF NOT EXISTS cdc_raw;
CREATE SCHEMA IF NOT EXISTS cdc_processed;
CREATE SCHEMA IF NOT EXISTS cdc_meta;

-- Every raw Debezium event; (topic, partition, offset) makes replays harmless.
CREATE TABLE IF NOT EXISTS cdc_raw.cdc_events (
    id              bigserial PRIMARY KEY,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    source_schema   text        NOT NULL,
    source_table    text        NOT NULL,
    op              text        NOT NULL,
    record_key      jsonb,
    before          jsonb,
    after           jsonb,
    source          jsonb       NOT NULL,
    tx_id           bigint,
    lsn             bigint,
    event_ts        timestamp with time zone,
    ingested_at     timestamp with time zone NOT NULL DEFAULT now(),
    UNIQUE (topic, kafka_partition, kafka_offset)
);
CREATE INDEX IF NOT EXISTS cdc_events_by_table ON cdc_raw.cdc_events (source_schema, source_table, event_ts);

-- Last applied Kafka offset per consumer and partition, written in the same
-- transaction as the data.
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

-- cdc_processed.<table> tables are created by the sink on first sight.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'datalake_user') THEN
        GRANT USAGE, CREATE ON SCHEMA cdc_raw, cdc_processed, cdc_meta TO datalake_user;
        GRANT ALL ON ALL TABLES IN SCHEMA cdc_raw, cdc_processed, cdc_meta TO datalake_user;
        GRANT ALL ON ALL SEQUENCES IN SCHEMA cdc_raw TO datalake_user;
        ALTER DEFAULT PRIVILEGES IN SCHEMA cdc_raw, cdc_processed, cdc_meta GRANT ALL ON TABLES TO datalake_user;
    END IF;
END $$;
