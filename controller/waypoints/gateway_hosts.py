"""VirtualServices bound to an Istio Gateway whose `hosts` match none of that Gateway's server hosts,
as Istio's analyzer reports them (istio pkg/config/analysis/analyzers/virtualservice/gateways.go:
IST0132 VirtualServiceHostNotFoundInGateway).

A bound VirtualService's routes are served on a server only for the hosts both name
(controller.translate.istio_gateway), so with no host in common its routes are served nowhere at
that Gateway, although it is accepted and binds. Istio says so; Ambit says so too, naming the
VirtualService's `spec.gateways[i]`, the Gateway and its server hosts.

Istio's comparison, per Gateway (the hosts of all its servers together, whatever their protocol):
- a server host `./host` is `<the Gateway's namespace>/host`, `*/host` is `host`;
- a server host `ns/host` counts only for a VirtualService of namespace `ns`;
- a server host and a VirtualService host match when equal, or when one is a wildcard (`*`, or
  `*.example.com`) whose suffix ends the other: `*.example.com` matches `shop.example.com` and the
  reverse, `*` matches every host, `*.example.com` does not match `example.com` (istio
  pkg/config/host `Name.Matches`).

Only Gateways of the snapshot are judged: one the VirtualService names that is not there may exist
elsewhere (and a missing Gateway is another matter). Its `tls` and `tcp` routes are not served
there either (as Istio's `pickMatchingGatewayHosts` skips them); the warning still asks the
translation which of its routes are served, and names them if any are.
"""

from __future__ import annotations

from typing import Any

from controller.translate.index import name_of, ns_of
from controller.translate.istio_gateway import bound_gateways, is_istio_gateway
from controller.validation import object_ref

Obj = dict[str, Any]
HOST_NOT_IN_GATEWAY = "HostNotInGateway"      # the advisory's cause (`ambit analyze` AMB0135)


def host_matches(a: str, b: str) -> bool:
    """Istio's `host.Name.Matches`: equal, or a wildcard (leading `*`) whose suffix ends the other
    (both wildcards: the shorter suffix ends the longer)."""
    aw, bw = a.startswith("*"), b.startswith("*")
    if aw and bw:
        short, long = sorted((a[1:], b[1:]), key=len)
        return long.endswith(short)
    if aw:
        return b.endswith(a[1:])
    if bw:
        return a.endswith(b[1:])
    return a == b


def server_hosts_for(gw: Obj, vs_ns: str) -> list[str]:
    """The Gateway's server hosts that count for a VirtualService of namespace `vs_ns`, without
    their namespace part (Istio's `sanitizeServerHostNamespace` and `host.NamesForNamespace`)."""
    out = []
    for server in (gw.get("spec") or {}).get("servers") or []:
        for h in server.get("hosts") or []:
            ns, slash, name = h.partition("/")
            if not slash:
                out.append(h)
            elif {".": ns_of(gw)}.get(ns, ns) in ("*", vs_ns):
                out.append(name)
    return out


def _served_kinds(tr: Any, gw_ref: str, vs_ref: str) -> list[str]:
    """The route kinds (http, tls, tcp) of the VirtualService that the translation serves on the
    listeners of Istio Gateway `gw_ref`."""
    kinds = set()
    for model in tr.ingress.gateways:
        for ln in model.listeners:
            if not ln.name.startswith(f"{gw_ref}/"):
                continue
            if any(r.source == vs_ref for wr in ln.hosts for r in [*wr.http, *wr.tcp]):
                kinds.add({"TLS": "tls", "TCP": "tcp"}.get(ln.protocol, "http"))
    return sorted(kinds)


def _reason(vs: Obj, gw: Obj, served: list[str]) -> str:
    spec, gw_ref = vs.get("spec") or {}, f"{ns_of(gw)}/{name_of(gw)}"
    written = list(dict.fromkeys(h for s in (gw.get("spec") or {}).get("servers") or [] for h in s.get("hosts") or []))
    scoped = any("/" in h and not h.startswith("*/") for h in written)
    head = (f"hosts {', '.join(spec.get('hosts') or [])} (spec.hosts) match none of Gateway {gw_ref}'s server hosts "
            f"({', '.join(written)})" + (f", read for namespace {ns_of(vs)} (a server host ns/host admits the "
                                         "VirtualServices of namespace ns only)" if scoped else ""))
    effect = "its routes are served nowhere at that Gateway"
    if served:
        unserved = [k for k in ("http", "tls", "tcp") if spec.get(k) and k not in served]
        effect = (f"its {' and '.join(unserved)} routes are served nowhere at that Gateway; " if unserved else "") + (
            f"its {' and '.join(served)} routes are served there all the same, matched by port and SNI alone "
            "(Istio's gateway serves none of them)")
    return (f"{head}: {effect} (Istio warns the same: IST0132 VirtualServiceHostNotFoundInGateway); name one of "
            "those hosts in spec.hosts, or add the host to a server of the Gateway")


def hosts_not_in_gateway(good: list[Obj], tr: Any) -> list[tuple[str, str, str]]:
    """(object ref, field path, why) for each `spec.gateways[i]` of a valid VirtualService naming an
    Istio Gateway of the snapshot none of whose server hosts matches one of its hosts. `tr`: the
    snapshot's translation, which says what of the VirtualService that Gateway's listeners serve."""
    gateways = {f"{ns_of(g)}/{name_of(g)}": g for g in good if is_istio_gateway(g)}
    out = []
    for vs in good:
        spec = vs.get("spec") or {}
        if vs.get("kind") != "VirtualService" or not spec.get("hosts"):
            continue
        seen = set()
        for i, name in enumerate(spec.get("gateways") or []):
            [gw_ref] = bound_gateways([name], ns_of(vs))
            gw = gateways.get(gw_ref)
            if gw is None or gw_ref in seen:
                continue            # the mesh, or a Gateway elsewhere (or said already)
            seen.add(gw_ref)
            names = server_hosts_for(gw, ns_of(vs))
            if any(host_matches(s, h) for s in names for h in spec["hosts"]):
                continue
            out.append((object_ref(vs), f"spec.gateways[{i}]",
                        _reason(vs, gw, _served_kinds(tr, gw_ref, object_ref(vs)))))
    return out
