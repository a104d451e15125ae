"""A WSGI app for gunicorn: every request runs SQLite work and answers with the worker's pid,
so a test can tell which worker served it. With `?call=PORT` it also GETs `/` from another HTTP
service on 127.0.0.1:PORT while serving (a downstream call)."""
import os
import sqlite3
import urllib.parse
import urllib.request


def app(environ, start_response):
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE hits (worker INTEGER)")
    conn.execute("INSERT INTO hits VALUES (?)", (os.getpid(),))
    (count,) = conn.execute("SELECT count(*) FROM hits WHERE worker > 0").fetchone()
    conn.close()
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    if "call" in query:
        with urllib.request.urlopen(f"http://127.0.0.1:{int(query['call'][0])}/users/42", timeout=10) as downstream:
            downstream.read()
    body = f"{os.getpid()} {count}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
