"""Where the read commands read: the lab, or a cluster (kubectl's kubeconfig, `--context`).

- **Kubernetes objects** (Pods, Services, the mesh's configuration) come, in a cluster, from the API
  server through the official kubernetes client (`cluster_objects`), in the lab from its store.
- **Component state** (proxy-status, config dumps, certificates, versions) comes from the
  controller's debug API (ambit.debug.v1, controller/debug), never from the nodes: in the lab at
  `unix:<labdir>/controller.sock` with the lab's admin token (`<labdir>/debug-token`); in a
  cluster at `--controller HOST:PORT` (or $AMBIT_CONTROLLER; e.g. after `kubectl -n ambit-system
  port-forward svc/ambit-controller 15012`) with the kubeconfig user's bearer token, which the
  controller checks by TokenReview.

Both over TLS, checked against a pinned root (ambit/configclient/tls.py): in the lab the lab's
`<labdir>/controller-root.pem`; in a cluster the file named by $AMBIT_CONTROLLER_ROOT_CERT (the
ambit-root-cert ConfigMap's root-cert.pem) and the identity $AMBIT_CONTROLLER_IDENTITY.

The lab is used when it is up (or its store exists) and neither `--kubeconfig` nor `--context` is
given; with no lab, a kubeconfig ($KUBECONFIG or ~/.kube/config) means the cluster.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ambitctl.kubeclient import describe
from ambitctl.lab import components, paths, state

Obj = dict[str, Any]


class TargetError(RuntimeError):
    """A one-line error: where to read is unknown or unreachable."""


def add_arguments(p: argparse.ArgumentParser, *, controller: bool = True) -> None:
    """The flags of a read command that works against the lab and a cluster."""
    g = p.add_argument_group("cluster (default: the lab, when it is up)")
    g.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
    g.add_argument("--context", help="the kubeconfig context to use")
    if controller:
        g.add_argument("--controller", default=None,
                       help="the controller's debug API HOST:PORT (default: the lab's socket; in a cluster "
                            "$AMBIT_CONTROLLER)")
        g.add_argument("--token", default=None,
                       help="bearer token for the debug API (default: the lab's admin token, or the kubeconfig user's)")


def in_cluster(args: argparse.Namespace) -> bool:
    if getattr(args, "kubeconfig", None) or getattr(args, "context", None):
        return True
    base = paths.lab_dir()
    if state.load(base) is not None or (base / "store.json").exists():      # a lab (or its store) is here
        return False
    return bool(os.environ.get("KUBECONFIG") or os.path.exists(os.path.expanduser("~/.kube/config")))


def api_client(args: argparse.Namespace) -> Any:
    """The official client, configured from the kubeconfig (and context) as kubectl would."""
    from ambitctl import kubeclient
    try:
        cfg = kubeclient.load(getattr(args, "kubeconfig", None), getattr(args, "context", None))
    except kubeclient.KubeconfigError as e:
        raise TargetError(str(e)) from None
    return kubeclient.bounded(cfg)


def default_namespace(args: argparse.Namespace) -> str:
    """kubectl's default namespace: the kubeconfig context's `namespace`, else "default"."""
    from ambitctl import kubeclient
    try:
        contexts, active = kubeclient.contexts(getattr(args, "kubeconfig", None))
    except kubeclient.KubeconfigError:
        return "default"            # the client's own load says why, when the command needs one
    want = getattr(args, "context", None)
    ctx = next((c for c in contexts if c["name"] == want), None) if want else active
    return ((ctx or {}).get("context") or {}).get("namespace") or "default"


def cluster_objects(client: Any, namespace: str | None = None) -> list[Obj]:
    """Every object of every kind the controller reads (controller.kinds), listed once, as the
    controller reads it: narrowed by the same field selector (no service account token nor Helm
    release) and cut down the same way (a Secret to its certificate keys, a ConfigMap to its name,
    ca.crt and its bounded gateway-parameter overlays), so that neither a bug report nor `ambit analyze` takes in an application's Secrets or
    ConfigMaps. A custom resource
    group the cluster does not serve (404) is skipped, as the controller skips it."""
    from kubernetes.client.exceptions import ApiException

    from controller.sources.kube import default_types
    out: list[Obj] = []
    seen: set[tuple[str, str, str, str]] = set()
    for t in default_types():
        for version in t.versions:
            path = t.path(version, namespace if t.namespaced else None)
            try:
                query = [("fieldSelector", t.field_selector)] if t.field_selector else []
                resp = client.call_api(*client.param_serialize(method="GET", resource_path=path, query_params=query,
                                                               auth_settings=["BearerToken"]))
                resp.read()
            except ApiException as e:
                if e.status == 404:
                    continue
                raise TargetError(f"list {path}: {e.status} {e.reason}") from None
            except Exception as e:  # noqa: BLE001 - urllib3 errors: the API server is unreachable
                raise TargetError(f"cannot reach the API server ({client.configuration.host}): {describe(e)}") from None
            if (getattr(resp, "status", 200) or 200) >= 400:
                if resp.status == 404:
                    continue
                raise TargetError(f"list {path}: HTTP {resp.status}{_status_message(resp.data)}")
            body = _list_body(resp.data, path, client.configuration.host)
            api_version = f"{t.group}/{version}" if t.group else version
            for o in (t.project(o) for o in body if t.matches(o)):
                o.setdefault("apiVersion", api_version)
                o.setdefault("kind", t.kind)
                md = o.get("metadata") or {}
                key = (t.kind, t.group, md.get("namespace", ""), md.get("name", ""))
                if key not in seen:
                    seen.add(key)
                    out.append(o)
            break
    return out


def _status_message(data: bytes | None) -> str:
    """The API server's reason for refusing (a Status object's `message`), when it sent one."""
    try:
        msg = json.loads(data or b"").get("message")
    except (ValueError, AttributeError):
        return ""
    return f": {msg}" if isinstance(msg, str) and msg else ""


def _list_body(data: bytes | None, path: str, host: str) -> list[Obj]:
    """The objects of a list answer; anything else (a proxy's HTML page, a truncated body) is an
    error naming the list, never a traceback."""
    try:
        body = json.loads(data or b"{}")
    except ValueError as e:
        raise TargetError(f"list {path} at {host}: the answer is not JSON ({e})") from None
    items = body.get("items") if isinstance(body, dict) else ()
    if not isinstance(items, list | None) or not all(isinstance(o, dict) for o in items or []):
        raise TargetError(f"list {path} at {host}: the answer is not a Kubernetes list")
    return items or []


class ClusterSnapshot:
    """The cluster's objects listed once, answering as the lab store's snapshot does for `get`."""

    revision = None

    def __init__(self, objs: list[Obj]) -> None:
        self.objs = objs

    def list(self, kind: str, namespace: str | None = "") -> list[Obj]:
        return sorted((o for o in self.objs if o.get("kind") == kind
                       and (not namespace or (o.get("metadata") or {}).get("namespace") == namespace)),
                      key=lambda o: ((o.get("metadata") or {}).get("namespace", ""), o["metadata"].get("name", "")))


def lab_store() -> Any:
    """The lab's store, for a command that reads it: never created here (an empty one would make
    `no lab` look like `no objects`, and leave a lab directory behind)."""
    from ambit.labstore import LabStore
    path = paths.lab_dir() / "store.json"
    if not path.exists():
        raise TargetError(f"no lab is up (no {path}); set AMBIT_LAB_DIR, run `ambit lab up`, or pass --context")
    return LabStore(path)


def lab_objects() -> list[Obj]:
    return list(lab_store().snapshot().objects.values())


def objects(args: argparse.Namespace) -> list[Obj]:
    return cluster_objects(api_client(args)) if in_cluster(args) else lab_objects()


def domain_arg(value: str) -> str:
    """`--cluster-domain`, checked as every component checks its own (ambit/clusterdomain.py)."""
    from ambit import clusterdomain
    why = clusterdomain.problem(value)
    if why:
        raise argparse.ArgumentTypeError(f"{value!r}: {why}")
    return value


def cluster_domain(args: argparse.Namespace, client: Any = None, namespace: str = "ambit-system") -> str:
    """The cluster DNS domain a command translates with, as the controller does: `--cluster-domain`
    when given; else, with `client` (a cluster), the one `ambit install` recorded in its inventory
    ConfigMap (`clusterDomain`), so a cluster installed with another domain is read as the mesh reads
    it without a flag; else `cluster.local` (the lab's, and an install that recorded none)."""
    from ambit import clusterdomain
    given = getattr(args, "cluster_domain", None)
    if given:
        return str(given)
    if client is None:
        return clusterdomain.DEFAULT
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    from ambitctl.kubeapply import INVENTORY
    try:
        cm = k8s.CoreV1Api(client).read_namespaced_config_map(INVENTORY, namespace)
        recorded = json.loads((cm.data or {}).get("settings") or "{}").get("clusterDomain")
    except (ApiException, ValueError, AttributeError):
        return clusterdomain.DEFAULT         # no install record (installed otherwise), or not readable
    return recorded if isinstance(recorded, str) and not clusterdomain.problem(recorded) else clusterdomain.DEFAULT


# -- the debug API ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DebugTarget:
    address: str
    token: str
    where: str          # "lab" | "cluster"
    trust: Any = None   # ambit.configclient.tls.ControllerTrust: the controller's pinned root


ROOT_CERT_ENV = "AMBIT_CONTROLLER_ROOT_CERT"
IDENTITY_ENV = "AMBIT_CONTROLLER_IDENTITY"
ROOT_CONFIGMAP, ROOT_KEY = "ambit-root-cert", "root-cert.pem"  # controller/ca/publish.py writes it


def controller_trust(args: argparse.Namespace | None, cluster: bool) -> Any:
    """The root and identity the controller must prove. Lab: the lab's pinned root file. Cluster:
    $AMBIT_CONTROLLER_ROOT_CERT (a file) if set, else the ambit-root-cert ConfigMap of the root
    namespace, read through the API server the kubeconfig already trusts; no ConfigMap means a
    controller without a CA (--insecure-config-stream): plaintext. The identity is
    $AMBIT_CONTROLLER_IDENTITY, default spiffe://cluster.local/ns/ambit-system/sa/ambit-controller."""
    from ambit.configclient.tls import DEFAULT_IDENTITY, ControllerTrust
    if not cluster:
        return components.controller_trust(paths.lab_dir())
    identity = os.environ.get(IDENTITY_ENV, DEFAULT_IDENTITY)
    try:
        if os.environ.get(ROOT_CERT_ENV):
            return ControllerTrust(Path(os.environ[ROOT_CERT_ENV]), identity)
        from ambit import identity as ident
        pem = _published_root(args, ident.parse(identity).namespace)
        return ControllerTrust(None, identity, pem.encode()) if pem else None
    except ValueError as e:      # ident.InvalidSpiffeId is a ValueError
        raise TargetError(f"{IDENTITY_ENV}: {e}") from None


def _published_root(args: argparse.Namespace | None, namespace: str) -> str:
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException
    client = api_client(args or argparse.Namespace())
    try:
        cm = k8s.CoreV1Api(client).read_namespaced_config_map(ROOT_CONFIGMAP, namespace)
    except ApiException as e:
        if e.status == 404:
            return ""
        raise TargetError(f"cannot read ConfigMap {namespace}/{ROOT_CONFIGMAP} (the controller's root): "
                          f"{e.status} {e.reason}") from None
    except Exception as e:  # noqa: BLE001 - urllib3 errors: the API server is unreachable
        raise TargetError(f"cannot reach the API server ({client.configuration.host}) to read ConfigMap "
                          f"{namespace}/{ROOT_CONFIGMAP} (the controller's root): {describe(e)}") from None
    return (cm.data or {}).get(ROOT_KEY, "")


def debug_target(args: argparse.Namespace, cluster: bool | None = None) -> DebugTarget:
    """Where the debug API is and the token to present; `cluster` overrides `in_cluster(args)`."""
    explicit = getattr(args, "controller", None)
    token = getattr(args, "token", None)
    if in_cluster(args) if cluster is None else cluster:
        address = explicit or os.environ.get("AMBIT_CONTROLLER", "")
        if not address:
            raise TargetError("in a cluster the debug API is reached through the controller: pass --controller "
                              "HOST:PORT or set AMBIT_CONTROLLER (e.g. after `kubectl -n ambit-system port-forward "
                              "svc/ambit-controller 15012`)")
        if not token:
            keys = api_client(args).configuration.api_key or {}
            auth = keys.get("BearerToken") or keys.get("authorization") or ""
            token = auth.removeprefix("Bearer ").strip()
        if not token:
            raise TargetError("the kubeconfig user has no bearer token for the debug API; pass --token")
        return DebugTarget(address, token, "cluster", controller_trust(args, True))
    base = paths.lab_dir()
    address = explicit or f"unix:{components.controller_socket(base)}"
    if not token:
        f = components.debug_token_file(base)
        try:
            token = f.read_text().strip()
        except OSError as e:
            raise TargetError(f"the lab's debug API token {f}: {e.strerror or e} (is the lab up?)") from None
    return DebugTarget(address, token, "lab", controller_trust(args, False))


async def _call(target: DebugTarget, method: str, request: Any, timeout: float) -> Any:

    from ambit.api import debug_grpc
    from ambit.configclient import tls
    async with tls.channel(target.address, target.trust) as ch:
        stub = debug_grpc.DebugServiceStub(ch)
        return await getattr(stub, method)(request, metadata=(("authorization", f"Bearer {target.token}"),),
                                           timeout=timeout)


def call(target: DebugTarget, method: str, request: Any, timeout: float = 5.0) -> Any:
    """One debug API call; a gRPC failure becomes a TargetError naming the controller and why."""
    return run(target, _call(target, method, request, timeout))


def run(target: DebugTarget, talk: Any) -> Any:
    """Run the coroutine `talk` (calls to the debug API at `target`) to its end; a gRPC failure
    becomes a TargetError naming the controller and why."""
    import asyncio

    from ambit.configclient import rpc
    try:
        return asyncio.run(talk)
    except Exception as e:
        if rpc.failure(e) is None:
            raise
        raise TargetError(f"controller debug API at {target.address}: {rpc.describe(e)}") from None


def proxy_status(target: DebugTarget, timeout: float = 5.0) -> Any:
    from ambit.api import debug_pb2
    return call(target, "ProxyStatus", debug_pb2.ProxyStatusRequest(), timeout)


def proxy_config(target: DebugTarget, proxy: str, timeout: float = 5.0) -> dict[str, Any]:
    from ambit.api import debug_pb2
    return json.loads(call(target, "ProxyConfig", debug_pb2.ProxyConfigRequest(proxy=proxy), timeout).json)
