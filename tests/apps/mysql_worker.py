"""A MySQL workload driven over stdin, with PyMySQL (pure Python: the protocol is its own code).

Usage: `mysql_worker.py PORT SOCKET`. Commands (one per line): `connect` (user `app` on the
database `shop`, over TCP at 127.0.0.1:PORT), `connect_socket` (the same over the Unix socket),
`connect_as USER` and `connect_socket_as USER` (as USER, who is also the tag of the rows `work`
inserts), `close` (the connection),
`work` (a CREATE, a parameterised INSERT of a secret and a commit, a parameterised SELECT, a
SELECT of a table that does not exist, a 5,000-row result), `exit`. Prints `ok <command>` after
each, flushing, so the test can wait for it.
"""
import sys

import pymysql

port, socket_path = int(sys.argv[1]), sys.argv[2]
conn = None


def work(tag):
    cur = conn.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS users (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) UNIQUE, secret TEXT)")
    cur.execute("INSERT INTO users (name, secret) VALUES (%s, %s)", (f"bob-{tag}", "s3cret"))
    conn.commit()
    cur.execute("SELECT id, name FROM users WHERE name = %s", (f"bob-{tag}",))
    assert len(cur.fetchall()) == 1
    try:
        cur.execute("SELECT * FROM nope")
    except pymysql.err.ProgrammingError:
        pass
    cur.execute("SELECT seq FROM seq_1_to_5000")
    assert len(cur.fetchall()) == 5000


for line in sys.stdin:
    command = line.strip()
    if command == "connect":
        conn = pymysql.connect(host="127.0.0.1", port=port, user="app", database="shop")
        tag = "tcp"
    elif command == "connect_socket":
        conn = pymysql.connect(unix_socket=socket_path, user="app", database="shop")
        tag = "socket"
    elif command.startswith("connect_as "):
        tag = command.split()[1]
        conn = pymysql.connect(host="127.0.0.1", port=port, user=tag, database="shop")
    elif command.startswith("connect_socket_as "):
        tag = command.split()[1]
        conn = pymysql.connect(unix_socket=socket_path, user=tag, database="shop")
    elif command == "close":
        conn.close()
    elif command == "work":
        work(tag)
    elif command == "exit":
        print("ok exit", flush=True)
        break
    print(f"ok {command}", flush=True)
