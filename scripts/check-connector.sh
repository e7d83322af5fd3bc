#!/usr/bin/env bash
# Shows the Debezium connector's state and its task's; exits 1 unless both RUN.
#   scripts/check-connector.sh [--wait SECONDS]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require curl "apt-get install curl"
require jq "apt-get install jq"
wait=0
[ "${1:-}" = --wait ] && wait=${2:?--wait needs seconds}
deadline=$((SECONDS + wait))
while :; do
    status=$(curl -fsS "$CONNECT_URL/connectors/$CONNECTOR/status" 2>/dev/null || true)
    connector=$(jq -r '.connector.state // "MISSING"' <<<"${status:-{\}}")
    tasks=$(jq -r '[.tasks[]?.state] | join(",")' <<<"${status:-{\}}")
    if [ "$connector" = RUNNING ] && [ "$tasks" = RUNNING ]; then
        echo "connector $CONNECTOR: RUNNING, task RUNNING"
        exit 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "connector $CONNECTOR: ${connector}, tasks: ${tasks:-none}" >&2
        jq -r '.tasks[]?.trace // empty' <<<"${status:-{\}}" | head -20 >&2
        echo "see: scripts/logs.sh connect" >&2
        exit 1
    fi
    sleep 2
done
