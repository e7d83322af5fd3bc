//! The deployment files a Docker user runs: docker-compose.yml validates (with
//! Debian's docker-compose, offline) and has the seed's services, ports and
//! health checks; the connector configuration captures what cdc-core decodes;
//! the scripts parse and name the tool they miss.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose(args: &[&str]) -> String {
    let output = Command::new("docker-compose")
        .arg("-f")
        .arg(root().join("docker-compose.yml"))
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("docker-compose is needed to validate docker-compose.yml ({e}): apt-get install docker-compose, or run scripts/test.sh")
        });
    assert!(output.status.success(), "docker-compose {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn compose_file_is_valid_with_the_seed_services() {
    compose(&["config", "-q"]);
    let services = compose(&["--profile", "notebook", "config", "--services"]);
    for service in
        ["postgres-source", "postgres-datalake", "postgres-target", "kafka", "connect", "kafka-ui", "notebook"]
    {
        assert!(services.lines().any(|s| s == service), "service {service} missing: {services}");
    }
    let config = compose(&["--profile", "notebook", "config"]);
    assert_eq!(config.matches("profiles:\n    - notebook").count(), 1, "the notebook only under its profile");
    for port in ["5433", "5434", "5435", "29092", "8083", "8080", "8888"] {
        assert!(config.contains(&format!("published: {port}")), "port {port} not published");
    }
    assert!(config.contains("wal_level=logical"));
    assert_eq!(config.matches("healthcheck:").count(), 7, "a health check on every service");
    for image in config.lines().filter_map(|l| l.trim().strip_prefix("image: ")) {
        let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
        assert!(!tag.is_empty() && tag != "latest", "image {image} is not pinned");
    }
}

/// The Docker path runs what the tests run: the Debezium version the
/// fixtures were recorded with, the maintained Kafka UI, settings the
/// images read, and data in named volumes `stop.sh --volumes` drops.
#[test]
fn compose_runs_the_tested_versions_with_named_volumes() {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    let fixture = std::fs::read_to_string(root().join("tests/fixtures/debezium/schemas.jsonl")).unwrap();
    let version = fixture.split("\"version\":\"").nth(1).and_then(|v| v.split('"').next()).unwrap();
    assert!(
        text.contains(&format!("image: quay.io/debezium/connect:{version}\n")),
        "Connect is not Debezium {version}"
    );
    assert!(text.contains("image: ghcr.io/kafbat/kafka-ui:"), "Kafka UI is not kafbat's");
    for line in text.lines().map(str::trim) {
        let name = line.split(':').next().unwrap_or_default();
        assert!(
            !name.ends_with("_STORAGE_REPLICATION_FACTOR") || name.starts_with("CONNECT_"),
            "{line}: not read by the image"
        );
        assert!(!line.starts_with("version:"), "Compose v2 ignores `version`");
    }
    let config = compose(&["config"]);
    for (volume, path) in [
        ("cdc-postgres-source-data", "/var/lib/postgresql/data"),
        ("cdc-postgres-datalake-data", "/var/lib/postgresql/data"),
        ("cdc-postgres-target-data", "/var/lib/postgresql/data"),
        ("cdc-kafka-data", "/var/lib/kafka/data"),
    ] {
        assert!(config.contains(&format!("name: {volume}")), "volume {volume} is not named: {config}");
        assert!(config.contains(path), "nothing mounted at {path}");
    }
    assert!(text.contains("KAFKA_LOG_DIRS: /var/lib/kafka/data"), "Kafka writes its log outside its volume");
}

#[test]
fn connector_configuration_matches_the_decoder() {
    let text = std::fs::read_to_string(root().join("connectors/postgres-source-connector.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let config = &json["config"];
    let expect = [
        ("connector.class", "io.debezium.connector.postgresql.PostgresConnector"),
        ("plugin.name", "pgoutput"),
        ("topic.prefix", "cdc"),
        ("provide.transaction.metadata", "true"),
        ("column.propagate.source.type", ".*"),
        ("decimal.handling.mode", "precise"),
        ("value.converter", "org.apache.kafka.connect.json.JsonConverter"),
        ("value.converter.schemas.enable", "true"),
        // NULL must stay NULL (JsonConverter would write the column default).
        ("value.converter.replace.null.with.default", "false"),
        // Said, not left to the connector's default: a first start snapshots, a restart resumes.
        ("snapshot.mode", "initial"),
    ];
    for (key, value) in expect {
        assert_eq!(config[key], value, "{key}");
    }
    assert!(config["heartbeat.interval.ms"].as_str().is_some_and(|v| v.parse::<u64>().unwrap() > 0));
    assert!(config["publication.name"].is_string());
    let source = std::fs::read_to_string(root().join("init-scripts/source-init.sql")).unwrap();
    let include = config["table.include.list"].as_str().unwrap();
    for table in ["customers", "products", "orders", "order_items"] {
        assert!(source.contains(&format!("CREATE TABLE IF NOT EXISTS {table} ")), "{table} in source-init.sql");
        assert!(include.split(',').any(|t| t == format!("public.{table}")), "{table} captured");
    }
}

/// A PATH holding only what the scripts need to report a missing tool.
fn bare_path() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for tool in ["dirname", "basename", "bash"] {
        let found = ["/usr/bin", "/bin"].iter().map(|d| PathBuf::from(d).join(tool)).find(|p| p.exists()).unwrap();
        std::os::unix::fs::symlink(found, dir.path().join(tool)).unwrap();
    }
    dir
}

#[test]
fn scripts_parse_and_name_what_is_missing() {
    for entry in std::fs::read_dir(root().join("scripts")).unwrap() {
        let path = entry.unwrap().path();
        let status = Command::new("bash").arg("-n").arg(&path).status().unwrap();
        assert!(status.success(), "{} does not parse", path.display());
        let mode = std::os::unix::fs::PermissionsExt::mode(&path.metadata().unwrap().permissions());
        // A file without a shebang is sourced by the others, not run.
        let sourced = !std::fs::read_to_string(&path).unwrap().starts_with("#!");
        assert!(sourced || mode & 0o111 != 0, "{} is not executable", path.display());
    }
    let path = bare_path();
    for (script, tool) in [
        ("start.sh", "docker"),
        ("stop.sh", "docker"),
        ("logs.sh", "docker"),
        ("check-connector.sh", "curl"),
        ("test-cdc.sh", "psql"),
        ("run-consumer.sh", "cargo"),
    ] {
        let output = Command::new(path.path().join("bash"))
            .arg(root().join("scripts").join(script))
            .env("PATH", path.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{script}: {stderr}");
        assert!(stderr.contains(&format!("'{tool}' is required")), "{script} should name {tool}: {stderr}");
    }
}
