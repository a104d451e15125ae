"""An HTTP server that answers `GET /.../<ms>` with `ok` after `ms` milliseconds, on the port given
as its argument: an upstream slow enough for a proxy to have several requests in flight."""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Slow(BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(int(self.path.rsplit("/", 1)[1]) / 1000)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
