"""HTTP/1.0 over a Unix socket, driven over stdin.

Usage: `unix_http.py PATH`. Commands (one per line): `serve` (answers requests on PATH from a
thread: one response per connection, which the server closes first), `fetch N` (N requests
one after the other, each on a connection of its own, closed before the next opens), `exit`.
Prints `ok <command>` after each, flushing, so the test can wait for it.
"""
import os
import socket
import sys
import threading
import time

path = sys.argv[1]


def serve():
    listener = socket.socket(socket.AF_UNIX)
    if os.path.exists(path):
        os.unlink(path)
    listener.bind(path)
    listener.listen(16)

    def loop():
        while True:
            conn, _ = listener.accept()
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                request += chunk
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            conn.close()

    threading.Thread(target=loop, daemon=True).start()


def fetch(count):
    for i in range(count):
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(path)
        conn.sendall(f"GET /items/{i} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        while conn.recv(4096):
            pass
        conn.close()
        # The server's end goes too: the next socket may then take this one's kernel object.
        time.sleep(0.05)


for line in sys.stdin:
    command = line.strip()
    if command == "serve":
        serve()
    elif command.startswith("fetch "):
        fetch(int(command.split()[1]))
    elif command == "exit":
        print("ok exit", flush=True)
        break
    print(f"ok {command}", flush=True)
