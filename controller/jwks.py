"""JSON Web Key Sets for RequestAuthentication `jwksUri`s: fetched by the controller and inlined in
the config the waypoints receive, as istiod does (its JwksResolver), so that waypoints never reach
out to an identity provider and every waypoint verifies with the same keys.

- A source is a `jwksUri`, or `oidc:<issuer>` for a rule with neither `jwks` nor `jwksUri`: the
  issuer's OpenID discovery document (`<issuer>/.well-known/openid-configuration`) names the
  `jwks_uri`.
- Each source is re-fetched every `refresh` seconds (Istio: PILOT_JWT_PUB_KEY_REFRESH_INTERVAL,
  20 minutes), so a key rotation at the identity provider reaches the waypoints; a failed fetch
  keeps the last good key set and is retried sooner (`retry`).
- A source never fetched successfully resolves to an error: the waypoint then refuses that
  issuer's tokens (istiod inlines a key set that verifies nothing: fail closed). That includes a
  source just named: the controller publishes at once and fetches in the background
  (controller/app.py), so a slow identity provider never delays configuration.

The cache takes its `get` (URL, timeout -> bytes) and `clock` injected; the controller's thread
does the waiting.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ambit.jwk import public_members
from controller.validation import printable

log = logging.getLogger("ambit.controller.jwks")

MAX_BYTES = 1 << 20
MAX_SKIPPED_LOGGED = 8      # skipped keys one fetch names in the log (the rest are counted)
Get = Callable[[str, float], bytes]


def usable_keys(text: str) -> tuple[str, list[str]]:
    """The key set to inline for the waypoints, and why each key left out was left out.

    An identity provider's key set is its word: a key that is no JSON object, whose kid, alg, use
    or kty is no string, or that PyJWT cannot build (a key type it does not know, a malformed
    modulus, an EC point off its curve) is left out, with the reason. Passed on, a key that is no
    object made every waypoint's RequestAuthentication fail to apply (PyJWK raised AttributeError)
    and NACK the update. The document is returned as served when every key is usable and public. ValueError
    when it is no key set or has no usable key: the last good key set then stays."""
    import jwt

    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError("is nested too deeply to decode") from None
    except ValueError as e:
        raise ValueError(f"must be a JSON Web Key Set (JSON): {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        raise ValueError('must be a JSON Web Key Set: an object with a non-empty "keys" list')
    kept, skipped = [], []
    for i, key in enumerate(data["keys"]):
        why = key_problem(jwt, key)
        if why:
            kid = key.get("kid") if isinstance(key, dict) else None
            skipped.append(f"keys[{i}]" + (f" (kid {kid[:64]!r})" if isinstance(kid, str) else "") + f": {why}")
        else:
            kept.append(public_members(key))     # (what the waypoints get: the public half)
    if not kept:
        raise ValueError(f"has no key usable for verification ({'; '.join(skipped[:MAX_SKIPPED_LOGGED])}"
                         + (f"; and {len(skipped) - MAX_SKIPPED_LOGGED} more" if len(skipped) > MAX_SKIPPED_LOGGED
                            else "") + ")")
    if not skipped and all(k is orig for k, orig in zip(kept, data["keys"], strict=True)):
        return text, []
    return json.dumps({**data, "keys": kept}, separators=(",", ":")), skipped


MAX_RSA_BITS = 16384        # (RFC 7518 asks 2048 at least; none uses more than 8192)
MAX_RSA_MODULUS_B64 = (MAX_RSA_BITS // 8 * 4 + 2) // 3     # base64url characters, unpadded


def key_problem(jwt: Any, key: Any) -> str:
    """Why a waypoint could not verify with `key` ("" if it can)."""
    if not isinstance(key, dict):
        return f"a JSON {type(key).__name__}, not an object"
    for name in ("kty", "kid", "alg", "use"):
        if name in key and not isinstance(key[name], str):
            return f"{name} is a JSON {type(key[name]).__name__}, not a string"
    n = key.get("n")
    if isinstance(n, str) and len(n) > MAX_RSA_MODULUS_B64:
        return f"an RSA modulus over {MAX_RSA_BITS} bits"
    try:
        jwt.PyJWK(public_members(key))
    except Exception as e:  # noqa: BLE001 - whatever PyJWT makes of the provider's key: that key's problem
        return printable(f"{type(e).__name__}: {e}", 200)
    return ""


class _Deadline:
    """Ends one fetch when its `timeout` is up. A socket timeout bounds each read only, so a
    server sending a byte now and then held the fetch (and the one thread that refreshes every key
    set) for as long as it liked: at the deadline this shuts the fetch's sockets down, which ends
    any read blocked on them."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for s in self._socks:
                try:
                    socket.socket.shutdown(s, socket.SHUT_RDWR)    # the plain socket's, under any TLS
                except OSError:
                    pass

    def watch(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.append(s)
        if self.expired:
            self._expire()

    def cancel(self) -> None:
        self._timer.cancel()

    def connection(self, base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        deadline = self

        class Watched(base):  # type: ignore[valid-type,misc]
            def connect(self) -> None:
                super().connect()
                deadline.watch(self.sock)
        return Watched


class _Watched:
    """A urllib handler whose connections `deadline` watches."""

    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class: Any, req: Any, **kw: Any) -> Any:
        return super().do_open(self.deadline.connection(http_class), req, **kw)  # type: ignore[misc]


class _HTTP(_Watched, urllib.request.HTTPHandler):
    pass


class _HTTPS(_Watched, urllib.request.HTTPSHandler):
    pass


def http_get(url: str, timeout: float) -> bytes:
    """GET `url` (http or https, the system's CAs, redirects followed), at most MAX_BYTES, all
    within `timeout` seconds. Only http and https: urlopen's default opener also reads file://
    and ftp:// URLs (an OpenID issuer or a redirect could name one). Raises OSError/ValueError."""
    deadline = _Deadline(timeout)
    opener = urllib.request.OpenerDirector()
    for h in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), _HTTP(deadline), _HTTPS(deadline),
              urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPRedirectHandler(),
              urllib.request.HTTPErrorProcessor()):
        opener.add_handler(h)
    req = urllib.request.Request(url, headers={"accept": "application/json"})
    try:
        with opener.open(req, timeout=timeout) as r:
            body = r.read(MAX_BYTES + 1)
    except (OSError, http.client.HTTPException) as e:
        if deadline.expired:
            raise TimeoutError(f"no complete answer within {timeout:g}s") from e
        if isinstance(e, OSError):
            raise
        raise OSError(f"not an HTTP response ({type(e).__name__}: {str(e).strip()[:64]!r})") from e
    finally:
        deadline.cancel()
    if deadline.expired:
        raise TimeoutError(f"no complete answer within {timeout:g}s")
    if len(body) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES} bytes")
    return body


@dataclass
class _Entry:
    keys: str = ""              # the last good key set (JSON), "" if none yet
    error: str = ""             # the last fetch's failure, "" after a success
    fetched_at: float = 0.0     # when the last attempt ended (the clock's time)


class JwksCache:
    def __init__(self, get: Get = http_get, clock: Callable[[], float] = time.monotonic,
                 refresh: float = 1200.0, retry: float = 30.0) -> None:
        self.get, self.clock, self.refresh, self.retry = get, clock, refresh, min(retry, refresh)
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def resolved(self) -> dict[str, tuple[str, str]]:
        """source -> (key set JSON, error): what translation inlines. Last good keys win over a
        later failure; a source with no good keys yet carries its error."""
        with self._lock:
            return {s: (e.keys, "" if e.keys else (e.error or "not fetched yet")) for s, e in self._entries.items()}

    def missing(self, wanted: Mapping[str, float]) -> list[str]:
        with self._lock:
            return [s for s in wanted if s not in self._entries]

    def due(self, wanted: Mapping[str, float]) -> list[str]:
        now = self.clock()
        with self._lock:
            return [s for s in wanted if s not in self._entries
                    or now - self._entries[s].fetched_at >= (self.retry if self._entries[s].error else self.refresh)]

    def fetch(self, source: str, timeout: float) -> bool:
        """Fetch one source now; True when the key set it resolves to changed."""
        try:
            try:
                keys, skipped = usable_keys(self._download(source, timeout))
            except ValueError as e:
                raise ValueError(f"the key set {e}") from None
            if skipped:
                log.warning("RequestAuthentication key set %s: %d key(s) left out: %s%s", source, len(skipped),
                            "; ".join(skipped[:MAX_SKIPPED_LOGGED]),
                            f"; and {len(skipped) - MAX_SKIPPED_LOGGED} more" if len(skipped) > MAX_SKIPPED_LOGGED else "")
            error = ""
        except Exception as e:  # noqa: BLE001 - anything a source answers is that source's failure alone
            # (http.client's HTTPException for a garbled response, RecursionError for JSON nested
            # too deep are neither OSError nor ValueError: they escaped, and ended the refresh pass
            # before the other sources were fetched)
            keys, error = "", f"fetching {source.removeprefix('oidc:')} failed: {e or type(e).__name__}"
        with self._lock:
            before = self._entries.get(source)
            old = (before.keys, before.error) if before else None
            e = self._entries.setdefault(source, _Entry())
            if keys:
                e.keys, e.error = keys, ""
            else:
                e.error = error
            e.fetched_at = self.clock()
            changed = old != (e.keys, "" if e.keys else e.error)
        if error:
            log.warning("RequestAuthentication key set: %s%s", error,
                        " (keeping the last good keys)" if e.keys else " (tokens of this issuer get 401)")
        elif changed:
            log.info("RequestAuthentication key set %s: fetched (%d bytes)", source, len(keys))
        return changed

    def _download(self, source: str, timeout: float) -> str:
        url = source
        if source.startswith("oidc:"):
            issuer = source[len("oidc:"):]
            if not issuer.startswith(("http://", "https://")):
                raise ValueError(f"the issuer {issuer} is not an http(s) URL, so it has no OpenID discovery "
                                 "document: set jwks or jwksUri")
            doc = json.loads(self.get(issuer.rstrip("/") + "/.well-known/openid-configuration", timeout))
            url = doc.get("jwks_uri") if isinstance(doc, dict) else None
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"the OpenID configuration of {issuer} has no http(s) jwks_uri")
        return self.get(url, timeout).decode()

    def forget(self, wanted: Mapping[str, float]) -> None:
        """Drop sources no RequestAuthentication names any more."""
        with self._lock:
            for s in [s for s in self._entries if s not in wanted]:
                del self._entries[s]
