"""Two processes talking HTTP on loopback, for tests that trace both ends with one daemon (it
follows one process tree): this launcher is the client, and its child is the server.

Run without arguments: starts `linked_pair.py serve` (a threading http.server whose answer to
any GET is the headers it received, as JSON), prints `ready <port> <server pid>`, then reads
commands on stdin: `fetch PATH` GETs PATH with urllib and prints `ok <the JSON body>`; `exit`
stops the server and exits. Output is flushed line by line.
"""
import http.server
import json
import subprocess
import sys
import urllib.request


class EchoHeaders(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(dict(self.headers.items())).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def serve():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoHeaders)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


def launch():
    child = subprocess.Popen([sys.executable, "-u", __file__, "serve"], stdout=subprocess.PIPE, text=True)
    port = int(child.stdout.readline().split()[1])
    print(f"ready {port} {child.pid}", flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command:
            continue
        if command[0] == "fetch":
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{command[1]}", timeout=10) as response:
                print("ok " + response.read().decode(), flush=True)
        elif command[0] == "exit":
            break
    child.terminate()
    child.wait()
    print("ok exit", flush=True)


if __name__ == "__main__":
    serve() if sys.argv[1:] == ["serve"] else launch()
