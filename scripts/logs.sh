#!/usr/bin/env bash
# Follows the logs of the deployment's services (all, or the ones named).
#   scripts/logs.sh [connect|kafka|postgres-source|...]
set -euo pipefail
source "$(dirname "$0")/common.sh"
require docker "install Docker (https://docs.docker.com/engine/install/)"
compose logs -f --tail=100 "$@"
