"""RequestAuthentication on the wire: the engine on loopback with the JWT authenticator as its
`decide`, driven by curl over HTTP/1.1 and HTTP/2, with an origin that records the bytes it got.
What is asserted is what an upstream receives (or that the client is refused), for both protocols.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.unit.waypoint.harness import Proxy, RawOrigin
from tests.unit.waypoint.test_jwt_authn import NOW, OTHER_KEY, rule, token
from waypoint.authn.jwt import authenticate, providers
from waypoint.request import Decision, Downstream, Forward, RequestHead

PROTOCOLS = ["--http1.1", "--http2-prior-knowledge"]


@pytest.fixture()
def wire() -> Iterator[tuple[Proxy, RawOrigin]]:
    origin = RawOrigin()
    ps = providers([rule(output_claim_to_headers=[{"header": "x-sub", "claim": "sub"}])])

    def decide(head: RequestHead, down: Downstream) -> Decision:
        out = authenticate(ps, head, NOW)
        if out.reply is not None:
            return out.reply
        if out.headers is not None:
            head.headers = out.headers
        if out.path is not None:
            head.path = out.path
        return Forward(service="test/origin", port=origin.port)

    proxy = Proxy(decide)
    yield proxy, origin
    proxy.close()
    origin.close()


def send(proxy: Proxy, version: str, path: str, tok: str) -> tuple[str, bytes]:
    r = subprocess.run(["curl", "-sS", version, "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                        "-H", f"authorization: Bearer {tok}", f"http://127.0.0.1:{proxy.port}{path}"],
                       capture_output=True, timeout=20)
    return r.stdout.decode(), r.stderr


def received(origin: RawOrigin, path: str) -> bytes:
    """The request head the origin got for `path` (each test request has its own path)."""
    origin.wait_requests(1)
    for raw in origin.raw.values():
        start = bytes(raw).find(f"GET {path} ".encode())
        if start >= 0:
            return bytes(raw)[start:bytes(raw).index(b"\r\n\r\n", start)]
    raise AssertionError(f"the origin got no request for {path}")


@pytest.mark.parametrize("version", PROTOCOLS)
def test_a_claim_with_crlf_cannot_inject_an_upstream_header(wire: tuple[Proxy, RawOrigin], version: str) -> None:
    proxy, origin = wire
    path = f"/crlf{version.replace('-', '')}"
    code, err = send(proxy, version, path, token(sub="alice\r\nx-injected: 1"))
    assert code == "200", err
    head = received(origin, path)
    assert b"x-injected" not in head and b"x-sub" not in head and b"authorization" not in head


@pytest.mark.parametrize("version", PROTOCOLS)
def test_a_non_latin1_claim_reaches_the_upstream_as_utf8(wire: tuple[Proxy, RawOrigin], version: str) -> None:
    """Was a 500 over HTTP/1.1 and a request that never got an answer over HTTP/2 (the upstream
    head could not be encoded)."""
    proxy, origin = wire
    path = f"/utf8{version.replace('-', '')}"
    code, err = send(proxy, version, path, token(sub="José 王"))
    assert code == "200", err
    assert "x-sub: José 王".encode() in received(origin, path)


@pytest.mark.parametrize("version", PROTOCOLS)
def test_a_forged_token_next_to_a_valid_one_is_refused(wire: tuple[Proxy, RawOrigin], version: str) -> None:
    proxy, origin = wire
    forged_header = subprocess.run(
        ["curl", "-sS", version, "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
         "-H", f"authorization: Bearer {token(key=OTHER_KEY)}",
         f"http://127.0.0.1:{proxy.port}/both?access_token={token()}"], capture_output=True, timeout=20)
    assert forged_header.stdout == b"401", forged_header.stderr
    assert not any(b"/both" in bytes(raw) for raw in origin.raw.values())


@pytest.mark.parametrize("version", PROTOCOLS)
def test_two_valid_tokens_of_two_users_are_refused(wire: tuple[Proxy, RawOrigin], version: str) -> None:
    """Was 200 with the first token's user for authorization, while the upstream got both users'
    `x-sub` headers and the second token in the query: a backend reading either could act as bob
    on a request authorized as alice. Istio leaves the principal undefined; Ambit refuses."""
    proxy, origin = wire
    path = f"/two{version.replace('-', '')}"
    r = subprocess.run(
        ["curl", "-sS", version, "-m", "10", "-w", "\n%{http_code}",
         "-H", f"authorization: Bearer {token()}",
         f"http://127.0.0.1:{proxy.port}{path}?access_token={token(sub='bob')}"], capture_output=True, timeout=20)
    body, _, code = r.stdout.rpartition(b"\n")
    assert code == b"401", r.stderr
    assert body.startswith(b"More than one Jwt in the request")
    assert not any(path.encode() in bytes(raw) for raw in origin.raw.values())


@pytest.mark.parametrize("version", PROTOCOLS)
def test_a_token_in_the_query_does_not_reach_the_upstream(wire: tuple[Proxy, RawOrigin], version: str) -> None:
    """Was forwarded in the URL (the upstream's access log kept a valid bearer token)."""
    proxy, origin = wire
    path = f"/q{version.replace('-', '')}"
    r = subprocess.run(["curl", "-sS", version, "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                        f"http://127.0.0.1:{proxy.port}{path}?a=1&access_token={token()}&b=2"],
                       capture_output=True, timeout=20)
    assert r.stdout == b"200", r.stderr
    head = received(origin, f"{path}?a=1&b=2")
    assert b"access_token" not in head and b"x-sub: alice" in head
