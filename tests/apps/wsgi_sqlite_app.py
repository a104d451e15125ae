"""A WSGI app for gunicorn: every request runs SQLite work and answers with the worker's pid,
so a test can tell which worker served it."""
import os
import sqlite3


def app(environ, start_response):
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE hits (worker INTEGER)")
    conn.execute("INSERT INTO hits VALUES (?)", (os.getpid(),))
    (count,) = conn.execute("SELECT count(*) FROM hits WHERE worker > 0").fetchone()
    conn.close()
    body = f"{os.getpid()} {count}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
