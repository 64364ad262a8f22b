"""AuthorizationPolicy, PeerAuthentication, RequestAuthentication and Telemetry into their model
resources.

Istio semantics that matter and are easy to get wrong:
- An ALLOW policy with no rules (`spec: {}`) matches nothing, so it denies every request to the
  workloads it selects. A rule with no from/to/when (`rules: [{}]`) matches everything: allow-all.
- Within a rule, `from`, `to` and `when` are ANDed; the entries of each list are ORed; the fields of
  one source/operation are ANDed; the values of one field are ORed. That is exactly the model's
  Rule(clauses=[[Match, ...], ...]): AND over clauses, OR within a clause, AND over a Match's fields.
- Rules that need HTTP (methods, paths, hosts, request principals, remote IPs, L7 `when` keys)
  cannot be enforced by ztunnel; they go verbatim to `l7_rules` for the waypoint, and `has_l7` is
  set so ztunnel can fail safe. Their L4 part (the same rule without the HTTP attributes, so it
  matches more broadly) is also in `rules`, marked `Rule.has_l7`: ztunnel skips those in ALLOW
  policies and applies them in DENY policies, as Istio's ztunnel does.
- Principals and trust domains (`trustDomains`, `source.trustDomain`) go to the model as written;
  the proxies expand them over the mesh's trust domain and aliases (`ambit.trustdomain`), which
  they learn from MeshSettings, so an alias added later needs no retranslation. Trust domains are
  an L4 attribute: ztunnel enforces them (Istio's ztunnel ignores them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ambit.jwtclaims import DEFAULT_SPACE_DELIMITED
from ambit.model import (
    AccessLogEntry,
    Authorization,
    JwtRule,
    Match,
    PeerAuthn,
    RequestAuthn,
    Rule,
    TelemetryPolicy,
    TracingEntry,
)
from controller.kinds.common import parse_duration
from controller.kinds.security import L4_CONDITION_KEYS, dry_run
from controller.translate.index import name_of, ns_of

Obj = dict[str, Any]

_L7_SOURCE = ("requestPrincipals", "notRequestPrincipals", "remoteIpBlocks", "notRemoteIpBlocks")
_L7_OPERATION = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")


def rule_is_l7(rule: Obj) -> bool:
    for f in rule.get("from") or []:
        if any((f.get("source") or {}).get(k) for k in _L7_SOURCE):
            return True
    for t in rule.get("to") or []:
        if any((t.get("operation") or {}).get(k) for k in _L7_OPERATION):
            return True
    return any(c.get("key") not in L4_CONDITION_KEYS for c in rule.get("when") or [])


def principal(p: str) -> str:
    """Istio principals are `<trust-domain>/ns/<ns>/sa/<sa>`; tolerate a spiffe:// prefix."""
    return p.removeprefix("spiffe://")


def _service_accounts(values: list[str], ns: str, trust_domain: str) -> list[str]:
    out = []
    for v in values:
        sa_ns, _, sa = v.rpartition("/")
        out.append(f"{trust_domain}/ns/{sa_ns or ns}/sa/{sa}")
    return out


def _source_match(src: Obj, ns: str, trust_domain: str) -> Match:
    return Match(
        principals=[principal(p) for p in src.get("principals") or []]
        + _service_accounts(src.get("serviceAccounts") or [], ns, trust_domain),
        not_principals=[principal(p) for p in src.get("notPrincipals") or []]
        + _service_accounts(src.get("notServiceAccounts") or [], ns, trust_domain),
        namespaces=list(src.get("namespaces") or []),
        not_namespaces=list(src.get("notNamespaces") or []),
        trust_domains=list(src.get("trustDomains") or []),
        not_trust_domains=list(src.get("notTrustDomains") or []),
        ip_blocks=list(src.get("ipBlocks") or []),
        not_ip_blocks=list(src.get("notIpBlocks") or []),
    )


def _condition_match(cond: Obj) -> Match:
    vals, nots = list(cond.get("values") or []), list(cond.get("notValues") or [])
    key = cond["key"]
    if key == "source.ip":
        return Match(ip_blocks=vals, not_ip_blocks=nots)
    if key == "source.namespace":
        return Match(namespaces=vals, not_namespaces=nots)
    if key == "source.principal":
        return Match(principals=[principal(v) for v in vals], not_principals=[principal(v) for v in nots])
    if key == "source.trustDomain":
        return Match(trust_domains=vals, not_trust_domains=nots)
    if key == "destination.port":
        return Match(ports=[int(v) for v in vals], not_ports=[int(v) for v in nots])
    if key == "destination.ip":
        return Match(destination_ips=vals, not_destination_ips=nots)
    raise ValueError(f"not an L4 condition key: {key}")  # pragma: no cover - guarded by the caller


def l4_rule(rule: Obj, ns: str, trust_domain: str) -> Rule:
    """The rule's L4 part. HTTP attributes are dropped, which only widens the match: a source or
    operation left with no L4 field matches anything, and so does a clause containing it."""
    clauses: list[list[Match]] = []
    if rule.get("from"):
        clauses.append([_source_match(f["source"], ns, trust_domain) for f in rule["from"]])
    if rule.get("to"):
        clauses.append([Match(ports=[int(p) for p in t["operation"].get("ports") or []],
                              not_ports=[int(p) for p in t["operation"].get("notPorts") or []])
                        for t in rule["to"]])
    for cond in rule.get("when") or []:
        if cond.get("key") in L4_CONDITION_KEYS:
            clauses.append([_condition_match(cond)])
    return Rule(clauses=[c for c in clauses if Match() not in c], has_l7=rule_is_l7(rule))


# -- the full rules, for waypoints -------------------------------------------------------------------

def _http_source(src: Obj, ns: str, trust_domain: str) -> Match:
    m = _source_match(src, ns, trust_domain)
    m.remote_ip_blocks = list(src.get("remoteIpBlocks") or [])
    m.not_remote_ip_blocks = list(src.get("notRemoteIpBlocks") or [])
    m.request_principals = list(src.get("requestPrincipals") or [])
    m.not_request_principals = list(src.get("notRequestPrincipals") or [])
    return m


def _http_operation(op: Obj) -> Match:
    return Match(ports=[int(p) for p in op.get("ports") or []], not_ports=[int(p) for p in op.get("notPorts") or []],
                 methods=list(op.get("methods") or []), not_methods=list(op.get("notMethods") or []),
                 paths=list(op.get("paths") or []), not_paths=list(op.get("notPaths") or []),
                 hosts=list(op.get("hosts") or []), not_hosts=list(op.get("notHosts") or []))


def _http_condition(cond: Obj) -> Match:
    key = cond["key"]
    vals, nots = list(cond.get("values") or []), list(cond.get("notValues") or [])
    if key in L4_CONDITION_KEYS:
        return _condition_match(cond)
    if key == "remote.ip":
        return Match(remote_ip_blocks=vals, not_remote_ip_blocks=nots)
    if key.startswith("request.headers[") and key.endswith("]"):
        name = key[len("request.headers["):-1].lower()
        return Match(request_headers={name: vals} if vals else {}, not_request_headers={name: nots} if nots else {})
    if key.startswith("request.auth."):
        return Match(auth={key: vals} if vals else {}, not_auth={key: nots} if nots else {})
    return Match(unsupported=[key])     # connection.sni, request.experimental.auth.groups, experimental.*


def http_rule(rule: Obj, ns: str, trust_domain: str) -> Rule:
    """The whole rule (L4 and HTTP attributes together) for a waypoint: AND over from/to/when,
    OR within each, as `l4_rule` but dropping nothing."""
    clauses: list[list[Match]] = []
    if rule.get("from"):
        clauses.append([_http_source(f["source"], ns, trust_domain) for f in rule["from"]])
    if rule.get("to"):
        clauses.append([_http_operation(t["operation"]) for t in rule["to"]])
    for cond in rule.get("when") or []:
        clauses.append([_http_condition(cond)])
    return Rule(clauses=clauses, has_l7=rule_is_l7(rule))


def target_refs(spec: Obj) -> list[tuple[str, Obj]]:
    """A policy's targets with their field paths: Istio's older single `targetRef` or its
    `targetRefs` (validation allows one of them). Every reader of a policy's binding (the
    translation, the advisories) takes them from here."""
    if spec.get("targetRef"):
        return [("spec.targetRef", spec["targetRef"])]
    return [(f"spec.targetRefs[{i}]", t) for i, t in enumerate(spec.get("targetRefs") or [])]


def _scope(spec: Obj, ns: str, root_namespace: str) -> tuple[str, dict[str, str], list[dict[str, str]]]:
    refs = [t for _, t in target_refs(spec)]
    if refs:
        return "waypoint", {}, [{k: str(v) for k, v in r.items()} for r in refs]
    selector = dict((spec.get("selector") or {}).get("matchLabels") or {})
    if ns == root_namespace:
        return "global", selector, []
    return ("workload" if selector else "namespace"), selector, []


def translate_authorization(obj: Obj, trust_domain: str, root_namespace: str) -> Authorization:
    spec = obj.get("spec") or {}
    ns = ns_of(obj)
    scope, selector, refs = _scope(spec, ns, root_namespace)
    rules, l7 = [], []
    for r in spec.get("rules") or []:
        rules.append(l4_rule(r, ns, trust_domain))
        if rule_is_l7(r):
            l7.append(r)
    a = Authorization(name=name_of(obj), namespace=ns, action=spec.get("action") or "ALLOW", scope=scope,
                      selector=selector, rules=rules, has_l7=bool(l7), l7_rules=l7, target_refs=refs)
    if scope == "waypoint":
        a.http_rules = [http_rule(r, ns, trust_domain) for r in spec.get("rules") or []]
    if a.action == "CUSTOM":
        a.provider = str((spec.get("provider") or {}).get("name") or "")
    a.dry_run = dry_run(obj)
    return a


def translate_peer_authn(obj: Obj, root_namespace: str) -> PeerAuthn:
    spec = obj.get("spec") or {}
    ns = ns_of(obj)
    selector = dict((spec.get("selector") or {}).get("matchLabels") or {})
    return PeerAuthn(
        name=name_of(obj), namespace=ns,
        mode=(spec.get("mtls") or {}).get("mode") or "UNSET",
        selector=selector,
        port_modes={int(p): (v or {}).get("mode") or "UNSET" for p, v in (spec.get("portLevelMtls") or {}).items()},
        root=ns == root_namespace and not selector,
    )


def _opt_bool(entry: Obj, key: str) -> bool | None:
    return bool(entry[key]) if entry.get(key) is not None else None


def _mode(entry: Obj) -> str:
    return (entry.get("match") or {}).get("mode") or ""


def _tracing_entry(tr: Obj) -> TracingEntry:
    pct = tr.get("randomSamplingPercentage")
    return TracingEntry(mode=_mode(tr), providers=[p["name"] for p in tr.get("providers") or []],
                        sampling_percent=float(pct) if pct is not None else None,
                        custom_tags=dict(tr.get("customTags") or {}),
                        disable_span_reporting=_opt_bool(tr, "disableSpanReporting"),
                        use_request_id_sampling=_opt_bool(tr, "useRequestIdForTraceSampling"),
                        enable_istio_tags=_opt_bool(tr, "enableIstioTags"))


def _access_log_entry(a: Obj) -> AccessLogEntry:
    return AccessLogEntry(mode=_mode(a), providers=[p["name"] for p in a.get("providers") or []],
                          disabled=_opt_bool(a, "disabled"), filter=(a.get("filter") or {}).get("expression") or "")


def translate_telemetry(obj: Obj, root_namespace: str) -> TelemetryPolicy:
    """One Telemetry. Its `tracing` and `accessLogging` entries are kept apart, in order, each with
    its own `match.mode`: the resolver (ambit.telemetry) applies each only to the side it names, as
    Istio's mergeTracing/mergeLogs do, so a CLIENT-only entry never lands on the SERVER side."""
    spec = obj.get("spec") or {}
    ns = ns_of(obj)
    scope, selector, refs = _scope(spec, ns, root_namespace)
    t = TelemetryPolicy(name=name_of(obj), namespace=ns, scope=scope, selector=selector, target_refs=refs,
                        tracing=[_tracing_entry(tr) for tr in spec.get("tracing") or []],
                        access_logging=[_access_log_entry(a) for a in spec.get("accessLogging") or []])
    for m in spec.get("metrics") or []:
        t.metrics_providers += [p["name"] for p in m.get("providers") or []]
        t.metrics_overrides += list(m.get("overrides") or [])
    return t


# -- RequestAuthentication ----------------------------------------------------------------------------

DEFAULT_JWKS_TIMEOUT = 5.0          # JWTRule.timeout's default


def jwks_source(rule: Obj) -> str:
    """Where a rule's keys come from when not inline: its `jwksUri`, or, with neither `jwks` nor
    `jwksUri`, the issuer's OpenID discovery document (`oidc:<issuer>`), as istiod resolves it."""
    return rule.get("jwksUri") or rule.get("jwks_uri") or f"oidc:{rule['issuer']}"


def jwks_fetches(obj: Obj) -> dict[str, float]:
    """The key sets this RequestAuthentication needs fetched: source -> timeout (seconds)."""
    out: dict[str, float] = {}
    for r in (obj.get("spec") or {}).get("jwtRules") or []:
        if not r.get("jwks"):
            t = parse_duration(r["timeout"]) if r.get("timeout") else DEFAULT_JWKS_TIMEOUT
            out[jwks_source(r)] = max(out.get(jwks_source(r), 0.0), t)
    return out


def _jwt_rule(r: Obj, jwks: Mapping[str, tuple[str, str]]) -> JwtRule:
    if r.get("jwks"):
        keys, error = r["jwks"], ""
    else:
        keys, error = jwks.get(jwks_source(r), ("", "not fetched yet"))
    return JwtRule(
        issuer=r["issuer"], audiences=list(r.get("audiences") or []), jwks=keys,
        jwks_uri=r.get("jwksUri") or r.get("jwks_uri") or "",
        jwks_error=error, from_headers=[{"name": h["name"], "prefix": h.get("prefix") or ""}
                                        for h in r.get("fromHeaders") or []],
        from_params=list(r.get("fromParams") or []), from_cookies=list(r.get("fromCookies") or []),
        forward_original_token=bool(r.get("forwardOriginalToken")),
        output_payload_to_header=r.get("outputPayloadToHeader") or "",
        output_claim_to_headers=[{"header": c["header"], "claim": c["claim"]}
                                 for c in r.get("outputClaimToHeaders") or []],
        # the defaults are the waypoint's own: a rule naming only them needs nothing new of it
        space_delimited_claims=sorted(set(r.get("spaceDelimitedClaims") or ()) - set(DEFAULT_SPACE_DELIMITED)))


def translate_request_authn(obj: Obj, root_namespace: str, jwks: Mapping[str, tuple[str, str]]) -> RequestAuthn:
    """One RequestAuthentication; `jwks` maps a fetch source (`jwks_source`) to (key set JSON, error),
    what the controller fetched. A key set not fetched (yet) leaves the rule with `jwks_error`, so
    the waypoint refuses that issuer's tokens rather than admit them unchecked."""
    spec = obj.get("spec") or {}
    ns = ns_of(obj)
    scope, selector, refs = _scope(spec, ns, root_namespace)
    return RequestAuthn(name=name_of(obj), namespace=ns, scope=scope, selector=selector, target_refs=refs,
                        rules=[_jwt_rule(r, jwks) for r in spec.get("jwtRules") or []])
