"""Istio's `networking.istio.io` Gateway and the VirtualServices bound to it, as listeners of Ambit's
ingress gateway: the same `IngressListener`s a Gateway API Gateway produces, so there is one data path.

Pure: objects in, listeners (added to the ingress models) and warnings out. Istio's rules:

- the Gateway's `selector` picks the gateway pods. Ambit's ingress gateway pods are those of a
  Gateway API Gateway of class `ambit`/`istio`, labelled with its `spec.infrastructure.labels` and
  `gateway.networking.k8s.io/gateway-name: <name>` (controller/waypoints/render.py, the lab alike);
  an Istio Gateway is served by every ingress Gateway whose pods it selects, in any namespace
  (Istio's default; its installer's `istio: ingressgateway` is such a label);
- each `servers[]` entry, per host, becomes a listener on `port.number`: HTTP, or HTTPS terminating
  TLS (mode SIMPLE) with the Secret `credentialName` from the gateway pods' namespace, read as
  Istio reads it (controller/translate/credentials.py: any type, `tls.crt`/`tls.key` or
  `cert`/`key`), and with mode MUTUAL / OPTIONAL_MUTUAL verifying client certificates against the
  CA of its `<name>-cacert` Secret, else its own `ca.crt`/`cacert` (and `subjectAltNames`, the pins
  `verifyCertificateSpki`/`verifyCertificateHash`, and the CRLs next to that CA, `ca.crl`/`crl`:
  a CRL that does not parse leaves the server unserved, as a bad CA does); `tls.httpsRedirect` on an HTTP server answers every request with a 301 to https;
  TLS (mode PASSTHROUGH) takes the bound VirtualServices' `tls` routes (each `match.sniHosts` name,
  intersected with the server host, routes by SNI), TCP their `tcp` routes (the first whose match
  fits the port); a match's `port` must be the server's, its `gateways` narrow it; the first route
  for a name wins, as Istio's filter chain order does;
- a VirtualService binds with `gateways: [name | ns/name]` (a bare name is in the VirtualService's
  namespace), and only at the ingress gateways whose namespace its `exportTo` reaches (the proxy's
  namespace, not the Istio Gateway object's: controller.translate.visibility); `mesh` in the list
  keeps it in the mesh too, and an `http[].match[].gateways` narrows a match to the gateways it
  names. A server host `ns/host` admits VirtualServices of namespace `ns`
  only (`*` any, `.` the Gateway's); the VirtualService's `hosts` intersect the server's host
  (`*` matches any) and become the listener's virtual hosts;
- a route that delegates (`http[].delegate`) is replaced by the delegate VirtualService's routes,
  merged with it (controller.translate.delegates): the platform team's root VirtualService binds the
  Gateway and hands path prefixes to the app teams' delegates, which name no host and no Gateway.

What the data path cannot serve is said, not dropped: a Gateway that selects no ingress gateway, a
missing or unusable Secret, a listener that conflicts with one already on its port, and a `tls`/`tcp`
match on source or destination attributes (`sourceLabels`, `sourceNamespace`, `destinationSubnets`:
meaningless for clients from outside the mesh; the match is not served) are warnings (`IngressResult.warnings`: the objects are valid
and applied, as Istio accepts them; `ambit apply` and `ambit analyze` say what is not served).
"""

from __future__ import annotations

from typing import Any

from ambit.model import (
    HttpRoute,
    IngressGateway,
    IngressListener,
    Redirect,
    TcpRoute,
    TlsCertificate,
    WaypointRoutes,
)
from controller.kinds.istio_gateway import CLIENT_AUTH, TLS_VERSIONS, pin_hex
from controller.kinds.istio_rules import resolve_gateway_name
from controller.translate.blame import blame
from controller.translate.credentials import CA_SUFFIX
from controller.translate.credentials import read as read_credential
from controller.translate.delegates import Delegation
from controller.translate.index import Index, name_of, ns_of, selector_matches
from controller.translate.ingress import (
    IngressResult,
    conflicted,
    intersect,
    route_hostnames,
    uncovered_cas,
)
from controller.translate.routes import Hosts, vs_destinations, vs_http_route
from controller.translate.visibility import export_text, visible_to
from controller.validation import FieldError, object_ref

Obj = dict[str, Any]
ISTIO_GROUPS = ("networking.istio.io", "networking.ambit.io")
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


def is_istio_gateway(obj: Obj) -> bool:
    return obj.get("kind") == "Gateway" and (obj.get("apiVersion") or "").rsplit("/", 1)[0] in ISTIO_GROUPS


def pod_labels(gw: Obj) -> dict[str, str]:
    """The labels of an ingress Gateway's pods (what an Istio Gateway's selector matches)."""
    infra = ((gw.get("spec") or {}).get("infrastructure") or {}).get("labels") or {}
    return {**infra, GATEWAY_NAME_LABEL: name_of(gw)}


def bound_gateways(gateways: list[str] | None, vs_ns: str) -> set[str]:
    """A VirtualService's `gateways` as "ns/name" (and "mesh"); none given means the mesh only."""
    if not gateways:
        return {"mesh"}
    return {resolve_gateway_name(g, vs_ns) for g in gateways}


def _host_parts(host: str, gw_ns: str) -> tuple[str, str]:
    """A server host as (namespace allowed, hostname): `*` for any namespace; "" for any hostname."""
    ns, _, name = host.rpartition("/")
    ns = {"": "*", ".": gw_ns}.get(ns, ns)
    return ns, "" if name == "*" else name.lower()


def _vhosts(server_host: str, vs: Obj) -> list[str]:
    """The virtual hosts a VirtualService serves on a server host. Lower-cased, as the server's
    (`_host_parts`): host names are case-insensitive and the gateway looks a request's authority
    and SNI up lower-cased, so `Shop.example.com` as written would match no request."""
    names = [n.lower() for n in (vs.get("spec") or {}).get("hosts") or []]
    return route_hostnames(server_host, [] if "*" in names else names)


def _routes(vs: Obj, gw_ref: str, hosts: Hosts, delegation: Delegation, errors: list[FieldError]) -> list[HttpRoute]:
    ns = ns_of(vs)

    def bound(gws: list[str] | None) -> bool:     # a match's own `gateways` narrows the VirtualService's
        return gws is None or gw_ref in bound_gateways(gws, ns)

    out = []
    for e in delegation.entries(vs):      # a delegating route: its delegate's routes, merged with it
        h, matches = e.http, e.http.get("match") or []
        kept = [m for j, m in enumerate(matches) if not bound(m.get("gateways"))
                or _servable(m, e.ref, f"{e.path}.match" if e.delegated else f"{e.path}.match[{j}]", gw_ref, errors)]
        if matches and not [m for m in kept if bound(m.get("gateways"))]:
            continue        # no match of this route is served here (none left would mean "every request")
        r = vs_http_route({**h, "match": kept} if matches else h, hosts, ns, object_ref(vs), bound)
        if r is not None:
            out.append(r)
    return out


_SOURCE_MATCHES = ("sourceLabels", "sourceNamespace", "destinationSubnets")


def _servable(m: Obj, ref: str, path: str, gw_ref: str, errors: list[FieldError]) -> bool:
    """Can this match of a bound VirtualService match at the ingress gateway? Source and
    destination attributes never do there (the gateway's clients are outside the mesh and carry
    no labels or namespace): such a match is said and left out, never kept matching nothing."""
    odd = [k for k in _SOURCE_MATCHES if m.get(k)]
    if odd:
        errors.append(FieldError(ref, path, f"{', '.join(odd)} cannot be matched at ingress gateway {gw_ref} "
                                 "(its clients are outside the mesh); this match is not served there"))
    return not odd


def _https_redirect(source: str) -> HttpRoute:
    return HttpRoute(name="https-redirect", source=source,
                     redirect=Redirect(scheme="https", code=301, derive_port="FROM_PROTOCOL_DEFAULT"))


def _server_listeners(gw: Obj, server: Obj, index: int, ingress_ns: str, secrets: dict[str, Obj],
                      services: list[tuple[Obj, list[HttpRoute]]], hosts: Hosts,
                      errors: list[FieldError]) -> list[IngressListener]:
    """One listener per host of one server, or [] when its certificate is unusable."""
    port, tls = server["port"], server.get("tls") or {}
    path = f"spec.servers[{index}]"
    certs = []
    client_auth, client_ca, client_crl = CLIENT_AUTH.get(tls.get("mode", ""), ""), "", ""
    if port["protocol"] == "HTTPS":
        ref = f"{ingress_ns}/{tls['credentialName']}"
        got = read_credential(ingress_ns, tls["credentialName"], secrets)
        c, cert = got.cred, None
        why = c.error or ("" if c.cert_pem else f"Secret {ref} holds no certificate and key (tls.crt and tls.key, "
                                                 "or cert and key)")
        if not why and client_auth and not c.ca_pem:
            why = (f"Secret {ref} has no ca.crt (or cacert), nor is there a Secret {ref}{CA_SUFFIX} with one: mutual "
                   "TLS verifies client certificates against those CA certificates")
        if not why:
            cert = TlsCertificate(ref, c.cert_pem, c.key_pem)
            if client_auth:
                client_ca, client_crl = c.ca_pem, c.crl_pem
                errors.extend(FieldError(object_ref(gw), f"{path}.tls.credentialName", n)
                              for n in uncovered_cas(got.ca_ref, got.crl_key, c.crl_pem, c.ca_pem))
        if cert is None:
            errors.append(FieldError(object_ref(gw), f"{path}.tls.credentialName", f"{why}; the server is not served"))
            return []
        certs = [cert]
    out = []
    group = f"{ns_of(gw)}/{name_of(gw)}/{server.get('name') or port.get('name') or index}"
    for host in server["hosts"]:
        allowed_ns, hostname = _host_parts(host, ns_of(gw))
        if port["protocol"] in ("TLS", "TCP"):
            # as for HTTP, only VirtualServices whose hosts meet the server's (Istio's gateway:
            # `pickMatchingGatewayHosts` in the TCP and TLS filter chains too)
            mine = [(vs, rs) for vs, rs in services if allowed_ns in ("*", ns_of(vs)) and _vhosts(hostname, vs)]
            l4 = _l4_routes(server, hostname if port["protocol"] == "TLS" else "", mine,
                            f"{ns_of(gw)}/{name_of(gw)}", hosts, errors)
            out.append(IngressListener(
                name=f"{group}/{host}",
                port=int(port["number"]), protocol=port["protocol"],
                hostname=hostname if port["protocol"] == "TLS" else "",
                hosts=[WaypointRoutes(hostname=h, namespace=ingress_ns, tcp=[r]) for h, r in sorted(l4.items())]))
            continue
        vhosts: dict[str, list[HttpRoute]] = {}
        for vs, routes in services:
            if allowed_ns not in ("*", ns_of(vs)):
                continue
            for h in _vhosts(hostname, vs):
                vhosts.setdefault(h, []).extend(routes)
        if tls.get("httpsRedirect"):
            vhosts = {h: [_https_redirect(object_ref(gw))] for h in vhosts or {hostname or "*": []}}
        out.append(IngressListener(
            name=f"{group}/{host}",
            port=int(port["number"]), protocol=port["protocol"], hostname=hostname,
            tls_min_version=TLS_VERSIONS.get(tls.get("minProtocolVersion", ""), ""), certificates=certs,
            hosts=[WaypointRoutes(hostname=h, namespace=ingress_ns, http=rs) for h, rs in sorted(vhosts.items())],
            server=group, client_auth=client_auth, client_ca_pem=client_ca, client_crl_pem=client_crl,
            client_sans=list(tls.get("subjectAltNames") or []) if client_auth else [],
            client_spki_sha256=[pin_hex(v, True) for v in tls.get("verifyCertificateSpki") or []] if client_auth else [],
            client_cert_sha256=[pin_hex(v, False) for v in tls.get("verifyCertificateHash") or []] if client_auth
            else []))
    return out


def _l4_routes(server: Obj, hostname: str, bound: list[tuple[Obj, list[HttpRoute]]], gw_ref: str, hosts: Hosts,
               errors: list[FieldError]) -> dict[str, TcpRoute]:
    """A TLS (passthrough) or TCP server host's routes: SNI name ("*" on TCP) -> the first route."""
    port, section = int(server["port"]["number"]), "tls" if server["port"]["protocol"] == "TLS" else "tcp"
    out: dict[str, TcpRoute] = {}
    for vs, _ in bound:
        ns = ns_of(vs)
        for i, r in enumerate((vs.get("spec") or {}).get(section) or []):
            route = TcpRoute(source=object_ref(vs), destinations=vs_destinations(r.get("route") or [], hosts, ns))
            for j, m in enumerate(r.get("match") or [{}]):
                if m.get("gateways") is not None and gw_ref not in bound_gateways(m["gateways"], ns):
                    continue
                if m.get("port") and int(m["port"]) != port:
                    continue
                if not _servable(m, object_ref(vs), f"spec.{section}[{i}].match[{j}]", gw_ref, errors):
                    continue
                names = [hostname or "*" if sni == "*" else intersect(hostname, sni)
                         for sni in m.get("sniHosts") or []] if section == "tls" else ["*"]
                for name in names:
                    if name is not None:
                        out.setdefault(name or "*", route)
    return out


def add_istio_gateways(idx: Index, hosts: Hosts, result: IngressResult) -> None:
    """Add the listeners of every Istio Gateway to the ingress models whose pods it selects, and what
    cannot be served to `result.warnings`. In place."""
    models, errors = result.gateways, result.warnings
    istio = [g for g in idx.kind("Gateway") if is_istio_gateway(g)]
    if not istio:
        return
    ingress = {f"{ns_of(g)}/{name_of(g)}": g for g in idx.kind("Gateway") if not is_istio_gateway(g)}
    secrets = {f"{ns_of(s)}/{name_of(s)}": s for s in idx.kind("Secret")}
    vss = [vs for vs in idx.kind("VirtualService") if (vs.get("spec") or {}).get("gateways")]
    delegation = Delegation(idx.kind("VirtualService"), hosts.fqdn)
    for gw in istio:
        with blame(gw):
            gw_ref = f"{ns_of(gw)}/{name_of(gw)}"
            selector = (gw.get("spec") or {}).get("selector") or {}
            targets = [m for m in models if m.resource_name in ingress
                       and selector_matches(selector, pod_labels(ingress[m.resource_name]))]
            if not targets:
                errors.append(FieldError(object_ref(gw), "spec.selector", "selects no ingress gateway's pods: deploy one as a "
                                         "Gateway API Gateway of class ambit whose spec.infrastructure.labels carry "
                                         "these labels (docs/ingress.md); nothing serves this Gateway"))
                continue
            bound = []
            for vs in vss:
                if gw_ref not in bound_gateways((vs.get("spec") or {})["gateways"], ns_of(vs)):
                    continue
                bound.append((vs, _routes(vs, gw_ref, hosts, delegation, errors)))
            for model in targets:
                seen = _exported(bound, model, gw_ref, errors)
                listeners = [ln for i, s in enumerate((gw.get("spec") or {})["servers"])
                             for ln in _server_listeners(gw, s, i, model.namespace, secrets, seen, hosts, errors)]
                _merge(model, listeners, object_ref(gw), errors)


def _exported(bound: list[tuple[Obj, list[HttpRoute]]], model: IngressGateway, gw_ref: str,
              errors: list[FieldError]) -> list[tuple[Obj, list[HttpRoute]]]:
    """The bound VirtualServices that ingress gateway `model` sees: those exported to its namespace
    (Istio's `VirtualServicesForGateway(proxy's ConfigNamespace, gateway)`); the others are said."""
    out = []
    for vs, routes in bound:
        if visible_to(vs, model.namespace):
            out.append((vs, routes))
            continue
        errors.append(FieldError(object_ref(vs), "spec.exportTo", (
            f"not exported to namespace {model.namespace} (exportTo: {export_text(vs)}), where ingress gateway "
            f"{model.resource_name} runs, which serves Gateway {gw_ref}: it is not served there, as in Istio (a gateway "
            f"applies only the VirtualServices exported to its own namespace); add {model.namespace} to exportTo")))
    return out


def _merge(model: IngressGateway, listeners: list[IngressListener], ref: str, errors: list[FieldError]) -> None:
    """Append listeners that can share their port with those already there (Gateway API's rules)."""
    for ln in listeners:
        clash = conflicted([{"name": x.name, "port": x.port, "protocol": x.protocol, "hostname": x.hostname}
                            for x in [*model.listeners, ln]]).get(ln.name)
        if clash:
            errors.append(FieldError(ref, "spec.servers", f"port {ln.port} host {ln.hostname or '*'} on ingress "
                                     f"gateway {model.resource_name}: {clash}; not served"))
        else:
            model.listeners.append(ln)

