"""Fuzzing what a JWKS endpoint answers the controller (hypothesis): `JwksCache.fetch` with its
`get` injected (the bytes an identity provider serves, no socket), and what the waypoints then
make of the key set the controller inlines (`waypoint.authn.jwt.provider`).

Documents: valid key sets (RSA, EC P-256, Ed25519, oct), then keys with fields replaced by values
of other types (numbers, lists, objects, null), unknown and misspelt key types, moduli of up to
hundreds of kilobytes, exponents of every size, EC points off the curve, duplicate kids, keys that
are no objects; documents that are no key set, no JSON, no UTF-8, nested thousands deep. Fetched in
a row for one source, so a bad answer follows a good one. What must hold:
- `fetch` never raises and returns within 2 s;
- a usable document is inlined with only its usable keys (each a JSON object with string kid, alg,
  use and kty, that PyJWT builds), and every waypoint builds its verifier from it without an
  exception and with at least one key; the keys left out are logged with a reason;
- an unusable document keeps the last good key set (or, with none yet, no keys and an error);
- what the endpoint said reaches the log only printable.
Three budgets:
- the unit suite: a couple of hundred examples each (a few seconds);
- `-m fuzz`: `AMBIT_FUZZ_EXAMPLES` examples each (default 600);
- a long local run: `python -m tests.unit.controller.test_jwks_fuzz --cases 20000`.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from ambit.jwk import public_members
from ambit.model import JwtRule
from controller.jwks import MAX_RSA_MODULUS_B64, JwksCache
from tests.support import fuzzing
from waypoint.authn.jwt import provider

UNIT_EXAMPLES = 200
LONG_EXAMPLES = fuzzing.fuzz_examples(600)   # (bounded: the unit suite runs it)
SOURCE = "https://idp.example/jwks"


def _jwk(alg: Any, key: Any, kid: str) -> dict[str, Any]:
    return {**json.loads(alg.to_jwk(key)), "kid": kid}


GOOD = [
    _jwk(jwt.algorithms.RSAAlgorithm, rsa.generate_private_key(65537, 2048).public_key(), "rsa") | {"alg": "RS256"},
    _jwk(jwt.algorithms.ECAlgorithm, ec.generate_private_key(ec.SECP256R1()).public_key(), "ec") | {"alg": "ES256"},
    _jwk(jwt.algorithms.OKPAlgorithm, ed25519.Ed25519PrivateKey.generate().public_key(), "ed"),
    {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ", "kid": "hmac", "alg": "HS256"},
]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def usable(key: Any) -> bool:
    if not isinstance(key, dict) or any(k in key and not isinstance(key[k], str) for k in ("kid", "alg", "use", "kty")):
        return False
    n = key.get("n")
    if isinstance(n, str) and len(n) > MAX_RSA_MODULUS_B64:
        return False        # an absurd modulus: refused before PyJWT sees it
    try:
        jwt.PyJWK(public_members(key))       # (a private part is not read, as Envoy's)
    except Exception:   # noqa: BLE001 - the oracle: PyJWT cannot use it
        return False
    return True


def check(docs: list[bytes]) -> None:
    catcher = fuzzing.LogCatcher()
    logger = logging.getLogger("ambit.controller.jwks")
    logger.addHandler(catcher)
    try:
        served = iter(docs)
        cache = JwksCache(get=lambda url, timeout: next(served), refresh=0, retry=0)
        last_good = ""
        for doc in docs:
            t0 = time.process_time()
            cache.fetch(SOURCE, 1.0)
            assert time.process_time() - t0 < 2.0, "one fetch took over 2 s of CPU"
            keys, error = cache.resolved()[SOURCE]
            try:
                parsed = json.loads(doc)
            except (ValueError, RecursionError):
                parsed = None
            good = (isinstance(parsed, dict) and isinstance(parsed.get("keys"), list)
                    and any(usable(k) for k in parsed["keys"]))
            if good:
                assert keys and not error, (keys[:200], error)
                inlined = json.loads(keys)
                assert inlined["keys"] == [public_members(k) for k in parsed["keys"] if usable(k)]
                p = provider(JwtRule(issuer="https://idp.example", jwks=keys))
                assert p.keys and not p.error, p.error
                last_good = keys
            else:
                assert keys == last_good, "an unusable document replaced the last good key set"
                assert last_good or error
        for m in catcher.messages:
            assert m.isprintable(), f"a log line with control characters: {m[:300]!r}"
    finally:
        logger.removeHandler(catcher)


# --- strategies ------------------------------------------------------------------------------------

junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                 st.sampled_from(["", "AQAB", "AA", "RSA", "EC", "oct", "OKP", "P-256", "none", "kid\nforged"]))


@st.composite
def keys(draw: Any) -> Any:
    how = draw(st.integers(0, 8))
    if how == 0:
        return draw(junk)
    key = dict(draw(st.sampled_from(GOOD)))
    if how <= 2:
        return key
    for _ in range(draw(st.integers(1, 3))):
        field = draw(st.sampled_from(sorted(key) + ["kty", "kid", "alg", "use", "crv", "n", "e", "x", "y", "k", "d"]))
        if draw(st.booleans()):
            key[field] = draw(junk)
        else:
            key.pop(field, None)
    if how == 3 and key.get("kty") == "RSA":
        key["n"] = b64(b"\xff" * draw(st.sampled_from([1, 64, 256, 4096, 100_000])))
        key["e"] = b64(draw(st.sampled_from([b"\x01\x00\x01", b"\x01", b"\x00", b"\x03", b"\x01" * 600])))
    return key


@st.composite
def documents(draw: Any) -> bytes:
    how = draw(st.integers(0, 9))
    if how <= 5:
        return json.dumps({"keys": draw(st.lists(keys(), max_size=5))}).encode()
    if how == 6:
        return json.dumps(draw(st.one_of(junk, st.fixed_dictionaries({"keys": junk})))).encode()
    if how == 7:
        depth = draw(st.sampled_from([10, 900, 100_000]))
        return b'{"keys": [' + b"[" * depth + b"]" * depth + b"]}"
    if how == 8:
        return draw(st.binary(max_size=40))
    doc = json.dumps({"keys": GOOD}).encode()
    cut = draw(st.integers(0, len(doc)))
    return doc[:cut] + draw(st.binary(max_size=3)) + doc[cut + 1:]


@given(st.lists(documents(), min_size=1, max_size=4))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_jwks_documents_keep_the_last_good_set_and_inline_only_usable_keys(docs: list[bytes]) -> None:
    check(docs)


@pytest.mark.fuzz
@given(st.lists(documents(), min_size=1, max_size=8))
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_jwks_documents_long(docs: list[bytes]) -> None:
    check(docs)


# --- a long local run: random mutations of a valid key set, no shrinking ----------------------------

JUNK: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x", [], {}, [1], {"a": 1}, "AQAB", "kid\nx"]


def _long_cases(rng: random.Random) -> Iterator[list[bytes]]:
    """1 to 4 documents in a row: valid keys with fields replaced or left out, now and then a byte."""
    while True:
        docs = []
        for _ in range(rng.randint(1, 4)):
            ks = [dict(rng.choice(GOOD)) for _ in range(rng.randint(0, 4))]
            for k in ks:
                for f in rng.sample(sorted(k), rng.randint(0, 2)):
                    if rng.random() < 0.5:
                        k[f] = rng.choice(JUNK)
                    else:
                        del k[f]
            doc = json.dumps({"keys": ks + [rng.choice(JUNK)] * rng.randint(0, 1)}).encode()
            if rng.random() < 0.1:
                j = rng.randrange(len(doc))
                doc = doc[:j] + bytes([rng.randrange(256)]) + doc[j + 1:]
            docs.append(doc)
        yield docs


def long_run(cases: int, seed: int) -> int:
    return fuzzing.long_run(cases, seed, _long_cases, check, max_crashes=5)


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=20000, seed=None))
