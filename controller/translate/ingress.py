"""Ingress Gateways: a Gateway API `Gateway` of class `ambit` (or `istio`) and the HTTPRoutes,
GRPCRoutes, TLSRoutes and TCPRoutes that attach to it, resolved into one `IngressGateway` per Gateway
plus the status Gateway API asks for.

Pure: objects in, model and status out. The rules are Gateway API's (gateway.networking.k8s.io v1,
`ParentReference`, `Listener`, `AllowedRoutes`, `HTTPRouteSpec.hostnames`):

- a parentRef names the Gateway (group gateway.networking.k8s.io, kind Gateway, namespace defaulting
  to the route's); `sectionName` narrows it to the listener of that name, `port` to the listeners on
  that port; none left is `Accepted=False NoMatchingParent`;
- a listener admits the route when the route's namespace is allowed (`allowedRoutes.namespaces.from`
  Same (default) / All / Selector on the namespace's labels) and its kind is (by protocol: HTTP and
  HTTPS take HTTPRoute and GRPCRoute, TLS (passthrough) TLSRoute, TCP TCPRoute, unless
  `allowedRoutes.kinds` narrows it; a kind listed there that the listener's protocol cannot carry
  is `ResolvedRefs=False InvalidRouteKinds`); none admitting it is `NotAllowedByListeners`;
- the route's `hostnames` intersect the listener's `hostname` (exact names, and `*.suffix`
  wildcards matching one or more labels); an empty side matches anything; no intersection on any
  admitting listener is `NoMatchingListenerHostname`;
- backends must be Services that exist, in the route's namespace or in one whose ReferenceGrant
  permits the route's kind from the route's namespace to that Service (or to every Service); else a
  cross-namespace backend is `ResolvedRefs=False RefNotPermitted` and, as Gateway API requires of an
  unresolved backend, its share of requests gets 500; a missing one is `BackendNotFound`;
- listeners share a port when they share its protocol (the first listener on a port decides it) and
  differ in `hostname`; a later one that breaks this is `Conflicted` (`ProtocolConflict`,
  `HostnameConflict`) and not served;
- an HTTPS listener's `certificateRefs` must be `kubernetes.io/tls` Secrets in the Gateway's
  namespace (or one whose ReferenceGrant permits Gateways of the Gateway's namespace to refer to
  them) holding a certificate and key that load; otherwise the listener is
  `ResolvedRefs=False` (`RefNotPermitted`, `InvalidCertificateRef`) and serves none of them.

Routes of one virtual host keep Gateway API precedence (controller.translate.routes). Listeners of
one port are isolated (`isolate`): a Host is served by the routes of the most specific listener
hostname it matches only, as Gateway API's listener isolation requires. TLSRoutes and
TCPRoutes become `TcpRoute`s (weighted backends) of a virtual host (an SNI name, "*" for any; a TCP
listener has "*" only): where two routes claim one name on a listener, the oldest wins (the index
is oldest first), as Gateway API's conflict rule says.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from ambit.model import (
    HttpRoute,
    IngressGateway,
    IngressListener,
    RouteDestination,
    TcpRoute,
    TlsCertificate,
    WaypointRoutes,
)
from controller.kinds.gateway import INGRESS_CLASSES, TLS_MIN_VERSION_OPTION, is_service_backend
from controller.translate.blame import blame
from controller.translate.index import Index, name_of, ns_of
from controller.translate.routes import Hosts, gateway_api_routes, gw_backend
from controller.validation import FieldError

Obj = dict[str, Any]
GATEWAY_GROUP = "gateway.networking.k8s.io"
CONTROLLER_NAME = "ambit.io/gateway-controller"
TLS_SECRET = "kubernetes.io/tls"
ROUTE_KINDS = ("HTTPRoute", "GRPCRoute")    # what attaches to HTTP/HTTPS listeners (both, by default)
L4_ROUTE_KINDS = ("TLSRoute", "TCPRoute")
ALL_ROUTE_KINDS = ROUTE_KINDS + L4_ROUTE_KINDS
# the route kinds a listener of each protocol carries (and lists in its status' supportedKinds)
# (HBONE: a waypoint's listener, controller.translate.parents; ingress listeners never use it)
KINDS_BY_PROTOCOL = {"HTTP": ROUTE_KINDS, "HTTPS": ROUTE_KINDS, "TLS": ("TLSRoute",), "TCP": ("TCPRoute",),
                     "HBONE": ROUTE_KINDS}


@dataclass
class ParentStatus:
    """One parentRef's verdict: Gateway API's `Accepted` and `ResolvedRefs` (reason, message)."""

    ref: Obj
    accepted: tuple[bool, str, str]
    resolved: tuple[bool, str, str]


@dataclass
class ListenerStatus:
    name: str
    attached: int = 0
    resolved: tuple[bool, str, str] = (True, "ResolvedRefs", "")
    conflicted: str = ""        # "" | ProtocolConflict | HostnameConflict (then the listener is not served)
    kinds: tuple[str, ...] = ROUTE_KINDS    # supportedKinds: what its protocol carries and allowedRoutes allows
    accepted: tuple[bool, str, str] = (True, "Accepted", "")
    # None: served unless ResolvedRefs or Conflicted say otherwise; set where ResolvedRefs is False
    # and the listener is served still (some of its client CA references usable, Gateway API)
    served: bool | None = None


@dataclass
class IngressResult:
    gateways: list[IngressGateway] = field(default_factory=list)
    listeners: dict[str, list[ListenerStatus]] = field(default_factory=dict)      # "ns/gw" -> per listener
    routes: dict[tuple[str, str, str], list[ParentStatus]] = field(default_factory=dict)   # (kind, ns, name)
    # what valid objects configure and the gateway cannot serve (Istio Gateways): applied, and said
    warnings: list[FieldError] = field(default_factory=list)


def is_ingress(gw: Obj) -> bool:
    return gw.get("kind") == "Gateway" and (gw.get("spec") or {}).get("gatewayClassName") in INGRESS_CLASSES


# -- hostnames -----------------------------------------------------------------------------------

def _wild_match(wild: str, name: str) -> bool:
    """`*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`."""
    return name.endswith(wild[1:]) and len(name) > len(wild) - 1


def intersect(listener: str, route: str) -> str | None:
    """The hostnames both sides accept, as the more specific of the two, or None."""
    if not listener or listener == route:
        return route
    lw, rw = listener.startswith("*."), route.startswith("*.")
    if lw and not rw:
        return route if _wild_match(listener, route) else None
    if rw and not lw:
        return listener if _wild_match(route, listener) else None
    if lw and rw:
        if route.endswith(listener[1:]):
            return route
        if listener.endswith(route[1:]):
            return listener
    return None


def route_hostnames(listener_hostname: str, route_hostnames: list[str]) -> list[str]:
    """The virtual hosts a route serves on a listener ("*": any); [] when none intersect."""
    if not route_hostnames:
        return [listener_hostname or "*"]
    out = []
    for h in route_hostnames:
        x = intersect(listener_hostname, h)
        if x is not None and x not in out:
            out.append(x)
    return out


# -- attachment ----------------------------------------------------------------------------------

def _expr_matches(e: Obj, labels: dict[str, str]) -> bool:
    op, key, values = e["operator"], e["key"], e.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    return key not in labels


def namespace_allowed(listener: Obj, gw_ns: str, route_ns: str, ns_labels: dict[str, str]) -> bool:
    ns = ((listener.get("allowedRoutes") or {}).get("namespaces") or {})
    frm = ns.get("from", "Same")
    if frm == "All":
        return True
    if frm == "Selector":
        sel = ns.get("selector") or {}
        return all(ns_labels.get(k) == v for k, v in (sel.get("matchLabels") or {}).items()) and all(
            _expr_matches(e, ns_labels) for e in sel.get("matchExpressions") or [])
    return route_ns == gw_ns


def supported_kinds(listener: Obj) -> tuple[str, ...]:
    return KINDS_BY_PROTOCOL.get(listener.get("protocol", "HTTP"), ())


def kind_allowed(listener: Obj, kind: str) -> bool:
    if kind not in supported_kinds(listener):
        return False
    kinds = (listener.get("allowedRoutes") or {}).get("kinds")
    return not kinds or any(k["kind"] == kind and k.get("group", GATEWAY_GROUP) == GATEWAY_GROUP for k in kinds)


def route_kinds_resolved(listener: Obj) -> tuple[bool, str, str]:
    """A listener's `ResolvedRefs` as far as its `allowedRoutes.kinds` go: a kind its protocol cannot
    carry is `InvalidRouteKinds`."""
    unsupported = [k["kind"] for k in (listener.get("allowedRoutes") or {}).get("kinds") or []
                   if k["kind"] not in supported_kinds(listener) or k.get("group", GATEWAY_GROUP) != GATEWAY_GROUP]
    if unsupported:
        return (False, "InvalidRouteKinds", f"{', '.join(unsupported)}: a {listener['protocol']} listener carries "
                                            f"{' and '.join(supported_kinds(listener))} only")
    return (True, "ResolvedRefs", "")


def _refs_gateway(p: Obj, route_ns: str, gw: Obj) -> bool:
    return (p.get("kind", "Gateway") == "Gateway" and p.get("group", GATEWAY_GROUP) == GATEWAY_GROUP
            and (p.get("namespace") or route_ns) == ns_of(gw) and p["name"] == name_of(gw))


def attach(p: Obj, route: Obj, gw: Obj, ns_labels: dict[str, str]) -> tuple[list[tuple[Obj, list[str]]], str, str]:
    """The listeners of `gw` that parentRef `p` of `route` attaches to, each with its virtual hosts,
    or ([], reason, message) with Gateway API's reason for not being accepted."""
    listeners = (gw.get("spec") or {}).get("listeners") or []
    if p.get("sectionName"):
        listeners = [ln for ln in listeners if ln["name"] == p["sectionName"]]
    if p.get("port"):
        listeners = [ln for ln in listeners if ln["port"] == p["port"]]
    if not listeners:
        return [], "NoMatchingParent", "no listener of the Gateway matches sectionName/port"
    rns = ns_of(route)
    allowed = [ln for ln in listeners if namespace_allowed(ln, ns_of(gw), rns, ns_labels)
               and kind_allowed(ln, route.get("kind", "HTTPRoute"))]
    if not allowed:
        return [], "NotAllowedByListeners", f"no listener allows {route.get('kind')}s from namespace {rns}"
    out = []
    for ln in allowed:
        hosts = route_hostnames(ln.get("hostname", ""), list((route.get("spec") or {}).get("hostnames") or []))
        if hosts:
            out.append((ln, hosts))
    if not out:
        return [], "NoMatchingListenerHostname", "no hostname of the route matches a listener's hostname"
    return out, "Accepted", ""


def granted(grants: list[Obj], frm: tuple[str, str, str], to: tuple[str, str, str, str]) -> bool:
    """Whether a ReferenceGrant in the target's namespace lets `frm` (group, kind, namespace) refer
    to `to` (group, kind, namespace, name). Core group is "" (Gateway API spells it so)."""
    g, k, ns, name = to
    for grant in grants:
        if ns_of(grant) != ns:
            continue
        spec = grant.get("spec") or {}
        if any((f["group"], f["kind"], f["namespace"]) == frm for f in spec["from"]) and any(
                (t["group"], t["kind"]) == (g, k) and t.get("name", "") in ("", name) for t in spec["to"]):
            return True
    return False


@dataclass(frozen=True)
class BackendVerdict:
    """A backendRef that does not resolve: where it is, its host ("name.ns"; "" for a backend that
    is no Service, which `gw_backend` never resolves) and Gateway API's `ResolvedRefs` verdict
    (RefNotPermitted, BackendNotFound, InvalidKind)."""

    path: str                   # spec.rules[0].backendRefs[1]
    host: str
    resolved: tuple[bool, str, str]


def backend_verdicts(route: Obj, services: set[str], grants: list[Obj],
                     exempt: frozenset[str] | set[str] = frozenset()) -> list[BackendVerdict]:
    """Every backendRef of `route` that may not be used. `exempt`: "ns/name" of Services that need
    no ReferenceGrant (a GAMMA route's own parent Service, controller.translate.parents)."""
    rns = ns_of(route)
    out = []
    for i, rule in enumerate((route.get("spec") or {}).get("rules") or []):
        for j, b in enumerate(rule.get("backendRefs") or []):
            bns = b.get("namespace") or rns
            ref = f"{bns}/{b['name']}"
            if not is_service_backend(b):
                out.append(BackendVerdict(f"spec.rules[{i}].backendRefs[{j}]", "", (
                    False, "InvalidKind", f"backend {b.get('kind')} {ref} (group {b.get('group') or 'core'}): only "
                                          "Services are supported backends")))
                continue
            if bns != rns and ref not in exempt and not granted(
                    grants, (GATEWAY_GROUP, route.get("kind", "HTTPRoute"), rns), ("", "Service", bns, b["name"])):
                why = (False, "RefNotPermitted",
                       f"backend {ref} is in another namespace and no ReferenceGrant there permits it")
            elif ref not in services:
                why = (False, "BackendNotFound", f"Service {ref} does not exist")
            else:
                continue
            out.append(BackendVerdict(f"spec.rules[{i}].backendRefs[{j}]", f"{b['name']}.{bns}", why))
    return out


def resolve_backends(route: Obj, services: set[str], grants: list[Obj] | None = None,
                     exempt: frozenset[str] | set[str] = frozenset()) -> tuple[tuple[bool, str, str], set[str]]:
    """ResolvedRefs for a route's backendRefs (a reference not permitted first, then a missing
    Service), and the hosts ("name.ns") that may not be used."""
    found = backend_verdicts(route, services, grants or [], exempt)
    return resolved_refs(found), {v.host for v in found}


def resolved_refs(found: list[BackendVerdict]) -> tuple[bool, str, str]:
    """The route's `ResolvedRefs`: a reference not permitted first, then the first other one (a
    missing Service, a backend of a kind that is not Service)."""
    worst = sorted(found, key=lambda v: v.resolved[1] != "RefNotPermitted")
    return worst[0].resolved if worst else (True, "ResolvedRefs", "")


# -- certificates ----------------------------------------------------------------------------------

def secret_field(secret: Obj, key: str) -> str:
    if key in (secret.get("stringData") or {}):
        return secret["stringData"][key]
    raw = (secret.get("data") or {}).get(key, "")
    try:
        return base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return ""


def load_certificate(secret: Obj | None, ref: str) -> tuple[TlsCertificate | None, str]:
    """The certificate of a `kubernetes.io/tls` Secret, or (None, why it cannot be used)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    if secret is None:
        return None, f"Secret {ref} does not exist"
    if secret.get("type", TLS_SECRET) != TLS_SECRET:
        return None, f"Secret {ref} is of type {secret.get('type')}, not {TLS_SECRET}"
    cert, key = secret_field(secret, "tls.crt"), secret_field(secret, "tls.key")
    try:
        x509.load_pem_x509_certificate(cert.encode())
        load_pem_private_key(key.encode(), None)
    except (ValueError, TypeError) as e:
        return None, f"Secret {ref}: tls.crt/tls.key do not hold a PEM certificate and key: {e}"
    return TlsCertificate(ref, cert, key), ""


def load_client_ca(secret: Obj, ref: str) -> tuple[str | None, str]:
    """The client CA bundle a mutual-TLS server verifies client certificates against: the Secret's
    `ca.crt` (Istio's key for it in a credentialName Secret), or (None, why it cannot be used)."""
    pem = secret_field(secret, "ca.crt")
    if not pem.strip():
        return None, (f"Secret {ref} has no ca.crt: mutual TLS verifies client certificates against the CA "
                      "certificates in it (a separate <name>-cacert Secret is not read)")
    return ca_bundle(pem, f"Secret {ref}")


def uncovered_cas(ref: str, crl_key: str, crl_pem: str, ca_pem: str) -> list[str]:
    """What to say of the CAs of `ca_pem` that no CRL of `crl_pem` is issued by: every client
    certificate they issued then fails (Envoy checks every CA of a chain once any CRL is given,
    and so does the gateway). `ref`, `crl_key`: the Secret and key the CRLs are from."""
    from cryptography import x509

    from ambit.dataplane.tls import crl_blocks
    if not crl_pem:
        return []
    issuers = {x509.load_pem_x509_crl(b.encode()).issuer for b in crl_blocks(crl_pem)}
    uncovered = [c.subject.rfc4514_string() for c in x509.load_pem_x509_certificates(ca_pem.encode())
                 if c.subject not in issuers]
    ca_key = "cacert" if crl_key == "crl" else "ca.crt"
    return [f"Secret {ref}: {crl_key} has no CRL issued by CA {name} of its {ca_key}, so every client certificate "
            "that CA issued fails verification (revocation is checked for every CA of a chain once a CRL is "
            "given, as Envoy does); add that CA's CRL" for name in uncovered]


def ca_bundle(pem: str, what: str) -> tuple[str | None, str]:
    """The PEM certificates `pem` holds (a CA bundle), else (None, why), naming `what` holds it.
    Only the certificates, written again: the text around them (comments, which need not be ASCII,
    as in Mozilla's bundle) is no CA, and the data planes' OpenSSL takes only ASCII PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as e:
        return None, f"{what}: ca.crt does not hold PEM certificates: {e}"
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs), ""


def frontend_validation(gw: Obj, port: int) -> Obj | None:
    """The client certificate validation (Gateway API `FrontendTLSValidation`) of the Gateway's
    HTTPS listeners on `port`: its `spec.tls.frontend.perPort` entry, which overrides the default
    whole (an entry without validation means none on that port), else `default`'s."""
    frontend = (((gw.get("spec") or {}).get("tls") or {}).get("frontend")) or {}
    for pp in frontend.get("perPort") or []:
        if int(pp["port"]) == port:
            return (pp.get("tls") or {}).get("validation")
    return (frontend.get("default") or {}).get("validation")


def frontend_warnings(gw: Obj) -> list[FieldError]:
    """Client certificate validation that no HTTPS listener takes (a `default` on a Gateway without
    HTTPS listeners, a perPort entry for a port without one): valid, as Gateway API wants it (it
    must not touch the port's other listeners: conformance
    GatewayInvalidDefaultFrontendClientCertificateValidation), and said, since it validates nothing."""
    https = {int(ln["port"]) for ln in (gw.get("spec") or {}).get("listeners") or [] if ln.get("protocol") == "HTTPS"}
    frontend = (((gw.get("spec") or {}).get("tls") or {}).get("frontend")) or {}
    why = "(client certificates are validated where the gateway terminates TLS); it is not applied"
    ref = f"Gateway/{ns_of(gw)}/{name_of(gw)}"
    out = []
    if frontend.get("default") is not None and not https:
        out.append(FieldError(ref, "spec.tls.frontend.default",
                              f"the Gateway has no HTTPS listener: this validation applies to nothing {why}"))
    for i, pp in enumerate(frontend.get("perPort") or []):
        if int(pp["port"]) not in https:
            out.append(FieldError(ref, f"spec.tls.frontend.perPort[{i}].port", f"no HTTPS listener is on port "
                                  f"{pp['port']}: this validation applies to nothing {why}"))
    return out


def _ca_ref(gw: Obj, ref: Obj, configmaps: dict[str, Obj], secrets: dict[str, Obj],
            grants: list[Obj]) -> tuple[str | None, tuple[bool, str, str]]:
    """One caCertificateRef: its PEM bundle, or None and Gateway API's ResolvedRefs verdict."""
    ns = ref.get("namespace") or ns_of(gw)
    kind, name = ref.get("kind", ""), f"{ns}/{ref['name']}"
    if ref.get("group", "") not in ("", "core") or kind not in ("ConfigMap", "Secret"):
        return None, (False, "InvalidCACertificateKind",
                      f"{kind} {name} (group {ref.get('group') or 'core'}): CA certificates are read from ConfigMaps "
                      "and kubernetes.io/tls Secrets (key ca.crt) only")
    if ns != ns_of(gw) and not granted(grants, (GATEWAY_GROUP, "Gateway", ns_of(gw)), ("", kind, ns, ref["name"])):
        return None, (False, "RefNotPermitted", f"{kind} {name} is in another namespace and no ReferenceGrant there "
                                                "permits it")
    if kind == "Secret":
        secret = secrets.get(name)
        if secret is None:
            pem, why = None, (f"Secret {name} does not exist or is not of type {TLS_SECRET} (the only Secrets "
                              "Ambit reads)")
        else:
            pem, why = load_client_ca(secret, name)
    else:
        data = (configmaps.get(name) or {}).get("data") or {}
        if name not in configmaps:
            pem, why = None, f"ConfigMap {name} does not exist"
        elif not str(data.get("ca.crt", "")).strip():
            pem, why = None, f"ConfigMap {name} has no key ca.crt (the CA certificates client certificates are " \
                             "verified against)"
        else:
            pem, why = ca_bundle(str(data["ca.crt"]), f"ConfigMap {name}")
    return pem, (True, "ResolvedRefs", "") if pem is not None else (False, "InvalidCACertificateRef", why)


def client_cas(gw: Obj, ln: Obj, configmaps: dict[str, Obj], secrets: dict[str, Obj],
               grants: list[Obj]) -> tuple[str, tuple[bool, str, str], bool]:
    """An HTTPS listener's client CA bundle ("": no validation), its `ResolvedRefs` verdict (the
    first bad reference's reason, every bad reference in the message), and whether validation is
    asked for and no reference is usable (Gateway API: `Accepted=False NoValidCACertificate`; the
    listener is then not served, rather than served without the validation asked for). A listener
    with some usable references verifies against those alone."""
    validation = frontend_validation(gw, int(ln["port"]))
    if validation is None:
        return "", (True, "ResolvedRefs", ""), False
    pems, bad = [], []
    for ref in validation.get("caCertificateRefs") or []:
        pem, verdict = _ca_ref(gw, ref, configmaps, secrets, grants)
        if pem is None:
            bad.append(verdict)
        else:
            pems.append(pem.strip() + "\n")
    if not bad:
        return "".join(pems), (True, "ResolvedRefs", ""), False
    return "".join(pems), (False, bad[0][1], "; ".join(v[2] for v in bad)), not pems


def _certificates(gw: Obj, ln: Obj, secrets: dict[str, Obj],
                  grants: list[Obj]) -> tuple[list[TlsCertificate], tuple[bool, str, str]]:
    certs, verdict = [], (True, "ResolvedRefs", "")
    for ref in (ln.get("tls") or {}).get("certificateRefs") or []:
        ns = ref.get("namespace") or ns_of(gw)
        name = f"{ns}/{ref['name']}"
        if ref.get("kind", "Secret") != "Secret" or ref.get("group", "") not in ("", "core"):
            verdict = (False, "InvalidCertificateRef", f"{name}: only Secrets are supported")
        elif ns != ns_of(gw) and not granted(grants, (GATEWAY_GROUP, "Gateway", ns_of(gw)),
                                             ("", "Secret", ns, ref["name"])):
            verdict = (False, "RefNotPermitted", f"Secret {name} is in another namespace and no ReferenceGrant "
                                                 "there permits it")
        else:
            cert, why = load_certificate(secrets.get(name), name)
            if cert is None:
                verdict = (False, "InvalidCertificateRef", why)
            else:
                certs.append(cert)
    return certs, verdict


# -- assembly ------------------------------------------------------------------------------------

def translate_ingress(idx: Index, hosts: Hosts) -> IngressResult:
    out = IngressResult()
    gateways = [gw for gw in idx.kind("Gateway") if is_ingress(gw)]
    if not gateways and not any(idx.kind(k) for k in L4_ROUTE_KINDS):
        return out      # (TLS/TCP routes are looked at still: on a waypoint Gateway they are warned about)
    secrets = {f"{ns_of(s)}/{name_of(s)}": s for s in idx.kind("Secret")}
    configmaps = {f"{ns_of(c)}/{name_of(c)}": c for c in idx.kind("ConfigMap")}
    services = {f"{ns_of(s)}/{name_of(s)}" for s in idx.kind("Service")}
    grants = idx.kind("ReferenceGrant")
    # (gateway, listener name) -> virtual host -> [(precedence, route)]
    vhosts: dict[tuple[str, str], dict[str, list[tuple[tuple[Any, ...], HttpRoute]]]] = {}
    attached: dict[tuple[str, str], int] = {}
    # (gateway, listener name) -> SNI name ("*": any) -> the TLSRoute/TCPRoute's route (first wins)
    l4: dict[tuple[str, str], dict[str, TcpRoute]] = {}
    for route in [r for k in ALL_ROUTE_KINDS for r in idx.kind(k)]:
        with blame(route):
            parents = []
            resolved, bad = resolve_backends(route, services, grants)
            for i, p in enumerate((route.get("spec") or {}).get("parentRefs") or []):
                gw = next((g for g in gateways if _refs_gateway(p, ns_of(route), g)), None)
                if gw is None:
                    if route["kind"] in L4_ROUTE_KINDS:
                        _not_ingress(idx, route, i, p, out.warnings)
                    continue
                found, reason, message = attach(p, route, gw, idx.ns_labels(ns_of(route)))
                parents.append(ParentStatus(p, (bool(found), reason, message), resolved))
                gkey = f"{ns_of(gw)}/{name_of(gw)}"
                for ln, names in found:
                    attached[(gkey, ln["name"])] = attached.get((gkey, ln["name"]), 0) + 1
                    if route["kind"] in L4_ROUTE_KINDS:
                        tcp = l4_route(route, hosts, bad)
                        for h in names:
                            l4.setdefault((gkey, ln["name"]), {}).setdefault(h, tcp)
                        continue
                    routes = gateway_api_routes(route, hosts, 0, route["kind"] == "GRPCRoute")
                    for _, r in routes:
                        unresolved(r.destinations, bad)
                    for h in names:
                        vhosts.setdefault((gkey, ln["name"]), {}).setdefault(h, []).extend(routes)
            if parents:
                out.routes[(route["kind"], ns_of(route), name_of(route))] = parents
    for gw in gateways:
        with blame(gw):
            gkey = f"{ns_of(gw)}/{name_of(gw)}"
            out.warnings.extend(frontend_warnings(gw))
            model = IngressGateway(name_of(gw), ns_of(gw), (gw.get("spec") or {})["gatewayClassName"])
            statuses = []
            conflicts = conflicted((gw.get("spec") or {}).get("listeners") or [])
            for ln in (gw.get("spec") or {}).get("listeners") or []:
                st = ListenerStatus(ln["name"], attached.get((gkey, ln["name"]), 0), conflicted=conflicts.get(ln["name"], ""),
                                    kinds=tuple(k for k in supported_kinds(ln) if kind_allowed(ln, k)))
                certs: list[TlsCertificate] = []
                client_ca, no_ca = "", False
                if ln["protocol"] == "HTTPS":
                    certs, st.resolved = _certificates(gw, ln, secrets, grants)
                    client_ca, ca_verdict, no_ca = client_cas(gw, ln, configmaps, secrets, grants)
                    if st.resolved[0] and not ca_verdict[0]:
                        st.resolved, st.served = ca_verdict, not no_ca and not st.conflicted
                    if no_ca:
                        st.accepted = (False, "NoValidCACertificate", "none of the caCertificateRefs of its "
                                                                      "client certificate validation is usable")
                if st.resolved[0]:
                    st.resolved = route_kinds_resolved(ln)
                statuses.append(st)
                if (ln["protocol"] == "HTTPS" and not certs) or st.conflicted or no_ca:
                    continue        # not served: ResolvedRefs, Accepted or Conflicted says why
                if ln["protocol"] in ("TLS", "TCP"):
                    model.listeners.append(IngressListener(
                        name=ln["name"], port=int(ln["port"]), protocol=ln["protocol"], hostname=ln.get("hostname", ""),
                        hosts=[WaypointRoutes(hostname=h, namespace=ns_of(gw), tcp=[r])
                               for h, r in sorted(l4.get((gkey, ln["name"]), {}).items())]))
                    continue
                hosts_of = vhosts.get((gkey, ln["name"]), {})
                model.listeners.append(IngressListener(
                    name=ln["name"], port=int(ln["port"]), protocol=ln["protocol"], hostname=ln.get("hostname", ""),
                    tls_min_version=((ln.get("tls") or {}).get("options") or {}).get(TLS_MIN_VERSION_OPTION, ""),
                    certificates=certs, client_auth="required" if client_ca else "", client_ca_pem=client_ca,
                    hosts=[WaypointRoutes(hostname=h, namespace=ns_of(gw),
                                          http=[r for _, r in sorted(rs, key=lambda x: x[0])])
                           for h, rs in sorted(hosts_of.items())]))
            isolate(model.listeners, ns_of(gw))
            out.gateways.append(model)
            out.listeners[gkey] = statuses
    return out


def _specificity(listener_hostname: str) -> tuple[int, int]:
    """How specific a listener hostname is: an exact name, then the longer wildcard, then none."""
    if not listener_hostname:
        return (0, 0)
    return (1 if listener_hostname.startswith("*.") else 2, len(listener_hostname))


def isolate(listeners: list[IngressListener], ns: str) -> None:
    """Gateway API listener isolation (GatewayHTTPListenerIsolation): a request is served by the
    routes of the one listener of its port whose hostname is the most specific match for its Host,
    never by a less specific listener whose routes name that Host too. The gateway picks a virtual
    host across the port's listeners by the most specific match (waypoint.ingress), so here each
    virtual host is kept only on the listener that owns it (the most specific listener hostname
    covering it: `*.example.com` on a listener without hostname goes, when a `*.example.com`
    listener shares the port), and each listener with a hostname gets a virtual host of that name,
    empty if no route gives one (404), so that a less specific listener's wildcard does not answer
    for the Hosts it selects."""
    by_port: dict[int, list[IngressListener]] = {}
    for ln in listeners:
        if ln.protocol in ("HTTP", "HTTPS"):
            by_port.setdefault(ln.port, []).append(ln)
    for lns in by_port.values():
        if len(lns) < 2:
            continue
        names = [ln.hostname for ln in lns]
        for ln in lns:
            kept = [wr for wr in ln.hosts if max((n for n in names if intersect(n, wr.hostname) == wr.hostname),
                                                 key=_specificity, default=None) == ln.hostname]
            if ln.hostname and not any(wr.hostname == ln.hostname for wr in kept):
                kept.append(WaypointRoutes(hostname=ln.hostname, namespace=ns))
            ln.hosts = sorted(kept, key=lambda wr: wr.hostname)


def _not_ingress(idx: Index, route: Obj, i: int, p: Obj, warnings: list[FieldError]) -> None:
    """A TLSRoute/TCPRoute whose parent is a Gateway but not an ingress one (a waypoint) is served by
    nothing: say so (it is valid, and the Gateway may be re-classed later)."""
    gw = next((g for g in idx.kind("Gateway") if _refs_gateway(p, ns_of(route), g)), None)
    if gw is not None:
        warnings.append(FieldError(f"{route['kind']}/{ns_of(route)}/{name_of(route)}", f"spec.parentRefs[{i}]",
                                   f"Gateway {ns_of(gw)}/{name_of(gw)} is of class "
                                   f"{(gw.get('spec') or {}).get('gatewayClassName')}: {route['kind']}s attach to "
                                   f"ingress Gateways (class {' or '.join(INGRESS_CLASSES)}) only; not served"))


def unresolved(dests: list[RouteDestination], bad: set[str]) -> None:
    """An unresolved backend keeps its share and gets no Service: Gateway API wants its requests
    answered 500 and its connections (TLS/TCP) rejected, not spread over the other backends."""
    for d in dests:
        if d.host.rsplit(".svc.", 1)[0] in bad:
            d.service = ""


def l4_route(route: Obj, hosts: Hosts, bad: set[str]) -> TcpRoute:
    """A TLSRoute's or TCPRoute's (single) rule: its weighted backends, each a Service port."""
    rules = (route.get("spec") or {}).get("rules") or []
    dests = [gw_backend(b, ns_of(route), hosts) for b in (rules[0].get("backendRefs") or [] if rules else [])]
    unresolved(dests, bad)
    return TcpRoute(destinations=dests)


def conflicted(listeners: list[Obj]) -> dict[str, str]:
    """Listener name -> Gateway API's conflict reason, for listeners that cannot share their port."""
    first: dict[int, str] = {}
    hosts: set[tuple[int, str]] = set()
    out = {}
    for ln in listeners:
        port, host = int(ln["port"]), ln.get("hostname", "")
        proto = first.setdefault(port, ln["protocol"])
        if proto != ln["protocol"]:
            out[ln["name"]] = "ProtocolConflict"
        elif (port, host) in hosts:
            out[ln["name"]] = "HostnameConflict"
        hosts.add((port, host))
    return out


def ingress_names(idx: Index) -> set[str]:
    """"ns/name" of every ingress Gateway (routes attached to them are not waypoint routes)."""
    return {f"{ns_of(g)}/{name_of(g)}" for g in idx.kind("Gateway") if is_ingress(g)}

