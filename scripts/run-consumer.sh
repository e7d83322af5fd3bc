#!/usr/bin/env bash
# Runs the consumer against the docker-compose deployment (Kafka on
# localhost:29092, the data lake on 5434, the target on 5435, Delta tables in
# ./deltalake). Extra arguments go to the consumer, e.g. --config consumer.toml.
set -euo pipefail
source "$(dirname "$0")/common.sh"
require cargo "install Rust (https://rustup.rs)"
cd "$root"
exec cargo run --release --example consumer -- "$@"
