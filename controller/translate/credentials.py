"""Client credentials for TLS origination: the Secrets DestinationRules name in `tls.credentialName`.

Istio reads such a Secret in the namespace of the proxy that originates the TLS (the egress gateway
then, the waypoint in ambient mode), never the DestinationRule's (pilot/pkg/networking/core/
cluster_tls.go, pilot/pkg/credentials/kube/secrets.go), so one rule can name a credential that
each gateway namespace holds its own copy of. Ambit does the same:

- For each name a rule uses (mode SIMPLE or MUTUAL, in `trafficPolicy`, a subset's or a
  port-level one) and each namespace that runs one of Ambit's waypoints or gateways, a
  `ClientCredential` "ns/name" carries what that namespace's Secret holds: the client chain and
  key (`cert`/`key`, else `tls.crt`/`tls.key`), and the CA bundle and its CRLs from the Secret
  `<name>-cacert` (`cacert`/`crl`, else `ca.crt`/`ca.crl`), else from the Secret itself, as
  Istio's `GetCaCert` falls back.
- The config server sends a credential to the waypoints and gateways of its namespace only
  (controller/configserver/scope.py): a Secret never leaves its namespace, as Istio authorizes a
  proxy to read the Secrets of its own namespace.
- What cannot be used (no such Secret, a key or certificate that does not parse, CRLs that do
  not load) is the credential's `error`: the waypoint fails those connections (503 UF) with it,
  never plaintext nor weaker verification. For the waypoints a rule's host is bound to, the
  same is said of the rule (`ambit apply` warns, `ambit analyze` AMB0130), with what is missing
  for the mode it asks for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from ambit.dataplane.tls import crl_blocks
from ambit.model import ClientCredential, Service
from controller.kinds.gateway import INGRESS_CLASSES
from controller.kinds.networking import credential_secret
from controller.translate.index import Index, name_of, ns_of
from controller.translate.ingress import ca_bundle, secret_field
from controller.translate.waypoints import WAYPOINT_CLASSES
from controller.validation import FieldError, object_ref

Obj = dict[str, Any]
ORIGINATING = ("SIMPLE", "MUTUAL")
CA_SUFFIX = "-cacert"       # Istio's SdsCaSuffix: a Secret of its own for the CA bundle
INVALID_CREDENTIAL = "InvalidCredential"    # the cause of a note on the rule (`ambit analyze` AMB0130)


@dataclass(frozen=True)
class Use:
    """One `tls` of a DestinationRule that names a credential."""

    ref: str            # DestinationRule/ns/name
    path: str           # spec.trafficPolicy.tls.credentialName, ...
    host: str
    name: str           # the Secret's name
    mode: str
    verify: bool        # not insecureSkipVerify


@dataclass
class Credentials:
    credentials: list[ClientCredential] = field(default_factory=list)
    notes: list[FieldError] = field(default_factory=list)       # what a rule's waypoint cannot originate with


def _policies(spec: Obj) -> Iterator[tuple[str, Obj]]:
    """(path, trafficPolicy-like dict) of every policy of a DestinationRule spec."""
    tops = [("spec.trafficPolicy", spec.get("trafficPolicy"))] + [
        (f"spec.subsets[{i}].trafficPolicy", s.get("trafficPolicy")) for i, s in enumerate(spec.get("subsets") or [])]
    for path, p in tops:
        if not isinstance(p, dict):
            continue
        yield path, p
        for j, pl in enumerate(p.get("portLevelSettings") or []):
            yield f"{path}.portLevelSettings[{j}]", pl


def uses(idx: Index) -> list[Use]:
    """Every credentialName the DestinationRules use to originate TLS."""
    out = []
    for dr in idx.kind("DestinationRule"):
        spec = dr.get("spec") or {}
        for path, p in _policies(spec):
            tls = p.get("tls") or {}
            name = credential_secret(tls.get("credentialName") or "")
            if name and tls.get("mode") in ORIGINATING:
                out.append(Use(object_ref(dr), f"{path}.tls.credentialName", spec.get("host", ""), name,
                               tls["mode"], not tls.get("insecureSkipVerify")))
    return out


def _gateway_namespaces(idx: Index) -> set[str]:
    classes = (*WAYPOINT_CLASSES, *INGRESS_CLASSES)
    return {ns_of(g) for g in idx.kind("Gateway") if (g.get("spec") or {}).get("gatewayClassName") in classes}


@dataclass
class Read:
    """A credential as read, and where its CA and CRLs came from (for what is said about them)."""

    cred: ClientCredential
    ca_ref: str = ""        # "ns/name" of the Secret the CA bundle is from
    crl_key: str = ""       # its key the CRLs are under


def credential(ns: str, name: str, secrets: dict[str, Obj]) -> ClientCredential:
    """The material of credential `name` in namespace `ns`, or why there is none."""
    return read(ns, name, secrets).cred


def read(ns: str, name: str, secrets: dict[str, Obj]) -> Read:
    """Istio's credentialName lookup (pilot/pkg/credentials/kube/secrets.go) of `name` in `ns`:
    the certificate and key from the Secret itself (`cert`/`key`, else `tls.crt`/`tls.key`), the
    CA and its CRLs from `<name>-cacert`, else from the Secret itself (`cacert`/`crl`, else
    `ca.crt`/`ca.crl`). Any Secret type. Used for TLS origination and an Istio Gateway's servers."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    cred = ClientCredential(name, ns)
    main, ca_secret = secrets.get(f"{ns}/{name}"), secrets.get(f"{ns}/{name}{CA_SUFFIX}")
    if main is None and ca_secret is None:
        cred.error = f"Secret {ns}/{name} does not exist (nor {ns}/{name}{CA_SUFFIX})"
        return Read(cred)
    if main is not None:
        for c, k in (("cert", "key"), ("tls.crt", "tls.key")):
            cert, key = secret_field(main, c), secret_field(main, k)
            if cert.strip() and key.strip():
                try:
                    leaf = x509.load_pem_x509_certificates(cert.encode())[0]
                    load_pem_private_key(key.encode(), None)
                except (ValueError, TypeError) as e:
                    cred.error = f"Secret {ns}/{name}: {c}/{k} do not hold a PEM certificate and key: {e}"
                    return Read(cred)
                if _is_ca(leaf):
                    # (the mesh's own CA Secret in cert-manager's layout is one: a signing key is never
                    # handed to a proxy, whatever a DestinationRule names)
                    cred.error = (f"Secret {ns}/{name}: {c} is a CA certificate that signs certificates; a CA's "
                                  "key is never sent to a proxy: use a client certificate the CA issued")
                    return Read(cred)
                cred.cert_pem, cred.key_pem = cert, key
                break
    for holder, ref in ((ca_secret, f"{ns}/{name}{CA_SUFFIX}"), (main, f"{ns}/{name}")):
        if holder is None:
            continue
        for ca_key, crl_key in (("cacert", "crl"), ("ca.crt", "ca.crl")):
            pem = secret_field(holder, ca_key)
            if not pem.strip():
                continue
            bundle, why = ca_bundle(pem, f"Secret {ref}")
            if bundle is None:
                cred.error = why
                return Read(cred)
            cred.ca_pem = bundle
            text = secret_field(holder, crl_key)
            if text.strip():            # (none, or empty: no revocation check, as Envoy's empty crl)
                blocks = crl_blocks(text)
                for i, b in enumerate(blocks):
                    try:
                        x509.load_pem_x509_crl(b.encode())
                    except ValueError as e:
                        cred.error = f"Secret {ref}: {crl_key} CRL #{i + 1} does not parse: {e}"
                        return Read(cred)
                if not blocks:
                    cred.error = f"Secret {ref}: {crl_key} holds no PEM CRL (-----BEGIN X509 CRL-----)"
                    return Read(cred)
                cred.crl_pem = "".join(b.strip() + "\n" for b in blocks)
            return Read(cred, ref, crl_key)
    return Read(cred)


def _is_ca(cert: Any) -> bool:
    """A certificate whose key signs certificates: a CA (basicConstraints CA) with keyCertSign, as
    the mesh's own CA and cert-manager's have. (`openssl req -x509`'s self-signed certificates say
    CA:TRUE without a keyUsage; those are the client's own, and pass.)"""
    from cryptography import x509
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        return bool(ca and cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign)
    except x509.ExtensionNotFound:
        return False


def _missing(u: Use, c: ClientCredential) -> str:
    """What the credential lacks for `u`'s mode, "" when it serves."""
    if c.error:
        return c.error
    if u.mode == "MUTUAL" and not c.cert_pem:
        return (f"Secret {c.namespace}/{c.name} holds no client certificate and key (tls.crt and tls.key, or cert and "
                "key), which mode MUTUAL presents")
    if u.verify and not c.ca_pem:
        return (f"no CA certificate to verify the server with: neither Secret {c.namespace}/{c.name}{CA_SUFFIX} nor "
                f"{c.namespace}/{c.name} holds ca.crt (or cacert); the system's roots are not used with credentialName")
    return ""


def _host_waypoints(services: list[Service], host: str) -> set[str]:
    """The waypoints ("ns/name") of the ServiceEntry hosts a rule for `host` applies to."""
    return {s.waypoint for s in services
            if s.kind == "ServiceEntry" and s.waypoint and (s.hostname == host or fnmatchcase(s.hostname, host))}


def translate_credentials(idx: Index, services: list[Service]) -> Credentials:
    out = Credentials()
    # Only rules for ServiceEntry hosts originate TLS (a Service's pods are reached over HBONE, and the
    # advisories say its tls is not applied): no other rule gets a key sent anywhere.
    entries = [s.hostname for s in services if s.kind == "ServiceEntry"]
    used = [u for u in uses(idx) if any(h == u.host or fnmatchcase(h, u.host) for h in entries)]
    if not used:
        return out
    secrets = {f"{ns_of(s)}/{name_of(s)}": s for s in idx.kind("Secret")}
    made: dict[tuple[str, str], ClientCredential] = {}
    for ns in sorted(_gateway_namespaces(idx)):
        for name in sorted({u.name for u in used}):
            made[(ns, name)] = credential(ns, name, secrets)
    out.credentials = list(made.values())
    for u in used:
        for wp in sorted(_host_waypoints(services, u.host)):
            c = made.get((wp.split("/", 1)[0], u.name))
            why = _missing(u, c) if c is not None else f"no Gateway of waypoint {wp} in the snapshot"
            if why:
                out.notes.append(FieldError(u.ref, u.path, f"{why}: waypoint {wp} fails every connection it "
                                            f"originates TLS on for {u.host} (503 UF); the credential is read in "
                                            "the waypoint's namespace, as Istio does"))
    return out
