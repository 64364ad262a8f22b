"""The objects a waypoint Gateway owns in a cluster: ServiceAccount, Service and Deployment.

Modelled on Istio's gateway deployment controller (pilot/pkg/config/kube/gateway/deploymentcontroller.go
and its waypoint template), which renders, per Gateway of a class it manages:
- a ServiceAccount named after the Gateway (the waypoint's SPIFFE identity is
  `spiffe://<td>/ns/<ns>/sa/<gateway name>`, which ztunnels expect when they dial it);
- a Service named after the Gateway with the HBONE port 15008 (its VIP becomes the Gateway's
  `status.addresses`), selecting the Deployment's pods by `gateway.networking.k8s.io/gateway-name`;
- a Deployment of the waypoint proxy, pods labelled `gateway.networking.k8s.io/gateway-name` and
  excluded from capture (`ambit.io/dataplane-mode: none`, `istio.io/dataplane-mode: none`): a
  waypoint terminates HBONE itself; its readiness is the waypoint's own readiness endpoint.
Every object carries an ownerReference to the Gateway (controller: true, blockOwnerDeletion), so
deleting the Gateway lets Kubernetes' garbage collector delete them; and the label
`ambit.io/managed-by: waypoint-controller` (Istio's `gateway.istio.io/managed` plays this part),
so the controller never overwrites objects it did not create.

An ingress Gateway (class `ambit` or `istio`, docs/ingress.md) gets the same three objects, rendered
from the same code with these differences: its Service is a `LoadBalancer` exposing the Gateway's
listener ports (the load balancer's address becomes the Gateway's `status.addresses`), its container
listens on those ports (the pod allows unprivileged ports from 0, as Istio's gateways do, so the
non-root proxy binds 80/443) and runs with `--gateway-class ambit|istio`, its ingress mode.

Gateway `spec.infrastructure.labels/annotations` are copied onto every rendered object and the pod
template, as Gateway API specifies. `spec.infrastructure.parametersRef` names a ConfigMap of
overlays of these objects, and of an optional HorizontalPodAutoscaler and PodDisruptionBudget
(`autoscaler`, `disruption_budget`), merged in by controller/waypoints/params.py.

The Deployment carries no `replicas`: the reconciler sets `WaypointDeploySettings.replicas` when it
creates it and never again, as Istio's templates leave the count to whoever scales (kubectl scale,
an HPA); an overlay that sets `spec.replicas` owns it, and then it is kept at that.

The container's arguments are the waypoint's settings
(`python -m waypoint --help`); they are rendered here from `WaypointDeploySettings`. The cluster
domain is always passed, the default included (as Istio's waypoint template passes
`$(POD_NAMESPACE).svc.<clusterDomain>`): a pod's arguments then say which domain it runs with, and
the waypoint's default need never agree with the controller's. A waypoint whose domain differs
from the controller's would take every route's host (`<svc>.<ns>.svc.<domain>`, written by the
controller) for a name it does not serve.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ambit import clusterdomain
from ambit.configclient.tls import controller_identity
from ambit.dataplane.cpus import MAX_AUTO_WORKERS, memory_request_mib
from ambit.dataplane.hbone.limits import MAX_PENDING_HANDSHAKES, MAX_PENDING_HANDSHAKES_PER_SOURCE
from ambit.dataplane.ports import PORT_ADMIN, PORT_METRICS, PORT_READY
from ambit.dataplane.settings import WATCHDOG_KILL_AFTER
from controller.ca.publish import ROOT_CONFIGMAP, ROOT_KEY
from controller.translate.ingress import is_ingress
from controller.waypoints.gateways import GATEWAY_NAME_LABEL, HBONE_PORT

Obj = dict[str, Any]

MANAGED_BY_LABEL = "ambit.io/managed-by"
MANAGED_BY = "waypoint-controller"
OPT_OUT = {"ambit.io/dataplane-mode": "none", "istio.io/dataplane-mode": "none"}
# The pod's own endpoints; a Gateway listener on one of them is refused (ambit.dataplane.ports.INGRESS_POD_PORTS).
READY_PORT = PORT_READY       # Istio's status port: /healthz/ready, nothing else (--status-address)
ADMIN_PORT = PORT_ADMIN       # the admin endpoint, on the pod's loopback only
METRICS_PORT = PORT_METRICS
TOKEN_DIR = "/var/run/secrets/ambit"
ROOT_CERT_DIR = "/var/run/ambit-root"      # the ambit-root-cert ConfigMap (controller/ca/publish.py)
RUN_DIR = "/var/run/ambit"                 # an emptyDir: the worker supervisor's sockets (root FS is read-only)
# and the config and certificate caches: room for a large mesh's config, since a pod whose emptyDir
# outgrows its sizeLimit is evicted (a cache write that fails only logs a warning)
RUN_DIR_SIZE = "64Mi"
CA_AUDIENCE = "ambit-ca"
CA_TOKEN_VOLUME = "ca-token"
ROOT_CERT_VOLUME = "root-cert"
# The pod labels the Service, ztunnel (capture opt-out) and policy select a gateway's pods by.
OWNED_POD_LABELS = (GATEWAY_NAME_LABEL, *OPT_OUT, "service.istio.io/canonical-name")


@dataclass(frozen=True)
class WaypointDeploySettings:
    """How the controller renders waypoint Deployments (controller flags --waypoint-*)."""

    image: str
    controller_address: str                  # the config stream and CA, host:port
    trust_domain: str = "cluster.local"
    root_namespace: str = "ambit-system"
    # the controller's own --cluster-domain: the waypoint's route hosts and metrics' Service names
    # are <name>.<ns>.svc.<this>, as the controller's translation writes them (module docstring)
    cluster_domain: str = clusterdomain.DEFAULT
    pull_policy: str = "IfNotPresent"
    log_level: str = "INFO"
    replicas: int = 1                        # on creation only (module docstring)
    workers: int = 1                         # the waypoint's --workers (waypoint/workers.py)


# The waypoint's memory (docs/operations.md, "Memory requests"): one process measured about 50 MB RSS
# at 1000 req/s (bench/RESULTS.md); each further worker is a whole waypoint with its own pools.
WAYPOINT_MEMORY_FIRST_MIB = 128
WAYPOINT_MEMORY_PER_WORKER_MIB = 64
WAYPOINT_MEMORY_LIMIT_MIB = 1024
# What the pod as a whole holds at most: the waypoint's defaults for one process (--max-connections,
# --max-pending-handshakes), which keep a 1 GiB pod clear of its OOM kill (docs/security.md,
# "Connection floods": ~65 KiB an idle HBONE connection, ~56 KiB a pending handshake). Both bounds
# are per process, so a pod of N workers gives each worker 1/N of them: N full-size bounds would
# take N times the memory and the pod's limit would kill it in the middle of a flood. The fairness
# bounds inside them (per source identity, per source IP) shrink alike: the supervisor deals
# connections to the workers in turn, so a source's share of the pod stays what it was, and a
# per-source bound as large as a worker's whole bound would let one source fill a worker.
WAYPOINT_POD_BOUNDS = {"--max-connections": 8192, "--max-connections-per-identity": 1024,
                       "--max-connections-per-source": 4096,
                       "--max-pending-handshakes": MAX_PENDING_HANDSHAKES,
                       "--max-pending-handshakes-per-source": MAX_PENDING_HANDSHAKES_PER_SOURCE}


def worker_bounds(workers: int) -> list[str]:
    """The per-worker share of the pod's connection bounds (0: for the most workers it may resolve
    to); nothing for one process, whose defaults are the pod's."""
    n = workers or MAX_AUTO_WORKERS
    if n <= 1:
        return []
    return [a for flag, pod in WAYPOINT_POD_BOUNDS.items() for a in (flag, str(max(1, pod // n)))]


def waypoint_resources(workers: int) -> Obj:
    """Requests sized from `--workers` (0: for the most it may resolve to), and a limit of at least
    twice the request: a limit under the workers' working set would OOM-kill one of them in turn."""
    mib = memory_request_mib(workers, first_mib=WAYPOINT_MEMORY_FIRST_MIB,
                             per_worker_mib=WAYPOINT_MEMORY_PER_WORKER_MIB)
    limit = max(WAYPOINT_MEMORY_LIMIT_MIB, 2 * mib)
    return {"requests": {"cpu": "100m", "memory": f"{mib}Mi"},
            "limits": {"memory": f"{limit // 1024}Gi" if limit % 1024 == 0 else f"{limit}Mi"}}


def owner_reference(gw: Obj) -> Obj:
    md = gw.get("metadata") or {}
    return {"apiVersion": gw.get("apiVersion", "gateway.networking.k8s.io/v1"), "kind": "Gateway",
            "name": md.get("name", ""), "uid": md.get("uid", ""), "controller": True, "blockOwnerDeletion": True}


def _metadata(gw: Obj, extra_labels: dict[str, str] | None = None) -> Obj:
    md = gw.get("metadata") or {}
    infra = (gw.get("spec") or {}).get("infrastructure") or {}
    labels = {**(infra.get("labels") or {}), GATEWAY_NAME_LABEL: md.get("name", ""),
              MANAGED_BY_LABEL: MANAGED_BY, **(extra_labels or {})}
    out: Obj = {"name": md.get("name", ""), "namespace": md.get("namespace") or "default", "labels": labels,
                "ownerReferences": [owner_reference(gw)]}
    if infra.get("annotations"):
        out["annotations"] = dict(infra["annotations"])
    return out


def waypoint_args(gw: Obj, s: WaypointDeploySettings) -> list[str]:
    md = gw.get("metadata") or {}
    return ["--pod-name", "$(POD_NAME)", "--node", "$(NODE_NAME)",
            "--waypoint", f"{md.get('namespace') or 'default'}/{md.get('name', '')}",
            "--service-account", md.get("name", ""),
            "--gateway-class", (gw.get("spec") or {}).get("gatewayClassName", ""),
            "--controller", s.controller_address, "--trust-domain", s.trust_domain,
            "--cluster-domain", s.cluster_domain,     # always: module docstring
            "--root-namespace", s.root_namespace, "--node-token-file", f"{TOKEN_DIR}/token",
            # config stream and CA over TLS, pinned to the root the controller publishes in this namespace
            "--controller-root-cert", f"{ROOT_CERT_DIR}/{ROOT_KEY}",
            "--controller-identity", controller_identity(s.trust_domain, s.root_namespace),
            # the admin endpoint (config dump, certificates, live taps) on loopback only; the pod IP's
            # status port answers /healthz/ready alone, for the kubelet's probe
            "--admin-address", f"127.0.0.1:{ADMIN_PORT}", "--status-address", f"0.0.0.0:{READY_PORT}",
            "--metrics-address", f"0.0.0.0:{METRICS_PORT}",
            "--log-level", s.log_level, "--workers", str(s.workers), *worker_bounds(s.workers), "--run-dir", RUN_DIR,
            # a wedged event loop (no liveness probe can tell it from waiting for the controller) aborts
            # with its stack logged, and is restarted (ambit/dataplane/watchdog.py)
            "--watchdog-kill-after", f"{WATCHDOG_KILL_AFTER:g}",
            # in the pod's emptyDir: a restarted container serves at once, even while the controller is away
            "--config-cache", f"{RUN_DIR}/config-cache.json", "--cert-cache", f"{RUN_DIR}/certs"]


def service_account(gw: Obj) -> Obj:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(gw)}


def listener_ports(gw: Obj, extra: Iterable[int] = ()) -> list[int]:
    """The Gateway's listener ports, plus `extra`: those of Istio Gateways its pods serve."""
    return sorted({int(ln["port"]) for ln in (gw.get("spec") or {}).get("listeners") or [] if "port" in ln}
                  | set(extra))


def service(gw: Obj, extra_ports: Iterable[int] = ()) -> Obj:
    name = (gw.get("metadata") or {}).get("name", "")
    if is_ingress(gw):
        return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(gw),
                "spec": {"type": "LoadBalancer", "selector": {GATEWAY_NAME_LABEL: name},
                         "ports": [{"name": f"port-{p}", "port": p, "targetPort": p, "protocol": "TCP"}
                                   for p in listener_ports(gw, extra_ports)]}}
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(gw),
            "spec": {"type": "ClusterIP", "selector": {GATEWAY_NAME_LABEL: name},
                     "ports": [{"name": "mesh", "port": HBONE_PORT, "targetPort": HBONE_PORT,
                                "protocol": "TCP", "appProtocol": "all"},
                               {"name": "status-port", "port": READY_PORT, "targetPort": READY_PORT,
                                "protocol": "TCP"}]}}


def deployment(gw: Obj, s: WaypointDeploySettings, extra_ports: Iterable[int] = ()) -> Obj:
    md = gw.get("metadata") or {}
    name = md.get("name", "")
    infra = (gw.get("spec") or {}).get("infrastructure") or {}
    pod_labels = {**(infra.get("labels") or {}), GATEWAY_NAME_LABEL: name, **OPT_OUT,
                  "service.istio.io/canonical-name": name}
    env = [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}}
           for k, v in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace"),
                        ("NODE_NAME", "spec.nodeName"), ("INSTANCE_IP", "status.podIP"))]
    container = {
        "name": "waypoint", "image": s.image, "imagePullPolicy": s.pull_policy,
        "command": ["python3", "-m", "waypoint"], "args": waypoint_args(gw, s), "env": env,
        "ports": [*([{"name": f"port-{p}", "containerPort": p, "protocol": "TCP"} for p in listener_ports(gw, extra_ports)]
                    if is_ingress(gw) else [{"name": "mesh", "containerPort": HBONE_PORT, "protocol": "TCP"}]),
                  {"name": "status-port", "containerPort": READY_PORT, "protocol": "TCP"},
                  {"name": "http-metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": READY_PORT},
                           "periodSeconds": 5, "failureThreshold": 4},
        "resources": waypoint_resources(s.workers),
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "runAsUser": 1337, "runAsGroup": 1337,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": CA_TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
                         {"name": ROOT_CERT_VOLUME, "mountPath": ROOT_CERT_DIR, "readOnly": True},
                         {"name": "run", "mountPath": RUN_DIR}],
    }
    template_md: Obj = {"labels": pod_labels, "annotations": {
        **(infra.get("annotations") or {}), "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT), "prometheus.io/path": "/metrics"}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(gw),
            "spec": {"selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
                     "template": {"metadata": template_md, "spec": {
                         "serviceAccountName": name,
                         **({"securityContext": {"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start",
                                                              "value": "0"}]}} if is_ingress(gw) else {}),
                         "terminationGracePeriodSeconds": 30,
                         "containers": [container],
                         "volumes": [{"name": CA_TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
                             "audience": CA_AUDIENCE, "expirationSeconds": 3600, "path": "token"}}]}},
                                     {"name": ROOT_CERT_VOLUME, "configMap": {"name": ROOT_CONFIGMAP}},
                                     {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": RUN_DIR_SIZE}}],
                     }}}}


def autoscaler(gw: Obj) -> Obj:
    """The HorizontalPodAutoscaler a `horizontalPodAutoscaler` overlay completes (Istio's base: it
    scales the Deployment, to one replica until the overlay says more)."""
    name = (gw.get("metadata") or {}).get("name", "")
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _metadata(gw),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                     "maxReplicas": 1}}


def disruption_budget(gw: Obj) -> Obj:
    """The PodDisruptionBudget a `podDisruptionBudget` overlay completes (minAvailable or maxUnavailable)."""
    name = (gw.get("metadata") or {}).get("name", "")
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _metadata(gw),
            "spec": {"selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}}}}


def optional_objects(gw: Obj) -> list[Obj]:
    """What a parametersRef may add, in creation order (each only with its overlay key)."""
    return [autoscaler(gw), disruption_budget(gw)]


def render(gw: Obj, s: WaypointDeploySettings, extra_ports: Iterable[int] = ()) -> list[Obj]:
    """ServiceAccount, Service, Deployment: the order they must be created in. `extra_ports`: for
    an ingress Gateway, the ports of the Istio Gateways its pods serve (controller.translate.istio_gateway)."""
    return [service_account(gw), service(gw, extra_ports), deployment(gw, s, extra_ports)]


def is_managed(obj: Obj) -> bool:
    """Whether an existing object is one the controller rendered (it never adopts others)."""
    return ((obj.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY


# On each object rendered with a parametersRef: the map fields its overlay added (controller/waypoints/
# params.py), so that an update removes those the overlay no longer sets; its presence marks objects
# rendered with parameters (whose HPA/PDB may have to be deleted once they are gone).
OVERLAY_FIELDS_ANNOTATION = "ambit.io/overlay-fields"
_NOT_BODY = ("apiVersion", "kind", "metadata", "status")


def rendered_with_parameters(o: Obj) -> bool:
    return OVERLAY_FIELDS_ANNOTATION in ((o.get("metadata") or {}).get("annotations") or {})


def _overlay_fields(o: Obj) -> list[list[str]]:
    raw = ((o.get("metadata") or {}).get("annotations") or {}).get(OVERLAY_FIELDS_ANNOTATION)
    try:
        fields = json.loads(raw) if raw else []
    except ValueError:
        return []
    return [f for f in fields if isinstance(f, list) and f and all(isinstance(p, str) for p in f)] \
        if isinstance(fields, list) else []


def needs_update(existing: Obj, want: Obj) -> bool:
    """Whether the fields the controller owns differ (the API server adds defaults we ignore)."""
    emd, wmd = existing.get("metadata") or {}, want.get("metadata") or {}
    if any((emd.get("labels") or {}).get(k) != v for k, v in (wmd.get("labels") or {}).items()):
        return True
    if any((emd.get("annotations") or {}).get(k) != v for k, v in (wmd.get("annotations") or {}).items()):
        return True
    if ((emd.get("annotations") or {}).get(OVERLAY_FIELDS_ANNOTATION)
            != (wmd.get("annotations") or {}).get(OVERLAY_FIELDS_ANNOTATION)):
        return True
    if [r.get("uid") for r in emd.get("ownerReferences") or []] != [r.get("uid") for r in wmd["ownerReferences"]]:
        return True
    return any(_differs(existing.get(k), v) for k, v in want.items() if k not in _NOT_BODY)


def _differs(have: Any, want: Any) -> bool:
    """`want` is not contained in `have` (maps: every key of want; lists: same length, each contained)."""
    if isinstance(want, dict):
        return not isinstance(have, dict) or any(_differs(have.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return (not isinstance(have, list) or len(have) != len(want)
                or any(_differs(h, w) for h, w in zip(have, want, strict=True)))
    return have != want


def _without(o: Obj, path: list[str]) -> Obj:
    """`o` without the field at `path` (maps only; copies along the path)."""
    if not path or not isinstance(o, dict) or path[0] not in o:
        return o
    out = dict(o)
    if len(path) == 1:
        del out[path[0]]
    elif isinstance(out[path[0]], dict):
        out[path[0]] = _without(out[path[0]], path[1:])
    return out


def apply_update(existing: Obj, want: Obj) -> Obj:
    """The object to PUT: the existing one (resourceVersion, clusterIP, defaults kept) with our fields,
    less the fields an earlier overlay added and the present one does not (never `spec.replicas`:
    without it the API server would scale the Deployment to 1; its count is then the scaler's)."""
    out = dict(existing)
    for path in _overlay_fields(existing):
        if path not in _overlay_fields(want) and path != ["spec", "replicas"]:
            out = _without(out, path)
    md = dict(out.get("metadata") or {})
    wmd = want["metadata"]
    md["labels"] = {**(md.get("labels") or {}), **wmd["labels"]}
    annotations = {k: v for k, v in (md.get("annotations") or {}).items() if k != OVERLAY_FIELDS_ANNOTATION}
    annotations.update(wmd.get("annotations") or {})
    if annotations:
        md["annotations"] = annotations
    else:
        md.pop("annotations", None)
    md["ownerReferences"] = wmd["ownerReferences"]
    out["metadata"] = md
    for k, v in want.items():
        if k not in _NOT_BODY:
            out[k] = _overlay(out.get(k), v)
    out.pop("status", None)
    return out


def _overlay(have: Any, want: Any) -> Any:
    if isinstance(want, dict) and isinstance(have, dict):
        return {**have, **{k: _overlay(have.get(k), v) for k, v in want.items()}}
    return want
