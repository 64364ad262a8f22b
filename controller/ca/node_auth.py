"""Node authorization: which identities a node's ztunnel may obtain certificates for.

A ztunnel holds the keys of every pod on its node, so a compromised node is bad; this rule keeps it
from being worse. It may only get certificates for service accounts that pods *scheduled on that
node* run as, so stealing one node's credential never yields identities of workloads elsewhere.
Pure function: the caller supplies the authenticated node and the pods the control plane sees there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ambit import identity as ident


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str


def authorize(
    node_credential_identity: str,
    requested_spiffe_id: str,
    pods_on_node: Iterable[tuple[str, str]],
    *,
    trust_domain: str,
) -> Decision:
    """May `node_credential_identity` (an authenticated node name) get `requested_spiffe_id`?

    `pods_on_node` is the (namespace, service account) of each pod scheduled on that node.
    """
    node = node_credential_identity
    if not node:
        return Decision(False, "no authenticated node")
    try:
        want = ident.parse(requested_spiffe_id)
    except ident.InvalidSpiffeId as e:
        return Decision(False, str(e))
    if want.trust_domain != trust_domain:
        return Decision(False, f"trust domain {want.trust_domain!r} is not {trust_domain!r}")
    for ns, sa in pods_on_node:
        if ns == want.namespace and sa == want.service_account:
            return Decision(True, f"a pod on node {node!r} runs as {ns}/{sa}")
    return Decision(
        False, f"no pod scheduled on node {node!r} runs as service account {want.namespace}/{want.service_account}"
    )


def within_scope(workload: str, requested_spiffe_id: str) -> Decision:
    """A workload credential ("ns/sa": a waypoint pod's own token) gets that account's identity only."""
    try:
        want = ident.parse(requested_spiffe_id)
    except ident.InvalidSpiffeId as e:
        return Decision(False, str(e))
    if f"{want.namespace}/{want.service_account}" == workload:
        return Decision(True, f"the credential is {workload}'s own")
    return Decision(False, f"the credential is service account {workload}'s, which gets its own identity only, "
                           f"not {want.namespace}/{want.service_account}")
