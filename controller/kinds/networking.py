"""networking.istio.io (and networking.ambit.io): VirtualService and DestinationRule schemas.

Field names and shapes follow Istio's API reference; durations are Go-style strings ("1.5s").
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ambit.dataplane.keepalive import MAX_IDLE, MAX_PROBES
from ambit.hashtable import MAX_MAGLEV_TABLE, MAX_RING_SIZE, is_prime
from ambit.jwtclaims import CLAIM_HEADER_PREFIX, routing_claim
from ambit.resilience import invalid_grpc_status, invalid_retry_on
from ambit.topology import TOPOLOGY_LABELS
from controller.kinds.common import (
    GO_DURATION_PATTERN,
    Cidr,
    Duration,
    Int32,
    IstioRegex,
    Labels,
    NamespaceName,
    Percent,
    Port,
    PortSelector,
    StringMatch,
    Strings,
    UInt32,
    WorkloadSelector,
    check_subdomain,
    cookie_attribute_reason,
    cookie_name_reason,
    cookie_path_reason,
    header_name_reason,
    header_ops_checks,
    header_value_reason,
    parse_duration,
    request_header_reason,
    request_path_reason,
)
from controller.kinds.cors import CorsPolicy
from controller.kinds.dr_rules import (
    check_connection_pool,
    check_cookie_attributes,
    check_locality_overlap,
    check_outlier,
    check_port_policy,
    check_traffic_policy,
    check_warmup,
    tunnel_host_reason,
    tunnel_protocol_reason,
)
from controller.kinds.hostnames import host_matches, host_or_ip_reason, host_reason
from controller.kinds.istio_rules import (
    check_authority_once,
    check_fault,
    check_gateway_names,
    check_route_conflicts,
    check_sni_hosts,
    direct_body_reason,
    header_value_reason_istio,
    namespace_match_reason,
    redirect_scheme_reason,
    subset_name_reason,
)
from controller.kinds.schema import Arr, Bool, Errors, Int, Map, Num, Obj, Str, join

# -- VirtualService --------------------------------------------------------------------------------

def _destination_host_reason(text: str) -> str | None:
    if text == "*":
        return 'a destination names one host: "*" names none (Istio refuses it too)'
    return host_reason(text)


Destination = Obj({"host": Str(min_len=1, valid=_destination_host_reason), "subset": Str(valid=subset_name_reason),
                   "port": PortSelector},
                  required=("host",))

HeaderValues = Map(Str(valid=header_value_reason_istio))
Headers = Obj({
    "request": Obj({"set": HeaderValues, "add": HeaderValues, "remove": Strings}, checks=(header_ops_checks(True),)),
    "response": Obj({"set": HeaderValues, "add": HeaderValues, "remove": Strings}, checks=(header_ops_checks(False),)),
})


def match_header_name_reason(name: Any) -> str | None:
    """Why `name` cannot key a match's `headers` or `withoutHeaders`, or None: a request header or
    pseudo-header (`request_header_reason`), or a verified JWT claim (`@request.auth.claims.a.b`,
    `@request.auth.claims[a][b]`). Anything else names nothing a request can carry, so the match
    could never hold (Istio refuses most of them too; it accepts `:status`, which never matches)."""
    if not isinstance(name, str):
        return f"map keys must be strings, got {name!r}"
    if name.lower().startswith(CLAIM_HEADER_PREFIX):
        claim = routing_claim(name)
        if claim is None or not all(claim):
            return (f'"{name}" names no JWT claim: write {CLAIM_HEADER_PREFIX}.<claim>[.<nested>...] or '
                    f"{CLAIM_HEADER_PREFIX}[<claim>][<nested>]...")
        return None
    why = request_header_reason(name)
    return f"{why}, so the match could never hold" if why else None


MatchHeaders = Map(StringMatch(allow_empty=True), key=match_header_name_reason)

HTTPMatchRequest = Obj({
    "name": Str(),
    "uri": StringMatch(empty_prefix=True), "scheme": StringMatch(), "method": StringMatch(), "authority": StringMatch(),
    "headers": MatchHeaders,
    "queryParams": Map(StringMatch(allow_empty=True)),
    "withoutHeaders": MatchHeaders,
    "port": Port,
    "sourceLabels": Labels,
    "gateways": Strings,
    "sourceNamespace": Str(valid=namespace_match_reason),
    "ignoreUriCase": Bool(),
    "statPrefix": Str(),
})

# Istio weights are relative int32s (weight / sum of weights), not percentages.
Weight = Int(minimum=0, maximum=2**31 - 1)

HTTPRouteDestination = Obj({"destination": Destination, "weight": Weight,
                            "headers": Headers}, required=("destination",))

def _check_redirect(value: dict[str, Any], path: str, errs: Errors) -> None:
    """Istio's validateHTTPRedirect: `uri` replaces the whole path, `prefixRewrite` the matched
    prefix; an empty one counts as unset, as there. A redirect that changes nothing would send
    the client back to the URL it asked for, again and again."""
    if value.get("uri") and value.get("prefixRewrite"):
        errs.append((path, "only one of uri, prefixRewrite may be set (uri replaces the whole path, prefixRewrite "
                     "the matched prefix; Istio refuses both too)"))
    elif not any(value.get(f) for f in ("uri", "prefixRewrite", "authority", "scheme")) \
            and value.get("port") is None and value.get("derivePort") is None:
        errs.append((path, "redirect must specify uri, prefixRewrite, authority, scheme, port or derivePort "
                     "(Istio refuses this too): without one it sends the client back to the same URL"))


# What a redirect and a rewrite write into the Location header, the Host header and the request line
# is checked as Envoy checks it (control characters refused): with CR/LF in one, a route injected
# headers into its redirects and into the requests it sent upstream.
HTTPRedirect = Obj({
    "uri": Str(valid=header_value_reason), "authority": Str(valid=header_value_reason), "port": Port,
    "derivePort": Str(enum=("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT")),
    "scheme": Str(valid=redirect_scheme_reason), "redirectCode": Int(minimum=300, maximum=399),
    "prefixRewrite": Str(valid=header_value_reason,
                         description="On a redirect, replace the matched prefix (the match's uri prefix) with "
                                     "this value; the rest of the path and the query string stay."),
}, one_of=(("port", "derivePort"),), checks=(_check_redirect,))



def _invalid_base64(text: str) -> str | None:
    """Istio's CRD declares `body.bytes` `format: byte`: standard base64, which the API server
    checks; an undecodable value would otherwise become an empty body."""
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return "must be base64 (the body's bytes, standard alphabet, padded), got a value that does not decode"
    return None


HTTPDirectResponse = Obj({"status": Int(minimum=200, maximum=599),
                          "body": Obj({"string": Str(valid=direct_body_reason),
                                       "bytes": Str(valid=lambda t: _invalid_base64(t) or direct_body_reason(t, True))},
                                      one_of=(("string", "bytes"),))},
                         required=("status",))

def _check_rewrite(value: dict[str, Any], path: str, errs: Errors) -> None:
    """Istio's validateHTTPRewrite: a rewrite that sets none of uri, uriRegexRewrite, authority
    (an empty one counts as unset) rewrites nothing; a regex rewrite needs both its parts."""
    if not any(value.get(f) for f in ("uri", "uriRegexRewrite", "authority")):
        errs.append((path, "rewrite must specify at least one of uri, uriRegexRewrite or authority (Istio refuses "
                     "this too): as written it rewrites nothing"))
    rr = value.get("uriRegexRewrite")
    if isinstance(rr, dict) and rr.get("rewrite") == "":
        errs.append((join(path, "uriRegexRewrite.rewrite"), "UriRegexRewrite requires both Rewrite and Match fields "
                     "to be specified (Istio refuses an empty one too)"))


HTTPRewrite = Obj({"uri": Str(valid=request_path_reason), "authority": Str(valid=header_value_reason),
                   "uriRegexRewrite": Obj({"match": IstioRegex, "rewrite": Str(valid=request_path_reason)},
                                          required=("match", "rewrite"))},
                  one_of=(("uri", "uriRegexRewrite"),), checks=(_check_rewrite,))



def _check_retry(value: dict[str, Any], path: str, errs: Errors) -> None:
    """Istio's validateHTTPRetry: `attempts` 0 (or unset) disables retries, so a policy written
    beside it would silently do nothing."""
    if not value.get("attempts") and (value.get("retryOn") or value.get("perTryTimeout") is not None
                                      or value.get("retryRemoteLocalities") is not None):
        errs.append((join(path, "attempts"), "http retry policy configured when attempts are set to 0 (disabled): "
                     "set attempts to the number of retries (Istio refuses this too)"))


HTTPRetry = Obj({"attempts": Int32, "perTryTimeout": Duration(positive=True),
                 "retryOn": Str(valid=invalid_retry_on),
                 "retryRemoteLocalities": Bool(), "retryIgnorePreviousHosts": Bool(),
                 "backoff": Duration(positive=True)}, checks=(_check_retry,))

HTTPFaultInjection = Obj({
    "delay": Obj({"fixedDelay": Duration(positive=True), "exponentialDelay": Duration(positive=True),
                  "percentage": Percent, "percent": Int(minimum=0, maximum=100)},
                 one_of=(("fixedDelay", "exponentialDelay"),), exactly_one=True),
    # Istio's validateHTTPFaultInjection: at least one of delay, abort; a percentage of 0 or 0.0001..100
    "abort": Obj({"httpStatus": Int(minimum=200, maximum=599), "grpcStatus": Str(valid=invalid_grpc_status),
                  # Istio's validateHTTPFaultInjectionAbort refuses every http2Error, with this message
                  "http2Error": Str(valid=lambda _: "HTTP/2 abort fault injection not supported yet (Istio refuses "
                                    "it too): abort with httpStatus or grpcStatus"),
                  "percentage": Percent}, one_of=(("httpStatus", "grpcStatus", "http2Error"),), exactly_one=True),
}, checks=(check_fault,))

HTTPMirrorPolicy = Obj({"destination": Destination, "percentage": Percent}, required=("destination",))


def _check_http_route(value: dict[str, Any], path: str, errs: Errors) -> None:
    actions = [f for f in ("route", "redirect", "directResponse", "delegate") if value.get(f)]
    if not actions:
        errs.append((path, "one of route, redirect, directResponse or delegate must be set"))
    elif len(actions) > 1:
        errs.append((path, f"only one of route, redirect, directResponse, delegate may be set, got {', '.join(actions)}"))
    if value.get("rewrite") and (value.get("redirect") or value.get("directResponse")):
        errs.append((join(path, "rewrite"), "cannot be combined with redirect or directResponse"))
    if value.get("mirror") and value.get("mirrors"):
        errs.append((path, "only one of mirror, mirrors may be set"))
    _check_prefix_redirect(value, path, errs)
    check_route_conflicts(value, path, errs)
    check_authority_once(value, path, errs)
    for i, m in enumerate(value.get("match") or []):
        if isinstance(m, dict):
            check_gateway_names(m.get("gateways"), f"{join(path, 'match')}[{i}].gateways", errs)
    check_weights(value.get("route") or [], join(path, "route"), errs)


def _check_prefix_redirect(value: dict[str, Any], path: str, errs: Errors) -> None:
    """Istio's validateHTTPRedirect: `prefixRewrite` replaces the prefix a `uri` prefix match
    matched, so a match whose uri is exact or regex (no prefix to replace) is refused; a match
    without a uri matches the implicit prefix "/"."""
    redirect = value.get("redirect")
    if not isinstance(redirect, dict) or not redirect.get("prefixRewrite"):
        return
    for i, m in enumerate(value.get("match") or []):
        uri = m.get("uri") if isinstance(m, dict) else None
        if isinstance(uri, dict) and uri and "prefix" not in uri:
            kind = next(iter(uri))
            errs.append((join(path, "redirect.prefixRewrite"),
                         f"needs every match's uri to be a prefix match, but match[{i}].uri is {kind} "
                         "(Istio refuses this too): use a uri prefix match, or redirect with uri"))
            return


def check_weights(route: list[dict[str, Any]], path: str, errs: Errors) -> None:
    """Istio: weights are relative (a destination gets weight / sum), so any non-negative weights
    are valid except a total of 0 over several destinations (istio pkg/config/validation
    `validateHTTPRouteDestinations`). A single destination gets everything whatever its weight."""
    if len(route) > 1:
        total = sum(int(r.get("weight") or 0) for r in route if isinstance(r.get("weight") or 0, int))
        if total == 0:
            errs.append((path, "the total weight of several destinations must be above 0, got 0"))


HTTPRoute = Obj({
    "name": Str(),
    "match": Arr(HTTPMatchRequest),
    "route": Arr(HTTPRouteDestination),
    "redirect": HTTPRedirect,
    "directResponse": HTTPDirectResponse,
    "delegate": Obj({"name": Str(min_len=1), "namespace": Str()}, required=("name",)),
    "rewrite": HTTPRewrite,
    # Istio's CRD wants at least 1ms; Ambit also takes 0, which it reads as unset (no timeout, Istio's
    # default and Envoy's meaning of 0), but nothing in between.
    "timeout": Duration(off=True),
    "retries": HTTPRetry,
    "fault": HTTPFaultInjection,
    "mirror": Destination,
    "mirrorPercent": Int(minimum=0, maximum=100),
    "mirrorPercentage": Percent,
    "mirrors": Arr(HTTPMirrorPolicy),
    "corsPolicy": CorsPolicy,
    "headers": Headers,
}, checks=(_check_http_route,), unsupported={
    "mirror_percent": "mirror_percent is not supported by Ambit: it is Istio's deprecated spelling of "
                      "mirrorPercent; use mirrorPercentage",
})

L4MatchAttributes = Obj({"destinationSubnets": Arr(Cidr), "port": Port, "sourceLabels": Labels,
                         "gateways": Strings, "sourceNamespace": Str(valid=namespace_match_reason)},
                        unsupported={"sourceSubnet": "sourceSubnet is not supported by Ambit (deprecated in Istio); "
                                                     "match clients with sourceLabels or sourceNamespace"})
RouteDestination = Obj({"destination": Destination, "weight": Weight}, required=("destination",))


def _check_l4_route(value: dict[str, Any], path: str, errs: Errors) -> None:
    check_weights(value.get("route") or [], join(path, "route"), errs)
    for i, m in enumerate(value.get("match") or []):
        if isinstance(m, dict):
            check_gateway_names(m.get("gateways"), f"{join(path, 'match')}[{i}].gateways", errs)


TCPRoute = Obj({"match": Arr(L4MatchAttributes), "route": Arr(RouteDestination, min_items=1)},
               required=("route",), checks=(_check_l4_route,))
TLSRoute = Obj({
    "match": Arr(L4MatchAttributes.extend({"sniHosts": Arr(Str(min_len=1, valid=host_or_ip_reason), min_items=1)},
                                          required=("sniHosts",)),
                 min_items=1),
    "route": Arr(RouteDestination, min_items=1),
}, required=("match", "route"), checks=(_check_l4_route,))


def check_export_to(value: dict[str, Any], path: str, errs: Errors, entry: bool = False) -> None:
    """Istio's validateExportTo for VirtualServices and DestinationRules: ".", "*" or a namespace
    name, no duplicates, "*" alone; "~" (no one) is for ServiceEntries only (Istio: "not allowed
    for Istio configuration objects"), and there alone (`entry`). The entries scope the object
    (controller.translate.visibility)."""
    export = value.get("exportTo")
    if not isinstance(export, list) or not all(isinstance(e, str) for e in export):
        return      # its schema (a list of strings) says what is wrong
    seen: set[str] = set()
    for i, e in enumerate(export):
        where = f"{join(path, 'exportTo')}[{i}]"
        if e == "~" and entry:
            if len(export) > 1:
                errs.append((join(path, "exportTo"), "cannot export service entry to no one (~) and someone (Istio "
                             'refuses this too): "~" alone says it'))
        elif e == "~":
            errs.append((where, 'exportTo "~" (no one) is allowed for ServiceEntries only (Istio refuses it here too): '
                         "delete the object to apply it nowhere"))
        elif e not in (".", "*"):
            NamespaceName.check(e, where, errs)     # a namespace name
        if e in seen:
            errs.append((where, f'duplicate entry "{e}"'))
        seen.add(e)
    if "*" in seen and len(export) > 1 and "~" not in seen:
        errs.append((join(path, "exportTo"), 'cannot have both "*" (every namespace) and other entries (Istio refuses '
                     'this too): "*" alone says it'))


def _check_vs(value: dict[str, Any], path: str, errs: Errors) -> None:
    if not value.get("hosts"):
        # Istio's validateVirtualService: without hosts it is a delegate, applied only through a
        # root VirtualService's http[].delegate (controller.translate.delegates), so what a root
        # decides (gateways, tls and tcp routes, a further delegation) is refused there
        for field in ("gateways", "tls", "tcp"):
            if value.get(field):
                errs.append((join(path, field), f"a delegate VirtualService (one without hosts) must have no {field}: "
                             "its root VirtualService binds hosts and gateways, and delegates http routes only "
                             "(Istio refuses this too)"))
        for i, h in enumerate(value.get("http") or []):
            if isinstance(h, dict) and h.get("delegate"):
                errs.append((join(path, f"http[{i}].delegate"), "a delegate VirtualService (one without hosts) "
                             "cannot delegate again: only one level of delegation (Istio refuses this too)"))
    if not value.get("http") and not value.get("tcp") and not value.get("tls"):
        errs.append((path, "at least one of http, tcp or tls must be set"))
    _check_vs_hosts(value, path, errs)
    check_gateway_names(value.get("gateways"), join(path, "gateways"), errs)
    check_sni_hosts(value, path, errs)


def _check_vs_hosts(value: dict[str, Any], path: str, errs: Errors) -> None:
    """Istio's validateVirtualService on `hosts`: `*` only at gateways (bound to the mesh it would
    take every Service's traffic), and no two hosts that match each other (both would claim the
    same requests). Checked once every host is a valid name (`host_reason`), as Istio does."""
    hosts = [h for h in value.get("hosts") or [] if isinstance(h, str)]
    if any(host_reason(h, ip=True) for h in hosts):
        return
    gateways = value.get("gateways") or []
    mesh = not gateways or "mesh" in gateways
    for i, h in enumerate(hosts):
        if mesh and h == "*":
            errs.append((f"{join(path, 'hosts')}[{i}]", 'the wildcard host "*" is not allowed for a VirtualService '
                         "bound to the mesh (Istio refuses it too): name the Services it is for"))
    for i, a in enumerate(hosts):
        for j in range(i + 1, len(hosts)):
            if host_matches(a, hosts[j]):
                errs.append((f"{join(path, 'hosts')}[{j}]", f'duplicate hosts in the VirtualService: "{a}" '
                             f'(hosts[{i}]) and "{hosts[j]}" match the same requests (Istio refuses this too)'))


VirtualServiceSpec = Obj({
    "hosts": Arr(Str(min_len=1, valid=host_or_ip_reason)),
    "gateways": Strings,
    "http": Arr(HTTPRoute),
    "tcp": Arr(TCPRoute),
    "tls": Arr(TLSRoute),
    "exportTo": Strings,
}, checks=(_check_vs, check_export_to))

# -- DestinationRule --------------------------------------------------------------------------------

def _check_consistent_hash(value: dict[str, Any], path: str, errs: Errors) -> None:
    """Istio's validateLoadBalancer rules for the hash table: a Maglev `tableSize` is set, prime
    (Envoy fills the table by permutations that cover it only when its size is prime: another
    size never finished filling it) and under Istio's 5000011; `minimumRingSize` not beside
    `ringHash` or `maglev`. And Ambit's own bounds on the table's size (ambit/hashtable.py)."""
    ml = value.get("maglev")
    if isinstance(ml, dict):
        size = ml.get("tableSize")
        if not size:
            errs.append((f"{path}.maglev.tableSize", "tableSize must be set for maglev (Istio's rule)"))
        elif isinstance(size, int) and not is_prime(size):
            errs.append((f"{path}.maglev.tableSize", f"tableSize must be a prime number for maglev (Istio's rule; "
                         f"Envoy's default is 65537), got {size}"))
        elif isinstance(size, int) and size > MAX_MAGLEV_TABLE:
            errs.append((f"{path}.maglev.tableSize", f"{size} is not supported by Ambit: at most {MAX_MAGLEV_TABLE} "
                         "(the waypoint builds the table on its event loop; Envoy's default is 65537)"))
    rings = [(f"{path}.ringHash.minimumRingSize", (value.get("ringHash") or {}).get("minimumRingSize")),
             (f"{path}.minimumRingSize", value.get("minimumRingSize"))]
    for where, size in rings:
        if isinstance(size, int) and size > MAX_RING_SIZE:
            errs.append((where, f"{size} is not supported by Ambit: at most {MAX_RING_SIZE} (the waypoint builds "
                         "the ring on its event loop; Istio's default is 1024)"))
    if value.get("minimumRingSize") and (value.get("ringHash") is not None or value.get("maglev") is not None):
        errs.append((f"{path}.minimumRingSize", "only one of MinimumRingSize or Maglev/Ringhash can be specified "
                     "(Istio's rule)"))


ConsistentHash = Obj({
    "httpHeaderName": Str(min_len=1, valid=header_name_reason),
    "httpCookie": Obj({"name": Str(min_len=1, valid=cookie_name_reason),
                       "path": Str(valid=lambda p: cookie_path_reason(p) if p else None), "ttl": Duration(),
                       "attributes": Arr(Obj({"name": Str(min_len=1, valid=cookie_name_reason),
                                              "value": Str(valid=cookie_attribute_reason)},
                                             required=("name",)))}, required=("name",),
                      checks=(check_cookie_attributes,)),
    "useSourceIp": Bool(),
    "httpQueryParameterName": Str(min_len=1),
    "ringHash": Obj({"minimumRingSize": Int(minimum=0)}),
    "maglev": Obj({"tableSize": Int(minimum=0)}),
    "minimumRingSize": Int(minimum=0),
}, one_of=(("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName"), ("ringHash", "maglev")),
    checks=(_check_consistent_hash,))

def _locality_rule_errors(loc: str) -> str | None:
    """Istio's validateLocalities, for one locality of `distribute`: region[/zone[/subzone]], at most
    one `*`, and only as the last part."""
    parts = loc.split("/")
    if not loc or len(parts) > 3 or any(not p for p in parts):
        return f"locality {loc!r} must be region[/zone[/subzone]]"
    if loc.count("*") > 1 or ("*" in loc and parts[-1] != "*") or any("*" in p and p != "*" for p in parts):
        return f"locality {loc!r}: the wildcard '*' may appear once, as the last part"
    return None


def _check_locality(value: dict[str, Any], path: str, errs: Errors) -> None:
    """Istio's validateLocalityLbSetting (pilot/pkg/model/validation, `validateLocalityLbSetting`)."""
    distribute, failover = value.get("distribute") or [], value.get("failover") or []
    if distribute and failover:
        errs.append((path, "distribute and failover cannot both be set"))
        return
    if failover:
        for label in value.get("failoverPriority") or []:
            if label.partition("=")[0] in TOPOLOGY_LABELS:
                errs.append((join(path, "failoverPriority"), f"cannot set failover and the topology label {label!r} "
                             "in failoverPriority at once"))
    seen: set[str] = set()
    for i, d in enumerate(distribute):
        at = f"{join(path, 'distribute')}[{i}]"
        frm = d.get("from", "")
        for why in (_locality_rule_errors(loc) for loc in (frm, *(d.get("to") or {}))):
            if why:
                errs.append((at, why))
        if frm in seen:
            errs.append((join(at, "from"), f"locality {frm!r} appears in more than one distribute rule"))
        seen.add(frm)
        to = d.get("to") or {}
        if not to:
            errs.append((join(at, "to"), "must name at least one locality"))
        elif any(w < 1 for w in to.values()):
            errs.append((join(at, "to"), "locality weights must be in 1..100"))
        elif sum(to.values()) != 100:
            errs.append((join(at, "to"), f"locality weights must sum to 100, not {sum(to.values())}"))
    for i, f in enumerate(failover):
        at = f"{join(path, 'failover')}[{i}]"
        frm, to = f.get("from", ""), f.get("to", "")
        if not frm or not to:
            errs.append((at, "failover must set from and to"))
        elif frm == to:
            errs.append((at, "failover from and to must be different regions"))
        if "/" in frm or "/" in to:
            errs.append((at, "failover from and to are regions only (no '/')"))
        if "*" in frm or "*" in to:
            errs.append((at, "failover regions cannot contain the wildcard '*'"))


LocalityLbSetting = Obj({
    "enabled": Bool(),
    "distribute": Arr(Obj({"from": Str(min_len=1), "to": Map(Int(minimum=0, maximum=100))}, required=("from", "to"))),
    "failover": Arr(Obj({"from": Str(), "to": Str()})),
    "failoverPriority": Strings,
}, checks=(_check_locality, check_locality_overlap))

LoadBalancer = Obj({
    # LEAST_CONN is Istio's deprecated spelling of LEAST_REQUEST; both are accepted.
    "simple": Str(enum=("UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST")),
    "consistentHash": ConsistentHash,
    "localityLbSetting": LocalityLbSetting,
    "warmupDurationSecs": Duration(positive=True),      # Istio's CRD: at least 1ms
    "warmup": Obj({"duration": Duration(positive=True), "aggression": Num(minimum=0),
                   "minimumPercent": Num(minimum=0, maximum=100)}, required=("duration",), checks=(check_warmup,)),
}, one_of=(("simple", "consistentHash"),), unsupported={
    "backendUtilization": "backendUtilization is not supported by Ambit: the waypoint receives no ORCA load "
                          "reports from backends; use simple: LEAST_REQUEST",
    "zoneAwareLbSetting": "zoneAwareLbSetting is not supported by Ambit: use localityLbSetting (the waypoint "
                          "prioritises endpoints by locality)",
})


def _keepalive_seconds(text: str) -> str | None:
    """tcpKeepalive `time`/`interval`: Istio hands Envoy whole seconds (`Duration.Seconds`,
    pilot/pkg/networking/core/cluster.go setKeepAliveSettings), so "1.5s" would be 1 s and "500ms"
    0, which the kernel refuses; and the kernel takes at most 32767 s (MAX_TCP_KEEPIDLE/INTVL)."""
    try:
        secs = parse_duration(text)
    except ValueError:
        return f'must be a duration in whole seconds such as "30s" or "2m", got "{text}"'
    if secs != int(secs) or not 1 <= secs <= MAX_IDLE:
        return (f"must be whole seconds from 1s to {MAX_IDLE}s (the socket option takes seconds, "
                f"the kernel at most {MAX_IDLE}), got \"{text}\"")
    return None


# MeshConfig's `tcpKeepalive` is the same message (controller/meshconfig.py). probes 0 is unset, as
# in Istio (a proto3 uint32): the OS's count.
TcpKeepalive = Obj({"probes": Int(minimum=0, maximum=MAX_PROBES),
                    "time": Str(valid=_keepalive_seconds, pattern=GO_DURATION_PATTERN),
                    "interval": Str(valid=_keepalive_seconds, pattern=GO_DURATION_PATTERN)})

ConnectionPool = Obj({
    "tcp": Obj({
        "maxConnections": Int32,
        "connectTimeout": Duration(positive=True),
        "tcpKeepalive": TcpKeepalive,
        # at least 1ms, as Istio's CRD says: 0 read as unset, so the waypoint's default applied where
        # Envoy reads 0 as "no limit"
        "maxConnectionDuration": Duration(positive=True),
        "idleTimeout": Duration(),
    }),
    "http": Obj({
        "http1MaxPendingRequests": Int32,
        "http2MaxRequests": Int32,
        "maxRequestsPerConnection": Int32,
        "maxRetries": Int32,
        "idleTimeout": Duration(positive=True),       # as maxConnectionDuration
        "h2UpgradePolicy": Str(enum=("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")),
        "useClientProtocol": Bool(),
        "maxConcurrentStreams": Int32,
        "http2KeepAlive": Obj({"interval": Duration(positive=True), "timeout": Duration(positive=True)},
                              description="HTTP/2 PING frames on upstream connections."),
    }),
}, checks=(check_connection_pool,))

OutlierDetection = Obj({
    "splitExternalLocalOriginErrors": Bool(),
    "consecutiveLocalOriginFailures": UInt32,
    "consecutiveGatewayErrors": UInt32,
    "consecutive5xxErrors": UInt32,
    "consecutiveErrors": Int32,
    "interval": Duration(positive=True),
    "baseEjectionTime": Duration(positive=True),
    "maxEjectionPercent": Int(minimum=0, maximum=100),
    "minHealthPercent": Int(minimum=0, maximum=100),
    "outlierDetectionHttpErrorCodes": Arr(Int(minimum=100, maximum=599), description=(
        "The response statuses outlier detection counts as errors, instead of 5xx: a listed status counts "
        "towards consecutive5xxErrors (and consecutiveGatewayErrors if 502/503/504), any other response "
        "as a success.")),
}, checks=(check_outlier,))

SECRET_CREDENTIAL = "kubernetes://"      # Istio's explicit form of a plain name: the proxy namespace's Secret
_OTHER_CREDENTIALS = {
    "configmap://": "configmap:// credentials are not supported by Ambit: name a Secret in the waypoint's namespace "
                    "(its ca.crt, or a <name>-cacert Secret's), or put the CA in a ConfigMap named by a "
                    "BackendTLSPolicy's validation.caCertificateRefs",
    "builtin://": "builtin:// (the proxy's own mesh certificate) is not supported by Ambit for TLS origination: a "
                  "mesh destination is reached over HBONE mutual TLS anyway",
    "kubernetes-gateway://": "kubernetes-gateway:// names are Istio's own for Gateway API certificates: name a Secret",
}


def credential_secret(text: str) -> str:
    """The Secret a credentialName names: `kubernetes://name` is `name` (Istio's ToResourceName)."""
    return text.removeprefix(SECRET_CREDENTIAL)


def _check_credential_name(text: str) -> str | None:
    for prefix, why in _OTHER_CREDENTIALS.items():
        if text.startswith(prefix):
            return why
    name = credential_secret(text)
    if "/" in name:
        return (f"{text!r} names a Secret of another namespace: a waypoint reads the Secrets of its own namespace "
                "only (as Istio authorizes a proxy to), so name the Secret alone")
    why = check_subdomain(name)
    return f"is not a Secret name: {why}" if why else None


ClientTLSSettings = Obj({
    "mode": Str(enum=("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")),
    "clientCertificate": Str(), "privateKey": Str(), "caCertificates": Str(),
    "credentialName": Str(valid=_check_credential_name),
    "subjectAltNames": Strings, "sni": Str(), "insecureSkipVerify": Bool(), "caCrl": Str(),
})

_FILE_FIELDS = ("clientCertificate", "privateKey", "caCertificates", "caCrl")


def check_client_tls(tls: Any, path: str, errs: Errors) -> None:
    """Istio's rules for a DestinationRule `tls` (pkg/config/validation/agent ValidateTLS): the
    credential comes from files or from `credentialName`, never both; MUTUAL from files needs both
    the certificate and the key; with verification off there is nothing to verify against."""
    if not isinstance(tls, dict):
        return
    mode, name, skip = tls.get("mode"), tls.get("credentialName"), tls.get("insecureSkipVerify") is True
    if skip and mode == "SIMPLE":
        for f in ("caCertificates", "credentialName", "subjectAltNames"):
            if tls.get(f):
                errs.append((join(path, f), "cannot be set with insecureSkipVerify: true (nothing is verified), "
                             "as Istio refuses it"))
    if skip and mode == "MUTUAL":
        for f in ("caCertificates", "subjectAltNames"):
            if tls.get(f):
                errs.append((join(path, f), "cannot be set with insecureSkipVerify: true (nothing is verified), "
                             "as Istio refuses it"))
    if mode in ("SIMPLE", "MUTUAL") and name:
        for f in _FILE_FIELDS:
            if tls.get(f):
                errs.append((join(path, f), "cannot be set with credentialName: the certificates, key and CRLs "
                             "come from that Secret, as Istio refuses both"))
        return
    if mode == "MUTUAL":
        for f in ("clientCertificate", "privateKey"):
            if not tls.get(f):
                errs.append((join(path, f), "required for mode MUTUAL (or name a Secret in credentialName)"))

_POLICY_FIELDS: dict[str, Any] = {
    "loadBalancer": LoadBalancer,
    "connectionPool": ConnectionPool,
    "outlierDetection": OutlierDetection,
    "tls": ClientTLSSettings,
}

PortTrafficPolicy = Obj({"port": PortSelector, **_POLICY_FIELDS}, checks=(check_port_policy,))

TrafficPolicy = Obj({
    **_POLICY_FIELDS,
    "portLevelSettings": Arr(PortTrafficPolicy, max_items=4096),
    "tunnel": Obj({"protocol": Str(valid=tunnel_protocol_reason), "targetHost": Str(min_len=1, valid=tunnel_host_reason),
                   "targetPort": Port},
                  required=("targetHost", "targetPort")),
    "proxyProtocol": Obj({"version": Str(enum=("V1", "V2"))}),
    "retryBudget": Obj({"percent": Num(minimum=0, maximum=100), "minRetryConcurrency": UInt32,
                        "budgetInterval": Duration(positive=True)}),
}, checks=(check_traffic_policy,))

Subset = Obj({"name": Str(min_len=1, valid=subset_name_reason), "labels": Labels, "trafficPolicy": TrafficPolicy}, required=("name",))


def _check_dr(value: dict[str, Any], path: str, errs: Errors) -> None:
    seen: dict[str, int] = {}
    for i, s in enumerate(value.get("subsets") or []):
        name = s.get("name")
        if name in seen:
            errs.append((f"{join(path, 'subsets')}[{i}].name", f'duplicate subset name "{name}" (also subsets[{seen[name]}])'))
        else:
            seen[name] = i
    policies = [(join(path, "trafficPolicy"), value.get("trafficPolicy"))] + [
        (f"{join(path, 'subsets')}[{i}].trafficPolicy", s.get("trafficPolicy"))
        for i, s in enumerate(value.get("subsets") or [])]
    for p, pol in policies:
        ports: dict[int, int] = {}
        if isinstance(pol, dict):
            check_client_tls(pol.get("tls"), join(p, "tls"), errs)
        for i, pls in enumerate((pol or {}).get("portLevelSettings") or []):
            if isinstance(pls, dict):
                check_client_tls(pls.get("tls"), f"{p}.portLevelSettings[{i}].tls", errs)
            n = (pls.get("port") or {}).get("number")
            if n is None:
                errs.append((f"{p}.portLevelSettings[{i}].port", "required field is missing"))
            elif n in ports:
                errs.append((f"{p}.portLevelSettings[{i}].port.number", f"duplicate port {n}"))
            else:
                ports[n] = i


DestinationRuleSpec = Obj({
    "host": Str(min_len=1, valid=host_reason),
    "trafficPolicy": TrafficPolicy,
    "subsets": Arr(Subset),
    "exportTo": Strings,
    "workloadSelector": WorkloadSelector,
}, required=("host",), checks=(_check_dr, check_export_to))


def check_entry_export_to(value: dict[str, Any], path: str, errs: Errors) -> None:
    """A ServiceEntry's exportTo, as Istio's validateExportTo checks it (isServiceEntry)."""
    check_export_to(value, path, errs, entry=True)
