"""The cluster's DNS domain (the kubelet's `--cluster-domain`, `cluster.local` unless the cluster
was built otherwise), and the one check every component and `ambit install` apply to it. Pure.

A Service's name is `<name>.<namespace>.svc.<domain>`: the controller writes it as each Service's
hostname (and into its own serving certificate), waypoints match route hosts against it and name
metrics by it, ztunnel's DNS proxy answers under it. A domain the cluster does not use makes all
of that miss, quietly; a domain that is no DNS name at all (a space, a trailing dot, upper case)
makes names that match nothing the pods ask for. So it is refused where it is given, with the
reason, before anything runs with it.
"""

from __future__ import annotations

import re

DEFAULT = "cluster.local"
MAX_LENGTH = 253                     # a DNS name, as Kubernetes' IsDNS1123Subdomain bounds it
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def problem(value: str) -> str | None:
    """Why `value` cannot be a cluster domain, or None if it can: an RFC 1123 DNS name, lower
    case, without a trailing dot (it is joined after `.svc.`, and a pod's resolv.conf searches it
    as the kubelet writes it, without one)."""
    if not value:
        return f"must be a DNS name (e.g. {DEFAULT}), not empty"
    if value.endswith("."):
        return f"must be a DNS name without a trailing dot (e.g. {DEFAULT})"
    if len(value) > MAX_LENGTH:
        return f"must be a DNS name of at most {MAX_LENGTH} characters"
    bad = next((label for label in value.split(".") if not _LABEL.fullmatch(label)), None)
    if bad is not None:
        return (f"must be a DNS name (e.g. {DEFAULT}): each dot-separated label 1-63 lower-case letters, digits "
                f"or '-', starting and ending with a letter or digit ({bad!r} is not)")
    return None
