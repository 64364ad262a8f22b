"""Which workloads a selector-bound policy selects: the scoping rules ztunnel enforces and the
controller's advisories reason about, written once (pure, on namespaces and labels).

- AuthorizationPolicy (ztunnel/authz.py `applies`): a policy in the root namespace (or of global
  scope) is mesh-wide and its selector matches workloads of every namespace; any other selects
  workloads of its own namespace only; no selector matches every workload in scope.
- PeerAuthentication (`peer_authn`): a policy with a selector selects matching workloads of its own
  namespace only, even in the root namespace; one without a selector covers its namespace, or the
  whole mesh from the root namespace.
"""

from __future__ import annotations

from collections.abc import Mapping


def labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def authz_selects(policy_ns: str, selector: Mapping[str, str], mesh_wide: bool,
                  workload_ns: str, labels: Mapping[str, str]) -> bool:
    """Does an AuthorizationPolicy (bound by selector or namespace) select this workload?
    `mesh_wide`: it is in the root namespace, or of global scope."""
    return (mesh_wide or policy_ns == workload_ns) and labels_match(selector, labels)


def peer_authn_selects(policy_ns: str, selector: Mapping[str, str], root_namespace: str,
                       workload_ns: str, labels: Mapping[str, str]) -> bool:
    """Does a PeerAuthentication cover this workload at some level (selector, namespace or mesh)?
    Which one decides among several is `peer_authn`'s precedence, not this."""
    if selector:
        return policy_ns == workload_ns and labels_match(selector, labels)
    return policy_ns in (workload_ns, root_namespace)
