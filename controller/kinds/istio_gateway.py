"""networking.istio.io (and networking.ambit.io) `Gateway`: Istio's ingress gateway configuration.

Ambit serves it on its own ingress gateway (a Gateway API Gateway of class `ambit`/`istio` whose pods
the `selector` matches), translated into the same listeners a Gateway API Gateway produces
(controller/translate/istio_gateway.py). What that data path cannot do is refused by name here rather
than accepted and ignored: other protocols, TLS modes other than SIMPLE, MUTUAL and OPTIONAL_MUTUAL
(HTTPS) and PASSTHROUGH (TLS), certificate files (a revocation list is the credentialName Secret's
`ca.crl`, not the `caCrl` file), `bind`, `defaultEndpoint`.

Certificate pins (`verifyCertificateSpki`, `verifyCertificateHash`) are checked here in Envoy's
formats (pilot/pkg/security/model/authentication.go hands them to its CertificateValidationContext,
which refuses a value that does not decode to a SHA-256 digest), and reach the gateway as lowercase
hex digests (`pin_hex`).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from controller.kinds.common import Labels, Port, check_ingress_port
from controller.kinds.hostnames import host_or_ip_reason, is_ip
from controller.kinds.istio_rules import check_label, port_name_reason
from controller.kinds.schema import Arr, Bool, Errors, Obj, Str, join

SERVER_PROTOCOLS = ("HTTP", "HTTPS", "TLS", "TCP")
# HTTPS server modes, and what each asks of a client certificate (ambit.model.IngressListener)
CLIENT_AUTH = {"MUTUAL": "required", "OPTIONAL_MUTUAL": "optional"}
HTTPS_MODES = ("SIMPLE", *CLIENT_AUTH)
TLS_VERSIONS = {"TLS_AUTO": "", "TLSV1_2": "1.2", "TLSV1_3": "1.3"}

_NOT_BUILT = "is not supported by Ambit's ingress gateway"
_FILES = (f"{_NOT_BUILT}: certificates come from a kubernetes.io/tls Secret named by credentialName, not from "
          "files in the proxy")

_HEX = re.compile(r"[0-9a-fA-F]{64}|[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){31}")


def _check_spki(value: str) -> str | None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return f'"{value[:64]}" is not base64: a pin is the base64 SHA-256 of a SubjectPublicKeyInfo'
    if len(raw) != 32:
        return f'"{value[:64]}" decodes to {len(raw)} bytes, not a SHA-256 digest (32)'
    return None


def _check_hash(value: str) -> str | None:
    if not _HEX.fullmatch(value):
        return (f'"{value[:100]}" is not a hex SHA-256 digest of a certificate: 64 hex digits, or 32 pairs '
                "separated by colons")
    return None


def pin_hex(value: str, spki: bool) -> str:
    """A validated pin as the gateway takes it: the lowercase hex of its SHA-256 digest."""
    return base64.b64decode(value).hex() if spki else value.replace(":", "").lower()


ServerTLS = Obj({
    "httpsRedirect": Bool(),
    "mode": Str(enum=("PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL")),
    "credentialName": Str(min_len=1),
    "minProtocolVersion": Str(enum=("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")),
    "subjectAltNames": Arr(Str(min_len=1)),
    "verifyCertificateSpki": Arr(Str(valid=_check_spki)),
    "verifyCertificateHash": Arr(Str(valid=_check_hash)),
}, unsupported={
    "serverCertificate": f"serverCertificate {_FILES}",
    "privateKey": f"privateKey {_FILES}",
    "caCertificates": f"caCertificates {_FILES} (MUTUAL: the CA is the Secret's ca.crt)",
    "caCrl": f"caCrl {_NOT_BUILT}: it reads no files in the proxy; put the CRL in the credentialName Secret's "
             "ca.crl key (where Istio reads it with credentialName)",
    "credentialNames": f"credentialNames {_NOT_BUILT} yet: name one Secret in credentialName",
    "tlsCertificates": f"tlsCertificates {_NOT_BUILT} yet: name one Secret in credentialName",
    "maxProtocolVersion": f"maxProtocolVersion {_NOT_BUILT}: it serves TLS 1.2 and 1.3 (raise the minimum with "
                          "minProtocolVersion)",
    "cipherSuites": f"cipherSuites {_NOT_BUILT}: OpenSSL's defaults for TLS 1.2 and 1.3 apply",
    "ecdhCurves": f"ecdhCurves {_NOT_BUILT}: OpenSSL's default groups apply",
    "caCertCredentialName": f"caCertCredentialName {_NOT_BUILT} yet: put the client CA in the credentialName "
                            "Secret's ca.crt",
    "insecureSkipVerify": f"insecureSkipVerify (client certificate validation) {_NOT_BUILT} yet",
})

# istiod's validateServerPort: "port name must be set" (a DNS-1123 label, unique across the servers).
ServerPort = Obj({"number": Port, "protocol": Str(min_len=1), "name": Str(min_len=1, valid=port_name_reason)},
                 required=("number", "protocol", "name"), unsupported={
    "targetPort": f"targetPort {_NOT_BUILT}: the gateway listens on port.number",
})


def _check_host(value: str) -> str | None:
    """istiod's ValidateNamespaceSlashWildcardHostname (isGateway): `[namespace/]host`, the
    namespace "*", "." or a DNS label, the host "*", a DNS name with a dot (a short name such as
    `foo` matches no request's Host: Istio refuses it) or an IP address."""
    ns, _, host = value.rpartition("/")
    if "/" in ns:
        return f'must be "host" or "namespace/host", got "{value}"'
    if not host:
        return "the host part must not be empty"
    if "/" in value and ns not in ("*", ".") and check_label(ns):
        return f'invalid namespace value "{ns}" in gateway (Istio refuses it too): "*", "." or a namespace name'
    if host != "*" and "." not in host and not is_ip(host):
        return f'"{host}": short names (non FQDN) are not allowed (Istio refuses them too): write the full host name'

    if "*" in host and host != "*" and not (host.startswith("*.") and "*" not in host[2:]):
        return f'"{host}": a wildcard must be "*" or a leading "*." label'
    return host_or_ip_reason(host)


def _check_server(value: dict[str, Any], path: str, errs: Errors) -> None:
    proto, tls = value["port"]["protocol"], value.get("tls") or {}
    check_ingress_port(value["port"]["number"], join(join(path, "port"), "number"), errs)
    pp = join(join(path, "port"), "protocol")
    if proto not in SERVER_PROTOCOLS:
        errs.append((pp, f'"{proto}" {_NOT_BUILT} yet; use one of {", ".join(SERVER_PROTOCOLS)}'))
        return
    tp = join(path, "tls")
    if proto == "TCP":
        if value.get("tls") is not None:
            errs.append((tp, "must not be set when protocol is TCP"))
        return
    if proto == "TLS":
        _check_passthrough(value.get("tls"), tp, errs)
        return
    if proto == "HTTP":
        extra = sorted(k for k in tls if k != "httpsRedirect")
        if extra:
            errs.append((tp, f"an HTTP server takes httpsRedirect only, not {', '.join(extra)}"))
        return
    if value.get("tls") is None:
        errs.append((tp, "required when protocol is HTTPS"))
        return
    mode = tls.get("mode", "SIMPLE")
    if mode not in HTTPS_MODES:
        errs.append((join(tp, "mode"), f'"{mode}" {_NOT_BUILT} yet; an HTTPS server terminates TLS '
                                       f"(mode {', '.join(HTTPS_MODES)})"))
    for f in ("subjectAltNames", "verifyCertificateSpki", "verifyCertificateHash"):
        if tls.get(f) and mode not in CLIENT_AUTH:
            errs.append((join(tp, f), "checks client certificates: only with mode MUTUAL or OPTIONAL_MUTUAL"))
    if not tls.get("credentialName"):
        errs.append((join(tp, "credentialName"), "required: the kubernetes.io/tls Secret, in the gateway pods' "
                                                 "namespace, holding the server's certificate and key"))
    if tls.get("minProtocolVersion", "TLS_AUTO") not in TLS_VERSIONS:
        errs.append((join(tp, "minProtocolVersion"), f'"{tls["minProtocolVersion"]}" {_NOT_BUILT}: it serves TLS '
                                                     "1.2 and 1.3 only"))
    if tls.get("httpsRedirect"):
        errs.append((join(tp, "httpsRedirect"), "applies to HTTP servers only"))


def _check_passthrough(tls: dict[str, Any] | None, path: str, errs: Errors) -> None:
    """A TLS server passes TLS through by SNI to the VirtualService's `tls` routes: the backend
    terminates it, so the gateway has no certificate nor TLS settings of its own."""
    if tls is None:
        errs.append((path, "required when protocol is TLS (mode PASSTHROUGH)"))
        return
    if tls.get("mode") != "PASSTHROUGH":
        errs.append((join(path, "mode"), f'"{tls.get("mode", "SIMPLE")}" {_NOT_BUILT} on a TLS server; use '
                                         "PASSTHROUGH (the backend terminates TLS), or protocol HTTPS to terminate"))
    for k in sorted(set(tls) - {"mode"}):
        errs.append((join(path, k), "not used with PASSTHROUGH: the backend terminates TLS"))


Server = Obj({
    "port": ServerPort,
    "hosts": Arr(Str(min_len=1, valid=_check_host), min_items=1),
    "tls": ServerTLS,
    "name": Str(),
}, required=("port", "hosts"), checks=(_check_server,), unsupported={
    "bind": f"bind {_NOT_BUILT}: it listens on every address of its pod",
    "defaultEndpoint": f"defaultEndpoint {_NOT_BUILT}: it routes by VirtualService only",
})

def _check_port_names(value: dict[str, Any], path: str, errs: Errors) -> None:
    """istiod's ValidateGateway: port names in servers must be unique."""
    seen: dict[str, int] = {}
    for i, srv in enumerate(value.get("servers") or []):
        name = ((srv or {}).get("port") or {}).get("name") if isinstance(srv, dict) else None
        if isinstance(name, str) and name:
            if name in seen:
                errs.append((f"{join(path, 'servers')}[{i}].port.name", f"port names in servers must be unique: "
                             f"duplicate name {name} (also servers[{seen[name]}]; Istio refuses it too)"))
            seen.setdefault(name, i)


IstioGatewaySpec = Obj({
    "selector": Labels,
    "servers": Arr(Server, min_items=1),
}, required=("selector", "servers"), checks=(_check_port_names,))
