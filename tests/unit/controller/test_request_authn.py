"""RequestAuthentication in the controller: validation (object + field + reason), translation,
and the key sets it fetches for `jwksUri` from a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry

from controller.app import Controller
from controller.configserver import ConfigServer
from controller.jwks import JwksCache
from controller.sources import Source
from controller.translate import translate
from controller.validation import validate_object
from tests.support.jwks_server import JwksServer
from tests.support.wait import wait_for


def jwks(kid: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return json.dumps({"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": kid}]})


KEYS = jwks("k1")


def ra(rules: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
            "metadata": {"name": "jwt", "namespace": "demo"}, "spec": {**spec, "jwtRules": rules}}


class _NoSource(Source):
    def run(self, on_snapshot, stop) -> None:  # noqa: ANN001 - never run: the test feeds snapshots
        raise AssertionError

    def errors(self):  # noqa: ANN201
        return []


def errors(obj: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e.path, e.reason) for e in validate_object(obj)]


def test_istios_documented_shape_is_accepted() -> None:
    obj = ra([{"issuer": "testing@secure.istio.io", "jwksUri": "https://example.com/jwks.json",
               "audiences": ["app"], "fromHeaders": [{"name": "x-jwt-assertion", "prefix": "Bearer "}],
               "fromParams": ["my_token"], "fromCookies": ["session"], "forwardOriginalToken": True,
               "outputPayloadToHeader": "x-jwt-payload", "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
               "timeout": "2s"}],
             targetRefs=[{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}])
    assert errors(obj) == []


@pytest.mark.parametrize("rule, path, reason", [
    ({}, "spec.jwtRules[0].issuer", "required field is missing"),
    ({"issuer": "i", "jwksUri": "ftp://x/keys"}, "spec.jwtRules[0].jwksUri", "must be an http:// or https:// URL"),
    ({"issuer": "i", "jwks": "{not json"}, "spec.jwtRules[0].jwks", "must be a JSON Web Key Set (JSON)"),
    ({"issuer": "i", "jwks": '{"keys": []}'}, "spec.jwtRules[0].jwks", 'non-empty "keys" list'),
    # a key a waypoint cannot use, beside a good one: every waypoint NACKed the update
    ({"issuer": "i", "jwks": json.dumps({"keys": [5, json.loads(KEYS)["keys"][0]]})}, "spec.jwtRules[0].jwks",
     "keys[0] is no key usable for verification: a JSON int, not an object"),
    ({"issuer": "i", "jwks": json.dumps({"keys": [{**json.loads(KEYS)["keys"][0], "kid": 7}]})},
     "spec.jwtRules[0].jwks", "keys[0] is no key usable for verification: kid is a JSON int, not a string"),
    ({"issuer": "i", "jwks": json.dumps({"keys": [{**json.loads(KEYS)["keys"][0], "n": "_" * 3000}]})},
     "spec.jwtRules[0].jwks", "keys[0] is no key usable for verification: an RSA modulus over 16384 bits"),
    ({"issuer": "i", "fromHeaders": [{"name": "bad header"}]}, "spec.jwtRules[0].fromHeaders[0].name",
     "must be an HTTP header name"),
    ({"issuer": "i", "presence": "REQUIRED"}, "spec.jwtRules[0].presence", "not supported by Ambit yet"),
    ({"issuer": "i", "timeout": "soon"}, "spec.jwtRules[0].timeout", "must be a duration"),
    ({"issuer": "i", "outputClaimToHeaders": [{"header": "x-a", "claim": "a"}, {"header": "X-A", "claim": "b"}]},
     "spec.jwtRules[0].outputClaimToHeaders", "one claim only"),
    # a JWT output in a header the proxy owns: content-length from a claim re-framed the body
    # upstream (the rest of it read as a second request); the client's own was removed from every request
    ({"issuer": "i", "outputClaimToHeaders": [{"header": "x-a", "claim": "a"}, {"header": "Content-Length", "claim": "n"}]},
     "spec.jwtRules[0].outputClaimToHeaders[1].header", "a header the proxy owns"),
    ({"issuer": "i", "outputPayloadToHeader": "transfer-encoding"}, "spec.jwtRules[0].outputPayloadToHeader",
     "a header the proxy owns"),
    ({"issuer": "i", "outputClaimToHeaders": [{"header": "host", "claim": "a"}]},
     "spec.jwtRules[0].outputClaimToHeaders[0].header", "a header the proxy owns"),
])
def test_bad_fields_are_named(rule: dict[str, Any], path: str, reason: str) -> None:
    [(p, r)] = errors(ra([rule]))
    assert p == path and reason in r, (p, r)


def test_a_bad_target_kind_is_named() -> None:
    [(p, r)] = errors(ra([{"issuer": "i", "jwks": KEYS}], targetRefs=[{"kind": "Pod", "group": "", "name": "x"}]))
    assert p == "spec.targetRefs[0].kind" and "must be one of" in r


def test_translation_inlines_what_was_fetched_and_lists_what_to_fetch() -> None:
    obj = ra([{"issuer": "a", "jwks": KEYS}, {"issuer": "b", "jwksUri": "http://keys.example/b", "timeout": "2s"},
              {"issuer": "https://c.example"}], targetRefs=[{"kind": "Service", "group": "", "name": "s"}])
    t = translate([obj])
    assert t.errors == []
    assert t.jwks_fetches == {"http://keys.example/b": 2.0, "oidc:https://c.example": 5.0}
    [r] = t.request_authns
    assert (r.scope, r.rules[0].jwks, r.rules[1].jwks_error) == ("waypoint", KEYS, "not fetched yet")
    t = translate([obj], jwks={"http://keys.example/b": (KEYS, ""), "oidc:https://c.example": ("", "refused")})
    [r] = t.request_authns
    assert (r.rules[1].jwks, r.rules[1].jwks_error, r.rules[2].jwks_error) == (KEYS, "", "refused")


@pytest.fixture
def served() -> Iterator[JwksServer]:
    s = JwksServer()
    yield s
    s.close()


def test_fetch_refresh_rotation_and_failures(served: JwksServer) -> None:
    now = [0.0]
    cache = JwksCache(clock=lambda: now[0], refresh=60, retry=10)
    k1 = served.rotate("k1")
    uri = f"{served.base}/jwks.json"
    wanted = {uri: 2.0, f"oidc:{served.base}": 2.0}
    assert cache.due(wanted) == list(wanted)
    assert cache.fetch(uri, 2.0) and cache.fetch(f"oidc:{served.base}", 2.0)
    assert cache.resolved() == {uri: (k1, ""), f"oidc:{served.base}": (k1, "")}
    assert cache.due(wanted) == []
    # rotation: the server's keys change; the next refresh picks them up
    k2 = served.rotate("k2")
    now[0] = 61
    assert cache.due(wanted) == list(wanted)
    assert cache.fetch(uri, 2.0) and cache.resolved()[uri] == (k2, "")
    assert not cache.fetch(uri, 2.0)                          # unchanged
    # a failed refresh keeps the last good keys
    served.fail = True
    assert not cache.fetch(uri, 2.0) and cache.resolved()[uri] == (k2, "")
    # a source never fetched carries its error, and is retried sooner
    bad = f"{served.base}/nothing"
    cache.fetch(bad, 2.0)
    assert cache.resolved()[bad][0] == "" and "500" in cache.resolved()[bad][1]
    now[0] = 72
    assert cache.due({bad: 2.0}) == [bad]
    cache.forget({uri: 2.0})
    assert set(cache.resolved()) == {uri}


def test_a_new_jwks_uri_is_published_at_once_failing_closed_and_fetched_in_the_background(
        served: JwksServer) -> None:
    """Translation never waits on the identity provider: the first config carries the rule with no
    keys ("not fetched yet": its tokens get 401), the refresher thread fetches, then republishes."""
    k1 = served.rotate("k1")
    uri = f"{served.base}/jwks.json"
    server = ConfigServer(debounce=0.0, registry=CollectorRegistry())
    ctl = Controller(_NoSource(), server, jwks=JwksCache(refresh=600))
    ctl.on_snapshot([ra([{"issuer": served.issuer, "jwksUri": uri}],
                        targetRefs=[{"kind": "Service", "group": "", "name": "s"}])])
    [r] = ctl.translation.request_authns
    assert (r.rules[0].jwks, r.rules[0].jwks_error) == ("", "not fetched yet")
    first = ctl.version
    stop = threading.Event()
    t = ctl.run_jwks_refresher(stop, tick=600)      # only the wake-up can make it fetch in time
    try:
        wait_for(lambda: ctl.version != first, "the key set to be fetched and republished", 10)
    finally:
        stop.set()
    [r] = ctl.translation.request_authns
    assert (r.rules[0].jwks, r.rules[0].jwks_error) == (k1, "")
    ctl._jwks_wake.set()                            # let the thread see the stop
    t.join(5)


class _RawServer:
    """A loopback server that answers every connection with `answer(conn)`: for identity providers
    that misbehave on the wire."""

    def __init__(self, answer: Any) -> None:
        import socket
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/jwks.json"
        self.answer = answer
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: Any) -> None:
        with conn:
            conn.recv(65536)
            try:
                self.answer(conn)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def test_a_garbled_answer_is_that_sources_failure_and_the_others_are_still_fetched(served: JwksServer) -> None:
    """A non-HTTP answer (http.client's BadStatusLine) or JSON nested too deep (RecursionError)
    escaped the fetch: the refresh pass ended there, the sources after it were never fetched (their
    issuers' tokens stayed 401), and the broken one recorded no error."""
    k1 = served.rotate("k1")
    garbled = _RawServer(lambda c: c.sendall(b"garbage\r\n\r\n"))
    deep = b"[" * 100_000
    nested = _RawServer(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(deep), deep)))
    try:
        server = ConfigServer(debounce=0.0, registry=CollectorRegistry())
        ctl = Controller(_NoSource(), server, jwks=JwksCache(refresh=600))
        good = f"{served.base}/jwks.json"
        ctl.on_snapshot([ra([{"issuer": "https://a", "jwksUri": garbled.url},
                             {"issuer": "https://b", "jwksUri": nested.url},
                             {"issuer": served.issuer, "jwksUri": good}],
                            targetRefs=[{"kind": "Service", "group": "", "name": "s"}])])
        assert ctl.refresh_jwks()
        got = ctl.jwks.resolved()
        assert got[good] == (k1, "")
        assert got[garbled.url][0] == "" and "not an HTTP response" in got[garbled.url][1]
        assert got[nested.url][0] == "" and "failed" in got[nested.url][1]
    finally:
        garbled.close()
        nested.close()


def test_a_fetched_key_set_keeps_only_usable_keys_and_logs_why_the_others_were_left_out(caplog) -> None:
    """An identity provider's key set with a key that is no object (or whose kid is a number, or
    whose modulus is no base64) was inlined as served: every waypoint then failed to build its
    verifiers (PyJWK raised AttributeError) and NACKed the update. The controller leaves such keys
    out, saying why; a set with no usable key keeps the last good one."""
    from ambit.model import JwtRule
    from waypoint.authn.jwt import provider

    good = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048).public_key())),
            "kid": "k1"}
    served = [json.dumps({"keys": [5, {**good, "kid": 7}, {"kty": "RSA", "n": 5, "e": "AQAB", "kid": "bad\nkid"},
                                   {"kty": "XYZ"}, good]}).encode(),
              json.dumps({"keys": [5, {"kty": "RSA", "kid": "k2"}]}).encode()]
    cache = JwksCache(get=lambda url, timeout: served.pop(0), refresh=0, retry=0)
    assert cache.fetch("https://idp.example/keys", 1.0)
    keys, error = cache.resolved()["https://idp.example/keys"]
    assert json.loads(keys) == {"keys": [good]} and not error
    (line,) = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert line.isprintable() and "4 key(s) left out: keys[0]: a JSON int, not an object" in line
    assert "keys[1]: kid is a JSON int, not a string" in line and "keys[2] (kid 'bad\\nkid')" in line
    p = provider(JwtRule(issuer="https://idp.example", jwks=keys))
    assert len(p.keys) == 1 and not p.error
    assert not cache.fetch("https://idp.example/keys", 1.0)        # nothing usable: the last good set stays
    assert cache.resolved()["https://idp.example/keys"] == (keys, "")


def test_the_timeout_bounds_the_whole_fetch_not_each_read() -> None:
    """A server dripping its answer a byte at a time never let a read wait `timeout`, so the fetch
    (and the one refresher thread, every issuer's rotation) waited as long as the server liked."""
    import time

    from controller.jwks import http_get

    def drip(c: Any) -> None:
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 40\r\n\r\n")
        for _ in range(40):
            time.sleep(0.1)
            c.sendall(b" ")
    slow = _RawServer(drip)
    try:
        with pytest.raises(TimeoutError):
            http_get(slow.url, 0.5)
    finally:
        slow.close()


def test_openid_discovery_reads_http_urls_only(tmp_path: Any) -> None:
    """The issuer of a rule without jwks/jwksUri names the discovery document; urlopen read
    file:// (and ftp://) URLs too, so an issuer "file:///..." read the controller's files."""
    doc = tmp_path / ".well-known" / "openid-configuration"
    doc.parent.mkdir()
    doc.write_text(json.dumps({"jwks_uri": "file:///etc/hostname"}))
    cache = JwksCache()
    cache.fetch(f"oidc:file://{tmp_path}", 1.0)
    keys, error = cache.resolved()[f"oidc:file://{tmp_path}"]
    assert keys == "" and "is not an http(s) URL" in error


def test_a_key_with_a_private_part_is_used_by_its_public_members_only() -> None:
    """Found by test_jwks_fuzz: an RSA JWK with a crafted `d` made PyJWT recover the key's primes
    from n, e and d, seconds of CPU in the controller's validation and refresh (and in every
    waypoint). As Envoy, only the public members are read: the key is accepted, fast, and what is
    inlined for the waypoints carries no private part."""
    from controller.jwks import usable_keys
    from controller.kinds.security import jwks_problem

    pub = json.loads(KEYS)["keys"][0]
    crafted = {**pub, "n": "_" * 2700, "d": "AQAB"}     # n, e and d of no RSA key: recovering primes spun
    assert jwks_problem(json.dumps({"keys": [crafted]})) is None     # its public members are a key
    text, skipped = usable_keys(json.dumps({"keys": [{**pub, "d": "AQAB", "p": "AQAB"}, crafted]}))
    assert json.loads(text)["keys"] == [pub, {**pub, "n": "_" * 2700}] and skipped == []
    assert jwks_problem(json.dumps({"keys": [{**pub, "d": "AQAB"}]})) is None
