"""A redis-py workload driven over stdin, so tests decide when each phase runs.

Usage: `redis_worker.py PORT`. Commands (one per line): `connect` (a client on 127.0.0.1:PORT,
which connects on its first command), `work` (SET, GET of a present and a missing key, a
transaction pipeline of SET and INCR, an LPUSH on a string that fails with WRONGTYPE, a SET of a
100 kB value, an MGET), `exit`. Prints `ok <command>` after each, flushing, so the test can wait
for it.
"""
import sys

import redis

port = int(sys.argv[1])
client = None


def work():
    client.set("user:1", "s3cret")
    assert client.get("user:1") == b"s3cret"
    assert client.get("missing") is None
    with client.pipeline() as pipe:
        pipe.set("counter", "1")
        pipe.incr("counter")
        assert pipe.execute() == [True, 2]
    try:
        client.lpush("user:1", "x")
    except redis.ResponseError:
        pass
    client.set("big", "x" * 100_000)
    assert client.mget("user:1", "missing", "counter") == [b"s3cret", None, b"2"]


for line in sys.stdin:
    command = line.strip()
    if command == "connect":
        client = redis.Redis(host="127.0.0.1", port=port)
    elif command == "work":
        work()
    elif command == "exit":
        print("ok exit", flush=True)
        break
    print(f"ok {command}", flush=True)
