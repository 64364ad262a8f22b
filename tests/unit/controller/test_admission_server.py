"""The webhook's HTTPS edge (controller/admission/server.py), in process over real TLS: what it
answers to a client that is not the API server, and that a renewed certificate is taken up by the
next connection without a restart."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from controller.admission import server as srv
from controller.ca.authority import CertificateAuthority, generate_root
from controller.ca_setup import ServingCertificate
from tests.support.wait import wait_for

HOST = "ambit-controller.ambit-system.svc"


class Hook:
    def __init__(self, tmp: Path, max_connections: int = 64) -> None:
        self.ca = CertificateAuthority(generate_root("cluster.local"), "cluster.local")
        self.cert = ServingCertificate(self.ca, "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller", [HOST])
        self.server = srv.WebhookServer(("127.0.0.1", 0), srv.TLSContexts(self.cert.pem_if_due), max_connections)
        self.server.start()
        self.port = self.server.server_address[1]
        root = tmp / "root.pem"
        root.write_text(self.ca.trust_bundle().pem_bundle())
        self.ctx = ssl.create_default_context(cafile=str(root))

    def connect(self) -> http.client.HTTPSConnection:
        c = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5, context=self.ctx)
        c.sock = self.ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout=5),
                                      server_hostname=HOST)
        return c

    def post(self, body: bytes, ctype: str = "application/json", path: str = "/validate",
             conn: http.client.HTTPSConnection | None = None) -> tuple[int, bytes]:
        c = conn or self.connect()
        c.request("POST", path, body, {"Content-Type": ctype})
        r = c.getresponse()
        return r.status, r.read()

    def peer_serial(self) -> int:
        with self.ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout=5),
                                  server_hostname=HOST) as s:
            der = s.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[Hook]:
    h = Hook(tmp_path)
    try:
        yield h
    finally:
        h.server.stop()


def review(obj: dict[str, Any]) -> bytes:
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": "r1", "operation": "CREATE", "object": obj}}).encode()


BAD = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
       "metadata": {"name": "x", "namespace": "demo"}, "spec": {"action": "DENY"}}


def test_reviews_are_answered_on_one_kept_alive_connection_under_the_services_name(hook: Hook) -> None:
    c = hook.connect()
    for _ in range(3):
        status, body = hook.post(review(BAD), conn=c)
        assert status == 200
        r = json.loads(body)["response"]
        assert r["uid"] == "r1" and r["allowed"] is False and "DENY action without" in r["status"]["message"]
    status, body = hook.post(review({**BAD, "spec": {"action": "DENY", "rules": [{}]}}), conn=c)
    assert status == 200 and json.loads(body)["response"]["allowed"] is True
    c.close()
    sample = srv.REVIEWS.labels("CREATE", "denied")._value.get()
    assert sample >= 3


def test_an_answer_is_one_write(hook: Hook) -> None:
    """Head and body written apart made the body wait for the client's ACK of the head (Nagle's
    algorithm against a delayed ACK): about 40 ms per review, 39 reviews a second on one connection
    where one write makes it thousands. One TLS record per answer shows it: a read returns at most
    one record."""
    body = review(BAD)
    with hook.ctx.wrap_socket(socket.create_connection(("127.0.0.1", hook.port), timeout=5),
                              server_hostname=HOST) as s:
        s.sendall(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        first = s.recv(1 << 16)
    head, _, rest = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
    assert len(rest) == length and json.loads(rest)["response"]["allowed"] is False


@pytest.mark.parametrize(("body", "ctype", "path", "code", "says"), [
    (b"{}", "text/plain", "/validate", 415, b"application/json"),
    (b"{}", "application/json", "/mutate", 404, b"not found"),
    (b"not json", "application/json", "/validate", 400, b"not JSON"),
    (json.dumps({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}).encode(), "application/json",
     "/validate", 400, b"request.uid"),
])
def test_what_is_not_an_admission_review_gets_a_client_error_saying_why(
        hook: Hook, body: bytes, ctype: str, path: str, code: int, says: bytes) -> None:
    status, text = hook.post(body, ctype, path)
    assert status == code and says in text


def test_a_body_past_the_bound_is_refused_unread_and_a_get_is_not_served(hook: Hook) -> None:
    c = hook.connect()
    c.putrequest("POST", "/validate")
    c.putheader("Content-Type", "application/json")
    c.putheader("Content-Length", str(srv.MAX_BODY + 1))
    c.endheaders()
    r = c.getresponse()
    assert r.status == 413 and b"1..8388608" in r.read()
    c = hook.connect()
    c.request("GET", "/validate")
    assert c.getresponse().status == 405


def test_stalled_connections_hold_every_slot_only_until_a_client_needs_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections are bounded; a stranger who opens them all and sends nothing (or trickles bytes)
    holds the webhook only for EVICT_AFTER: then the one stalled for longest is closed for a new
    connection, so the API server's reviews are answered again."""
    monkeypatch.setattr(srv, "EVICT_AFTER", 0.5)
    h = Hook(tmp_path, max_connections=2)
    try:
        silent = [socket.create_connection(("127.0.0.1", h.port)) for _ in range(2)]   # no ClientHello
        time.sleep(0.2)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            h.post(review(BAD))         # within the grace: closed at once, the others untouched
        assert h.server.evicted == 0
        time.sleep(0.5)
        assert h.post(review(BAD))[0] == 200        # the oldest stalled connection made room
        assert h.server.evicted == 1
        silent[0].settimeout(5)
        assert silent[0].recv(1) == b""             # it was closed
        for s in silent:
            s.close()
        wait_for(lambda: _answers(h), timeout=5, what="slots free again")
    finally:
        h.server.stop()


def test_a_connection_that_answers_reviews_is_not_the_one_evicted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(srv, "EVICT_AFTER", 0.5)
    h = Hook(tmp_path, max_connections=2)
    try:
        busy = h.connect()
        silent = socket.create_connection(("127.0.0.1", h.port))
        time.sleep(0.6)
        assert h.post(review(BAD), conn=busy)[0] == 200    # progress: its clock starts again
        assert h.post(review(BAD))[0] == 200               # the silent one is evicted, not busy
        assert h.post(review(BAD), conn=busy)[0] == 200
        silent.close()
        busy.close()
    finally:
        h.server.stop()


def _answers(h: Hook) -> bool:
    try:
        return h.post(review(BAD))[0] == 200
    except (ssl.SSLError, OSError):
        return False


def test_a_renewed_certificate_is_served_to_the_next_connection(hook: Hook) -> None:
    first = hook.peer_serial()
    assert hook.peer_serial() == first          # not re-issued per connection
    hook.cert.renew_now()                       # what a CA reload does (controller/__main__.py ca_reload)
    second = hook.peer_serial()
    assert second != first
    assert hook.post(review(BAD))[0] == 200
