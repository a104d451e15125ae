"""A FastAPI app on uvicorn: `async def` endpoints that run SQLite work on the event loop's
thread. Picks a free port, prints `ready PORT`, then serves (connect until it answers)."""
import socket
import sqlite3

import uvicorn
from fastapi import FastAPI

app = FastAPI()


def count(value):
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (v INTEGER)")
    conn.execute("INSERT INTO t VALUES (?)", (value,))
    (n,) = conn.execute("SELECT count(*) FROM t WHERE v >= 0").fetchone()
    conn.close()
    return n


@app.get("/items/{item_id}")
async def item(item_id: int):
    return {"item": item_id, "count": count(item_id)}


@app.get("/users/{name}/orders")
async def orders(name: str):
    return {"user": name, "count": count(1)}


with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
print(f"ready {port}", flush=True)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
