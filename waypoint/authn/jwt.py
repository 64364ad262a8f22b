"""End-user authentication with JWTs (RequestAuthentication), sans-IO: the waypoint's filter, and
the gateways' later, since they run the same L7 engine.

Semantics are Envoy's jwt_authn as Istio configures it (istio/istio pilot/pkg/security/authn
`buildJWTProviderFilter`: one provider per `jwtRules` entry, combined with `requires_any` plus
`allow_missing`):

- A request without a token (in any provider's locations) passes unauthenticated: whether that
  is allowed is AuthorizationPolicy's call (`requestPrincipals`).
- A request with a token passes when a provider whose locations hold it verifies it; otherwise it
  gets **401** with Envoy's reason (`Jwt is expired`, `Jwt verification fails`, `Audiences in Jwt
  are not allowed`, ...) and `www-authenticate: Bearer realm="<url>", error="invalid_token"`.
- Several distinct tokens: each must verify (Envoy's rule), and then the request is still refused
  (401, `SEVERAL`): Istio documents several valid JWTs as unsupported, "the output principal of
  such requests is undefined". In Envoy it is: Istio gives every provider `payload_in_metadata:
  payload`, so each good token overwrites the one payload RBAC reads, the claim headers get every
  token's values, and the outer `requires_any` stops at the first provider that verifies (a token
  in another provider's location is not even checked). Authorizing on one token while the
  upstream receives another user's token or claim headers is a confused deputy; refusing is the
  only deterministic answer. The same token in several locations is one token.
- Token locations: `fromHeaders` (name, optional prefix such as "Bearer "), `fromParams`,
  `fromCookies`; with none set, `Authorization: Bearer <token>` and the `access_token` query
  parameter (Envoy's defaults).
- Verification: signature against the rule's JWKS (key chosen by `kid`, else every key whose type
  fits the token's `alg`), `iss` equal to the issuer, `aud` containing one of `audiences` (when
  set; compared as Envoy sanitizes them), and `exp`/`nbf` against the injected clock with Envoy's
  60 s clock skew. The signature and claim decoding are PyJWT's; the audience and time checks are
  here, because Envoy's audience comparison is not exact and PyJWT reads the wall clock.
- After success: without `forwardOriginalToken` the header or query parameter that carried the
  token is removed (Envoy removes both since 1.31, `jwt_authn_remove_jwt_from_query_params`; a
  token left in the URL ends up in every upstream access log); cookies stay, as with Envoy.
  `outputPayloadToHeader` gets the token's base64url payload;
  `outputClaimToHeaders` gets string/number/boolean claims (dotted names reach nested claims;
  UTF-8; not a claim holding a control character).
- The user's claims, as AuthorizationPolicy and routes read them: `scope`, `permission` and the
  rule's `spaceDelimitedClaims`, when they hold a string, are the list of its space-separated
  words (Envoy's `normalize_payload_in_metadata`, as Istio configures it: ambit/jwtclaims.py).
  The claim headers get the token's own values.
  Headers named as outputs are always removed from the incoming request first, so a client cannot
  forge them.

PyJWT (and the parts of cryptography it loads) is imported when the first JWT rule is configured
(`provider`, at a config update), not at start: a waypoint no RequestAuthentication applies to never
loads it (docs/performance.md, round 7). A missing or broken PyJWT then fails that config update,
which is NACKed with the reason, instead of the first request with a token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import unquote_plus

from ambit.httpfields import wire_value
from ambit.jwk import public_members
from ambit.jwtclaims import DEFAULT_SPACE_DELIMITED, space_delimited
from ambit.model import JwtRule
from waypoint.localreply import GRPC_UNAUTHENTICATED, local_reply
from waypoint.request import EndUser, LocalReply, RequestHead

CLOCK_SKEW = 60.0                       # Envoy JwtProvider.clock_skew_seconds default
DEFAULT_HEADER = {"name": "authorization", "prefix": "Bearer "}
DEFAULT_PARAM = "access_token"

# The algorithms Envoy's jwt_verify_lib accepts, by JWK key type. "none" is never accepted.
_ALGS = {"RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), "EC": ("ES256", "ES384", "ES512"),
         "OKP": ("EdDSA",), "oct": ("HS256", "HS384", "HS512")}

# Envoy's Status strings (jwt_verify_lib status.cc), so logs read the same.
MALFORMED = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
BAD_ALG = "Jwt header [alg] is not supported"
UNKNOWN_ISSUER = "Jwt issuer is not configured"
NO_KEY = "Jwks doesn't have key to match kid or alg from Jwt"
BAD_SIGNATURE = "Jwt verification fails"
EXPIRED = "Jwt is expired"
NOT_YET = "Jwt not yet valid"
BAD_AUDIENCE = "Audiences in Jwt are not allowed"
NO_JWKS = "Jwks remote fetch is failed"
# Not Envoy's: Istio calls a request with several valid JWTs unsupported, its principal undefined.
SEVERAL = "More than one Jwt in the request: send one token (the end user would be ambiguous)"


@dataclass(frozen=True)
class Key:
    """One usable JWK: `key` is what PyJWT verifies with, always the public half (a JWKS that also
    publishes a private part still verifies, as Envoy reads only the public members)."""

    key: Any
    key_type: str                       # the JWK's kty
    key_id: str | None                  # its kid
    alg: str                            # the JWK's own "alg" (it then takes that alg only), or ""


@dataclass(frozen=True)
class Provider:
    """One jwtRules entry with its key set parsed (once per config update, not per request)."""

    rule: JwtRule
    keys: tuple[Key, ...]
    error: str = ""                     # why no key can be used (tokens of this issuer then fail): the 401's body
    detail: str = ""                    # more of why, for the waypoint's log only: it names the identity
                                        # provider's URL and the fetch's error, none of a client's business


class PyJWTUnavailable(RuntimeError):
    """PyJWT cannot be imported, so no JWT rule can be enforced (the config update is refused)."""


def _pyjwt() -> ModuleType:
    """The `jwt` module (PyJWT), imported on first use: at the first configured rule."""
    try:
        import jwt
    except ImportError as e:
        raise PyJWTUnavailable(f"RequestAuthentication jwtRules need PyJWT, which cannot be imported: {e}") from e
    return jwt


def provider(rule: JwtRule) -> Provider:
    jwt = _pyjwt()          # also for a rule whose keys cannot be used: verify() decodes its tokens
    if rule.jwks_error:
        return Provider(rule, (), NO_JWKS, rule.jwks_error)
    keys: list[Key] = []
    try:
        data = json.loads(rule.jwks)
        raw = data.get("keys") if isinstance(data, dict) and "keys" in data else [data]
    except (ValueError, TypeError):
        return Provider(rule, (), "Jwks is not valid JSON")
    for k in raw if isinstance(raw, list) else []:
        if not isinstance(k, dict):     # PyJWK raised AttributeError on it: the whole config failed to apply
            continue
        try:
            jwk = jwt.PyJWK(public_members(k))      # (as Envoy: a private part is not read)
            keys.append(Key(_public(jwk.key), jwk.key_type, jwk.key_id, str(k.get("alg") or "")))
        except (jwt.PyJWKError, jwt.PyJWKSetError, ValueError, TypeError, KeyError, jwt.InvalidKeyError):
            continue                    # a key PyJWT cannot use is skipped, as Envoy skips it
    return Provider(rule, tuple(keys), "" if keys else "Jwks has no usable key")


def _public(key: Any) -> Any:
    """The verifying half of a key: PyJWT builds a private key object from a JWK with "d", and a
    private key object cannot verify (AttributeError on every token)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
                  | ed448.Ed448PrivateKey):
        return key.public_key()
    return key


def providers(rules: Iterable[JwtRule]) -> tuple[Provider, ...]:
    return tuple(provider(r) for r in rules)


@dataclass(frozen=True)
class Outcome:
    """`reply` (the 401) when refused; else `user` (None: no token) and `headers`, the request's
    headers after the token/output edits (None: unchanged)."""

    reply: LocalReply | None = None
    user: EndUser | None = None
    headers: list[tuple[str, str]] | None = None
    reason: str = ""
    path: str | None = None             # the request's path without the token's query parameter


_PASS = Outcome()


@dataclass(frozen=True)
class _Token:
    value: str
    header: str = ""                    # the header it came from ("" for a parameter or cookie)
    param: str = ""                     # the query parameter it came from


def _cookies(head: RequestHead, names: list[str]) -> list[str]:
    """Every value of the cookies `names`, in order, as Envoy's parseCookies reads them: `;`-separated
    `name=value` pairs, a value's double quotes removed. Every one, not one per name: with
    `session=<forged>; session=<good>` the good one alone was checked (SimpleCookie keeps the last)
    while a backend that reads the first got the forged one; and SimpleCookie gives up on the whole
    header at a pair it does not like, so a token after one went unchecked."""
    out = []
    for k, raw in head.headers:
        if k != "cookie":
            continue
        for pair in raw.split(";"):
            name, eq, v = pair.strip().partition("=")
            if eq and name.strip() in names:
                v = v.strip()
                if len(v) >= 2 and v[0] == v[-1] == '"':
                    v = v[1:-1]
                if v:
                    out.append(v)
    return out


def extract(rule: JwtRule, head: RequestHead) -> list[_Token]:
    """The tokens in this rule's locations, in Envoy's order: headers, parameters, cookies."""
    out: list[_Token] = []
    explicit = rule.from_headers or rule.from_params or rule.from_cookies
    for h in rule.from_headers or ([] if explicit else [DEFAULT_HEADER]):
        name, prefix = h.get("name", "").lower(), h.get("prefix", "")
        for k, v in head.headers:
            if k != name:
                continue
            if prefix:
                if not v.startswith(prefix):
                    continue
                v = v[len(prefix):]
            if v.strip():
                out.append(_Token(v.strip(), name))
    params = rule.from_params or ([] if explicit else [DEFAULT_PARAM])
    if params:
        out += [_Token(v, param=k) for k, v in head.query if k in params and v]
    if rule.from_cookies:
        out += [_Token(v) for v in _cookies(head, rule.from_cookies)]
    return out


def _keys_for(p: Provider, kid: Any, alg: str) -> list[Key]:
    out = []
    for k in p.keys:
        if alg not in _ALGS.get(k.key_type, ()) or (k.alg and k.alg != alg):   # a pinned key takes its alg only
            continue
        if kid is not None and k.key_id is not None and k.key_id != kid:
            continue
        out.append(k)
    return out


def verify(p: Provider, token: str, now: float) -> tuple[dict[str, Any] | None, str]:
    """(claims, "") when `token` is valid for this provider at time `now`, else (None, why)."""
    jwt = _pyjwt()          # already imported by provider(): a dict lookup
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None, MALFORMED
    alg = header.get("alg")
    if not isinstance(alg, str) or not any(alg in a for a in _ALGS.values()):
        return None, BAD_ALG
    if unverified.get("iss") != p.rule.issuer:
        return None, UNKNOWN_ISSUER
    if p.error:
        return None, p.error
    keys = _keys_for(p, header.get("kid"), alg)
    if not keys:
        return None, NO_KEY
    opts = {"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False}
    claims = None
    for k in keys:
        try:
            claims = jwt.decode(token, k.key, algorithms=[alg], issuer=p.rule.issuer,
                                options=opts)  # type: ignore[arg-type]
            break
        except (jwt.InvalidSignatureError, jwt.InvalidKeyError, jwt.DecodeError, TypeError, ValueError):
            continue
        except jwt.PyJWTError:
            return None, BAD_SIGNATURE
    if claims is None:
        return None, BAD_SIGNATURE
    if p.rule.audiences and not _audience_allowed(p.rule.audiences, claims.get("aud")):
        return None, BAD_AUDIENCE
    return _times(claims, now)


def _sanitized(aud: str) -> str:
    """Envoy's audience form (jwt_verify_lib check_audience.cc): without an http:// or https://
    prefix and a trailing slash, so `https://api.example.com/` and `api.example.com` are one."""
    out = aud.removeprefix("http://") if aud.startswith("http://") else aud.removeprefix("https://")
    return out[:-1] if out.endswith("/") else out


def _audience_allowed(configured: list[str], aud: Any) -> bool:
    """`aud` (a string or a list of strings) holds one of the configured audiences, as Envoy
    compares them (sanitized). A token without `aud` has none: refused when audiences are set."""
    got = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not all(isinstance(a, str) for a in got):
        return False
    want = {_sanitized(a) for a in configured}
    return any(_sanitized(a) in want for a in got)


def _times(claims: dict[str, Any], now: float) -> tuple[dict[str, Any] | None, str]:
    """exp and nbf against the injected clock (PyJWT's own check reads the wall clock)."""
    exp, nbf = claims.get("exp"), claims.get("nbf")
    for v in (exp, nbf):
        # Python's json reads NaN and Infinity, which compare false with everything: never expired;
        # and integers of any size, which no float holds (the comparison below would raise)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not _finite(v)):
            return None, MALFORMED
    if exp is not None and now > exp + CLOCK_SKEW:
        return None, EXPIRED
    if nbf is not None and now + CLOCK_SKEW < nbf:
        return None, NOT_YET
    return claims, ""


def _finite(v: int | float) -> bool:
    """`v` is a finite number a float can hold (`math.isfinite` raises OverflowError for an
    integer past 1.8e308, which a token's JSON may carry)."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def claim(claims: dict[str, Any], name: str) -> Any:
    """A claim by name; a dotted name reaches into nested objects when no top-level claim has it."""
    if name in claims:
        return claims[name]
    cur: Any = claims
    for part in name.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _scalar(v: Any) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | int | float):
        return str(v)
    return None


def header_value(v: Any) -> str | None:
    """A claim as a header value, or None when it cannot be one: not a string, number or boolean
    (Istio copies scalars only), or holding a control character (CR/LF would end the header line
    on an HTTP/1.1 upstream: a claim could inject headers). Text is sent as its UTF-8 bytes, as
    Envoy sends it; a header value here is a str of bytes (latin-1, the engine's convention)."""
    s = _scalar(v)
    if s is None or any(c < " " and c != "\t" or c == "\x7f" for c in s):
        return None
    return wire_value(s)


def _output_names(ps: tuple[Provider, ...]) -> set[str]:
    names = {p.rule.output_payload_to_header.lower() for p in ps if p.rule.output_payload_to_header}
    return names | {c["header"].lower() for p in ps for c in p.rule.output_claim_to_headers}


_Verified = tuple[Provider, _Token, dict[str, Any]]     # a token, the rule that verified it, its claims


def _edited(verified: list[_Verified], head: RequestHead,
            drop: set[str]) -> list[tuple[str, str]]:
    """The request's headers after the verified tokens' edits: `drop` (the output headers a client
    may have sent, the token headers not forwarded) removed, then each verifying rule's outputs."""
    out = [(k, v) for k, v in head.headers if k not in drop]
    for p, tok, claims in verified:
        if p.rule.output_payload_to_header:
            out.append((p.rule.output_payload_to_header.lower(), tok.value.split(".")[1]))
        for c in p.rule.output_claim_to_headers:
            v = header_value(claim(claims, c["claim"]))
            if v is not None:
                out.append((c["header"].lower(), v))
    return out


def without_params(path: str, names: set[str]) -> str:
    """`path` without every query parameter named in `names` (all their values, as Envoy's
    QueryParamsMulti.remove), the other parameters kept byte for byte, in order: a name is compared
    decoded (`access%5Ftoken` is `access_token`), as the token was found."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    kept = [part for part in query.split("&") if unquote_plus(part.partition("=")[0]) not in names]
    return f"{base}?{'&'.join(kept)}" if kept else base


def unauthorized(head: RequestHead, why: str, error: str = "invalid_token") -> LocalReply:
    """Envoy's jwt_authn rejection: 401, the reason as the body, and a Bearer challenge (RFC 6750's
    `invalid_request` for several tokens, "uses more than one method for including an access token")."""
    realm = f"{head.scheme}://{head.authority}{head.path_only}"
    return local_reply(head, 401, why, reason=f"jwt: {why}", grpc_status=GRPC_UNAUTHENTICATED,
                       headers=(("www-authenticate", f'Bearer realm="{realm}", error="{error}"'),))


def _judge(candidates: list[tuple[Provider, _Token]], now: float) -> tuple[_Verified | None, str]:
    """((provider, token, claims), "") when one of the providers whose locations hold this token
    verifies it, else (None, why): the first real error (a token of another issuer is the next
    provider's to judge, so "issuer is not configured" only when no provider knows it)."""
    why = ""
    for p, tok in candidates:
        claims, err = verify(p, tok.value, now)
        if claims is not None:
            return (p, tok, claims), ""
        if not why or why == UNKNOWN_ISSUER:
            why = err
    return None, why


def authenticate(ps: tuple[Provider, ...], head: RequestHead, now: float) -> Outcome:
    """The JWT verdict for one request (see the module docstring). `now` is Unix time.

    Every token the request carries must verify, not just one: Envoy's rule (authenticator.cc,
    "a request has a good token and a bad one ... the backend may mistakenly use the bad token"),
    which Istio's requirement keeps (each provider's token, if present, must be valid). Then at
    most one distinct token may be left: two valid tokens would let AuthorizationPolicy judge one
    user while the upstream reads the other's token or claim headers."""
    if not ps:
        return _PASS
    scrub = _output_names(ps)
    if head.method == "OPTIONS" and head.header("origin") and head.header("access-control-request-method"):
        # A CORS preflight: Istio sets Envoy's `bypass_cors_preflight`, so it is never refused
        # (a browser sends no credentials on it) and names no user; the headers Ambit writes from
        # claims are still removed, so a forged one cannot reach the backend on it.
        return _scrubbed(head, scrub)
    found: dict[str, list[tuple[Provider, _Token]]] = {}     # token -> the rules whose locations hold it
    for p in ps:
        for tok in extract(p.rule, head):
            found.setdefault(tok.value, []).append((p, tok))
    verified: list[_Verified] = []
    drop = set(scrub)
    drop_params: set[str] = set()
    for candidates in found.values():
        ok, why = _judge(candidates, now)
        if ok is None:
            return Outcome(reply=unauthorized(head, why), reason=f"jwt: {why}")
        verified.append(ok)
        # every header the verifying rule found this token in, unless that rule forwards it
        drop.update(t.header for q, t in candidates if q is ok[0] and t.header and not q.rule.forward_original_token)
        drop_params.update(t.param for q, t in candidates if q is ok[0] and t.param and not q.rule.forward_original_token)
    if len(verified) > 1:
        return Outcome(reply=unauthorized(head, SEVERAL, "invalid_request"), reason=f"jwt: {SEVERAL}")
    if verified:
        verifier, _, claims = verified[0]
        # what policies and routes read has the space-delimited claims split; the claim headers
        # (`_edited`) get the token's own values, as Envoy's claim_to_headers does
        user = EndUser(f"{claims.get('iss', '')}/{claims.get('sub', '')}",
                       space_delimited(claims, (*DEFAULT_SPACE_DELIMITED, *verifier.rule.space_delimited_claims)))
        return Outcome(user=user, headers=_edited(verified, head, drop), reason=f"jwt: {user.principal}",
                       path=without_params(head.path, drop_params) if drop_params else None)
    return _scrubbed(head, scrub)


def _scrubbed(head: RequestHead, scrub: set[str]) -> Outcome:
    """No user: the request with the headers only a verified token may set removed."""
    if scrub and any(k in scrub for k, _ in head.headers):
        return Outcome(headers=[(k, v) for k, v in head.headers if k not in scrub])
    return _PASS
