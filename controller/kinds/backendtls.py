"""gateway.networking.k8s.io BackendTLSPolicy (v1, v1alpha3): TLS origination to a backend,
configured the Gateway API way (controller/translate/backendtls.py applies it).

The schema is the upstream CRD's (gateway.networking.k8s.io_backendtlspolicies.yaml), its CEL
rules included, since `ambit apply` and the lab store have no API server to check them:
- targetRefs: 1 to 16, each {group, kind, name, sectionName}; two entries naming one target
  must both set a sectionName, and different ones;
- validation: `hostname` (required, a DNS name), exactly one of `caCertificateRefs` (1 to 8
  {group, kind, name}) and `wellKnownCACertificates`; `subjectAltNames` each of `type` Hostname
  (with `hostname`, no `uri`) or URI (with `uri`, no `hostname`);
- options: implementation-specific TLS options. Ambit defines none, so any key is refused by
  name: applying the policy without it would be weaker than asked (a minimum version, ciphers).

What is valid here and still not applied (a target kind Ambit does not originate TLS to, a
ConfigMap that does not exist, a `wellKnownCACertificates` other than System) is the
translation's verdict, written to `status.ancestors`, not a validation error: Gateway API wants
those reported per target, and the policy's other targets still apply.
"""

from __future__ import annotations

import re
from typing import Any

from controller.kinds.gwtypes import DNS as _DNS
from controller.kinds.gwtypes import GROUP as _GROUP
from controller.kinds.gwtypes import KIND as _KIND
from controller.kinds.gwtypes import WILD_DNS as _WILD_DNS
from controller.kinds.gwtypes import matching as _matching
from controller.kinds.schema import Arr, Errors, Map, Obj, Str, join

_URI = re.compile(r"^(([^:/?#]+):)(//([^/?#]*))([^?#]*)(\?([^#]*))?(#(.*))?")
_WELL_KNOWN = re.compile(r"^(System|([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/"
                         r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]))$")


_group = Str(valid=_matching(_GROUP, "an API group (lower-case DNS name, or empty for the core group)"),
             pattern=_GROUP.pattern)
_kind = Str(min_len=1, valid=_matching(_KIND, "a kind name", 63), pattern=_KIND.pattern)
_name = Str(min_len=1, valid=_matching(re.compile(r".*"), "a name"))


def _max_items(n: int) -> Any:
    def check(value: list[Any], path: str, errs: Errors) -> None:
        if isinstance(value, list) and len(value) > n:
            errs.append((path, f"must have at most {n} items, got {len(value)}"))
    return check


def _check_target_refs(value: dict[str, Any], path: str, errs: Errors) -> None:
    """The CEL rules of `targetRefs`: entries naming one target (group, kind, name) must all set
    a sectionName, and each a different one."""
    refs = [r for r in value.get("targetRefs") or [] if isinstance(r, dict)]
    seen: dict[tuple[str, str, str], list[str]] = {}
    for r in refs:
        seen.setdefault((r.get("group", ""), r.get("kind", ""), r.get("name", "")), []).append(r.get("sectionName") or "")
    for (group, kind, name), sections in seen.items():
        if len(sections) < 2:
            continue
        what = f"{kind} {name}" + (f" (group {group})" if group else "")
        if "" in sections:
            errs.append((join(path, "targetRefs"), f"sectionName must be specified when targetRefs includes 2 or more "
                                                   f"references to the same target ({what})"))
        elif len(set(sections)) < len(sections):
            errs.append((join(path, "targetRefs"), f"sectionName must be unique when targetRefs includes 2 or more "
                                                   f"references to the same target ({what})"))


def _check_subject_alt_name(value: dict[str, Any], path: str, errs: Errors) -> None:
    kind = value.get("type")
    if kind == "Hostname":
        if not value.get("hostname"):
            errs.append((join(path, "hostname"), "SubjectAltName element must contain Hostname, if Type is set to "
                                                 "Hostname"))
        if value.get("uri"):
            errs.append((join(path, "uri"), "SubjectAltName element must not contain URI, if Type is not set to URI"))
    elif kind == "URI":
        if not value.get("uri"):
            errs.append((join(path, "uri"), "SubjectAltName element must contain URI, if Type is set to URI"))
        if value.get("hostname"):
            errs.append((join(path, "hostname"), "SubjectAltName element must not contain Hostname, if Type is not "
                                                 "set to Hostname"))


def _check_validation(value: dict[str, Any], path: str, errs: Errors) -> None:
    refs, known = value.get("caCertificateRefs") or [], value.get("wellKnownCACertificates") or ""
    if refs and known:
        errs.append((path, "must not contain both CACertificateRefs and WellKnownCACertificates"))
    elif not refs and not known:
        errs.append((path, "must specify either CACertificateRefs or WellKnownCACertificates"))


def _check_option(key: Any) -> str | None:
    return (f"option {key!r} is not supported by Ambit: it defines no BackendTLSPolicy options, and applying the "
            "policy without one would be weaker than asked (the waypoint's TLS to the backend is Python's default: "
            "TLS 1.2 or newer, its default ciphers)")


TargetRef = Obj({"group": _group, "kind": _kind, "name": _name,
                 "sectionName": Str(min_len=1, valid=_matching(_DNS, "a section name (a port name)"))},
                required=("group", "kind", "name"))

CACertificateRef = Obj({"group": _group, "kind": _kind, "name": _name}, required=("group", "kind", "name"))

SubjectAltName = Obj({
    "type": Str(enum=("Hostname", "URI")),
    "hostname": Str(min_len=1, valid=_matching(_WILD_DNS, "a DNS name (a leading *. allowed)"),
                    pattern=_WILD_DNS.pattern),
    "uri": Str(min_len=1, valid=_matching(_URI, "a URI with a scheme and an authority (spiffe://td/ns/x/sa/y)"),
               pattern=_URI.pattern),
}, required=("type",), checks=(_check_subject_alt_name,))

BackendTLSPolicyValidation = Obj({
    "caCertificateRefs": Arr(CACertificateRef),
    "wellKnownCACertificates": Str(min_len=1, valid=_matching(_WELL_KNOWN, "System or a domain-prefixed name"),
                                   pattern=_WELL_KNOWN.pattern),
    "hostname": Str(min_len=1, valid=_matching(_DNS, "a DNS name (no wildcard, no IP address)"), pattern=_DNS.pattern),
    "subjectAltNames": Arr(SubjectAltName, max_items=5),     # the CRD's maxItems
}, required=("hostname",), checks=(
    lambda v, p, e: _max_items(8)(v.get("caCertificateRefs"), join(p, "caCertificateRefs"), e),
    _check_validation))

BackendTLSPolicySpec = Obj({
    "targetRefs": Arr(TargetRef, min_items=1),
    "validation": BackendTLSPolicyValidation,
    "options": Map(Str(), key=_check_option),
}, required=("targetRefs", "validation"), checks=(
    lambda v, p, e: _max_items(16)(v.get("targetRefs"), join(p, "targetRefs"), e),
    _check_target_refs))
