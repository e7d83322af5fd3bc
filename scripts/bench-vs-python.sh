#!/usr/bin/env bash
# Side-by-side throughput, in one run on one machine: our `replay` against the seed-style
# Python consumer (../shared/peers/seed_py_replay.py --mode batched) on the same generated
# Debezium file (benches/support/gen_bulk.py: real record shape with schemas, ~4 KB a record), into
# Delta alone and into the PostgreSQL target alone, each into a fresh location. Prints wall
# time, records/s, MB/s and peak RSS of each process, and the ratio per sink.
#
#   scripts/bench-vs-python.sh                 # 70k snapshot rows + 110k changes (~185k records)
#   BENCH_ROWS=10000 BENCH_CHANGES=20000 scripts/bench-vs-python.sh   # a quick look
#
# Environment: BENCH_DIR (default .tmp/bench), PEER (the Python consumer), BENCH_PG_URL (a
# PostgreSQL server to use; default a throwaway cluster, scripts/pg-cluster.sh), REPLAY (a
# replay binary; default: built with the bench profile, optimised without LTO). Ours writes the `cdc_events` history
# and keeps offsets and the ordering guard; the peer does neither (see its docstring).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${BENCH_DIR:-$root/.tmp/bench}
peer=${PEER:-$root/../shared/peers/seed_py_replay.py}
rows=${BENCH_ROWS:-70000}
changes=${BENCH_CHANGES:-110000}
mkdir -p "$dir"
[ -f "$peer" ] || { echo "the Python consumer is not at $peer (set PEER)" >&2; exit 1; }

venv=$dir/venv
if ! "$venv/bin/python" -c "import deltalake, pyarrow, psycopg2" 2>/dev/null; then
    echo "installing deltalake, pyarrow, psycopg2-binary into $venv ..."
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check deltalake pyarrow psycopg2-binary
fi

input=$dir/bulk-$rows-$changes.jsonl
[ -f "$input" ] || python3 "$root/benches/support/gen_bulk.py" --out "$input" --rows "$rows" --changes "$changes"
records=$(wc -l < "$input")
megabytes=$(( $(stat -c %s "$input") / 1000000 ))

replay=${REPLAY:-}
if [ -z "$replay" ]; then
    echo "building replay (bench profile) ..."
    (cd "$root" && cargo build --quiet --profile bench --example replay --features delta,postgres)
    replay=$root/target/release/examples/replay
fi

pg_url=${BENCH_PG_URL:-}
if [ -z "$pg_url" ]; then
    pg_url=$("$root/scripts/pg-cluster.sh" start "$dir/pg")
    trap '"$root/scripts/pg-cluster.sh" stop "$dir/pg" >/dev/null 2>&1 || true' EXIT
fi

# A fresh database for each run, on the same server.
fresh_database() {
    "$venv/bin/python" - "$pg_url" "$1" <<'EOF'
import sys, psycopg2
url, name = sys.argv[1], sys.argv[2]
c = psycopg2.connect(url); c.autocommit = True
c.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
c.cursor().execute(f'CREATE DATABASE "{name}"')
base, _, _ = url.rpartition("/")
print(f"{base}/{name}")
EOF
}

# Runs a command; prints "<wall seconds> <peak RSS MiB>" of it (its children included).
measure() {
    "$venv/bin/python" - "$@" <<'EOF'
import resource, subprocess, sys, time
started = time.monotonic()
result = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.monotonic() - started
if result.returncode != 0:
    sys.stderr.write(result.stderr[-4000:])
    sys.exit(result.returncode)
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{wall:.1f} {rss:.0f}")
EOF
}

row() { # sink, who, wall, rss
    awk -v sink="$1" -v who="$2" -v wall="$3" -v rss="$4" -v n="$records" -v mb="$megabytes" \
        'BEGIN { printf "| %-18s | %-6s | %7.1f s | %9.0f | %6.1f | %6.0f MiB |\n", sink, who, wall, n / wall, mb / wall, rss }'
}

echo
echo "$records records, $megabytes MB: $input"
echo "| sink               | who    |    wall   | records/s |  MB/s  |  peak RSS  |"
echo "|---|---|---|---|---|---|"
summary=()
for sink in delta target; do
    case $sink in
        delta)
            rm -rf "$dir/delta-peer" "$dir/delta-ours"
            peer_args=(--delta-root "$dir/delta-peer")
            our_args=(--delta-root "$dir/delta-ours")
            ;;
        target)
            peer_args=(--target-url "$(fresh_database bench_peer)")
            our_args=(--target-url "$(fresh_database bench_ours)")
            ;;
    esac
    read -r peer_wall peer_rss < <(measure "$venv/bin/python" "$peer" --mode batched --input "$input" "${peer_args[@]}")
    row "$sink" python "$peer_wall" "$peer_rss"
    read -r our_wall our_rss < <(measure "$replay" --input "$input" --dead-letters "$dir/dead-letters.jsonl" "${our_args[@]}")
    row "$sink" ours "$our_wall" "$our_rss"
    summary+=("$(awk -v s="$sink" -v p="$peer_wall" -v o="$our_wall" 'BEGIN { printf "%s: %.2fx the Python consumer", s, p / o }')")
done
echo
printf '%s\n' "${summary[@]}"
