#!/usr/bin/env bash
# Starts the docker-compose deployment (PostgreSQL source/data lake/target,
# Kafka, Debezium Connect, Kafka UI) with Docker Compose v2, waits for the health
# checks, and registers the Debezium connector (connectors/postgres-source-connector.json).
#   scripts/start.sh               # the CDC services
#   scripts/start.sh --notebook    # plus Jupyter with notebooks/deltalake-query.ipynb (port 8888)
set -euo pipefail
source "$(dirname "$0")/common.sh"
require docker "install Docker (https://docs.docker.com/engine/install/)"
require curl "apt-get install curl"
require jq "apt-get install jq"

profiles=()
case "${1:-}" in
"") ;;
--notebook) profiles=(--profile notebook) ;;
*) echo "usage: scripts/start.sh [--notebook]" >&2; exit 2 ;;
esac

compose "${profiles[@]}" up -d --wait
echo "services are healthy; registering the Debezium connector"
config=$(jq -c .config "$root/connectors/postgres-source-connector.json")
curl -fsS -X PUT -H 'Content-Type: application/json' --data "$config" \
    "$CONNECT_URL/connectors/$CONNECTOR/config" >/dev/null
"$root/scripts/check-connector.sh" --wait 60
cat <<TEXT

Ready. Next:
  scripts/run-consumer.sh     # consume into ./deltalake and both PostgreSQL sinks
  scripts/test-cdc.sh         # change the source and check every sink follows
  Kafka UI: http://localhost:8080   Connect: $CONNECT_URL   Notebook (--notebook): http://localhost:8888
TEXT
