"""A Flask app for gunicorn: every request runs SQLite work and answers with the worker's pid,
so a test can tell which worker served it. With `?call=PORT` it also GETs `/users/42` from another
HTTP service on 127.0.0.1:PORT while serving (a downstream call), with urllib, or with `requests`
given `&via=requests`."""
import os
import sqlite3
import urllib.request

from flask import Flask, request

app = Flask(__name__)


@app.route("/", defaults={"path": ""})
@app.route("/<path:path>")
def serve(path):
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE hits (worker INTEGER)")
    conn.execute("INSERT INTO hits VALUES (?)", (os.getpid(),))
    (count,) = conn.execute("SELECT count(*) FROM hits WHERE worker > 0").fetchone()
    conn.close()
    call = request.args.get("call")
    if call is not None:
        url = f"http://127.0.0.1:{int(call)}/users/42"
        if request.args.get("via") == "requests":
            import requests

            requests.get(url, timeout=10).raise_for_status()
        else:
            with urllib.request.urlopen(url, timeout=10) as downstream:
                downstream.read()
    return f"{os.getpid()} {count}\n", 200, {"Content-Type": "text/plain"}
