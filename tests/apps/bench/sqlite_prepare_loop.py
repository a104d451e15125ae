"""`cargo xtask bench --sqlite`: times sqlite3_prepare_v2 + sqlite3_finalize pairs through the C
API (ctypes: no statement cache in between), on an in-memory database.

Prints `ready` once the database is open, then for each `go N` line on stdin runs N pairs and
prints the mean nanoseconds per pair; `exit` ends it.
"""
import ctypes
import sys
import time

lib = ctypes.CDLL("libsqlite3.so.0")
db = ctypes.c_void_p()
assert lib.sqlite3_open(b":memory:", ctypes.byref(db)) == 0
stmt = ctypes.c_void_p()
sql = b"SELECT 1"
prepare, finalize = lib.sqlite3_prepare_v2, lib.sqlite3_finalize
print("ready", flush=True)
for line in sys.stdin:
    words = line.split()
    if not words or words[0] != "go":
        break
    n = int(words[1])
    started = time.perf_counter()
    for _ in range(n):
        prepare(db, sql, -1, ctypes.byref(stmt), None)
        finalize(stmt)
    print(f"{(time.perf_counter() - started) / n * 1e9:.0f}", flush=True)
