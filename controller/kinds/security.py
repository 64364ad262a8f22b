"""security.istio.io (and security.ambit.io): AuthorizationPolicy, PeerAuthentication and
RequestAuthentication schemas."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from ambit.httpfields import PROXY_OWNED_HEADERS
from controller.kinds.common import (
    Cidr,
    Duration,
    PolicyTargetReference,
    PolicyTargetReferences,
    PortString,
    Strings,
    WorkloadSelector,
    cookie_name_reason,
    header_name_reason,
    port_key,
    request_header_reason,
)
from controller.kinds.schema import Arr, Bool, Errors, Map, Obj, Str, join, show

SOURCE_FIELDS = ("principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals",
                 "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks",
                 "notRemoteIpBlocks", "serviceAccounts", "notServiceAccounts", "trustDomains", "notTrustDomains")
OPERATION_FIELDS = ("hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths")


def _not_empty(fields: tuple[str, ...], what: str):
    def check(value: dict[str, Any], path: str, errs: Errors) -> None:
        if not any(value.get(f) for f in fields):
            errs.append((path, f"{what} must set at least one of {', '.join(fields)}"))
    return check


def _check_service_account(text: str) -> str | None:
    """Istio's CheckServiceAccount: `name` or `namespace/name`, no wildcard (a value of another
    shape becomes a principal no identity has)."""
    if "*" in text:
        return f'wildcards are not allowed in a service account, got "{text}"'
    if text.count("/") > 1 or any(not part for part in text.split("/")):
        return f"must be 'serviceAccount' or 'namespace/serviceAccount', got \"{text}\""
    if len(text) > 320:
        return f"must be at most 320 characters, got {len(text)}"
    return None


# A value of these lists is never empty (Istio's CheckEmptyValues): "" matches no request, so an
# ALLOW listing it admits nothing and a DENY denies nothing on it.
Values = Arr(Str(min_len=1))
ServiceAccounts = Arr(Str(min_len=1, valid=_check_service_account), max_items=16)


def _principals_xor_service_accounts(value: dict[str, Any], path: str, errs: Errors) -> None:
    """Istio refuses the combination (pkg/config/validation: "cannot set serviceAccounts with
    namespaces or principals"): a service account already names its namespace, and a policy
    meaning both would be read differently by different readers."""
    if (value.get("principals") or value.get("notPrincipals") or value.get("namespaces")
            or value.get("notNamespaces")) and (value.get("serviceAccounts") or value.get("notServiceAccounts")):
        errs.append((path, "cannot set serviceAccounts with namespaces or principals (as in Istio): a service "
                           "account is `namespace/name`, so write the namespaces there"))


def _check_trust_domain_value(text: str) -> str | None:
    """Istio's CheckTrustDomainValues: a trust domain (the part of a SPIFFE id before `/ns/`), exact or
    with one `*` at the start or the end (`*` alone: any), and no "/"."""
    if text.count("*") > 1:
        return f'at most one "*" is allowed in a trust domain, got "{text}"'
    if "*" in text[1:-1]:
        return f'a "*" is allowed only at the start or the end of a trust domain, got "{text}"'
    if "/" in text:
        return (f'a trust domain must not contain "/", got "{text}" (to match a whole identity, use '
                "principals or the source.principal condition)")
    return None


TrustDomainValue = Str(min_len=1, valid=_check_trust_domain_value)

Source = Obj({
    "principals": Values, "notPrincipals": Values,
    "requestPrincipals": Values, "notRequestPrincipals": Values,
    "namespaces": Values, "notNamespaces": Values,
    "ipBlocks": Arr(Cidr), "notIpBlocks": Arr(Cidr),
    "remoteIpBlocks": Arr(Cidr), "notRemoteIpBlocks": Arr(Cidr),
    "serviceAccounts": ServiceAccounts, "notServiceAccounts": ServiceAccounts,
    "trustDomains": Arr(TrustDomainValue), "notTrustDomains": Arr(TrustDomainValue),
}, checks=(_not_empty(SOURCE_FIELDS, "a source"), _principals_xor_service_accounts))

# A path template's literal segments: RFC 3986 pchars, as Istio's CheckValidPathTemplate requires.
_PATH_LITERAL = re.compile(r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+")


def _check_path_template(text: str) -> str | None:
    """Istio's rules for a path with `{*}` or `{**}`: each segment is `{*}`, `{**}` (the last
    operator) or a literal of RFC 3986 path characters. The waypoint compiles a template into an RE2
    pattern, so a segment outside these rules (a `{`, an em dash) would fail at every request."""
    if "{*}" not in text and "{**}" not in text:
        return None
    seen_any = False
    for seg in text.strip("/").split("/"):
        if seg in ("{*}", "{**}"):
            if seen_any:
                return f'invalid path template "{text}": {{**}} must be the last operator'
            seen_any = seg == "{**}"
        elif "{" in seg or "}" in seg:
            return f'invalid path template "{text}": contains "{{" or "}}" beyond a {{*}} or {{**}} segment'
        elif not _PATH_LITERAL.fullmatch(seg):
            return (f'invalid path template "{text}": segment "{seg}" must be RFC 3986 path characters '
                    "(a-z, A-Z, 0-9 and -._~%!$&'()+,;:@=)")
    return None


PathTemplates = Arr(Str(min_len=1, valid=_check_path_template))

Operation = Obj({
    "hosts": Values, "notHosts": Values,
    "ports": Arr(PortString), "notPorts": Arr(PortString),
    "methods": Values, "notMethods": Values,
    "paths": PathTemplates, "notPaths": PathTemplates,
}, checks=(_not_empty(OPERATION_FIELDS, "an operation"),))

# Condition keys Istio documents (https://istio.io/latest/docs/reference/config/security/conditions/).
L4_CONDITION_KEYS = ("source.ip", "source.namespace", "source.principal", "source.trustDomain", "destination.port",
                     "destination.ip")
_CONDITION_KEYS = re.compile(
    r"^(source\.ip|source\.namespace|source\.principal|source\.trustDomain|destination\.port|destination\.ip"
    r"|remote\.ip"
    r"|connection\.sni|request\.auth\.principal|request\.auth\.audiences|request\.auth\.presenter"
    r"|request\.headers\[[^\]]+\]|request\.auth\.claims\[[^\]]+\](\[[^\]]+\])*"
    r"|request\.experimental\.auth\.groups|experimental\.envoy\.filters\..+)$")


def _check_condition(value: dict[str, Any], path: str, errs: Errors) -> None:
    key = value["key"]
    if not _CONDITION_KEYS.fullmatch(key):
        errs.append((join(path, "key"), f'unknown condition key "{key}"'))
        return
    if key.startswith("request.headers["):
        why = request_header_reason(key[len("request.headers["):-1])
        if why:
            errs.append((join(path, "key"), f"{why}, so this condition could never match (a DENY with it would "
                         "deny nothing)"))
            return
    if not value.get("values") and not value.get("notValues"):
        errs.append((path, "one of values or notValues must be set"))
        return
    per_value = {"source.ip": Cidr, "destination.ip": Cidr, "remote.ip": Cidr, "destination.port": PortString,
                 "source.trustDomain": TrustDomainValue}
    schema = per_value.get(key)
    if schema is not None:
        for f in ("values", "notValues"):
            for i, v in enumerate(value.get(f) or []):
                schema.check(v, f"{join(path, f)}[{i}]", errs)


Condition = Obj({"key": Str(min_len=1), "values": Strings, "notValues": Strings},
                required=("key",), checks=(_check_condition,))

Rule = Obj({
    "from": Arr(Obj({"source": Source}, required=("source",)), min_items=1, max_items=512),
    "to": Arr(Obj({"operation": Operation}, required=("operation",)), min_items=1),
    "when": Arr(Condition, min_items=1),
})


def _check_authz(value: dict[str, Any], path: str, errs: Errors) -> None:
    action = value.get("action", "ALLOW")
    if action == "CUSTOM":
        if not (value.get("provider") or {}).get("name"):
            errs.append((join(path, "provider.name"), "required with action CUSTOM: the name of an external "
                         "authorizer (envoyExtAuthzHttp or envoyExtAuthzGrpc) in the mesh config's extensionProviders"))
        if not (value.get("targetRef") or value.get("targetRefs")):
            errs.append((join(path, "action"), "CUSTOM (external authorization) is enforced by waypoints and ingress "
                         "gateways only, so it needs targetRefs (a waypoint Gateway, an ingress Gateway or a Service "
                         "that uses a waypoint); ztunnel cannot call an authorizer, as in Istio's ambient mode"))
    elif value.get("provider") is not None:
        errs.append((join(path, "provider"), "provider is only valid with action CUSTOM"))
    if action in ("DENY", "CUSTOM") and not value.get("rules"):
        # Istio's message: a policy without rules matches nothing, so it would deny (check) nothing
        errs.append((join(path, "rules"), f"{action} action without `rules` is meaningless as it will never be "
                     "triggered, add an empty rule `{}` if you want it be triggered for every request"))


# istio.io/dry-run (Istio's annotation, alpha): an AuthorizationPolicy so annotated is evaluated
# and reported, never enforced (docs/security.md, "Dry run"). Its value is read as Go's
# strconv.ParseBool reads it, as istiod does; istiod's validation refuses any other value, the
# annotation on an action other than ALLOW or DENY, and on any other kind.
DRY_RUN = "istio.io/dry-run"
_BOOLS = {**dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
          **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False)}


def dry_run(obj: dict[str, Any]) -> bool:
    """Whether `obj` (a valid AuthorizationPolicy) is in dry-run mode."""
    return _BOOLS.get(str(((obj.get("metadata") or {}).get("annotations") or {}).get(DRY_RUN)), False)


def dry_run_problems(api_version: Any, kind: Any, metadata: dict[str, Any], spec: Any) -> Errors:
    """istiod's checkDryRunAnnotation: (path, reason) of a dry-run annotation it would refuse. Like
    istiod's, only on the mesh's own kinds (istio.io and ambit.io groups): a Pod or a Gateway API
    object that carries the annotation is none of its business."""
    annotations = metadata.get("annotations")
    if not isinstance(annotations, dict) or DRY_RUN not in annotations:
        return []
    group = str(api_version).rpartition("/")[0]
    if not group.endswith((".istio.io", ".ambit.io")):
        return []
    path = f"metadata.annotations[{DRY_RUN}]"
    if kind != "AuthorizationPolicy":
        return [(path, f"unsupported annotation {DRY_RUN} on a {kind}: only an AuthorizationPolicy can be "
                       "dry-run (Istio refuses it too); remove the annotation")]
    action = (spec.get("action") if isinstance(spec, dict) else None) or "ALLOW"
    if action not in ("ALLOW", "DENY"):
        return [(path, f"the annotation {DRY_RUN} only supports action ALLOW or DENY, found action {action} "
                       "(Istio refuses it too)")]
    if str(annotations[DRY_RUN]) not in _BOOLS:
        return [(path, f'invalid value {show(annotations[DRY_RUN])}: "true" or "false" (as Go\'s '
                       'strconv.ParseBool reads them: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)')]
    return []


AuthorizationPolicySpec = Obj({
    "selector": WorkloadSelector,
    "targetRef": PolicyTargetReference,
    "targetRefs": PolicyTargetReferences,
    "action": Str(enum=("ALLOW", "DENY", "AUDIT", "CUSTOM")),
    "provider": Obj({"name": Str()}),
    "rules": Arr(Rule, max_items=512),       # Istio's CRD limits (its CEL cost bounds)
}, one_of=(("selector", "targetRef", "targetRefs"),), checks=(_check_authz,))

MtlsMode = Str(enum=("UNSET", "DISABLE", "PERMISSIVE", "STRICT"))


def _check_peer_authn(value: dict[str, Any], path: str, errs: Errors) -> None:
    if value.get("portLevelMtls") and not (value.get("selector") or {}).get("matchLabels"):
        errs.append((join(path, "portLevelMtls"), "requires a selector with matchLabels (as in Istio)"))
    if value.get("portLevelMtls") == {}:        # istiod's ValidatePeerAuthentication: it sets nothing
        errs.append((join(path, "portLevelMtls"), "port level mTLS, if defined, must have at least one element "
                                                  "(Istio refuses it too)"))


PeerAuthenticationSpec = Obj({
    "selector": WorkloadSelector,
    "mtls": Obj({"mode": MtlsMode}),
    "portLevelMtls": Map(Obj({"mode": MtlsMode}), key=port_key),
}, checks=(_check_peer_authn,))


# -- RequestAuthentication (istio/api security/v1/request_authentication.proto, v1beta1/jwt.proto) --

def jwks_problem(text: str) -> str | None:
    """An inline JWKS must be JSON with a `keys` list (RFC 7517 §5) whose keys PyJWT can use."""
    import jwt

    try:
        data = json.loads(text)
    except ValueError as e:
        return f"must be a JSON Web Key Set (JSON): {e}"
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        return 'must be a JSON Web Key Set: an object with a non-empty "keys" list'
    from controller.jwks import key_problem  # (controller.jwks imports the validation)

    # every key, as the author wrote it: one a waypoint cannot use (no object, a kid that is no
    # string) made every waypoint's RequestAuthentication fail to apply and NACK the update
    for i, key in enumerate(data["keys"]):
        why = key_problem(jwt, key)
        if why:
            return f"keys[{i}] is no key usable for verification: {why}"
    return None


def _check_uri(text: str) -> str | None:
    u = urlsplit(text)
    if u.scheme not in ("http", "https") or not u.hostname:
        return f'must be an http:// or https:// URL, got "{text}"'
    try:
        u.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return f'has an invalid port: "{text}"'
    return None


def _owned(name: Any) -> str | None:
    if isinstance(name, str) and name.lower() in PROXY_OWNED_HEADERS:
        return f'"{name}" is a header the proxy owns (framing, connection or Host); it cannot carry a JWT output'
    return None


def _check_jwt_rule(value: dict[str, Any], path: str, errs: Errors) -> None:
    outs = [c.get("header", "").lower() for c in value.get("outputClaimToHeaders") or []]
    if len(set(outs)) != len(outs):
        errs.append((join(path, "outputClaimToHeaders"), "a header may be set from one claim only"))
    why = _owned(value.get("outputPayloadToHeader"))
    if why:
        errs.append((join(path, "outputPayloadToHeader"), why))
    for i, c in enumerate(value.get("outputClaimToHeaders") or []):
        why = _owned(c.get("header")) if isinstance(c, dict) else None
        if why:
            errs.append((f"{join(path, 'outputClaimToHeaders')}[{i}].header", why))


JwtHeader = Obj({"name": Str(min_len=1, valid=header_name_reason), "prefix": Str()}, required=("name",))
ClaimToHeader = Obj({"header": Str(min_len=1, valid=header_name_reason), "claim": Str(min_len=1)},
                    required=("header", "claim"))

JwtRule = Obj({
    "issuer": Str(min_len=1, description="The `iss` a token must carry."),
    "audiences": Arr(Str(min_len=1)),
    "jwksUri": Str(valid=_check_uri, description="Fetched by the controller and inlined for the waypoints."),
    "jwks": Str(valid=jwks_problem, description="An inline JSON Web Key Set."),
    "fromHeaders": Arr(JwtHeader),
    "fromParams": Arr(Str(min_len=1)),
    "fromCookies": Arr(Str(min_len=1, valid=cookie_name_reason)),
    "outputPayloadToHeader": Str(valid=header_name_reason),
    "forwardOriginalToken": Bool(),
    "outputClaimToHeaders": Arr(ClaimToHeader),
    "jwks_uri": Str(valid=_check_uri, description="The deprecated spelling of jwksUri (jwksUri wins)."),
    "timeout": Duration("How long the controller waits for jwksUri (default 5s).", positive=True),
    "spaceDelimitedClaims": Arr(Str(min_len=1), max_items=64,
                                description="Top-level claims read as space-separated words, besides `scope` and "
                                            "`permission` (always)."),
}, required=("issuer",), checks=(_check_jwt_rule,),
    # Istio's CRD: only one of jwks or jwksUri can be set. Ambit read `jwks` and dropped the URI
    # (and `jwksUri` over `jwks_uri`) without a word.
    one_of=(("jwksUri", "jwks_uri", "jwks"),), unsupported={
    "presence": "presence is not supported by Ambit yet: tokens are optional (a missing token passes); require "
                'one with an AuthorizationPolicy, e.g. ALLOW from requestPrincipals: ["*"]',
})


RequestAuthenticationSpec = Obj({
    "selector": WorkloadSelector,
    "targetRef": PolicyTargetReference,
    "targetRefs": PolicyTargetReferences,
    "jwtRules": Arr(JwtRule, max_items=4096),
}, one_of=(("selector", "targetRef", "targetRefs"),))
