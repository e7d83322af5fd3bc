#!/usr/bin/env bash
# The chaos suite: the project's own binaries (kafka_broker, consumer) applying
# a generated real-shaped Debezium stream (tests/chaos/generate.py: a snapshot,
# then updates, deletes and inserts with hot keys, over 64 partitions, plus
# poison records) into all three sinks, while it
#   (a) SIGKILLs the consumer at random points,
#   (b) runs a rebalance storm: up to three consumers of one group joining,
#       leaving (SIGTERM) and one killed,
#   (c) feeds poison: truncated JSON, not JSON, a wrong value type, an unknown
#       op, a 2 MB value, a key that is not JSON,
#   (d) stops PostgreSQL mid-stream and starts it again,
#   (e) sends SIGTERM during a PostgreSQL outage (the consumer must stop
#       within its shutdown timeout),
# then checks (tests/chaos/check.py): every sink equals the source state, both
# histories hold each change exactly once, every poison record is in the
# dead-letter topic and no good one, no panic, progress after every fault.
#
#   scripts/chaos.sh                      # full: 100k events, 20 kills, 15 storm steps
#   scripts/chaos.sh --short              # the test command's: 20k events, 6 kills, 6 steps
#   scripts/chaos.sh --seed 42            # reproduce a run (the summary line prints its seed)
#
# Prints one summary line; exits non-zero on any failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

seed=${CDC_CHAOS_SEED:-$((RANDOM * 32768 + RANDOM))}
events=100000 kills=20 storm=15
while [ $# -gt 0 ]; do
    case "$1" in
    --seed) seed=$2; shift 2 ;;
    --events) events=$2; shift 2 ;;
    --kills) kills=$2; shift 2 ;;
    --short) events=20000 kills=6 storm=6; shift ;;
    *) echo "usage: chaos.sh [--short] [--seed N] [--events N] [--kills N]" >&2; exit 2 ;;
    esac
done
RANDOM=$seed
started=$SECONDS
shutdown_timeout=10

source "$root/scripts/python-env.sh"
python_env

work=${CDC_CHAOS_DIR:-$(mktemp -d /tmp/cdc-chaos.XXXXXX)}
mkdir -p "$work"
chmod 755 "$work"
# Every process runs in a process group of its own, stopped on any exit.
pids=()
spawn() { setsid "$@" & pids+=($!); }
stop_group() { kill "-${2:-TERM}" -- "-$1" 2>/dev/null || true; }
alive() { kill -0 -- "-$1" 2>/dev/null; }
cleanup() {
    for pid in "${pids[@]}"; do stop_group "$pid" KILL; done
    wait 2>/dev/null || true
    "$root/scripts/pg-cluster.sh" stop "$work/pg"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
    echo "chaos: FAILED (seed $seed): $*" >&2
    for f in "$work"/broker.log $(ls -t "$work"/consumer-*.log 2>/dev/null | head -2); do
        echo "--- $f" >&2; tail -20 "$f" >&2 || true
    done
    echo "chaos: reproduce with scripts/chaos.sh --seed $seed --events $events --kills $kills (logs in $work)" >&2
    exit 1
}
pause() { sleep "$(( $1 + RANDOM % ($2 - $1 + 1) )).$(( RANDOM % 10 ))"; }

cargo build --quiet --locked --example consumer --example kafka_broker
bin=$root/target/debug/examples

echo "chaos: seed $seed, $events events, in $work"
admin=$("$root/scripts/pg-cluster.sh" start "$work/pg")
port=$(cat "$work/pg/port")
db() { echo "postgres://postgres@127.0.0.1:$port/$1"; }
for name in target_db datalake_db; do psql -X -q "$admin" -c "CREATE DATABASE $name"; done
pg_stop() { "$root/scripts/pg-cluster.sh" stop "$work/pg"; }
pg_start() { PG_PORT=$port "$root/scripts/pg-cluster.sh" start "$work/pg" >/dev/null; }

"$python" tests/chaos/generate.py --seed "$seed" --events "$events" --out "$work" >/dev/null
spawn bash -c '"$1/kafka_broker" --publish-stdin --partitions 64 --address-file "$2/kafka.addr" <"$2/stream.jsonl" 2>"$2/broker.log"' \
    _ "$bin" "$work"
for _ in $(seq 1 120); do grep -q "stdin closed" "$work/broker.log" 2>/dev/null && break; sleep 0.5; done
grep -q "stdin closed" "$work/broker.log" || fail "the broker did not publish the stream"
brokers=$(cat "$work/kafka.addr")

cat >"$work/consumer.toml" <<TOML
[kafka]
brokers = "$brokers"
group_id = "chaos"
progress_secs = 2
shutdown_timeout_secs = $shutdown_timeout
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
[batch]
max_records = 2000
max_latency_ms = 300
[retry]
initial_backoff_ms = 100
max_backoff_ms = 1000
[delta]
root = "$work/deltalake"
[target]
url = "$(db target_db)"
[datalake]
enabled = true
url = "$(db datalake_db)"
TOML
runs=0
start_consumer() {
    runs=$((runs + 1))
    spawn "$bin/consumer" --config "$work/consumer.toml" >"$work/consumer-$runs.log" 2>&1
}

echo "chaos: (a) $kills SIGKILLs at random points"
for _ in $(seq 1 "$kills"); do
    start_consumer
    pause 1 5
    stop_group "${pids[-1]}" KILL
done

echo "chaos: (b) a rebalance storm of $storm steps: three members joining, leaving, one killed"
members=()
for step in $(seq 1 "$storm"); do
    live=()
    for pid in "${members[@]}"; do alive "$pid" && live+=("$pid"); done
    members=("${live[@]}")
    if [ ${#members[@]} -lt 3 ] && [ $((RANDOM % 3)) != 0 ]; then
        start_consumer
        members+=("${pids[-1]}")
    elif [ ${#members[@]} -gt 0 ]; then
        victim=${members[$((RANDOM % ${#members[@]}))]}
        if [ "$step" = $((storm / 2)) ]; then stop_group "$victim" KILL; else stop_group "$victim" TERM; fi
    fi
    pause 1 4
done
for pid in "${members[@]}"; do stop_group "$pid" TERM; done
for pid in "${members[@]}"; do
    for _ in $(seq 1 $((shutdown_timeout * 5 + 50))); do alive "$pid" || break; sleep 0.2; done
    alive "$pid" && fail "a member did not stop on SIGTERM within $((shutdown_timeout + 10)) s"
done

echo "chaos: (d) PostgreSQL stopped and started mid-stream"
start_consumer
consumer=${pids[-1]}
pause 2 4
pg_stop
sleep 5
alive "$consumer" || fail "the consumer died during the PostgreSQL outage"
pg_start
sleep 5
alive "$consumer" || fail "the consumer died after the PostgreSQL outage"

echo "chaos: (e) SIGTERM during a PostgreSQL outage"
pg_stop
sleep 2
stop_group "$consumer" TERM
t0=$SECONDS
while alive "$consumer" && [ $((SECONDS - t0)) -le $((shutdown_timeout + 10)) ]; do sleep 0.2; done
alive "$consumer" && fail "SIGTERM during an outage: still running after $((SECONDS - t0)) s (timeout $shutdown_timeout s)"
stop_secs=$((SECONDS - t0))
pg_start

echo "chaos: draining"
start_consumer
consumer=${pids[-1]}
check() { "$python" tests/chaos/check.py "$work" "$brokers" "$(db target_db)" "$(db datalake_db)" "$work/deltalake"; }
result=""
for _ in $(seq 1 60); do
    if result=$(check 2>"$work/check.err"); then break; fi
    result=""
    alive "$consumer" || fail "the consumer died while draining"
    sleep 5
done
[ -n "$result" ] || { cat "$work/check.err" >&2; fail "the sinks did not converge to the source within 300 s"; }
stop_group "$consumer" TERM
wait "$consumer" 2>/dev/null || true
if grep -l "panicked" "$work"/consumer-*.log >/dev/null 2>&1; then
    fail "a consumer panicked: $(grep -l panicked "$work"/consumer-*.log | tr '\n' ' ')"
fi
echo "chaos: passed seed=$seed events=$events kills=$kills storm=$storm consumer_runs=$runs sigterm_in_outage_stop_s=$stop_secs wall_s=$((SECONDS - started)) $result"
