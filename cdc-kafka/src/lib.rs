//! Kafka source for the pipeline: consumer group, seek to the sinks' durable
//! offsets, commit after apply, dead-letter topic.
