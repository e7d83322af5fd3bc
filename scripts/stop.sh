#!/usr/bin/env bash
# Stops the docker-compose deployment.
#   scripts/stop.sh             # keep the databases' volumes
#   scripts/stop.sh --volumes   # and delete them (cdc-* named volumes: a fresh start next time;
#                               # also delete the consumer's stored positions, see README)
set -euo pipefail
source "$(dirname "$0")/common.sh"
require docker "install Docker (https://docs.docker.com/engine/install/)"
case "${1:-}" in
"") compose --profile notebook down ;;
--volumes) compose --profile notebook down --volumes ;;
*) echo "usage: scripts/stop.sh [--volumes]" >&2; exit 2 ;;
esac
