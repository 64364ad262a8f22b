"""Where `ambit waypoint` reads and writes: the lab store, or a cluster's API server.

Both offer the same four operations on waypoint Gateways and namespace labels, so the command
logic (ambitctl/commands/waypoint.py) is written once. The cluster backend uses the official
client (kubeconfig, in-cluster credentials, or a plain `--kube-host` URL such as `kubectl proxy`'s).
"""

from __future__ import annotations

from typing import Any, Protocol

from ambit.labstore import LabStore, StoreError

Obj = dict[str, Any]
GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "gateways"


class BackendError(Exception):
    pass


class Backend(Protocol):
    def gateways(self, namespace: str | None) -> list[Obj]: ...
    def get_gateway(self, namespace: str, name: str) -> Obj | None: ...
    def apply_gateway(self, gw: Obj) -> None: ...
    def delete_gateways(self, namespace: str, names: list[str]) -> None: ...
    def namespace_labels(self, namespace: str) -> dict[str, str] | None: ...
    def set_namespace_labels(self, namespace: str, set_: dict[str, str], remove: list[str]) -> None: ...


class LabBackend:
    def __init__(self, store: LabStore):
        self.store = store

    def gateways(self, namespace: str | None) -> list[Obj]:
        return self.store.list("Gateway", namespace)

    def get_gateway(self, namespace: str, name: str) -> Obj | None:
        return self.store.get("Gateway", namespace, name)

    def apply_gateway(self, gw: Obj) -> None:
        try:
            self.store.apply([gw])
        except StoreError as e:
            raise BackendError(str(e)) from None

    def delete_gateways(self, namespace: str, names: list[str]) -> None:
        self.store.delete([("Gateway", namespace, n) for n in names])

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        ns = self.store.get("Namespace", "", namespace)
        return None if ns is None else dict((ns.get("metadata") or {}).get("labels") or {})

    def set_namespace_labels(self, namespace: str, set_: dict[str, str], remove: list[str]) -> None:
        try:
            self.store.patch_labels("Namespace", "", namespace, set_, remove)
        except StoreError as e:
            raise BackendError(str(e)) from None


class KubeBackend:
    def __init__(self, host: str | None = None, kubeconfig: str | None = None, context: str | None = None):
        from kubernetes import client as kclient

        from ambit.kube.client import make_api_client
        from ambitctl.kubeclient import bounded, reason
        try:
            api = bounded(make_api_client(host, kubeconfig, context).configuration)
        except Exception as e:  # noqa: BLE001 - kubeconfig errors come in many types
            raise BackendError(f"cannot reach the cluster: kubeconfig: {reason(e)}") from None
        self.custom = kclient.CustomObjectsApi(api)
        self.core = kclient.CoreV1Api(api)

    def _call(self, fn: Any, *args: Any, missing_ok: bool = False, **kw: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        try:
            return fn(*args, **kw)
        except ApiException as e:
            if missing_ok and e.status == 404:
                return None
            raise BackendError(f"API server: HTTP {e.status} {e.reason}") from None
        except Exception as e:  # noqa: BLE001 - connection errors (urllib3, OSError)
            from ambitctl.kubeclient import describe
            raise BackendError(f"API server: {describe(e)}") from None

    def gateways(self, namespace: str | None) -> list[Obj]:
        if namespace is None:
            res = self._call(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        else:
            res = self._call(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL)
        items = list((res or {}).get("items") or [])
        return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))

    def get_gateway(self, namespace: str, name: str) -> Obj | None:
        return self._call(self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name,
                          missing_ok=True)

    def apply_gateway(self, gw: Obj) -> None:
        ns, name = gw["metadata"]["namespace"], gw["metadata"]["name"]
        old = self.get_gateway(ns, name)
        if old is None:
            self._call(self.custom.create_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, gw)
            return
        new = {**old, "metadata": {**old["metadata"], "labels": {**(old["metadata"].get("labels") or {}),
                                                                  **(gw["metadata"].get("labels") or {})}},
               "spec": gw["spec"]}
        self._call(self.custom.replace_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name, new)

    def delete_gateways(self, namespace: str, names: list[str]) -> None:
        for n in names:
            self._call(self.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, n,
                       missing_ok=True)

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        ns = self._call(self.core.read_namespace, namespace, missing_ok=True)
        return None if ns is None else dict(ns.metadata.labels or {})

    def set_namespace_labels(self, namespace: str, set_: dict[str, str], remove: list[str]) -> None:
        ns = self._call(self.core.read_namespace, namespace)
        labels = dict(ns.metadata.labels or {})
        labels.update(set_)
        for r in remove:
            labels.pop(r, None)
        ns.metadata.labels = labels
        self._call(self.core.replace_namespace, namespace, ns)
