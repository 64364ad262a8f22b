"""TLS origination to ServiceEntry endpoints: a DestinationRule `trafficPolicy.tls` of mode SIMPLE
or MUTUAL on an external host makes the waypoint speak TLS upstream while the app speaks HTTP
(Istio's egress TLS origination, istio/api networking/v1alpha3/destination_rule.proto
`ClientTLSSettings`).

- SIMPLE: verify the server against `caCertificates` (a PEM file the waypoint reads), else the
  system's roots; `insecureSkipVerify` turns verification off.
- A Gateway API BackendTLSPolicy (controller/translate/backendtls.py) arrives as SIMPLE with its CA
  bundle inline (`ca_certificate_pem`, from ConfigMaps the controller read), SNI = its `hostname`
  and `subjectAltNames` (DNS names or URIs). A bundle that holds no certificate (the policy's
  references did not resolve) fails the connection: 503, never plaintext nor the system roots.
- MUTUAL: the same, presenting `clientCertificate` + `privateKey` (PEM files; both required).
- `caCrl` (SIMPLE and MUTUAL, unless `insecureSkipVerify`): a PEM file of CRLs; the server's chain
  is checked against them, every CA of it, as Envoy does with the `crl` Istio sets
  (pilot/pkg/networking/core/cluster_tls.go) and no `only_verify_leaf_cert_crl`: a revoked server
  certificate, or a CA of its chain without a CRL in the file, fails the handshake (503 UF). A
  file that holds no CRL fails every connection, never one without the check.
- `credentialName` (SIMPLE and MUTUAL): the material comes from a Secret of that name in the
  waypoint's own namespace, which the controller read and sent as a `ClientCredential` (its
  `<name>-cacert` Secret's CA, else its own `ca.crt`, as Istio): the CA bundle (and its CRLs) the
  server is verified against, and for MUTUAL the client chain and key. Never the system roots:
  a Secret without a CA fails every verified connection (503 UF), as Envoy's validation context
  that never arrives does; so do a missing Secret and one whose keys do not parse.
- SNI is `sni`, else the host. The server certificate must name one of `subjectAltNames`, else the
  SNI name (what Envoy checks with `auto_san_validation`).
- DISABLE, unset, or ISTIO_MUTUAL (which means HBONE mTLS, the mesh's own): plain TCP.

Contexts are built once per set of files and verification mode and cached: loading files per
connection would cost a read and a parse on every upstream connect. The cache is checked per
connection against the files' stat, so a rotated CA bundle or client certificate takes effect on
the next connection (before, the first version read stayed in force until the waypoint restarted: a
CA removed from the bundle was still trusted). The SNI and the names verified are not part of the
context (the connection sends the SNI, `check_peer` checks the names), so hosts share one: under a
wildcard ServiceEntry host the name is the request's host, and a context per name (one loads the
system trust store, ~0.8 MB) let any client grow the waypoint by a context per random subdomain it
asked for (2,000 names: +1.6 GB). The cache is an LRU of `MAX_CONTEXTS`, so DestinationRules whose
files come and go do not add up either.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import ssl
from collections import OrderedDict
from dataclasses import dataclass

from ambit.dataplane.tls import load_chain_from_memory, load_crls
from ambit.model import ClientCredential, TrafficPolicy

ORIGINATING = ("SIMPLE", "MUTUAL")


@dataclass(frozen=True)
class Origination:
    context: ssl.SSLContext
    sni: str
    names: tuple[str, ...]      # acceptable server names; () when verification is off
    settings: tuple = ()        # what made it (mode, files, verification, SNI, names): connections
                                # pooled together must share all of it, not only the SNI


def check_peer(cert: dict, names: tuple[str, ...]) -> str:
    """"" when the server certificate (`getpeercert()`) names one of `names`, else why not."""
    if not names:
        return ""
    alt = cert.get("subjectAltName", ())
    uris = {v for k, v in alt if k == "URI"}
    if any(n in uris for n in names if "://" in n):     # a URI SAN (a SPIFFE ID): exact
        return ""
    sans = {v.lower() for k, v in alt if k in ("DNS", "IP Address")}
    for n in (n.lower() for n in names if "://" not in n):  # DNS names compare without case (RFC 6125 6.4.1)
        for s in sans:
            if s == n or (s.startswith("*.") and n.count(".") >= 2 and n.split(".", 1)[1] == s[2:]):
                return ""
    shown = sorted(sans) + sorted(uris)
    return f"server certificate names {', '.join(shown) or 'nothing'}, not {', '.join(names)}"


MAX_CONTEXTS = 32      # TLS settings in use at once (distinct files x modes): a handful in practice
# (mode, CA file, client certificate, key, verification off, inline CA, CRL file) -> (the files' stamps, context)
_CONTEXTS: OrderedDict[tuple[str, str, str, str, bool, str, str], tuple[tuple, ssl.SSLContext]] = OrderedDict()
_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----")


@functools.lru_cache(maxsize=MAX_CONTEXTS)
def _digest(pem: str) -> str:
    """A short name of an inline CA bundle for the pool key (the bundle itself is kilobytes)."""
    return hashlib.sha256(pem.encode()).hexdigest()[:16] if pem else ""


def _stamps(*paths: str) -> tuple:
    """What tells a file's contents changed without reading it: (inode, size, mtime) per path."""
    out = []
    for p in paths:
        if p:
            st = os.stat(p)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _inline_context(pem: str) -> ssl.SSLContext:
    """A context trusting the inline bundle alone. One that holds no certificate (the controller's
    word for "no usable CA": its text says why) or does not load trusts nothing, so every
    handshake fails verification (503 UF): fail closed, as Gateway API asks of a policy whose CA
    references are invalid, rather than plaintext or the system's roots."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)       # verification on, no CA loaded
    # The certificate blocks only: text around them (a bundle's comments, which need not be ASCII,
    # as in Mozilla's "Főtanúsítvány") is what OpenSSL refuses in a str (TypeError), not a CA.
    blocks = "\n".join(_PEM_BLOCK.findall(pem))
    if blocks:
        try:
            ctx.load_verify_locations(cadata=blocks)
        except (ssl.SSLError, TypeError, ValueError):      # a block that is not ASCII or not a certificate
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return ctx


def _context(policy: TrafficPolicy) -> ssl.SSLContext:
    """The client context of `policy`'s files and verification mode, cached while they are unchanged."""
    key = (policy.tls_mode, policy.ca_certificates, policy.client_certificate, policy.private_key,
           policy.insecure_skip_verify, policy.ca_certificate_pem, policy.ca_crl)
    stamps = _stamps(policy.ca_certificates, policy.client_certificate, policy.private_key, policy.ca_crl)
    hit = _CONTEXTS.get(key)
    if hit is not None and hit[0] == stamps:
        _CONTEXTS.move_to_end(key)
        return hit[1]
    if policy.ca_certificate_pem:       # inline (BackendTLSPolicy): these CAs only, never the system's
        ctx = _inline_context(policy.ca_certificate_pem)
    else:
        ctx = ssl.create_default_context(cafile=policy.ca_certificates or None)
    ctx.check_hostname = False          # checked against subjectAltNames or the SNI by check_peer
    if policy.insecure_skip_verify:
        ctx.verify_mode = ssl.CERT_NONE
    elif policy.ca_crl:                 # (no validation, no revocation check: Istio sets no crl then either)
        with open(policy.ca_crl) as f:
            try:
                load_crls(ctx, f.read())
            except ssl.SSLError as e:
                raise ssl.SSLError(f"caCrl {policy.ca_crl}: {e}") from e
    if policy.tls_mode == "MUTUAL":
        ctx.load_cert_chain(policy.client_certificate, policy.private_key)
    _CONTEXTS[key] = (stamps, ctx)
    _CONTEXTS.move_to_end(key)
    while len(_CONTEXTS) > MAX_CONTEXTS:
        _CONTEXTS.popitem(last=False)
    return ctx


_CREDENTIAL_CONTEXTS: OrderedDict[tuple[str, bool, str], ssl.SSLContext] = OrderedDict()


def credential_digest(cred: ClientCredential) -> str:
    """A short name of a credential's material (pool keys; a rotated Secret gets new pools)."""
    return _digest("\0".join((cred.cert_pem, cred.key_pem, cred.ca_pem, cred.crl_pem)))


def _credential_context(policy: TrafficPolicy, cred: ClientCredential | None) -> ssl.SSLContext:
    """The client context of a `credentialName` Secret's material, cached by its digest. Raises
    ssl.SSLError, naming the Secret and what is wrong, when it cannot originate as asked."""
    name = policy.credential_name
    if cred is None:
        raise ssl.SSLError(f"credentialName {name}: no such credential has reached this waypoint (the "
                           "controller sends one per Secret named, from the waypoint's own namespace)")
    if cred.error:
        raise ssl.SSLError(f"credentialName {name}: {cred.error}")
    verify = not policy.insecure_skip_verify
    if policy.tls_mode == "MUTUAL" and not (cred.cert_pem and cred.key_pem):
        raise ssl.SSLError(f"credentialName {name}: tls mode MUTUAL needs a client certificate and key in Secret "
                           f"{cred.namespace}/{name} (tls.crt and tls.key, or cert and key)")
    if verify and not cred.ca_pem:
        raise ssl.SSLError(f"credentialName {name}: no CA certificate to verify the server with: neither Secret "
                           f"{cred.namespace}/{name}-cacert nor {cred.namespace}/{name} holds ca.crt (or cacert)")
    key = (policy.tls_mode, verify, credential_digest(cred))
    ctx = _CREDENTIAL_CONTEXTS.get(key)
    if ctx is not None:
        _CREDENTIAL_CONTEXTS.move_to_end(key)
        return ctx
    ctx = _inline_context(cred.ca_pem) if verify else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False          # checked against subjectAltNames or the SNI by check_peer
    if not verify:
        ctx.verify_mode = ssl.CERT_NONE
    elif cred.crl_pem:
        try:
            load_crls(ctx, cred.crl_pem)
        except ssl.SSLError as e:
            raise ssl.SSLError(f"credentialName {name}: the CRLs of Secret {cred.namespace}/{name}: {e}") from e
    if policy.tls_mode == "MUTUAL":
        load_chain_from_memory(ctx, cred.key_pem.encode(), [cred.cert_pem])
    _CREDENTIAL_CONTEXTS[key] = ctx
    while len(_CREDENTIAL_CONTEXTS) > MAX_CONTEXTS:
        _CREDENTIAL_CONTEXTS.popitem(last=False)
    return ctx


def origination(policy: TrafficPolicy | None, host: str,
                credential: ClientCredential | None = None) -> Origination | None:
    """The TLS to originate for `host` under `policy`, or None for plain TCP. Raises OSError /
    ssl.SSLError when a named file cannot be read, or `credential` (the policy's `credentialName`
    as it reached this waypoint, None when it did not) cannot be used: the connection then fails,
    and says why. Called per upstream connection: a file replaced since (a rotated CA bundle, client
    certificate or key, as Istio's agent watches them) is read again; an unchanged one costs a stat."""
    if policy is None or policy.tls_mode not in ORIGINATING:
        return None
    if policy.credential_name:
        ctx = _credential_context(policy, credential)
        sni = policy.sni or host
        names = () if policy.insecure_skip_verify else tuple(policy.subject_alt_names) or (sni,)
        digest = credential_digest(credential) if credential is not None else ""
        settings = (policy.tls_mode, f"credential {policy.credential_name} {digest}", policy.insecure_skip_verify,
                    sni, tuple(policy.subject_alt_names))
        return Origination(ctx, sni, names, settings)
    if policy.tls_mode == "MUTUAL" and not (policy.client_certificate and policy.private_key):
        raise ssl.SSLError("tls mode MUTUAL needs clientCertificate and privateKey")
    ctx = _context(policy)
    sni = policy.sni or host
    names = () if policy.insecure_skip_verify else tuple(policy.subject_alt_names) or (sni,)
    settings = (policy.tls_mode, policy.ca_certificates, policy.client_certificate, policy.private_key,
                policy.insecure_skip_verify, sni, tuple(policy.subject_alt_names), _digest(policy.ca_certificate_pem),
                policy.ca_crl)
    return Origination(ctx, sni, names, settings)
