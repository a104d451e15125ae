"""`cargo xtask bench --vs-ddtrace`: a Flask app as the issue's held-out one. Each request to
/users/<id> runs three SQLite statements on a new in-memory connection; every tenth also calls an
HTTPS backend (`flask_app.py BACKEND_PORT`) through urllib. Served by werkzeug's threaded server
on an ephemeral port; prints `ready PORT` once listening.
"""
import itertools
import sqlite3
import ssl
import sys
import urllib.request

from flask import Flask
from werkzeug.serving import make_server

app = Flask(__name__)
backend = int(sys.argv[1]) if len(sys.argv) > 1 else None
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
requests_served = itertools.count()


@app.route("/users/<int:uid>")
def user(uid):
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO users VALUES (?, ?)", (uid, "name"))
    (name,) = db.execute("SELECT name FROM users WHERE id = ?", (uid,)).fetchone()
    db.close()
    if backend is not None and next(requests_served) % 10 == 0:
        with urllib.request.urlopen(f"https://127.0.0.1:{backend}/", context=context, timeout=5) as response:
            response.read()
    return f"{name}\n"


@app.route("/ping/<int:n>")
def ping(n):
    # Makes no call the agent sees: its request is named from the routing table alone.
    return f"{n}\n"


server = make_server("127.0.0.1", 0, app, threaded=True)
print(f"ready {server.server_port}", flush=True)
server.serve_forever()
