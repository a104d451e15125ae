"""Target of `cargo xtask bench --http`: a small threading HTTP/1.1 keep-alive server.

The same server is loaded without and with ddtrace-agent attached, so the difference in its
request latency is what being traced costs it. Run it with the real interpreter (not a pyenv
shim), unbuffered.

Protocol: prints "ready <port>" once it listens on 127.0.0.1 (an ephemeral port), then serves
until it is killed. GET answers 200 with a small body and a Content-Length; a request asking for
`Connection: close` gets it (http.server handles that).

Usage: http_server.py
"""

import http.server

BODY = b'{"status": "ok"}\n'


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as production servers set it: http.server writes the head and the body
    # separately, and Nagle's algorithm against the client's delayed ACK would add 40 ms to each.
    disable_nagle_algorithm = True

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    # The load generator opens a burst of connections at once in --http-close mode.
    request_queue_size = 128


def main():
    server = Server(("127.0.0.1", 0), Handler)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
