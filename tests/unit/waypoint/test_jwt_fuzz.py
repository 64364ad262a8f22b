"""Fuzzing the waypoint's JWT authentication (waypoint/authn/jwt.py) with hypothesis.

What must hold for any token a client sends, in any location: `authenticate` never raises and
never hangs; its verdict is either a 401 (with Envoy's reason as the body and a Bearer challenge)
or a pass; a token that is not one the issuer signed never yields a user. Tokens: random text;
three base64url segments of arbitrary JSON (headers with odd `alg`, `kid`, `crit`, `b64`; payloads
with odd `iss`, `aud`, `exp`, `nbf`); and tokens signed with the configured keys (RSA, EC, HMAC)
whose claims are arbitrary JSON, then mutated. Three budgets, as tests/unit/dataplane/test_hbone_fuzz.py:
the unit suite (a few hundred examples), `-m fuzz` (`AMBIT_FUZZ_EXAMPLES`, default 400: the
unit suite runs it too), and a long local run
(`python -m tests.unit.waypoint.test_jwt_fuzz --cases 100000`).
"""

from __future__ import annotations

import base64
import json
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from ambit.jwtclaims import claim_values, routing_claim, space_delimited
from ambit.model import JwtRule
from tests.support import fuzzing
from waypoint.authn.jwt import Outcome, authenticate, providers
from waypoint.request import RequestHead

UNIT_EXAMPLES = 200
LONG_EXAMPLES = fuzzing.fuzz_examples(400)   # (signing costs ~1 ms)
ISS = "https://issuer.example"
NOW = 1_800_000_000.0
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
HMAC_SECRET = b"s" * 32


def _jwk(key: Any, kid: str) -> dict[str, Any]:
    algo = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return {**json.loads(algo.to_jwk(key.public_key())), "kid": kid}


JWKS = json.dumps({"keys": [_jwk(RSA_KEY, "rsa1"), _jwk(EC_KEY, "ec1"),
                            {"kty": "oct", "kid": "hs1", "k": base64.urlsafe_b64encode(HMAC_SECRET).decode().rstrip("=")}]})
RULES = (
    JwtRule(issuer=ISS, audiences=["app"], jwks=JWKS,
            output_payload_to_header="x-payload", output_claim_to_headers=[{"header": "x-sub", "claim": "sub"},
                                                                           {"header": "x-n", "claim": "a.b"}],
            space_delimited_claims=["roles"]),
    JwtRule(issuer="other", jwks=JWKS, from_headers=[{"name": "x-jwt"}], from_params=["tok"], from_cookies=["session"]),
)
PROVIDERS = providers(RULES)
SIGNERS = [(RSA_KEY, "rsa1", "RS256"), (EC_KEY, "ec1", "ES256"), (HMAC_SECRET, "hs1", "HS256")]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def judged(tok: str, where: str = "bearer") -> Outcome:
    """The verdict for a request carrying `tok` in `where`; asserts what holds for every verdict."""
    headers: list[tuple[str, str]] = [("x-sub", "forged")]
    path = "/p"
    if where == "bearer":
        headers.append(("authorization", f"Bearer {tok}"))
    elif where == "header":
        headers.append(("x-jwt", tok))
    elif where == "cookie":
        headers.append(("cookie", f"a=b; session={tok}"))
    else:
        path = f"/p?{where}={tok}"
    head = RequestHead("GET", path, "myapp", headers=headers)
    t0 = time.process_time()
    out = authenticate(PROVIDERS, head, NOW)
    assert time.process_time() - t0 < 2.0, "authenticate took over 2 s of CPU"
    assert isinstance(out, Outcome)
    if out.reply is not None:
        assert out.user is None
        assert out.reply.status == 401 and out.reply.body, out.reply
        assert any(k == "www-authenticate" and v.startswith("Bearer realm=") for k, v in out.reply.headers)
    else:
        # a pass: the forged claim header never survives, whatever the token
        assert ("x-sub", "forged") not in (out.headers if out.headers is not None else head.headers)
        for k, v in out.headers or []:     # what the token wrote: never a line break (header injection)
            if k in ("x-sub", "x-n", "x-payload"):
                assert not any(c in v for c in "\r\n\x00"), (k, v)
    return out


# --- strategies --------------------------------------------------------------------------------

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                        st.integers(min_value=10**300, max_value=10**310), st.floats(), st.text(max_size=20))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                               st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                          max_leaves=10)
alg = st.one_of(st.sampled_from(["RS256", "ES256", "HS256", "EdDSA", "PS256", "none", "None", "", "RS1"]), json_value)
jose_header = st.fixed_dictionaries(
    {"alg": alg},
    optional={"kid": st.one_of(st.sampled_from(["rsa1", "ec1", "hs1", "nope"]), json_value), "typ": json_value,
              "crit": json_value, "b64": json_value, "jku": st.text(max_size=20), "x5c": json_value})
claims = st.fixed_dictionaries(
    {},
    optional={"iss": st.one_of(st.sampled_from([ISS, "other"]), json_value),
              "sub": json_value, "aud": st.one_of(st.sampled_from(["app", "https://app/"]), json_value),
              "exp": st.one_of(st.just(NOW + 600), json_value), "nbf": json_value, "iat": json_value,
              "scope": json_value, "roles": json_value, "a": json_value})
where = st.sampled_from(["bearer", "header", "cookie", "access_token", "tok"])


def _json(v: Any) -> bytes:
    return json.dumps(v, allow_nan=True).encode()


@st.composite
def unsigned_tokens(draw: st.DrawFn) -> str:
    """Three segments of arbitrary JSON (or bytes) and a random signature."""
    h = draw(st.one_of(jose_header.map(_json), json_value.map(_json), st.binary(max_size=40)))
    p = draw(st.one_of(claims.map(_json), json_value.map(_json), st.binary(max_size=40)))
    sig = draw(st.binary(max_size=80))
    return ".".join(b64(x) for x in (h, p, sig))


@st.composite
def signed_tokens(draw: st.DrawFn) -> str:
    """A token one of the configured keys signed, with arbitrary claims and extra header fields."""
    key, kid, alg_ = draw(st.sampled_from(SIGNERS))
    body = {"iss": draw(st.sampled_from([ISS, "other"])), **draw(claims)}
    extra = draw(st.dictionaries(st.sampled_from(["typ", "cty", "crit", "b64", "x"]), json_value, max_size=2))
    try:
        return jwt.encode(body, key, algorithm=alg_, headers={"kid": kid, **extra})
    except (TypeError, ValueError, OverflowError, jwt.exceptions.InvalidTokenError):
        return "x.y.z"      # PyJWT would not sign it (NaN, a `crit` not a list beside `b64`): not our finding


def mutate(rng: random.Random, tok: str) -> str:
    s = list(tok)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        pos = rng.randrange(len(s) + 1)
        if op == 0 and s:
            s[min(pos, len(s) - 1)] = rng.choice("AZaz09-_.=+/ %\x00é")
        elif op == 1:
            s[pos:pos] = rng.choice([".", "..", "=", "%00", "\t", " ", "a" * 50])
        elif op == 2 and s:
            del s[pos:pos + rng.randint(1, 10)]
        elif op == 3:
            parts = "".join(s).split(".")
            rng.shuffle(parts)
            s = list(".".join(parts))
        elif op == 4 and len(s) > 4:
            i = rng.randrange(len(s))
            s[pos:pos] = s[i:i + rng.randint(1, 30)]
    return "".join(s)


# --- properties --------------------------------------------------------------------------------

@given(st.text(max_size=300), where)
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_random_text_is_never_a_user(tok: str, at: str) -> None:
    out = judged(tok, at)
    assert out.user is None


@given(unsigned_tokens(), where)
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_unsigned_json_tokens_are_never_a_user(tok: str, at: str) -> None:
    out = judged(tok, at)
    assert out.user is None


@given(signed_tokens(), where)
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_signed_tokens_with_arbitrary_claims_get_a_clear_verdict(tok: str, at: str) -> None:
    out = judged(tok, at)
    if out.user is not None:
        assert out.user.principal.split("/", 1)[0] in (ISS, "https:", "other")


@given(signed_tokens(), st.integers(min_value=0, max_value=2**32), where)
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_mutated_signed_tokens_get_a_clear_verdict(tok: str, seed: int, at: str) -> None:
    judged(mutate(random.Random(seed), tok), at)


@given(json_value, st.lists(st.text(max_size=6), max_size=4), st.text(max_size=40))
@fuzzing.unit_budget(UNIT_EXAMPLES, too_slow_ok=False)
def test_claim_helpers_take_any_json(value: Any, path: list[str], name: str) -> None:
    """The claim readers of ambit/jwtclaims.py see verified claims, which the issuer wrote, and
    route names, which the config wrote: still, any JSON must not make them raise."""
    doc = value if isinstance(value, dict) else {"c": value}
    space_delimited(doc, ["c", *path])
    assert all(isinstance(v, str) for v in claim_values(doc, path))
    routing_claim(name)


@pytest.mark.fuzz
@given(st.one_of(unsigned_tokens(), signed_tokens(), st.text(max_size=600)), st.integers(min_value=0, max_value=2**32),
       st.booleans(), where)
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_tokens_long(tok: str, seed: int, mutated: bool, at: str) -> None:
    judged(mutate(random.Random(seed), tok) if mutated else tok, at)


# --- the long local run ---------------------------------------------------------------------------

def _long_cases(rng: random.Random) -> Iterator[tuple[str, str]]:
    """A valid token of each signer, mutated, in any location."""
    seeds = [jwt.encode({"iss": ISS, "sub": "alice", "aud": "app", "exp": NOW + 600}, k, algorithm=a,
                        headers={"kid": kid}) for k, kid, a in SIGNERS]
    while True:
        yield mutate(rng, rng.choice(seeds)), rng.choice(["bearer", "header", "cookie", "access_token", "tok"])


def long_run(cases: int, seed: int) -> int:
    return fuzzing.long_run(cases, seed, _long_cases, lambda case: judged(*case))


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=100_000))
