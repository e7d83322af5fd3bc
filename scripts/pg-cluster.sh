#!/usr/bin/env bash
# A throwaway PostgreSQL cluster with wal_level=logical, no system service.
#   scripts/pg-cluster.sh start DIR   -> initdb + start on a free port (or $PG_PORT); prints the URL
#   scripts/pg-cluster.sh stop DIR
# With PG_SSL_DIR (server.crt, server.key, root.crt in it) the server speaks TLS
# with that certificate and checks client certificates against root.crt; lines
# in PG_HBA_FIRST go first in pg_hba.conf (e.g. `hostssl all certuser 127.0.0.1/32 cert`).
# Installs Debian's postgresql package when initdb is missing. Runs the server as
# the 'postgres' OS user when invoked as root (initdb refuses root).
set -euo pipefail

cmd=${1:?usage: pg-cluster.sh start|stop DIR}
dir=${2:?usage: pg-cluster.sh start|stop DIR}

find_bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && { echo "$d"; return 0; }
    done
    command -v initdb >/dev/null 2>&1 && { dirname "$(command -v initdb)"; return 0; }
    return 1
}

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

bindir=$(find_bindir || true)
if [ -z "$bindir" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "PostgreSQL server binaries not found: install Debian's postgresql package (apt-get install postgresql)" >&2
        exit 1
    fi
    echo "installing PostgreSQL from Debian's archive..." >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    bindir=$(find_bindir)
fi

case "$cmd" in
start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_pg "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    tls_options=""
    if [ -n "${PG_SSL_DIR:-}" ]; then
        # The server's own copies: it refuses a key others may read.
        mkdir -p "$dir/ssl"
        cp "$PG_SSL_DIR/server.crt" "$PG_SSL_DIR/server.key" "$PG_SSL_DIR/root.crt" "$dir/ssl/"
        chmod 600 "$dir/ssl/server.key"
        [ "$(id -u)" = 0 ] && chown -R postgres "$dir/ssl"
        tls_options="-c ssl=on -c ssl_cert_file=$dir/ssl/server.crt -c ssl_key_file=$dir/ssl/server.key -c ssl_ca_file=$dir/ssl/root.crt"
    fi
    if [ -n "${PG_HBA_FIRST:-}" ]; then
        hba=$dir/data/pg_hba.conf
        { printf '%s\n' "$PG_HBA_FIRST"; grep -vxF -f <(printf '%s\n' "$PG_HBA_FIRST") "$hba" || true; } >"$hba.new"
        mv "$hba.new" "$hba"
        [ "$(id -u)" = 0 ] && chown postgres "$hba"
    fi
    # A restarted cluster keeps its port (PG_PORT), so its clients reconnect.
    port=${PG_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
    as_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 -c max_connections=200 -c fsync=off -c synchronous_commit=off -c full_page_writes=off $tls_options" \
        start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    echo "$port" >"$dir/port"
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
stop)
    [ -f "$dir/data/PG_VERSION" ] && as_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    ;;
*)
    echo "usage: pg-cluster.sh start|stop DIR" >&2
    exit 2
    ;;
esac
