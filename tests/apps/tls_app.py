"""HTTPS on both sides, with Python's own `ssl` module (OpenSSL's SSL_read_ex/SSL_write_ex).

`tls_app.py serve PORT CERT KEY`: a threading HTTP/1.1 (keep-alive) server over TLS. Routes:
`/users/<id>` answers 200 with JSON, `/fail` 503, `/slow/<ms>` 200 after that many milliseconds,
anything else 404. Prints `ready` once it
listens.

`tls_app.py client CAFILE`: an HTTPS client with `requests` (one keep-alive session) driven over
stdin: `get URL` prints `ok get URL <status>`; `exit` quits. Prints `ready` once `requests`
(and so libssl) is loaded.
"""
import sys


def serve(port, cert, key):
    import http.server
    import ssl

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path.startswith("/users/"):
                status, body = 200, b'{"id": "%s"}' % path.rsplit("/", 1)[1].encode()
            elif path.startswith("/slow/"):
                import time

                time.sleep(int(path.rsplit("/", 1)[1]) / 1000)
                status, body = 200, b'{"slow": true}'
            elif path == "/fail":
                status, body = 503, b'{"error": "unavailable"}'
            else:
                status, body = 404, b'{"error": "not found"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


def client(cafile):
    import requests

    session = requests.Session()
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command:
            continue
        if command[0] == "get":
            # Per request: a session-wide `verify` loses to REQUESTS_CA_BUNDLE from the environment.
            status = session.get(command[1], timeout=10, verify=cafile).status_code
            print(f"ok get {command[1]} {status}", flush=True)
        elif command[0] == "exit":
            print("ok exit", flush=True)
            return


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        client(sys.argv[2])
