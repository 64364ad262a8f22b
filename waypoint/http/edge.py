"""The headers of a request from outside the mesh, as an edge proxy sanitizes them (pure).

An ingress gateway's clients are untrusted: whatever they send in a header the mesh gives meaning
to must not reach the routes, the tracer or the backends as if a proxy had set it. Envoy does this
at an Istio ingress gateway (`use_remote_address: true`, `xff_num_trusted_hops: 0`, every client
external; envoy "HTTP header sanitizing"), and `sanitize` does the same:

- the x-envoy control headers an external request may not carry are removed (Envoy's list:
  `x-envoy-force-trace`, `x-envoy-retry-on`, `x-envoy-max-retries`,
  `x-envoy-upstream-rq-timeout-ms`, `x-envoy-internal`, ...): passed on, a client could force
  traces, or steer the retries and timeouts of any Envoy behind the gateway, or claim to be
  internal;
- `x-forwarded-client-cert` is removed, and set again only for a client whose certificate the
  listener verified (mutual TLS; `client_cert`: its `Hash`, `Subject`, `URI` and `DNS`, as Istio's
  gateways configure Envoy's `forward_client_cert_details: SANITIZE_SET`): a backend reading the
  client's identity from it would otherwise take a forged one;
- `x-request-id` is removed, so a fresh one is generated (`preserve_external_request_id: false`):
  a client's id would also choose the trace sampling of every proxy that samples by it;
- `x-forwarded-proto` is the scheme of the client's connection, whatever the client said (a plain
  HTTP client saying `https` made backends take it for an HTTPS one);
- `x-forwarded-for` gets the client's address appended (one field: earlier ones joined), and
  `x-envoy-external-address` is that address.

Everything else passes as it came: the hop-by-hop rules and the mesh's own headers are
waypoint/http/headers.py's.
"""

from __future__ import annotations

import re

# Envoy's sanitized headers that are removed from an external request (and not set again below)
EXTERNAL_REMOVED = frozenset({
    "x-envoy-decorator-operation", "x-envoy-downstream-service-cluster", "x-envoy-downstream-service-node",
    "x-envoy-expected-rq-timeout-ms", "x-envoy-force-trace", "x-envoy-internal", "x-envoy-ip-tags",
    "x-envoy-max-retries", "x-envoy-retry-grpc-on", "x-envoy-retry-on", "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-per-try-timeout-ms", "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-stream-duration-ms",
    "x-forwarded-client-cert", "x-request-id",
})
_SET = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-envoy-external-address"})


def sanitize(headers: list[tuple[str, str]], scheme: str, client_ip: str, client_cert: str = "") -> list[tuple[str, str]]:
    """`headers` (lower-case names) of a request from `client_ip` on a connection of `scheme`
    ("http" or "https") as an edge proxy passes them on (see the module docstring); `client_cert`
    is the verified client certificate's x-forwarded-client-cert element ("" for none)."""
    prior = []
    out = []
    for k, v in headers:
        if k in EXTERNAL_REMOVED:
            continue
        if k in _SET:
            if k == "x-forwarded-for" and v.strip():
                prior.append(v.strip())
            continue
        out.append((k, v))
    out.append(("x-forwarded-for", ",".join([*prior, client_ip])))
    out.append(("x-forwarded-proto", scheme))
    out.append(("x-envoy-external-address", client_ip))
    if client_cert:
        out.append(("x-forwarded-client-cert", client_cert))
    return out


def client_cert_element(der: bytes) -> str:
    """The x-forwarded-client-cert element of a verified client certificate (DER), as Envoy writes
    it with Istio's gateway settings: `Hash` (SHA-256 of the DER, hex), `Subject` (RFC 4514, quoted),
    then each `URI` and `DNS` subject alternative name, their control characters escaped (`_CTL`,
    below). Imports `cryptography` on first use: only
    a gateway with a mutual-TLS listener parses certificates."""
    import hashlib

    from cryptography import x509
    cert = x509.load_der_x509_certificate(der)
    subject = _CTL.sub(_hex_escape, cert.subject.rfc4514_string()).replace("\\", "\\\\").replace('"', '\\"')
    parts = [f"Hash={hashlib.sha256(der).hexdigest()}", f'Subject="{subject}"']
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        parts += [f"URI={_CTL.sub(_percent_escape, u)}" for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
        parts += [f"DNS={_CTL.sub(_hex_escape, d)}" for d in san.get_values_for_type(x509.DNSName)]
    return ";".join(parts)


# Control characters in a certificate's strings. A client certificate is the client's text: its
# subject and its URI and DNS names are IA5 or UTF-8 strings that may hold CR and LF, which in the
# header's value would end the header line and inject the rest as headers of the client's choosing
# into the backend's request (a certificate with the common name `a\r\nx-user: admin` did). They are
# written escaped as OpenSSL's RFC 2253 printing (Envoy's `Subject`) escapes them, `\0D`; a URI's
# as its percent-encoding, the only form a URI may carry them in.
_CTL = re.compile("[\x00-\x1f\x7f]")


def _hex_escape(m: re.Match[str]) -> str:
    return f"\\{ord(m.group()):02X}"


def _percent_escape(m: re.Match[str]) -> str:
    return f"%{ord(m.group()):02X}"
