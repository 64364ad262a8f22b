"""Gateway API's string types, as its CRDs constrain them (pattern, minLength, maxLength).

The lab store, `ambit apply` and `--dry-run` have no API server in front of them, so these are the
only check there: a listener hostname in capitals or a group with a space was accepted and then
matched nothing. The messages say what the value must be, as Kubernetes' do ("should match ...").
BackendTLSPolicy's schema (controller/kinds/backendtls.py) uses them too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from controller.kinds.schema import Str

DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
WILD_DNS = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
GROUP = re.compile(r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
KIND = re.compile(r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CONTROLLER = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/"
                        r"[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$")
ADDRESS_TYPE = re.compile(r"^Hostname|IPAddress|NamedAddress|[a-z0-9]([-a-z0-9]*[a-z0-9])?"
                          r"(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/[A-Za-z0-9\/\-._~%!$&'()*+,;=:]+$")
ANY = re.compile(r".*", re.S)


def matching(rx: re.Pattern[str], what: str, max_len: int = 253,
             extra: Callable[[str], str | None] | None = None) -> Callable[[str], str | None]:
    """A `Str.valid` check: at most `max_len` characters, and `rx` (searched, as the API server
    reads an OpenAPI pattern), then `extra` (a CEL rule's check). A line break is refused outright:
    Python's `$` also matches before a final newline, where the API server's (Go's RE2) matches only
    at the end, so `a.example\n` passed as a hostname (no pattern here allows a line break)."""
    def valid(v: str) -> str | None:
        if len(v) > max_len:
            return f"must be at most {max_len} characters, got {len(v)}"
        if rx is not ANY and ("\n" in v or not rx.search(v)):
            return f"must be {what}, got {v!r}"
        return extra(v) if extra is not None else None
    return valid


def typed(rx: re.Pattern[str], what: str, max_len: int = 253, min_len: int = 1,
          extra: Callable[[str], str | None] | None = None) -> Str:
    return Str(min_len=min_len, valid=matching(rx, what, max_len, extra), pattern="" if rx is ANY else rx.pattern)


def _not_an_ip(text: str) -> str | None:
    """TLSRoute's CEL rule: a hostname is matched against the ClientHello's SNI, which is never an IP."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return None
    return f"Hostnames cannot contain an IP, got {text!r}"


Group = typed(GROUP, "an API group (lower-case DNS name, or empty for the core group)", min_len=0)
Kind = typed(KIND, "a kind name", 63)
ObjectName = typed(ANY, "a name")
Namespace = typed(NAMESPACE, "a namespace name (a lower-case RFC 1123 label)", 63)
SectionName = typed(DNS, "a section name (a lower-case RFC 1123 subdomain)")
Hostname = typed(WILD_DNS, "a lower-case DNS name, with an optional leading *. label")
SniHostname = typed(WILD_DNS, "a lower-case DNS name, with an optional leading *. label", extra=_not_an_ip)
ControllerName = typed(CONTROLLER, "a domain-prefixed path such as example.com/gateway-controller")
AddressType = typed(ADDRESS_TYPE, "IPAddress, Hostname, NamedAddress or a domain-prefixed type")
