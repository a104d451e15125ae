"""One connection's query loop for `cargo xtask bench --databases`.

Usage: `db_query_loop.py PROTOCOL PORT RATE SECONDS`, PROTOCOL one of `postgresql` (psycopg2,
database `shop`, user `app`), `mysql` (PyMySQL, database `shop`) or `redis` (redis-py), all on
127.0.0.1:PORT. Connects and prints `ready`; after a `go` line on stdin, runs one small query
(`SELECT 1` or `GET`) RATE times a second for SECONDS (open loop: query k is due at k / RATE),
then prints `done <queries> <user_ns> <system_ns> <p50_ns> <p99_ns>`: its own CPU time and the
latency of its queries from their due time to their result. Every query is its own statement,
as an application's are: psycopg2 and PyMySQL in autocommit, so no driver transaction wraps them.
"""
import os
import sys
import time

protocol, port, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

if protocol == "postgresql":
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user="app", dbname="shop")
    conn.autocommit = True
    cursor = conn.cursor()

    def query():
        cursor.execute("SELECT 1")
        cursor.fetchall()

elif protocol == "mysql":
    import pymysql

    conn = pymysql.connect(host="127.0.0.1", port=port, user="app", database="shop", autocommit=True)
    cursor = conn.cursor()

    def query():
        cursor.execute("SELECT 1")
        cursor.fetchall()

elif protocol == "redis":
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    client.set("bench-key", "value")

    def query():
        client.get("bench-key")

else:
    sys.exit(f"unknown protocol {protocol!r}")

print("ready", flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(0)
times_before = os.times()
interval = 1.0 / rate
total = rate * seconds
latencies = []
start = time.monotonic()
for k in range(total):
    due = start + k * interval
    now = time.monotonic()
    if now < due:
        time.sleep(due - now)
    query()
    latencies.append(time.monotonic() - due)
times_after = os.times()
latencies.sort()
user_ns = int((times_after.user - times_before.user) * 1e9)
system_ns = int((times_after.system - times_before.system) * 1e9)
p50 = int(latencies[len(latencies) // 2] * 1e9)
p99 = int(latencies[len(latencies) * 99 // 100] * 1e9)
print(f"done {total} {user_ns} {system_ns} {p50} {p99}", flush=True)
