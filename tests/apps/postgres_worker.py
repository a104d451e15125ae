"""A PostgreSQL workload driven over stdin, with psycopg2 or psycopg (3).

Usage: `postgres_worker.py PORT DRIVER [SSLMODE]` (`require`: over TLS). Commands (one per line): `connect` (user `app` on the
database `shop` at 127.0.0.1:PORT), `work` (a CREATE, a parameterised INSERT of a secret and a
commit, a parameterised SELECT, a SELECT of a table that does not exist and a rollback, a
20,000-row result), `exit`. Prints `ok <command>` after each, flushing, so the test can wait for it.
"""
import sys

port, driver_name = int(sys.argv[1]), sys.argv[2]
sslmode = sys.argv[3] if len(sys.argv) > 3 else "disable"
if driver_name == "psycopg2":
    import psycopg2 as driver
else:
    import psycopg as driver
conn = None


def work():
    cur = conn.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS users (id serial PRIMARY KEY, name text UNIQUE, secret text)")
    cur.execute("INSERT INTO users (name, secret) VALUES (%s, %s)", (f"bob-{driver_name}", "s3cret"))
    conn.commit()
    cur.execute("SELECT id, name FROM users WHERE name = %s", (f"bob-{driver_name}",))
    assert len(cur.fetchall()) == 1
    try:
        cur.execute("SELECT * FROM nope")
    except driver.errors.UndefinedTable:
        conn.rollback()
    cur.execute("SELECT generate_series(1, 20000)")
    assert len(cur.fetchall()) == 20000
    conn.commit()


for line in sys.stdin:
    command = line.strip()
    if command == "connect":
        conn = driver.connect(
            host="127.0.0.1", port=port, user="app", dbname="shop", application_name="e2e-worker", sslmode=sslmode
        )
    elif command == "work":
        work()
    elif command == "exit":
        print("ok exit", flush=True)
        break
    print(f"ok {command}", flush=True)
