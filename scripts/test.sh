#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine (the README's test command):
# installs what is missing (Debian's PostgreSQL, docker-compose and JDK, needing
# root for apt; the Python packages into .venv), starts a throwaway PostgreSQL cluster with wal_level=logical
# on a free port and a local S3-protocol server (moto), exports their URLs to
# the tests as CDC_TEST_PG_URL and CDC_TEST_S3_ENDPOINT, checks formatting and
# lints, runs the tests, the Delta suite again on s3:// roots, then the local end-to-end run with real
# Debezium (scripts/e2e-local.sh), the notebook against the demo's tables
# (scripts/notebook-check.sh) and the short chaos suite (scripts/chaos.sh), and
# stops the cluster.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p cdc-core     # extra arguments go to the test runner
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The Delta tests read our tables with another Delta implementation, the
# Python deltalake package, from the project's virtual environment.
source "$root/scripts/python-env.sh"
python_env
export CDC_TEST_PYTHON=$python

apt_install() {
    [ "$(id -u)" = 0 ] || { echo "please install Debian's $* (apt-get install $*)" >&2; exit 1; }
    echo "installing $* from Debian's archive..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
# docker-compose validates docker-compose.yml offline (tests/deployment.rs);
# the JDK runs real Debezium (scripts/e2e-local.sh).
command -v docker-compose >/dev/null || apt_install docker-compose
command -v javac >/dev/null || apt_install openjdk-17-jdk-headless
# librdkafka links the system's OpenSSL (TLS and SASL to Kafka).
pkg-config --exists openssl 2>/dev/null || apt_install libssl-dev pkg-config

pg_dir=$(mktemp -d /tmp/cdc-test-pg.XXXXXX)
chmod 755 "$pg_dir"
cleanup() {
    "$root/scripts/s3-server.sh" stop "$pg_dir"
    "$root/scripts/pg-cluster.sh" stop "$pg_dir"
    rm -rf "$pg_dir"
}
trap cleanup EXIT
CDC_TEST_PG_URL=$("$root/scripts/pg-cluster.sh" start "$pg_dir")
export CDC_TEST_PG_URL
echo "test PostgreSQL: $CDC_TEST_PG_URL (wal_level=logical)"
CDC_TEST_S3_ENDPOINT=$("$root/scripts/s3-server.sh" start "$pg_dir")
export CDC_TEST_S3_ENDPOINT
echo "test S3 server: $CDC_TEST_S3_ENDPOINT (bucket cdc-test)"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    # Doc tests first: nextest's summary stays the last word.
    cargo test --workspace --all-features --locked --doc "$@"
    cargo nextest run --workspace --all-features --locked --no-fail-fast "$@"
else
    cargo test --workspace --all-features --locked --no-fail-fast "$@"
fi

# The Delta sink's suite once more, its tables on the S3 server.
if [ $# -eq 0 ]; then
    # The workspace's own build (no second feature resolution), its tests filtered.
    if cargo nextest --version >/dev/null 2>&1; then
        CDC_TEST_DELTA_STORE=s3 cargo nextest run --workspace --all-features --locked --no-fail-fast \
            -E 'package(cdc-sinks) & binary(it) & test(/^(delta::|pk_change::delta_|change_feed::|scd2::a_|scd2::versions_)/)'
    else
        CDC_TEST_DELTA_STORE=s3 cargo test --workspace --all-features --locked --no-fail-fast --test it -- \
            delta:: pk_change::delta_ change_feed:: scd2::a_ scd2::versions_
    fi
fi

# The whole deployment as local processes, with real Debezium (skipped when
# the arguments select some tests only).
if [ $# -eq 0 ]; then
    scripts/e2e-local.sh
    scripts/notebook-check.sh
    # It must stop everything it started, children of pipes included.
    sleep 1
    if left=$(pgrep -af 'DebeziumStream|examples/kafka_broker|examples/consumer'); then
        echo "scripts/e2e-local.sh left processes running:" >&2
        echo "$left" >&2
        exit 1
    fi
    # Kills, a rebalance storm, poison, a PostgreSQL outage: exactly once still.
    # A fixed seed keeps the test command reproducible; other seeds by hand.
    scripts/chaos.sh --short --seed "${CDC_CHAOS_SEED:-2}"
fi
