"""The lab's external server: plain HTTP and HTTPS on one host outside the mesh.

Every answer is one JSON line saying what the server saw: the client's address (so a test can
tell a pod from an egress waypoint), whether the connection was TLS and its SNI, the Host header
and the path. It stands in for "a service on the internet" so egress runs without the internet.
"""

from __future__ import annotations

import argparse
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ambit-external"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        sni = getattr(self.server, "sni", {}).get(self.client_address, "")
        tls = isinstance(self.connection, ssl.SSLSocket)
        body = json.dumps({"server": "external", "peer": self.client_address[0], "tls": tls,
                           "tls_version": self.connection.version() if tls else "",  # type: ignore[union-attr]
                           "sni": sni, "host": self.headers.get("host", ""), "path": self.path,
                           "local": self.connection.getsockname()[0]}) + "\n"
        data = body.encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: object) -> None:
        print(f"{self.client_address[0]} {fmt % args}", flush=True)


def https_server(port: int, cert: str, key: str, client_ca: str = "") -> ThreadingHTTPServer:
    """HTTPS on `port`; with `client_ca`, clients must present a certificate it issued (mTLS)."""
    srv = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    sni: dict[object, str] = {}

    def remember(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni[sock.getpeername()] = name or ""      # type: ignore[attr-defined]

    ctx.sni_callback = remember   # type: ignore[assignment]
    srv.sni = sni                 # type: ignore[attr-defined]
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    return srv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--http", type=int, default=80)
    ap.add_argument("--https", type=int, default=443)
    ap.add_argument("--mtls", type=int, default=0, help="a port serving HTTPS that requires client certificates")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True, help="the CA whose client certificates --mtls accepts")
    a = ap.parse_args()
    servers = [ThreadingHTTPServer(("0.0.0.0", a.http), Handler), https_server(a.https, a.cert, a.key)]
    if a.mtls:
        servers.append(https_server(a.mtls, a.cert, a.key, a.ca))
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(f"external: http :{a.http}, https :{a.https}" + (f", mtls :{a.mtls}" if a.mtls else ""), flush=True)
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
