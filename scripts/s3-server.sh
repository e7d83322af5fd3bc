#!/usr/bin/env bash
# A throwaway S3-protocol server on loopback (moto, from the project's .venv)
# with one bucket, for the Delta tests on s3:// roots.
#   scripts/s3-server.sh start DIR   -> starts it on a free port; prints the endpoint URL
#   scripts/s3-server.sh stop DIR
# The bucket is `cdc-test`; any access key is accepted.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

cmd=${1:?usage: s3-server.sh start|stop DIR}
dir=${2:?usage: s3-server.sh start|stop DIR}

case "$cmd" in
start)
    source "$root/scripts/python-env.sh"
    python_env
    mkdir -p "$dir"
    port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    endpoint=http://127.0.0.1:$port
    # setsid: its own process group, so stop ends the server and nothing else.
    setsid "$python" "$root/tests/s3/server.py" "$port" >"$dir/s3-server.log" 2>&1 &
    echo $! >"$dir/s3-server.pid"
    for _ in $(seq 100); do
        if "$python" - "$endpoint" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/cdc-test", method="PUT"), timeout=2)
PY
            echo "$endpoint"
            exit 0
        fi
        sleep 0.2
    done
    cat "$dir/s3-server.log" >&2
    echo "the S3 test server did not start" >&2
    exit 1
    ;;
stop)
    if [ -f "$dir/s3-server.pid" ]; then
        kill -- "-$(cat "$dir/s3-server.pid")" 2>/dev/null || true
        rm -f "$dir/s3-server.pid"
    fi
    ;;
*)
    echo "usage: s3-server.sh start|stop DIR" >&2
    exit 2
    ;;
esac
