# Shared by the docker-compose scripts: tool checks and the seed's endpoints.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONNECT_URL=${CONNECT_URL:-http://localhost:8083}
SOURCE_URL=${SOURCE_URL:-postgres://postgres:postgres@localhost:5433/source_db}
TARGET_URL=${CDC_TARGET_URL:-postgres://target_user:target_password@localhost:5435/target_db}
DATALAKE_URL=${CDC_DATALAKE_URL:-postgres://datalake_user:datalake_password@localhost:5434/datalake_db}
CONNECTOR=${CONNECTOR:-postgres-source-connector}

# require TOOL HOW-TO-INSTALL
require() {
    command -v "$1" >/dev/null 2>&1 || { echo "$(basename "$0"): '$1' is required: $2" >&2; exit 1; }
}

# The compose command: Docker Compose v2, the `docker compose` plugin. The old
# standalone docker-compose (v1) cannot run `up --wait` and is not used.
compose() {
    if ! docker compose version >/dev/null 2>&1; then
        echo "$(basename "$0"): Docker Compose v2 ('docker compose') is required (https://docs.docker.com/compose/install/);" \
            "the standalone docker-compose v1 cannot run 'up --wait'" >&2
        exit 1
    fi
    docker compose -f "$root/docker-compose.yml" "$@"
}
