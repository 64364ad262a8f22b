"""The HTTPS endpoint the API server calls with each AdmissionReview (`--webhook-listen`).

The API server verifies it against the ValidatingWebhookConfiguration's `caBundle` and the name
`<service>.<namespace>.svc`, so it serves a certificate of the controller's own CA for the
controller's names (`controller.ca_setup.ServingCertificate`), renewed at half its life and at
once when the CA is reloaded, without a restart: each new connection takes the newest.

Validation is CPU alone and an answer takes well under a millisecond, so a thread per connection
is enough; the port is reachable in the cluster, so connections are bounded (`max_connections`:
when all are taken, the one idle or stalled longest makes room, `EVICT_AFTER`, else the new one is
closed), as are a handshake's time and a body's size.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from controller.admission.review import BadReview, answer

log = logging.getLogger("ambit.controller.admission")

PATH = "/validate"
# An AdmissionReview carries the object and, on update, the stored one: each at most etcd's
# 1.5 MiB, so 8 MiB is more than any real review and bounds what a stranger can make us read.
MAX_BODY = 8 << 20
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0         # a kept-alive connection the API server does not use again
# When every slot is taken, the connection that made no progress (accepted, or answered a review)
# for longest is closed for the new one, if that was at least this long ago: an idle kept-alive
# connection costs its client a reconnect, but a stranger trickling bytes can no longer hold every
# slot against the API server.
EVICT_AFTER = 5.0

EVICTED = Counter("ambit_controller_admission_connections_evicted", "webhook connections closed, with every slot "
                  "taken, for a new one: the one idle or stalled for longest, at least EVICT_AFTER seconds")
REVIEWS = Counter("ambit_controller_admission_reviews", "AdmissionReviews answered by the webhook, by "
                  "operation and result (allowed, denied, bad: not an AdmissionReview, error: the review "
                  "failed)", ["operation", "result"])


class TLSContexts:
    """The newest serving context: `pem_if_due()` gives a new (chain, key) when the certificate
    is due (controller.ca_setup.ServingCertificate), else None."""

    def __init__(self, pem_if_due: Callable[[], tuple[str, str] | None]) -> None:
        self._due = pem_if_due
        self._lock = threading.Lock()
        self._ctx: ssl.SSLContext | None = None

    def current(self) -> ssl.SSLContext:
        with self._lock:
            pem = self._due()
            if pem is not None or self._ctx is None:
                if pem is None:
                    raise ssl.SSLError("no serving certificate yet")
                self._ctx = _context(*pem)
            return self._ctx


def _context(chain: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2    # what kube-apiserver's webhook client speaks
    # ssl loads a certificate only from a file: a private directory, removed once it is loaded.
    d = tempfile.mkdtemp(prefix="ambit-webhook-")
    try:
        cert, k = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        for path, text in ((cert, chain), (k, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        ctx.load_cert_chain(cert, k)
    finally:
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)
    return ctx


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # kept alive: the API server reuses its connections
    timeout = IDLE_TIMEOUT
    server: WebhookServer

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] != PATH:
            self._send(404, b"not found\n", "text/plain")
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self._send(415, b"Content-Type must be application/json\n", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self._send(411, b"Content-Length is required\n", "text/plain")
            return
        if not 0 < length <= MAX_BODY:
            self.close_connection = True
            self._send(413, f"the body must be 1..{MAX_BODY} bytes\n".encode(), "text/plain")
            return
        body = self.rfile.read(length)
        try:
            review, verdict = answer(body, self.server.autoallocate)  # type: ignore[attr-defined]
        except BadReview as e:
            REVIEWS.labels("", "bad").inc()
            self._send(400, f"{e}\n".encode(), "text/plain")
            return
        except Exception as e:  # noqa: BLE001 - a validation bug: say so (the API server then applies failurePolicy)
            log.exception("admission review failed")
            REVIEWS.labels("", "error").inc()
            self._send(500, f"the review failed: {type(e).__name__}\n".encode(), "text/plain")
            return
        REVIEWS.labels(verdict.operation, "allowed" if verdict.allowed else "denied").inc()
        if not verdict.allowed:
            log.info("refused a %s: %s", verdict.operation.lower(), verdict.message.replace("\n", "; "))
        self._send(200, _json(review), "application/json")

    def do_GET(self) -> None:  # noqa: N802
        self._send(405, b"POST an AdmissionReview to /validate\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        """The head and the body in one write: written apart, the body waited for the client's
        ACK of the head (Nagle's algorithm against a delayed ACK), about 40 ms per review."""
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self._headers_buffer.append(b"\r\n" + body)     # what end_headers() appends, and the body
        # noted before the write: the client may send its next request (or another client connect,
        # making room by eviction) as soon as it has the answer, before this thread runs again
        self.server.progressed(self.request)
        self.flush_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name; quiet
        pass


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class WebhookServer(http.server.ThreadingHTTPServer):
    """`serve_forever` in a thread (`start`); `stop` closes it."""

    daemon_threads = True
    allow_reuse_address = True
    certificate: Any = None     # what `contexts` renews from (its `renew_now` at a CA reload)
    autoallocate = True         # the controller's --ip-autoallocate (an istiod warning depends on it)

    def __init__(self, address: tuple[str, int], contexts: TLSContexts, max_connections: int = 64) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.contexts = contexts
        self.clock = time.monotonic
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._progress: dict[Any, float] = {}       # accepted socket -> when it last made progress
        self._tls: dict[Any, Any] = {}              # accepted socket -> its TLS socket (which owns the fd)
        self.evicted = 0
        self._thread: threading.Thread | None = None

    def progressed(self, request: Any) -> None:
        """A review was answered on `request`'s connection (`request`: the TLS socket or the raw one)."""
        raw = getattr(request, "_ambit_raw", request)
        with self._lock:
            if raw in self._progress:
                self._progress[raw] = self.clock()

    def _evict(self) -> bool:
        """Every slot is taken: close the connection idle or stalled for longest, if it has been
        long enough (EVICT_AFTER). Its thread ends and frees its slot."""
        with self._lock:
            if not self._progress:
                return False
            raw, since = min(self._progress.items(), key=lambda kv: kv[1])
            if self.clock() - since < EVICT_AFTER:
                return False
            del self._progress[raw]
            target = self._tls.get(raw, raw)
        self.evicted += 1
        EVICTED.inc()
        try:
            # the socket's own shutdown, not SSLSocket's (which drops its TLS state under the thread
            # using it): the kernel ends the connection, and that thread's read returns at once
            socket.socket.shutdown(target, socket.SHUT_RDWR)
        except OSError:
            pass
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # full: make room from a connection that is doing nothing, else this one is closed
            if not (self._evict() and self._slots.acquire(timeout=1.0)):
                self.shutdown_request(request)
                return
        with self._lock:
            self._progress[request] = self.clock()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._forget(request)
            self._slots.release()
            raise

    def _forget(self, request: Any) -> None:
        with self._lock:
            self._progress.pop(request, None)
            self._tls.pop(request, None)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The TLS handshake in the connection's own thread, bounded, so a client that stalls in
        it holds one slot and not the accept loop."""
        request.settimeout(HANDSHAKE_TIMEOUT)
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # answers are one small write each
        try:
            # wrapping moves the descriptor to the TLS socket: eviction must shut that one down
            tls = self.contexts.current().wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        except (OSError, ssl.SSLError) as e:
            log.debug("webhook TLS with %s failed: %s", client_address, e)
            return
        tls._ambit_raw = request        # type: ignore[attr-defined] - progress is kept by the accepted socket
        with self._lock:
            self._tls[request] = tls
        try:
            tls.do_handshake()
            self.RequestHandlerClass(tls, client_address, self)
        except (OSError, ssl.SSLError) as e:
            log.debug("webhook connection from %s ended: %s", client_address, e)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="admission-webhook", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

