"""`cargo xtask bench --sqlite`: times sqlite3_prepare_v2 + sqlite3_finalize pairs through the C
API (ctypes: no statement cache in between), on an in-memory database.

Prints `ready` once the database is open, then for each `go N` line on stdin runs N pairs and
prints the mean nanoseconds per pair; `exit` ends it.
"""
import ctypes

from timed_loop import serve

lib = ctypes.CDLL("libsqlite3.so.0")
db = ctypes.c_void_p()
assert lib.sqlite3_open(b":memory:", ctypes.byref(db)) == 0
stmt = ctypes.c_void_p()
sql = b"SELECT 1"
prepare, finalize = lib.sqlite3_prepare_v2, lib.sqlite3_finalize


def one_pair():
    prepare(db, sql, -1, ctypes.byref(stmt), None)
    finalize(stmt)


serve(one_pair)
