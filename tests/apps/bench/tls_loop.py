"""`cargo xtask bench --tls`: times SSL_write_ex + SSL_read_ex pairs between a client and a server
TLS object over memory BIOs (no socket, no network: only the library calls and their probes).

Usage: tls_loop.py CERT KEY. Prints `ready` once the handshake is done, then for each `go N` line
on stdin runs N pairs and prints the mean nanoseconds per pair; `exit` ends it.
"""
import ssl
import sys

from timed_loop import serve

cert, key = sys.argv[1], sys.argv[2]
server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_context.load_cert_chain(cert, key)
client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client_context.check_hostname = False
client_context.verify_mode = ssl.CERT_NONE
client_in, client_out, server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
client = client_context.wrap_bio(client_in, client_out, server_hostname="localhost")
server = server_context.wrap_bio(server_in, server_out, server_side=True)
for _ in range(10):
    for side in (client, server):
        try:
            side.do_handshake()
        except ssl.SSLWantReadError:
            pass
    server_in.write(client_out.read())
    client_in.write(server_out.read())
payload = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


def one_pair():
    client.write(payload)
    server_in.write(client_out.read())
    server.read(4096)


serve(one_pair)
