"""A Flask app for gunicorn whose views query PostgreSQL with psycopg2 (the most common real
setup): `/users/<int:uid>` runs two queries on the worker's connection, which is opened at the
first request and kept (a pool of one). The server's port comes from `PGPORT` (`gunicorn -e`).
"""
import os

import psycopg2
from flask import Flask

app = Flask(__name__)
connection = None


def cursor():
    global connection
    if connection is None:
        connection = psycopg2.connect(
            host="127.0.0.1", port=int(os.environ["PGPORT"]), user="app", dbname="shop"
        )
        connection.autocommit = True
    return connection.cursor()


@app.route("/users/<int:uid>")
def user(uid):
    cur = cursor()
    cur.execute("SELECT %s + 1", (uid,))
    (following,) = cur.fetchone()
    cur.execute("SELECT count(*) FROM generate_series(1, %s)", (following,))
    (count,) = cur.fetchone()
    return f"{os.getpid()} {count}\n", 200, {"Content-Type": "text/plain"}
