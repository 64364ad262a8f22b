"""Publishing the mesh root where clients pin it: the `ambit-root-cert` ConfigMap.

As istiod writes `istio-ca-root-cert`, the controller writes its trust bundle (the current root
and, during a rotation, the old one: controller/ca/authority.py `extra_roots`) to a ConfigMap of
the root namespace, key `root-cert.pem`. The node DaemonSet mounts it and passes it as
`--controller-root-cert`; waypoint Deployments mount the copy in their own namespace. The
ConfigMap comes from the API server (which the kubelet trusts), not from the controller's gRPC
channel, so a man in the middle of that channel cannot swap the root. Only the leader writes it
(controller/leader.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("ambit.controller.ca")

ROOT_CONFIGMAP = "ambit-root-cert"
ROOT_KEY = "root-cert.pem"


def publish_root(api_client: Any, namespaces: Iterable[str], pems: list[str]) -> list[str]:
    """Create or update `ambit-root-cert` in each namespace to hold `pems`; returns the namespaces
    whose ConfigMap now holds them. A failure is logged and left out (the caller retries it)."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException
    api = k8s.CoreV1Api(api_client)
    bundle = "".join(pems)
    changed, done = [], []
    for ns in sorted(set(namespaces)):
        try:
            try:
                cm = api.read_namespaced_config_map(ROOT_CONFIGMAP, ns)
            except ApiException as e:
                if e.status != 404:
                    raise
                api.create_namespaced_config_map(ns, k8s.V1ConfigMap(
                    metadata=k8s.V1ObjectMeta(name=ROOT_CONFIGMAP, namespace=ns,
                                              labels={"app.kubernetes.io/managed-by": "ambit"}),
                    data={ROOT_KEY: bundle}))
                changed.append(ns)
                done.append(ns)
                continue
            if (cm.data or {}).get(ROOT_KEY) != bundle:
                cm.data = {**(cm.data or {}), ROOT_KEY: bundle}
                api.replace_namespaced_config_map(ROOT_CONFIGMAP, ns, cm)   # resourceVersion kept: 409 if raced
                changed.append(ns)
            done.append(ns)
        except ApiException as e:
            log.warning("cannot publish the mesh root to ConfigMap %s/%s: %s %s", ns, ROOT_CONFIGMAP, e.status, e.reason)
    if changed:
        log.info("published the mesh root (%d certificate(s)) to ConfigMap %s in %s", len(pems), ROOT_CONFIGMAP,
                 ", ".join(changed))
    return done
