"""A JWKS server on loopback, with its signing keys, for RequestAuthentication tests: the lab's
(on the lab host, where the controller runs and fetches `jwksUri`s) and the controller's unit
tests. `/jwks.json` (any path) serves the key set, `/.well-known/openid-configuration` an OpenID
discovery document pointing at it. `rotate` publishes a new key set, `token` signs with a named
key (or with a never-published key of the same id: a forgery), `fail` answers 500.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


class JwksServer:
    def __init__(self, issuer: str = "https://issuer.lab") -> None:
        self.issuer = issuer
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.body = b'{"keys": []}'
        self.fail = False
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if served.fail:
                    self.send_error(500)
                    return
                body = served.body
                if self.path == "/.well-known/openid-configuration":
                    body = json.dumps({"issuer": served.base, "jwks_uri": f"{served.base}/jwks.json"}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="jwks", daemon=True)
        self._thread.start()

    def _key(self, kid: str) -> rsa.RSAPrivateKey:
        if kid not in self.keys:
            self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return self.keys[kid]

    def rotate(self, kid: str) -> str:
        """Publish the key `kid` alone (a new one the first time); returns the key set."""
        pub = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key(kid).public_key()))
        self.body = json.dumps({"keys": [{**pub, "kid": kid, "use": "sig", "alg": "RS256"}]}).encode()
        return self.body.decode()

    def token(self, kid: str, *, forge: bool = False, exp: float = 600, aud: str = "myapp",
              sub: str = "alice", **claims: Any) -> str:
        """A token signed with `kid`'s key (`forge`: another key); `claims` are added to its payload."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if forge else self._key(kid)
        now = time.time()
        return jwt.encode({"iss": self.issuer, "sub": sub, "aud": aud, "iat": int(now), "exp": int(now + exp),
                           **claims}, key, algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
