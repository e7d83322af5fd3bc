"""Runs tests/capture/workload.sql against a database with psql, step by step.

Statements between '-- session A' and '-- end sessions' run as two concurrent
sessions: A starts first, B runs while A sleeps inside its transaction, so B
commits first although A's first change has the lower LSN.
Usage: run_workload.py DATABASE_URL WORKLOAD_SQL
"""
import subprocess
import sys
import time

url, path = sys.argv[1], sys.argv[2]
text = open(path, encoding="utf-8").read()
if "-- session A\n" in text:
    before, rest = text.split("-- session A\n", 1)
    session_a, rest = rest.split("-- session B\n", 1)
    session_b, after = rest.split("-- end sessions\n", 1)
else:
    before, session_a, session_b, after = text, None, None, None


def psql(sql, background=False):
    args = ["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", url]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, text=True, stdout=subprocess.DEVNULL)
    proc.stdin.write(sql)
    proc.stdin.close()
    if background:
        return proc
    if proc.wait() != 0:
        sys.exit(f"workload step failed:\n{sql}")


psql(before)
if session_a is not None:
    a = psql(session_a, background=True)
    time.sleep(0.7)
    psql(session_b)
    if a.wait() != 0:
        sys.exit("session A failed")
    psql(after)
