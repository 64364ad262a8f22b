"""What the waypoint's HTTP engine and its sans-IO cores (routing, L7 authorization, and later
resilience) exchange: the request as parsed, the connection it arrived on, and the decision.

The engine (waypoint/http/) parses bytes with libraries (httptools, h2) into a `RequestHead` and
knows the `Downstream` it came from (the HBONE tunnel: the source's SPIFFE identity and address).
The cores are pure functions of these; they return a `Decision`: forward upstream (`Forward`) or
answer locally (`LocalReply`: a redirect, a direct response, a 403, a 404 ...). Nothing here does
I/O, so tests build these objects by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any
from urllib.parse import parse_qsl

from ambit.httpfields import REQUEST_PSEUDO_HEADERS


@dataclass
class RequestHead:
    """One request's head. Header names are lower-case (HTTP/2 rules, applied to HTTP/1.1 too);
    values keep their case and order; a name may repeat."""

    method: str
    path: str                               # as sent: path plus "?query", no fragment
    authority: str                          # Host (HTTP/1.1) or :authority (HTTP/2)
    scheme: str = "http"
    headers: list[tuple[str, str]] = field(default_factory=list)
    version: str = "1.1"                    # "1.0" | "1.1" | "2"
    grpc: bool = False                      # content-type application/grpc*
    user: EndUser | None = None             # who its verified JWT names (set by RequestAuthentication
                                            # before routing, so routes may match claims)

    def header(self, name: str) -> str | None:
        """All values of `name` joined with "," (RFC 9110 §5.3), or None when absent.
        Cookie is joined with "; " (RFC 9113 §8.2.3)."""
        values = [v for k, v in self.headers if k == name]
        if not values:
            return None
        return ("; " if name == "cookie" else ",").join(values)

    def header_or_pseudo(self, name: str) -> str | None:
        """`header(name)`, or for one of the request's pseudo-headers (`:method`, `:authority`,
        `:path` with its query, `:scheme`) its own value, as Envoy's header matchers read them."""
        pseudo = _PSEUDO.get(name)
        return pseudo(self) if pseudo is not None else self.header(name)

    @property
    def path_only(self) -> str:
        return self.path.split("?", 1)[0]

    @property
    def query(self) -> list[tuple[str, str]]:
        q = self.path.split("?", 1)[1] if "?" in self.path else ""
        return parse_qsl(q, keep_blank_values=True)

    @property
    def host(self) -> str:
        """The authority without a port (IPv6 literals keep their brackets)."""
        a = self.authority
        if a.startswith("["):
            return a.split("]", 1)[0] + "]"
        return a.rsplit(":", 1)[0] if a.count(":") == 1 else a


# each pseudo-header is the head's field of its name (`:path` is `path`, query included)
_PSEUDO: dict[str, Callable[[RequestHead], str]] = {n: attrgetter(n[1:]) for n in REQUEST_PSEUDO_HEADERS}


@dataclass(frozen=True)
class Downstream:
    """The tunnel a request arrived on, as the waypoint's HBONE server saw it."""

    source_identity: str = ""               # SPIFFE id of the peer (mTLS), "" when none
    source_ip: str = ""
    source_namespace: str = ""
    source_labels: tuple[tuple[str, str], ...] = ()
    destination_ip: str = ""                # the original destination (a VIP or a pod IP)
    destination_port: int = 0
    service: str = ""                       # "ns/name" of the destination Service, if known
    hostname: str = ""                      # its FQDN
    listener: str = ""                      # ingress HTTPS: the listener group the SNI chose
    edge: str = ""                          # ingress: the client connection's scheme (http, https); "" in the mesh
    sni: str = ""                           # an opaque tunnel's TLS ClientHello server name, "" if none
    client_cert: str = ""                   # ingress mutual TLS: the verified client certificate's XFCC element
    # ingress HTTP: the address the client connected to (Envoy's downstream local address: what
    # `destination.ip` matches, the check's destination, the log's downstream_local_address). Not
    # `destination_ip`, which would make the route lookup treat the request as addressed to a
    # workload; in the mesh and on ingress TCP listeners destination_ip is that address already
    local_ip: str = ""
    # Waypoints this request already came through before this one (the CONNECT's HOPS_HEADER; 0 from
    # a client's ztunnel or at an ingress gateway): bounds a loop of waypoints sending to each other
    hops: int = 0


@dataclass(frozen=True)
class EndUser:
    """The end user a verified JWT names (waypoint/authn), as AuthorizationPolicy reads it:
    `request.auth.principal` is "<iss>/<sub>", `request.auth.claims[...]` the payload,
    `request.auth.audiences` its `aud` and `request.auth.presenter` its `azp` (Istio's conditions)."""

    principal: str
    claims: Mapping[str, Any] = field(default_factory=dict)

    @property
    def audiences(self) -> list[str]:
        aud = self.claims.get("aud")
        return [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)] \
            if isinstance(aud, list) else []

    @property
    def presenter(self) -> str | None:
        azp = self.claims.get("azp")
        return azp if isinstance(azp, str) else None


@dataclass(frozen=True)
class HeaderOps:
    """Header edits, applied in this order: remove, set (replace), add (append)."""

    remove: tuple[str, ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()

    def apply(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The edited headers; `headers` itself when there are no edits (most routes have none,
        and this runs twice per request)."""
        if not (self.remove or self.set or self.add):
            return headers
        drop = {n.lower() for n in self.remove} | {n.lower() for n, _ in self.set}
        out = [(k, v) for k, v in headers if k not in drop]
        out += [(n.lower(), v) for n, v in self.set]
        out += [(n.lower(), v) for n, v in self.add]
        return out


@dataclass(frozen=True)
class Forward:
    """Send the request upstream to one backend of `service` ("ns/name"), `subset` of it, `port`.

    `path`/`authority` are the rewritten values (None: unchanged). `route` names the route for
    logs and metrics ("Kind/ns/name#index"). `audit` names the AUDIT policies the request matched,
    for its access-log line (set by the waypoint's decide, after routing)."""

    service: str
    port: int
    subset: str = ""
    hostname: str = ""
    path: str | None = None
    authority: str | None = None
    request_headers: HeaderOps = HeaderOps()
    response_headers: HeaderOps = HeaderOps()
    route: str = ""
    policy: Any = None          # the route's waypoint.resilience.policy.RoutePolicy; None: the defaults
    audit: tuple[str, ...] = ()     # the AUDIT AuthorizationPolicies ("ns/name") the request matched
    dry_run: tuple[tuple[str, str, str], ...] = ()  # the dry-run policies' results (waypoint/authz/evaluate.py)
    # an external authorizer's response header edits, on allow ((action, name, value): waypoint/authz/extauthz.py)
    response_edits: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class LocalReply:
    """Answer without going upstream. `flags` is Envoy's response_flags value for the access log
    and metrics: NR (no route), UH (no healthy upstream), "" for a configured reply."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    flags: str = ""
    grpc_status: int | None = None          # for gRPC requests: answered as trailers-only
    route: str = ""
    reason: str = ""                        # for the access log: why
    audit: tuple[str, ...] = ()             # the AUDIT AuthorizationPolicies ("ns/name") the request matched
    dry_run: tuple[tuple[str, str, str], ...] = ()  # the dry-run policies' results (waypoint/authz/evaluate.py)


@dataclass(frozen=True)
class SubReply:
    """A sub-request's whole response (an external authorization check's), as the engine collected
    it: status, headers, body (at most the bound the engine keeps), trailers."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    trailers: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class Hold:
    """Hold the request for an external authorization check (AuthorizationPolicy CUSTOM) before
    deciding. The engine sends the check (`build`: its request head and body, from the request's
    buffered body when `body_limit` >= 0) to an endpoint of `forward`'s Service port, over HTTP/2
    when `h2`, within `timeout` s, and decides with `resume(reply, why)`: the reply, or None and
    why the check failed (connect failure, reset, timeout). `body_limit` < 0: the check carries no
    body; else the request body is buffered first up to that many bytes, and a longer one is
    answered 413 unless `partial_ok` (then its first `body_limit` bytes are sent, `partial`).
    `span_tags`: what a traced check's span is tagged with for the authorizer's reply (Envoy's
    ext_authz_status, ext_authz_http_status), asked only when the request is traced."""

    forward: Forward
    build: Callable[[bytes | None, bool], tuple[RequestHead, bytes]]
    resume: Callable[[SubReply | None, str], Decision]
    h2: bool = False
    timeout: float = 600.0
    body_limit: int = -1
    partial_ok: bool = False
    audit: tuple[str, ...] = ()
    span_tags: Callable[[SubReply], Mapping[str, str]] | None = None


Decision = Forward | LocalReply
