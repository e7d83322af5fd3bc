#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine (the README's test command):
# installs what is missing (Debian's PostgreSQL), starts a throwaway PostgreSQL
# cluster with wal_level=logical on a free port, exports its URL to the tests as
# CDC_TEST_PG_URL, checks formatting and lints, runs the tests, stops the cluster.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p cdc-core     # extra arguments go to the test runner
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

pg_dir=$(mktemp -d /tmp/cdc-test-pg.XXXXXX)
chmod 755 "$pg_dir"
cleanup() { "$root/scripts/pg-cluster.sh" stop "$pg_dir"; rm -rf "$pg_dir"; }
trap cleanup EXIT
CDC_TEST_PG_URL=$("$root/scripts/pg-cluster.sh" start "$pg_dir")
export CDC_TEST_PG_URL
echo "test PostgreSQL: $CDC_TEST_PG_URL (wal_level=logical)"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    # Doc tests first: nextest's summary stays the last word.
    cargo test --workspace --locked --doc "$@"
    cargo nextest run --workspace --locked --no-fail-fast "$@"
else
    cargo test --workspace --locked --no-fail-fast "$@"
fi
