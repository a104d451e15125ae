"""`cargo xtask bench --sqlite-callers`: times one execution of a statement (sqlite3_prepare_v2,
sqlite3_step to its end, sqlite3_finalize, through ctypes) made 30 Python frames deep, as a web
view's statements are: each execution's first step is where the agent records the caller's
Python frames.

Prints `ready` once the database is open, then for each `go N` line on stdin runs N executions
and prints the mean nanoseconds per execution; `exit` ends it.
"""
import ctypes

from timed_loop import serve

DEPTH = 30

lib = ctypes.CDLL("libsqlite3.so.0")
db = ctypes.c_void_p()
assert lib.sqlite3_open(b":memory:", ctypes.byref(db)) == 0
stmt = ctypes.c_void_p()
sql = b"CREATE TABLE IF NOT EXISTS t (x)"
prepare, step, finalize = lib.sqlite3_prepare_v2, lib.sqlite3_step, lib.sqlite3_finalize


def one_execution():
    prepare(db, sql, -1, ctypes.byref(stmt), None)
    step(stmt)
    finalize(stmt)


def deep(n, run):
    """`run` served with `n` more frames below it."""
    return deep(n - 1, run) if n else run()


deep(DEPTH, lambda: serve(one_execution))
