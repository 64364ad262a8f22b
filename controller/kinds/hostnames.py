"""The host names Istio's networking kinds write: a VirtualService's `hosts` and destination
`host`, a DestinationRule's `host`.

Istio's CRDs put no pattern on them; istiod's webhook checks them (`ValidateWildcardDomain`: at
most 255 characters, DNS labels of at most 63, a top-level label that is not all digits, a
wildcard only as the first label). Ambit has no istiod in front, so without these rules a host
such as `reviews svc`, `foo.*` or `reviews..shop` was accepted and then named nothing: no Service
took the routes or the traffic policy, without a word. Refused here, naming the field.

Where Ambit is narrower than Istio it says so: Istio also takes a first label that only starts
with `*` (`*foo.example.com`, a suffix match in Envoy), which Ambit's host expansion does not do,
and a trailing dot (`reviews.shop.svc.cluster.local.`), which Ambit would compare as written and
so match nothing. Both are refused as not supported, not accepted to do nothing.
"""

from __future__ import annotations

import ipaddress
import re

MAX_NAME = 255          # Istio's CheckDNS1123Preconditions
MAX_LABEL = 63
# Istio's dns1123LabelFmt (pkg/config/labels): upper case is allowed, as DNS names are
# case-insensitive; Ambit matches them so (controller.translate.routes.Hosts). And "_", which
# Istio refuses here but Ambit takes in a ServiceEntry's hosts (controller.kinds.serviceentry):
# a route or rule must be able to name every host an entry can have.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[-A-Za-z0-9_]*[A-Za-z0-9_])?")


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_reason(text: str, *, ip: bool = False) -> str | None:
    """Why `text` is no host Istio's webhook and Ambit take, or None. `ip`: an IP address is
    allowed too (a VirtualService's `hosts`; Istio refuses one as a destination or a rule's host,
    whose all-digit last label fails its check)."""
    if ip and is_ip(text):
        return None
    if len(text) > MAX_NAME:
        return f"a host name is at most {MAX_NAME} characters (a DNS name), got {len(text)}"
    if text == "*":
        return None
    if text.endswith(".") and len(text) > 1:
        return (f'"{text}": a trailing dot is not supported by Ambit (host names are compared as written, so '
                f'this one would match no Service): write "{text.rstrip(".")}"')
    first, _, rest = text.partition(".")
    if "*" in first and first != "*":
        return (f'"{text}": a wildcard that is part of a label is not supported by Ambit: a wildcard is the whole '
                'first label ("*.example.com") or "*" alone')
    labels = rest.split(".") if rest else []
    if first != "*":
        labels.insert(0, first)
    elif not labels:
        return None
    for label in labels:
        if not label or len(label) > MAX_LABEL or not _LABEL.fullmatch(label):
            return (f'"{text}" is not a valid host name (label "{label}" invalid): a DNS name of labels of letters, '
                    'digits, "-" and "_" (at most 63 each, not starting or ending with "-"), a wildcard "*." only at the '
                    'start' + (", or an IP address" if ip else ""))
    if labels[-1].isdigit():
        return (f'"{text}" is not a valid host name (its last label "{labels[-1]}" is all digits, as Istio '
                'refuses)' + ("" if ip else "; an IP address is no host here"))
    return None


def host_or_ip_reason(text: str) -> str | None:
    """`host_reason` where an IP address is a host too (a VirtualService's `hosts` and `sniHosts`,
    an Istio Gateway server's host)."""
    return host_reason(text, ip=True)


def host_matches(a: str, b: str) -> bool:
    """Istio's host.Name.Matches, case-insensitive: equal names, or a wildcard (`*` or `*.x`)
    whose suffix the other ends with. Two hosts of one VirtualService that match each other would
    claim the same requests twice (Istio refuses them as duplicates)."""
    a, b = a.lower(), b.lower()
    aw, bw = a.startswith("*"), b.startswith("*")
    if aw and bw:
        short, long_ = (a, b) if len(a) < len(b) else (b, a)
        return long_[1:].endswith(short[1:])
    if aw:
        return b.endswith(a[1:])
    if bw:
        return a.endswith(b[1:])
    return a == b


def host_subset_of(a: str, b: str) -> bool:
    """Istio's host.Name.SubsetOf, case-insensitive: every name `a` matches, `b` matches too."""
    a, b = a.lower(), b.lower()
    if a.startswith("*"):
        return b.startswith("*") and a[1:].endswith(b[1:])
    if b.startswith("*"):
        return a.endswith(b[1:])
    return a == b
