"""A small SQLite workload driven over stdin, so tests decide when each phase runs.

Commands (one per line): `import` (imports sqlite3 lazily: libsqlite3 arrives by dlopen),
`work N` (N rounds of create/insert/select), `fail` (a constraint violation and a syntax
error), `with_length` (a statement prepared through the C API with a byte count), `burst THREADS N` (imports sqlite3 and at once, on THREADS threads with a connection each,
runs a CREATE, N INSERTs and a SELECT in autocommit mode), `threads N` (starts and joins N threads that do nothing), `txn` (an INSERT in Python's default
transaction mode, whose implicit `BEGIN ` the driver issues, then `commit()`), `exec` (replaces this process with a fresh copy of itself, same pid and stdin), `fetch URL` (an HTTP GET
with urllib; any status), `exit`. Prints `ok <command>` after each, flushing, so the test can wait for it.
"""
import sys

sqlite3 = None
conn = None


def ensure_db():
    global sqlite3, conn
    if sqlite3 is None:
        import sqlite3 as module
        sqlite3 = module
    if conn is None:
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, secret TEXT)")


def work(rounds):
    ensure_db()
    for i in range(rounds):
        conn.execute("INSERT INTO users (name, secret) VALUES (?, 'hunter2')", (f"user{i}",))
        rows = conn.execute("SELECT id, name FROM users WHERE name = 'user0' AND id > 0").fetchall()
        assert rows
    conn.commit()


def fail():
    ensure_db()
    try:
        conn.execute("INSERT INTO users (id, name) VALUES (1, 'dup'), (1, 'dup')")
    except sqlite3.IntegrityError:
        pass
    try:
        conn.execute("SELEC broken FROM nowhere")
    except sqlite3.OperationalError:
        pass


def burst(threads, inserts):
    """The first statements follow the import within microseconds: no time for a late probe."""
    import sqlite3 as module
    import threading

    def statements():
        db = module.connect(":memory:", isolation_level=None, check_same_thread=False)
        db.execute("CREATE TABLE burst (id INTEGER PRIMARY KEY, payload TEXT)")
        for i in range(inserts):
            db.execute("INSERT INTO burst (payload) VALUES (?)", (str(i),))
        assert db.execute("SELECT count(*) FROM burst").fetchone()[0] == inserts
        db.close()

    workers = [threading.Thread(target=statements) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def txn():
    ensure_db()
    conn.execute("INSERT INTO users (name) VALUES ('in a transaction')")
    conn.commit()


for line in sys.stdin:
    command = line.split()
    if not command:
        continue
    if command[0] == "import":
        import sqlite3 as module
        sqlite3 = module
    elif command[0] == "work":
        work(int(command[1]))
    elif command[0] == "burst":
        burst(int(command[1]), int(command[2]))
    elif command[0] == "threads":
        import threading

        for _ in range(int(command[1])):
            thread = threading.Thread(target=lambda: None)
            thread.start()
            thread.join()
    elif command[0] == "txn":
        txn()
    elif command[0] == "fail":
        fail()
    elif command[0] == "with_length":
        # The C API the way rusqlite and Go drivers use it: SQL with a byte count, not
        # NUL-terminated, followed by other memory that must never reach a span.
        import ctypes

        lib = ctypes.CDLL("libsqlite3.so.0")
        db = ctypes.c_void_p()
        assert lib.sqlite3_open(b":memory:", ctypes.byref(db)) == 0
        buffer = ctypes.create_string_buffer(b"SELECT 7 LEAKEDSECRET", 21)
        stmt = ctypes.c_void_p()
        assert lib.sqlite3_prepare_v2(db, buffer, 8, ctypes.byref(stmt), None) == 0
        assert lib.sqlite3_step(stmt) == 100
        lib.sqlite3_finalize(stmt)
        lib.sqlite3_close(db)
    elif command[0] == "fetch":
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(command[1], timeout=10) as response:
                response.read()
        except urllib.error.HTTPError:
            pass
    elif command[0] == "exec":
        print("ok exec", flush=True)
        import os
        os.execv(sys.executable, [sys.executable, "-u", __file__])
    elif command[0] == "exit":
        print("ok exit", flush=True)
        break
    print("ok " + " ".join(command), flush=True)
