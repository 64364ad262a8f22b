"""Request matchers compiled from the model's `StringMatch`, `HeaderMatch` and `HttpMatch`.

Semantics (Envoy's, as Istio and Gateway API configure it; see ../shared/notes/l7-semantics.md §1, §3):
- `exact`, `prefix`, `regex` are case-sensitive unless `ignore_case` (regexes can say `(?i)`).
- `regex` is a full match of the value (Envoy `safe_regex`), never a search.
- `path_prefix` is Gateway API's PathPrefix: whole path segments (`/v2` matches `/v2`, `/v2/`,
  `/v2/x`, not `/v2example`); a trailing `/` in the value is ignored.
- A VirtualService `prefix` on the uri is a plain string prefix (`/pre` matches `/prefix`).
- Paths are matched without the query string, except a VirtualService `prefix`, which Envoy
  compares with the whole `:path`.
- Headers: all values of a name joined with "," (Cookie with "; "), as Envoy matches them. A
  missing header never matches, except inverted (`withoutHeaders`), where it counts as empty,
  so `withoutHeaders` matches a request without the header.
- Query parameters: the first value of the name (Envoy), decoded.
- A VirtualService header name may also be a request pseudo-header (`:method`, `:authority`,
  `:path` with its query, `:scheme`), matched against the request's own, or a verified JWT claim
  (`@request.auth.claims.group`: `HeaderMatch.claim`), matched as Envoy's metadata list matcher
  (Istio's `translateMetadataMatch`): a string claim is one value, a list claim matches when one
  of its string elements does; a request without a verified token, or without the claim, has no
  value (so it matches a `withoutHeaders` condition). `{}` asks for the claim to be present.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ambit.httpfields import REQUEST_PSEUDO_HEADERS
from ambit.jwtclaims import claim_values
from ambit.model import HeaderMatch, HttpMatch, StringMatch
from ambit.regex import compile_re2, full_match
from waypoint.request import Downstream, RequestHead


@dataclass(frozen=True, slots=True)
class StringMatcher:
    kind: str                  # exact | prefix | path_prefix | regex | present
    value: str
    ignore_case: bool
    regex: Any = None          # the compiled RE2 pattern for kind "regex"

    @classmethod
    def compile(cls, m: StringMatch) -> StringMatcher:
        """RegexError (ambit.regex) if a pattern does not compile with RE2."""
        if m.kind == "regex":
            return cls("regex", m.value, m.ignore_case, compile_re2(m.value))
        if m.kind == "path_prefix":
            return cls("path_prefix", m.value.rstrip("/"), m.ignore_case)
        if m.kind not in ("exact", "prefix", "present"):
            raise ValueError(f"unknown string match kind {m.kind!r}")
        value = m.value.lower() if m.ignore_case else m.value
        return cls(m.kind, value, m.ignore_case)

    def matches(self, value: str) -> bool:
        k = self.kind
        if k == "regex":
            return full_match(self.regex, value)
        if k == "present":
            return True
        if self.ignore_case:
            value = value.lower()
        if k == "exact":
            return value == self.value
        if k == "prefix":
            return value.startswith(self.value)
        # path_prefix: the value ("" for "/") followed by the end of the path or a "/"
        p = self.value
        return value.startswith(p) and (len(value) == len(p) or value[len(p)] == "/")


@dataclass(frozen=True, slots=True)
class NamedMatcher:
    """A header or query-parameter condition."""

    name: str
    matcher: StringMatcher | None    # None: must be present
    invert: bool
    claim: tuple[str, ...] = ()      # a JWT claim's path instead of a header

    @classmethod
    def compile(cls, m: HeaderMatch) -> NamedMatcher:
        sm = m.match
        # Istio: `{}` and regex "*" both mean "present".
        if sm is not None and sm.kind == "regex" and sm.value == "*":
            sm = None
        return cls(m.name, StringMatcher.compile(sm) if sm is not None else None, m.invert, tuple(m.claim))

    @property
    def special(self) -> bool:
        """Matched against the request's pseudo-headers or its verified claims, not its headers."""
        return bool(self.claim) or self.name in REQUEST_PSEUDO_HEADERS

    def special_matches(self, head: RequestHead) -> bool:
        if not self.claim:
            return self.matches(head.header_or_pseudo(self.name))
        user = head.user
        values = claim_values(user.claims, self.claim) if user is not None else []
        held = bool(values) if self.matcher is None else any(self.matcher.matches(v) for v in values)
        return held != self.invert

    def matches(self, value: str | None) -> bool:
        if self.invert:
            if self.matcher is None:
                return value is None
            return not self.matcher.matches(value if value is not None else "")
        if value is None:
            return False
        return self.matcher is None or self.matcher.matches(value)


@dataclass(frozen=True, slots=True)
class RequestMatcher:
    """One `HttpMatch`: every condition set must hold (AND)."""

    path: StringMatcher | None
    method: StringMatcher | None
    authority: StringMatcher | None
    scheme: StringMatcher | None
    headers: tuple[NamedMatcher, ...]
    query: tuple[NamedMatcher, ...]
    port: int
    source_labels: tuple[tuple[str, str], ...]
    source_namespace: str
    specials: tuple[NamedMatcher, ...] = ()    # pseudo-header and JWT claim conditions

    @classmethod
    def compile(cls, m: HttpMatch) -> RequestMatcher:
        def opt(s: StringMatch | None) -> StringMatcher | None:
            return StringMatcher.compile(s) if s is not None else None
        named = [NamedMatcher.compile(h) for h in m.headers]
        return cls(path=opt(m.path), method=opt(m.method), authority=opt(m.authority), scheme=opt(m.scheme),
                   headers=tuple(h for h in named if not h.special),
                   query=tuple(NamedMatcher.compile(q) for q in m.query),
                   port=m.port, source_labels=tuple(sorted(m.source_labels.items())),
                   source_namespace=m.source_namespace, specials=tuple(h for h in named if h.special))

    def matches(self, head: RequestHead, down: Downstream) -> bool:
        if self.port and down.destination_port != self.port:
            return False
        if self.path is not None:
            target = head.path if self.path.kind == "prefix" else head.path_only
            if not self.path.matches(target):
                return False
        if self.method is not None and not self.method.matches(head.method):
            return False
        if self.authority is not None and not self.authority.matches(head.authority):
            return False
        if self.scheme is not None and not self.scheme.matches(head.scheme):
            return False
        for h in self.headers:
            if not h.matches(head.header(h.name)):
                return False
        for h in self.specials:
            if not h.special_matches(head):
                return False
        if self.query:
            params: dict[str, str] = {}
            for k, v in head.query:
                params.setdefault(k, v)
            for q in self.query:
                if not q.matches(params.get(q.name)):
                    return False
        if self.source_namespace and down.source_namespace != self.source_namespace:
            return False
        if self.source_labels:
            labels = dict(down.source_labels)
            if any(labels.get(k) != v for k, v in self.source_labels):
                return False
        return True
