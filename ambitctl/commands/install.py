"""`ambit install`: the Kubernetes manifests that run Ambit in a cluster, rendered from code.

    ambit install --dry-run [--namespace ambit-system] [--image ambit:0.1.0] > ambit.yaml
    ambit install [--set key=value]      # apply to the cluster (kubeconfig, --context): created/updated/unchanged
    ambit upgrade [--force] [--dry-run]  # diff, version check, apply, prune what the new version dropped
    ambit uninstall [--purge-crds]       # delete what install recorded in its inventory ConfigMap

install/upgrade/uninstall talk to the API server themselves (ambitctl/kubeapply.py): each says per
object what it did, and re-running one changes nothing ("unchanged", "not found").

The manifests are built as data, not text templates, so that they can be checked against the code
they run (tests/unit/deploy): the RBAC rules come from the tables of what the controller's
KubeSource and the agent's KubePodSource watch, the CRDs from the kind registry, and the container
arguments must parse with each component's own argument parser. `deploy/ambit.yaml` is this
command's default output, kept for people who apply plain YAML.

What runs:
- `ambit-controller` (Deployment): Kubernetes watches -> config stream and CA on gRPC port 15012,
  Prometheus metrics on 15014, TLS as spiffe://<td>/ns/<ns>/sa/ambit-controller. Node credentials
  are projected service-account tokens checked by TokenReview. The CA lives in the Secret ambit-ca
  (created on first start); the root is published to the ambit-root-cert ConfigMap, which ztunnel
  and waypoints mount and pin. Replicas elect a leader with the Lease ambit-controller. It also deploys waypoints: per waypoint Gateway a Deployment, Service and
  ServiceAccount it owns (controller.waypoints.render), and writes their status.
- `ambit-node` (DaemonSet, one pod per node): the agent and ztunnel, sharing the zds socket in an
  emptyDir; ztunnel's Istio-named metrics on 15020, the agent's on 15014 (with its readiness,
  /healthz/ready). The pod's scrape annotation names 15020, which serves the agent's metrics as
  well (ztunnel's --merge-metrics-from), so annotation-based scraping gets both. hostPID gives the agent every pod's /proc/<pid>/ns/net; the host's cgroup v2 tree,
  bpffs, /var/run/netns and (for bcc) the host's kernel headers are mounted in.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import yaml

from ambit import clusterdomain, trustdomain
from ambit.dataplane.cpus import memory_request_mib
from ambit.dataplane.settings import WATCHDOG_KILL_AFTER
from controller.sizing import memory_limit_mib
from controller.sizing import memory_request_mib as controller_memory_request_mib

Obj = dict[str, Any]

CONTROLLER = "ambit-controller"
NODE = "ambit-node"
ZTUNNEL_SA = "ztunnel"             # the controller's CA admits ztunnels by this service account
GRPC_PORT = 15012                  # config stream + CA
WEBHOOK_PORT = 15017               # the validating admission webhook (controller/admission), as istiod's
METRICS_PORT = 15014
ZTUNNEL_METRICS_PORT = 15020
AGENT_METRICS_PORT = 15014          # as Istio's CNI node agent: uncaptured pods and their repairs
AGENT_READY_PATH = "/healthz/ready"  # on AGENT_METRICS_PORT (agent/health.py)
AGENT_METRICS_URL = f"http://127.0.0.1:{AGENT_METRICS_PORT}/metrics"  # ztunnel merges it into 15020
CA_AUDIENCE = "ambit-ca"           # the audience of the token ztunnel presents to the CA
RUN_DIR = "/var/run/ambit"         # the emptyDir agent and ztunnel share
CNI_RUN_DIR = "/var/run/ambit-cni"  # host directory of the agent's socket for the CNI plugin
TOKEN_DIR = "/var/run/secrets/ambit"
MESH_CONFIG = "ambit-mesh-config"     # ConfigMap: the controller's --mesh-config (controller/meshconfig.py)
MESH_CONFIG_DIR = "/etc/ambit/mesh"
CA_SECRET = "ambit-ca"              # the CA Secret the controller creates (or reads, --ca-secret)
ROOT_CERT_DIR = "/var/run/ambit-root"  # the ambit-root-cert ConfigMap, the controller's pinned root
ENTRYPOINT = "/opt/ambit/entrypoint.sh"
LABELS = {"app.kubernetes.io/part-of": "ambit"}
# Ambit's own pods are never captured, even if someone enrols their namespace.
OPT_OUT = {"ambit.io/dataplane-mode": "none"}


def default_image() -> str:
    from ambit.version import VERSION
    return f"ambit:{VERSION}"


def _md(name: str, namespace: str | None = None, **labels: str) -> Obj:
    md: Obj = {"name": name, "labels": {**LABELS, **labels}}
    if namespace:
        md["namespace"] = namespace
    return md


# -- RBAC, derived from what the code watches ------------------------------------------------------

def controller_rules() -> list[Obj]:
    """list/watch of every type the controller's KubeSource watches, status of the mesh kinds it
    writes conditions to, pods/status (ingress pods' ListenersBound condition), TokenReviews for
    the CA's node credentials, and what it writes for waypoint Gateways (their status; their
    Deployment, Service and ServiceAccount)."""
    from controller.sources.kube import CRD_RBAC, STATUS_GROUP_SUFFIXES, default_types
    watched: dict[str, set[str]] = {}
    status: dict[str, set[str]] = {}
    for t in default_types():
        watched.setdefault(t.group, set()).add(t.plural)
        if t.group.endswith(STATUS_GROUP_SUFFIXES):
            status.setdefault(t.group, set()).add(f"{t.plural}/status")
    rules = [{"apiGroups": [g], "resources": sorted(r), "verbs": ["get", "list", "watch"]}
             for g, r in sorted(watched.items())]
    # status is only ever merge-patched (controller/sources/kube.py _write_status)
    rules += [{"apiGroups": [g], "resources": sorted(r), "verbs": ["patch"]} for g, r in sorted(status.items())]
    # an ingress pod's listener binds, as a condition on the pod's status (controller/waypoints/podcondition.py):
    # pods/status alone, never the pod itself
    from controller.waypoints.podcondition import RBAC_RULE
    rules.append(dict(RBAC_RULE))
    rules.append({"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]})
    rules.append(dict(CRD_RBAC))        # is a kind answering 404 really not installed? (controller.sources.kube)
    # the mesh root it publishes (controller/ca/publish.py): root namespace and each waypoint's namespace
    # by name: it reads and replaces ambit-root-cert alone (create cannot be limited by name)
    from controller.ca.publish import ROOT_CONFIGMAP
    rules.append({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "update"],
                  "resourceNames": [ROOT_CONFIGMAP]})
    rules.append({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]})
    # the admission webhook's configuration, by name: its caBundle and failurePolicy (controller/admission)
    from controller.admission.patcher import CONFIG_NAME
    rules.append({"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"],
                  "verbs": ["get", "update"], "resourceNames": [CONFIG_NAME]})
    from controller.waypoints.reconcile import RBAC_RULES
    return rules + [dict(r) for r in RBAC_RULES]


def node_rules(repair_pods: str = "off") -> list[Obj]:
    """What the agent's KubePodSource lists and watches (every node's pods: RBAC cannot scope by
    field selector), and what `--repair-pods` calls (agent/repair_kube.py): for `label` reading a
    pod, patching pods/status (the lower privilege, metadata included) and creating Events; for
    `delete` deleting pods too; for `off` nothing."""
    from agent.podsource import RBAC_GROUP, RBAC_VERBS, RESOURCES
    from agent.repair_kube import rbac_rules
    return [{"apiGroups": [RBAC_GROUP], "resources": sorted(r.plural for r in RESOURCES),
             "verbs": list(RBAC_VERBS)}, *rbac_rules(repair_pods)]


def node_namespace_rules() -> list[Obj]:
    """In the install namespace only: the one DaemonSet the agent reads when it stops
    (`--cleanup-on-delete`, agent/shutdown.py), by name; every other DaemonSet's pod template
    (their env, their images) is none of its business."""
    from agent.shutdown import RBAC
    return [{**RBAC, "resourceNames": [NODE]}]


def _rbac(name: str, namespace: str, sa: str, rules: list[Obj]) -> list[Obj]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _md(sa, namespace)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": _md(name),
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": _md(name),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]},
    ]


def controller_namespace_rules() -> list[Obj]:
    """In the root namespace only: the CA Secret (--ca-secret: read, or created on first start),
    the leader-election Lease (controller/leader.py) and the admission webhook's dry run."""
    from controller.admission.patcher import PROBE_GROUP, PROBE_PLURAL
    from controller.leader import LEASE_NAME
    return [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
            # the webhook's dry-run probe (an invalid AuthorizationPolicy, never stored): here only
            {"apiGroups": [PROBE_GROUP], "resources": [PROBE_PLURAL], "verbs": ["create"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"],
             "resourceNames": [LEASE_NAME]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}]


def _namespaced_rbac(name: str, namespace: str, sa: str, rules: list[Obj]) -> list[Obj]:
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _md(name, namespace),
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _md(name, namespace),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]},
    ]


# -- workloads --------------------------------------------------------------------------------------

def _env(**field_paths: str) -> list[Obj]:
    return [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in field_paths.items()]


def controller_args(o: argparse.Namespace) -> list[str]:
    return ["--kube", "--listen", f"0.0.0.0:{GRPC_PORT}", "--ca-secret", o.ca_secret or CA_SECRET,
            "--trust-domain", o.trust_domain, "--root-namespace", o.namespace,
            "--ztunnel-service-account", f"system:serviceaccount:{o.namespace}:{ZTUNNEL_SA}",
            "--metrics-port", str(METRICS_PORT), "--log-level", o.log_level,
            "--waypoint-image", o.image, "--waypoint-pull-policy", o.pull_policy,
            "--waypoint-controller", f"{CONTROLLER}.{o.namespace}.svc:{GRPC_PORT}",
            "--waypoint-workers", str(o.waypoint_workers),
            "--mesh-config", f"{MESH_CONFIG_DIR}/mesh.yaml",
            *(["--webhook-listen", f"0.0.0.0:{WEBHOOK_PORT}"] if o.config_validation else []),
            *_cluster_domain_args(o)]


def _cluster_domain_args(o: argparse.Namespace) -> list[str]:
    """`--cluster-domain` for the controller and ztunnel, only when it is not the default that both
    (and the waypoints) already take: the default rendering stays what clusters have applied, so
    a re-run or upgrade changes no pod for it. The controller passes it on to the waypoint and
    ingress Deployments it renders (controller/waypoints/render.py); the agent names no Service."""
    return [] if o.cluster_domain == clusterdomain.DEFAULT else ["--cluster-domain", o.cluster_domain]


def mesh_config(o: argparse.Namespace) -> Obj:
    """The mesh config file, as a ConfigMap the controller mounts and watches (an edit applies
    within about a minute, the kubelet's ConfigMap refresh, with no restart)."""
    mesh = {"outboundTrafficPolicy": {"mode": o.outbound_traffic_policy}}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _md(MESH_CONFIG, o.namespace),
            "data": {"mesh.yaml": yaml.safe_dump(mesh, sort_keys=False)}}


def controller_objects(o: argparse.Namespace) -> list[Obj]:
    sel = {"app": CONTROLLER}
    pod = {
        "serviceAccountName": CONTROLLER,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1337, "runAsGroup": 1337, "fsGroup": 1337},
        "containers": [{
            "name": "controller", "image": o.image, "imagePullPolicy": o.pull_policy,
            "command": ["python3", "-m", "controller"], "args": controller_args(o),
            "env": _env(POD_NAME="metadata.name"),              # its name in the leader Lease
            "ports": [{"name": "grpc", "containerPort": GRPC_PORT},
                      {"name": "http-metrics", "containerPort": METRICS_PORT},
                      {"name": "https-webhook", "containerPort": WEBHOOK_PORT}],
            # It binds its port only after translating the first snapshot: open port = ready.
            "readinessProbe": {"tcpSocket": {"port": GRPC_PORT}, "periodSeconds": 5},
            # Sized from measured costs (controller/sizing.py; docs/operations.md, "Sizing the
            # controller"): the request is a 1,000-pod cluster's working set, the limit holds the
            # defaults' full house within the memory guard's fraction of it.
            "resources": {"requests": {"cpu": "100m", "memory": f"{controller_memory_request_mib()}Mi"},
                          "limits": {"memory": f"{memory_limit_mib()}Mi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
            # The root filesystem is read-only; the gRPC port's accept gate keeps grpc's unix socket
            # in a private directory under /tmp (controller/acceptgate.py, tempfile.mkdtemp).
            "volumeMounts": [{"name": "mesh-config", "mountPath": MESH_CONFIG_DIR, "readOnly": True},
                             {"name": "tmp", "mountPath": "/tmp"}],
        }],
        "volumes": [{"name": "mesh-config", "configMap": {"name": MESH_CONFIG}},
                    {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}],
    }
    return [
        mesh_config(o),
        {"apiVersion": "v1", "kind": "Service", "metadata": _md(CONTROLLER, o.namespace, **sel),
         "spec": {"selector": sel, "ports": [
             {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "appProtocol": "grpc"},
             {"name": "http-metrics", "port": METRICS_PORT, "targetPort": "http-metrics"},
             {"name": "https-webhook", "port": WEBHOOK_PORT, "targetPort": "https-webhook"}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _md(CONTROLLER, o.namespace, **sel),
         # Replicas share the CA Secret and elect a leader (Lease) for writes: a rolling update is safe.
         "spec": {"replicas": 1, "selector": {"matchLabels": sel}, "strategy": {"type": "RollingUpdate"},
                  "template": {"metadata": {"labels": {**LABELS, **OPT_OUT, **sel}, "annotations": {
                      "prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}},
                      "spec": pod}}},
    ]


# ztunnel's memory request (docs/operations.md, "Memory requests"): one process measured 29 MiB PSS
# idle and about 50 MB RSS with 1000 connections held (bench/RESULTS.md); each further worker is a
# whole ztunnel, 26 MiB PSS idle beside a 19 MiB supervisor.
ZTUNNEL_MEMORY_FIRST_MIB = 256
ZTUNNEL_MEMORY_PER_WORKER_MIB = 64
# A Kubernetes memory quantity: a plain number of bytes, or with a binary (Ki..Ei) or decimal
# (k, M..E) suffix, as the API server takes it (its exponent form, 1e9, is not accepted here).
_QUANTITY = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[KMGTPE]i|[kMGTPE])?")


def ztunnel_memory_request(o: argparse.Namespace) -> str:
    """`--ztunnel-memory-request`, or sized from `--ztunnel-workers` (0: for the most workers a
    node may resolve it to, since the DaemonSet's request is the same on every node)."""
    if o.ztunnel_memory_request:
        return o.ztunnel_memory_request
    mib = memory_request_mib(o.ztunnel_workers, first_mib=ZTUNNEL_MEMORY_FIRST_MIB,
                             per_worker_mib=ZTUNNEL_MEMORY_PER_WORKER_MIB)
    return f"{mib}Mi"


def _quantity(v: str) -> str:
    if not _QUANTITY.fullmatch(v) or not v.strip("0.KMGTPEik"):
        raise argparse.ArgumentTypeError(f"{v!r}: a Kubernetes memory quantity above zero, e.g. 512Mi, 1Gi or 1G")
    return v


# ztunnel's drain on SIGTERM, inside the node pod's grace (its HBONE GOAWAYs included), as Istio's
# ztunnel drains for terminationGracePeriodSeconds - 1.
NODE_GRACE = 30
ZTUNNEL_DRAIN = 20


def ztunnel_args(o: argparse.Namespace) -> list[str]:
    return ["--node", "$(NODE_NAME)", "--zds-socket", f"{RUN_DIR}/zds.sock",
            "--controller", f"{CONTROLLER}.{o.namespace}.svc:{GRPC_PORT}",
            "--config-cache", f"{RUN_DIR}/config-cache.json", "--root-namespace", o.namespace,
            "--admin-address", "127.0.0.1:15000", "--admin-socket", f"{RUN_DIR}/ztunnel-admin.sock",
            "--node-token-file", f"{TOKEN_DIR}/token", "--trust-domain", o.trust_domain,
            "--controller-root-cert", f"{ROOT_CERT_DIR}/root-cert.pem",
            "--controller-identity", f"spiffe://{o.trust_domain}/ns/{o.namespace}/sa/{CONTROLLER}",
            "--cert-cache", f"{RUN_DIR}/certs", "--metrics-address", f"0.0.0.0:{ZTUNNEL_METRICS_PORT}",
            # The pod's scrape annotation names one port: 15020 serves the agent's metrics too,
            # fetched from it over the pod's loopback at scrape time (ambit/dataplane/telemetry/merge.py).
            "--merge-metrics-from", AGENT_METRICS_URL,
            "--termination-drain", str(ZTUNNEL_DRAIN), "--log-level", o.log_level,
            "--workers", str(o.ztunnel_workers),
            # a worker whose event loop stalls this long logs its stack and aborts; the supervisor
            # (or, with one worker, the kubelet) restarts it (ambit/dataplane/watchdog.py)
            "--watchdog-kill-after", f"{WATCHDOG_KILL_AFTER:g}", *_cluster_domain_args(o)]


def agent_args(o: argparse.Namespace) -> list[str]:
    # --ztunnel-cgroup is appended by the entrypoint: the cgroup of this pod (AMBIT_ZTUNNEL_POD_UID),
    # which only the host knows. ztunnel's container cgroup is below it, so the getsockopt program
    # attached there answers ztunnel's SO_ORIGINAL_DST.
    return ["--node", "$(NODE_NAME)", "--zds-socket", f"{RUN_DIR}/zds.sock", "--node-ip", "$(HOST_IP)",
            "--pin-base", "/sys/fs/bpf/ambit", "--capture", o.capture,
            "--status-file", f"{RUN_DIR}/agent-status.json",
            # on SIGTERM: uninstall capture if this DaemonSet is being deleted (agent/shutdown.py)
            "--cleanup-on-delete", f"$(POD_NAMESPACE)/{NODE}",
            # the chained CNI plugin (agent/cni): its socket and the node's CNI directories are host
            # paths mounted at the same path, so what the agent writes into the conflist is true on the host
            "--cni-socket", f"{CNI_RUN_DIR}/cni.sock", "--cni-conf-dir", o.cni_conf_dir,
            "--cni-bin-dir", o.cni_bin_dir, "--cni-python", o.cni_python,
            # a running pod whose capture keeps failing is a STRICT gap: label or delete it (agent/repair.py)
            "--repair-pods", o.repair_pods, "--metrics-port", str(AGENT_METRICS_PORT),
            # the node default of DNS capture (Istio's dnsCapture); a pod's ambient.istio.io/dns-capture overrides it
            "--dns-capture" if o.dns_capture else "--no-dns-capture"]


def _host(name: str, path: str, type_: str = "Directory") -> Obj:
    return {"name": name, "hostPath": {"path": path, "type": type_}}


def node_daemonset(o: argparse.Namespace) -> Obj:
    sel = {"app": NODE}
    env = _env(NODE_NAME="spec.nodeName", HOST_IP="status.hostIP", POD_NAMESPACE="metadata.namespace")
    run = {"name": "run", "mountPath": RUN_DIR}
    agent = {
        "name": "agent", "image": o.image, "imagePullPolicy": o.pull_policy,
        "command": [ENTRYPOINT, "python3", "-m", "agent"], "args": agent_args(o),
        "env": env + _env(AMBIT_ZTUNNEL_POD_UID="metadata.uid"),
        "ports": [{"name": "agent-metrics", "containerPort": AGENT_METRICS_PORT}],
        "securityContext": {"privileged": True},     # BPF, cgroup attach, setns, bidirectional mounts
        # Ready once this very process has done its first reconcile (eBPF loaded, pods handed to
        # ztunnel), and no longer once it stops: answered from its memory on its metrics port
        # (agent/health.py), as Istio's CNI agent answers /readyz. An exec probe would start a
        # Python on every node every period (ambit/readymark.py still checks the status file).
        "readinessProbe": {"httpGet": {"path": AGENT_READY_PATH, "port": AGENT_METRICS_PORT},
                           "periodSeconds": 5},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [
            run,
            {"name": "bpffs", "mountPath": "/sys/fs/bpf", "mountPropagation": "Bidirectional"},
            {"name": "cgroup", "mountPath": "/sys/fs/cgroup"},
            {"name": "netns", "mountPath": "/var/run/netns", "mountPropagation": "HostToContainer"},
            {"name": "modules", "mountPath": "/host/lib/modules", "readOnly": True},
            {"name": "usr-src", "mountPath": "/host/usr/src", "readOnly": True},
            {"name": "cni-run", "mountPath": CNI_RUN_DIR},
            {"name": "cni-conf", "mountPath": o.cni_conf_dir},
            {"name": "cni-bin", "mountPath": o.cni_bin_dir},
        ],
    }
    ztunnel = {
        "name": "ztunnel", "image": o.image, "imagePullPolicy": o.pull_policy,
        "command": ["python3", "-m", "ztunnel"], "args": ztunnel_args(o), "env": env,
        "ports": [{"name": "http-metrics", "containerPort": ZTUNNEL_METRICS_PORT}],
        # setns() into pod netns (SYS_ADMIN), IP_TRANSPARENT and SO_MARK (NET_ADMIN, NET_RAW).
        "securityContext": {"privileged": False, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]}},
        # The admin endpoint is loopback-only; the probe asks it over its unix socket.
        "readinessProbe": {"exec": {"command": [
            "curl", "-sf", "-o", "/dev/null", "--unix-socket", f"{RUN_DIR}/ztunnel-admin.sock",
            "http://localhost/healthz/ready"]}, "periodSeconds": 5},
        # A request, and no memory limit: an OOM kill of ztunnel stops every enrolled pod of the node
        # (capture stays, fail closed), so a limit would turn one burst into a node-wide outage.
        # ztunnel bounds itself instead (docs/operations.md, "ztunnel limits"), as Istio's ztunnel chart does.
        "resources": {"requests": {"cpu": "200m", "memory": ztunnel_memory_request(o)}},
        # On SIGTERM (a roll, a node drain) it stops accepting at once; its open connections get
        # --termination-drain (ZTUNNEL_DRAIN) of the pod's grace, then are closed.
        "volumeMounts": [run, {"name": "ca-token", "mountPath": TOKEN_DIR, "readOnly": True},
                         {"name": "root-cert", "mountPath": ROOT_CERT_DIR, "readOnly": True}],
    }
    pod = {
        "serviceAccountName": ZTUNNEL_SA,
        "hostPID": True,
        "priorityClassName": "system-node-critical",
        "terminationGracePeriodSeconds": NODE_GRACE,
        "tolerations": [{"operator": "Exists"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "containers": [agent, ztunnel],
        "volumes": [
            {"name": "run", "emptyDir": {}},
            _host("bpffs", "/sys/fs/bpf", "DirectoryOrCreate"),
            _host("cgroup", o.host_cgroup),
            _host("netns", "/var/run/netns", "DirectoryOrCreate"),
            _host("modules", "/lib/modules"),
            _host("usr-src", "/usr/src"),
            _host("cni-run", CNI_RUN_DIR, "DirectoryOrCreate"),
            _host("cni-conf", o.cni_conf_dir, "DirectoryOrCreate"),
            _host("cni-bin", o.cni_bin_dir, "DirectoryOrCreate"),
            {"name": "ca-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": CA_AUDIENCE, "expirationSeconds": 3600, "path": "token"}}]}},
            {"name": "root-cert", "configMap": {"name": "ambit-root-cert"}},    # published by the controller
        ],
    }
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _md(NODE, o.namespace, **sel),
            "spec": {"selector": {"matchLabels": sel},
                     # Surge, as Istio's ztunnel (docs/operations.md, "Rolling the node DaemonSet"): the
                     # new node pod starts beside the old one, both ztunnels listen in every pod netns
                     # (SO_REUSEPORT) and are exempt from capture (the pinned ztunnel set); once the new
                     # pod is Ready the old one is stopped: its ztunnel closes its listeners, its queued
                     # connections move to the new one, its open ones drain. No capture gap.
                     "updateStrategy": {"type": "RollingUpdate",
                                        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                     "template": {"metadata": {"labels": {**LABELS, **OPT_OUT, **sel}, "annotations": {
                         "prometheus.io/scrape": "true", "prometheus.io/port": str(ZTUNNEL_METRICS_PORT)}},
                         "spec": pod}}}


# -- all of it --------------------------------------------------------------------------------------

def validating_webhook(o: argparse.Namespace) -> Obj:
    """Istio's and Ambit's kinds validated by the controller when they are written
    (controller/admission). No caBundle and `Ignore` as rendered: the controller's leader fills in
    the roots and switches to `Fail` once a dry run shows the API server calls it, so a cluster is
    never locked out of these kinds by a webhook that was never reachable."""
    from controller.admission.patcher import CONFIG_NAME, WEBHOOK_NAME
    from controller.admission.server import PATH
    groups = ["security.istio.io", "networking.istio.io", "telemetry.istio.io", "extensions.istio.io",
              *sorted({k.ambit_group for k in _kinds() if k.ambit_group})]
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": _md(CONFIG_NAME), "webhooks": [{
                "name": WEBHOOK_NAME,
                "clientConfig": {"service": {"name": CONTROLLER, "namespace": o.namespace, "path": PATH,
                                             "port": WEBHOOK_PORT}},
                "rules": [{"apiGroups": groups, "apiVersions": ["*"], "resources": ["*"],
                           "operations": ["CREATE", "UPDATE"], "scope": "*"}],
                "failurePolicy": "Ignore", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10, "matchPolicy": "Equivalent"}]}


def _kinds() -> list[Any]:
    from controller.kinds import KINDS
    return list(KINDS)


def crds() -> list[Obj]:
    from controller.kinds import KINDS
    from controller.kinds.crds import crd
    return [crd(k) for k in KINDS if k.ambit_group]


def objects(o: argparse.Namespace) -> list[Obj]:
    """Every object, in the order `kubectl apply` must create them."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": _md(o.namespace)}
    return ([ns] + crds()
            + _rbac(CONTROLLER, o.namespace, CONTROLLER, controller_rules())
            + _namespaced_rbac(CONTROLLER, o.namespace, CONTROLLER, controller_namespace_rules())
            + _rbac(NODE, o.namespace, ZTUNNEL_SA, node_rules(o.repair_pods))
            + _namespaced_rbac(NODE, o.namespace, ZTUNNEL_SA, node_namespace_rules())
            + controller_objects(o) + ([validating_webhook(o)] if o.config_validation else []) + [node_daemonset(o)])


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(o: argparse.Namespace) -> str:
    head = ("# Ambit: rendered by `ambit install --dry-run"
            + "".join(f" {flag} {value}" for flag, value in _non_default_flags(o)) + "`; do not edit.\n")
    return head + yaml.dump_all(objects(o), Dumper=_NoAliases, sort_keys=False, width=120, explicit_start=True)


def _non_default_flags(o: argparse.Namespace) -> list[tuple[str, str]]:
    defaults = vars(parse([]))
    return [(f"--{k.replace('_', '-')}", str(v)) for k, v in vars(o).items()
            if k in defaults and k not in ("func", "dry_run", *CLUSTER_ONLY) and v != defaults[k]]


# -- the command ------------------------------------------------------------------------------------

def _workers(v: str) -> int:
    if not v.isdigit():
        raise argparse.ArgumentTypeError(f"{v!r}: must be a whole number >= 0 (0: one per CPU)")
    return int(v)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(v: str) -> str:
    """Every component hands --log-level to Python's logging, which knows upper-case names only:
    `--set logLevel=debug` (Helm's spelling) rendered `--log-level debug`, and each controller,
    ztunnel and agent then died at start (ValueError: Unknown level), crash-looping the mesh."""
    level = v.strip().upper()
    level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level)
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{v!r}: must be one of {', '.join(LOG_LEVELS)} (any case)")
    return level


def _cluster_domain(v: str) -> str:
    """Checked as every component checks its own --cluster-domain (ambit/clusterdomain.py), so a bad
    value is refused here, before anything is rendered or applied, not by crash-looping pods."""
    reason = clusterdomain.problem(v)
    if reason is not None:
        raise argparse.ArgumentTypeError(f"{v!r}: {reason}")
    return v


def _trust_domain(v: str) -> str:
    """Checked as the controller checks its own --trust-domain (ambit/trustdomain.py): a bad value
    would render a controller that exits at start and node pods that never get a certificate."""
    try:
        return trustdomain.validate(v, "")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(": ")) from None


def _namespace(v: str) -> str:
    """A Kubernetes namespace name (an RFC 1123 label, as the controller checks one), refused here
    rather than by the API server half-way through an apply."""
    from controller.kinds.common import check_label
    reason = check_label(v)
    if reason is not None:
        raise argparse.ArgumentTypeError(f"{v!r} is not a namespace name: it {reason} (at most 63 characters)")
    return v


def _switch(v: str) -> bool:
    """A true/false install option, as `--set dnsCapture=false` (Helm's spelling) gives it."""
    s = v.strip().lower()
    if s in ("true", "1", "yes", "on"):
        return True
    if s in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{v!r}: must be true or false")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the manifests instead of applying them")
    p.add_argument("--namespace", type=_namespace, default="ambit-system",
                   help="where the controller and node pods run")
    p.add_argument("--image", default=default_image(), help="the Ambit image (all components)")
    p.add_argument("--pull-policy", default="IfNotPresent", choices=("IfNotPresent", "Always", "Never"))
    p.add_argument("--trust-domain", type=_trust_domain, default=trustdomain.DEFAULT,
                   help="the mesh's SPIFFE trust domain: workload identities are "
                        "spiffe://<trust-domain>/ns/<ns>/sa/<sa> (default cluster.local)")
    p.add_argument("--cluster-domain", type=_cluster_domain, default=clusterdomain.DEFAULT, metavar="DOMAIN",
                   help=f"the cluster's DNS domain, as its kubelets' --cluster-domain (default {clusterdomain.DEFAULT}): "
                        "Services are <name>.<ns>.svc.<domain>; given to the controller (and by it to waypoints and "
                        "ingress gateways) and to ztunnel's DNS proxy")
    p.add_argument("--capture", default="ebpf", choices=("ebpf", "iptables"))
    p.add_argument("--dns-capture", type=_switch, default=True, metavar="true|false",
                   help="the nodes' default for DNS capture (Istio's dnsCapture): enrolled pods' queries to port 53 "
                        "go to ztunnel's DNS proxy; a pod's annotation ambient.istio.io/dns-capture overrides it "
                        "(default true; docs/ebpf.md)")
    p.add_argument("--host-cgroup", default="/sys/fs/cgroup",
                   help="where the nodes mount the cgroup v2 hierarchy (it must be unified cgroup v2)")
    p.add_argument("--ca-secret", default="",
                   help=f"the Secret (in --namespace) holding the CA: created by the controller on first start "
                        f"(default {CA_SECRET}), or yours: ca.crt/ca.key, or cert-manager's tls.crt/tls.key/ca.crt")
    p.add_argument("--log-level", type=_log_level, default="INFO", metavar="|".join(LOG_LEVELS),
                   help="every component's logging level (default INFO)")
    p.add_argument("--ztunnel-workers", type=_workers, default=0, metavar="N",
                   help="worker processes per node ztunnel (0: one per CPU the container may use, at most 8; "
                        "docs/performance.md)")
    p.add_argument("--ztunnel-memory-request", type=_quantity, default=None, metavar="QUANTITY",
                   help=f"the ztunnel container's memory request (default: sized from --ztunnel-workers, "
                        f"{ZTUNNEL_MEMORY_FIRST_MIB}Mi for one process and {ZTUNNEL_MEMORY_PER_WORKER_MIB}Mi per "
                        f"further worker, and for 0 as many as 0 may resolve to; docs/operations.md)")
    p.add_argument("--waypoint-workers", type=_workers, default=1, metavar="N",
                   help="worker processes per waypoint pod (default 1: scale waypoints out by replicas; 0: one per "
                        "CPU the pod may use, at most 8; docs/performance.md)")
    p.add_argument("--outbound-traffic-policy", default="ALLOW_ANY", choices=("ALLOW_ANY", "REGISTRY_ONLY"),
                   help="MeshConfig outboundTrafficPolicy.mode: REGISTRY_ONLY refuses meshed pods' connections to "
                        "addresses the mesh does not know (docs/egress.md)")
    p.add_argument("--cni-conf-dir", default="/etc/cni/net.d",
                   help="the nodes' CNI configuration directory (k3s: /var/lib/rancher/k3s/agent/etc/cni/net.d)")
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin",
                   help="the nodes' CNI plugin directory (k3s: /var/lib/rancher/k3s/data/cni)")
    p.add_argument("--cni-python", default="/usr/bin/python3",
                   help="the nodes' Python 3, which runs the CNI plugin (standard library only)")
    p.add_argument("--config-validation", type=_switch, default=True, metavar="true|false",
                   help="the controller's validating admission webhook (Istio's global.configValidation): the API "
                        "server refuses invalid Istio and Ambit objects at the write (default true; false: they are "
                        "stored and refused in their status only; docs/operations.md 'The admission webhook')")
    p.add_argument("--repair-pods", default="delete", choices=("off", "label", "delete"),
                   help="what each node's agent does with a running enrolled pod whose capture keeps failing (it "
                        "runs uncaptured, a STRICT gap): delete it if a controller owns it, so it is re-created "
                        "through the CNI plugin, which fails closed (default); label it; or only retry (off). The "
                        "node's RBAC grants what the mode needs (docs/operations.md)")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ambit install")
    add_arguments(p)
    return p.parse_args(argv)


# -- --set key=value -------------------------------------------------------------------------------

# --set keys (Helm/istioctl style, camelCase; the flag names work too) -> install options.
SET_KEYS = {"namespace": "namespace", "image": "image", "pullPolicy": "pull_policy", "trustDomain": "trust_domain",
            "clusterDomain": "cluster_domain",
            "capture": "capture", "hostCgroup": "host_cgroup", "caSecret": "ca_secret", "logLevel": "log_level",
            "cniConfDir": "cni_conf_dir", "cniBinDir": "cni_bin_dir", "cniPython": "cni_python",
            "meshConfig.outboundTrafficPolicy.mode": "outbound_traffic_policy",     # istioctl's key
            "outboundTrafficPolicy": "outbound_traffic_policy", "ztunnelWorkers": "ztunnel_workers",
            "ztunnelMemoryRequest": "ztunnel_memory_request", "waypointWorkers": "waypoint_workers",
            "repairPods": "repair_pods", "dnsCapture": "dns_capture", "configValidation": "config_validation",
            "global.configValidation": "config_validation"}     # Istio's key


def apply_sets(o: argparse.Namespace, sets: list[str]) -> argparse.Namespace:
    """`--set key=value` onto the install options, checked as the flags are (a choice outside its
    list, an unknown key: refused, naming it)."""
    flags = {k.replace("_", "-"): v for k, v in SET_KEYS.items()} | {v: v for v in SET_KEYS.values()}
    keys = SET_KEYS | flags
    argv: list[str] = []
    for kv in sets:
        key, eq, value = kv.partition("=")
        if not eq or key.strip() not in keys:
            raise InstallError(f"--set {kv!r}: expected KEY=VALUE with KEY one of {', '.join(SET_KEYS)}")
        argv.append(f"--{keys[key.strip()].replace('_', '-')}={value}")     # =: a value may start with -
    if not argv:
        return o
    p = argparse.ArgumentParser(prog="ambit install --set", exit_on_error=False)
    add_arguments(p)
    try:
        return p.parse_args(argv, namespace=argparse.Namespace(**vars(o)))
    except (argparse.ArgumentError, SystemExit) as e:
        raise InstallError(f"--set: {e}") from None


class InstallError(RuntimeError):
    pass


def target_version(o: argparse.Namespace) -> str:
    """The version being installed: the image's tag (ambit:0.2.0), else, for an image without a
    tag (`reg/ambit`, `reg/ambit@sha256:...`), this CLI's. A tag that is no version (`dev`,
    `latest`) is kept as it is, so `ambit upgrade` refuses it without --force (docs/operations.md
    "Upgrading"): read as this CLI's version, any image passed as compatible."""
    last = o.image.split("@", 1)[0].rsplit("/", 1)[-1]     # a digest is not a tag; reg:5000/ is no tag
    return (last.rsplit(":", 1)[-1] if ":" in last else "") or default_image().rsplit(":", 1)[-1]


def settings_of(o: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(o, v) for k, v in SET_KEYS.items()}


class _Unset:
    """The default of a setting on `install`/`upgrade`'s command line: not given. Over an existing
    install it keeps the installed value (the inventory's), else it takes the usual default."""

    def __repr__(self) -> str:
        return "<installed or default>"


UNSET: Any = _Unset()
# The settings an install keeps across `ambit upgrade` and a re-run of `ambit install`: all but the
# image (an upgrade is a new image; without --image, this CLI's) and the namespace (where to look).
KEPT = tuple(dict.fromkeys(d for d in SET_KEYS.values() if d not in ("image", "namespace")))


def resolve_settings(o: argparse.Namespace, installed: dict[str, Any] | None) -> list[str]:
    """Fill the settings the command line left UNSET: the installed value when there is an
    install, else the default. Returns the kept values that differ from the defaults ("key=value").

    An upgrade that re-rendered the defaults instead reverted, silently, whatever the install was
    given: REGISTRY_ONLY back to ALLOW_ANY (egress opened), another trust domain (every identity
    changed) or the user's CA Secret (the controller then made a CA of its own, a new root)."""
    defaults = vars(parse([]))
    key_of: dict[str, str] = {}
    for key, dest in SET_KEYS.items():
        key_of.setdefault(dest, key)
    kept = []
    for dest in KEPT:
        if getattr(o, dest) is not UNSET:
            continue
        key = key_of[dest]
        if installed is not None and key in installed:
            value = installed[key]
            if value is not None and value != defaults[dest]:
                try:        # checked as the flag is: a newer version's value may mean nothing here
                    value = getattr(parse([f"--{dest.replace('_', '-')}", str(value)]), dest)
                except SystemExit:
                    raise InstallError(f"the installed setting {key}={value!r} is not valid for this version of "
                                       f"ambit; --set {key}=VALUE to choose one") from None
                kept.append(f"{key}={value}")
            setattr(o, dest, value)
        else:
            setattr(o, dest, defaults[dest])
    return kept


def _say_kept(kept: list[str]) -> None:
    if kept:
        print(f"keeping the installed settings {', '.join(kept)} (--set KEY=VALUE to change one)", file=sys.stderr)


# -- the cluster edge -------------------------------------------------------------------------------

def kube(args: argparse.Namespace) -> Any:
    from kubernetes import client as kclient
    from kubernetes import config as kconfig

    from ambitctl import kubeclient
    from ambitctl.kubeapply import Kube
    cfg = kclient.Configuration()
    if args.server:
        cfg.host = args.server
    else:
        try:
            cfg = kubeclient.load(args.kubeconfig, args.context)
        except kubeclient.KubeconfigError as e:
            try:
                kconfig.load_incluster_config(client_configuration=cfg)
            except kconfig.ConfigException:
                raise InstallError(f"no cluster: {e}") from None
    return Kube(kubeclient.bounded(cfg))


def install_objects(o: argparse.Namespace) -> list[Obj]:
    """What install applies: the rendered objects, with the version recorded on each."""
    version = target_version(o)
    objs = objects(o)
    for obj in objs:
        obj["metadata"].setdefault("annotations", {})["ambit.io/version"] = version
    return objs


def run_apply(k: Any, o: argparse.Namespace, out: Any, dry_run: bool, show_diff: bool = False,
              previous: dict[str, Any] | None = None) -> int:
    """Apply every object (create/update/unchanged), keep the inventory, prune what `previous`
    installed that this version no longer renders."""
    from ambitctl import kubeapply as ka
    objs = install_objects(o)
    refs = [ka.ref(x) for x in objs]
    old_refs = [tuple(r) for r in (previous or {}).get("objects", [])]
    version = target_version(o)

    def inventory(rs: list[Any]) -> Obj:
        return ka.inventory_object(o.namespace, version, o.image, settings_of(o), rs, LABELS)

    counts: dict[str, int] = {}
    suffix = " (dry run)" if dry_run else ""
    for i, obj in enumerate(objs):
        verb, live = ka.apply(k, obj, dry_run)
        counts[verb] = counts.get(verb, 0) + 1
        out.write(f"{ka.show(refs[i])} {verb}{suffix}\n")
        if show_diff and verb != "unchanged":
            out.write(ka.diff(refs[i], live, ka.strip(obj)))
        if i == 0 and not dry_run:     # the namespace exists: record intent before anything else
            ka.apply(k, inventory(list(dict.fromkeys(old_refs + refs))))
    pruned = [r for r in old_refs if r not in refs]
    for r in reversed(pruned):
        if show_diff:
            live = k.get(r)
            if live is not None:
                out.write(ka.diff(r, live, None))
        gone = dry_run or k.delete(r)
        out.write(f"{ka.show(r)} {'pruned (no longer part of Ambit ' + version + ')' if gone else 'already gone'}"
                  f"{suffix}\n")
    if not dry_run:
        ka.apply(k, inventory(refs))
    out.write(f"{len(objs)} objects: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
              + (f", {len(pruned)} pruned" if pruned else "") + suffix + "\n")
    return 0


def cluster_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"an install option ({', '.join(SET_KEYS)}); repeatable")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--context", default=None, help="kubeconfig context")
    p.add_argument("--server", default=None, help="API server URL, plain HTTP (`kubectl proxy`, tests)")


CLUSTER_ONLY = ("set", "kubeconfig", "context", "server", "force", "purge_crds", "keep_namespace")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("install", help="install Ambit into a Kubernetes cluster (--dry-run: print YAML)")
    add_arguments(p)
    p.set_defaults(**dict.fromkeys(KEPT, UNSET))     # resolve_settings: installed, else the default
    cluster_arguments(p)
    p.set_defaults(func=cmd_install)
    u = subparsers.add_parser("upgrade", help="upgrade an installed Ambit: show the diff, refuse incompatible "
                                              "versions, apply, prune")
    add_arguments(u)
    u.set_defaults(**dict.fromkeys(KEPT, UNSET))
    cluster_arguments(u)
    u.add_argument("--force", action="store_true", help="allow a minor skip or a downgrade (never a major change)")
    u.set_defaults(func=cmd_upgrade)
    x = subparsers.add_parser("uninstall", help="remove every object `ambit install` created (CRDs only with "
                                                "--purge-crds)")
    x.add_argument("--namespace", type=_namespace, default="ambit-system")
    x.add_argument("--purge-crds", action="store_true",
                   help="also delete Ambit's CRDs, and with them every Ambit resource in the cluster")
    x.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    cluster_arguments(x)
    x.set_defaults(func=cmd_uninstall)


def _options(args: argparse.Namespace) -> argparse.Namespace:
    o = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in CLUSTER_ONLY})
    return apply_sets(o, args.set)


def cmd_install(args: argparse.Namespace) -> int:
    try:
        o = _options(args)
        if args.dry_run and not args.server and not args.kubeconfig and not args.context:
            resolve_settings(o, None)
            sys.stdout.write(render(o))         # offline: the manifests, as before
            return 0
        k = kube(args)
        from ambitctl import kubeapply as ka
        prev = ka.read_inventory(k, o.namespace)
        _say_kept(resolve_settings(o, prev["settings"] if prev else None))
        if prev and prev["version"] != target_version(o):
            print(f"error: Ambit {prev['version']} is installed in {o.namespace}; use `ambit upgrade` to move to "
                  f"{target_version(o)}", file=sys.stderr)
            return 1
        return run_apply(k, o, sys.stdout, args.dry_run, previous=prev)
    except (InstallError, _kube_error()) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _kube_error() -> type[Exception]:
    from ambitctl.kubeapply import KubeError
    return KubeError


def cmd_upgrade(args: argparse.Namespace) -> int:
    from ambitctl import kubeapply as ka
    try:
        o = _options(args)
        k = kube(args)
        prev = ka.read_inventory(k, o.namespace)
        if prev is None:
            print(f"error: no Ambit installed in namespace {o.namespace} (no {ka.INVENTORY} ConfigMap); "
                  "use `ambit install`", file=sys.stderr)
            return 1
        _say_kept(resolve_settings(o, prev["settings"]))
        ok, why = ka.upgrade_verdict(prev["version"], target_version(o), args.force)
        print(f"upgrade {why}", file=sys.stderr)
        if not ok:
            return 1
        if not config_precheck(k, target_version(o), args.force):
            return 1
        return run_apply(k, o, sys.stdout, args.dry_run, show_diff=True, previous=prev)
    except (InstallError, ka.KubeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def config_precheck(k: Any, version: str, force: bool) -> bool:
    """The cluster's configuration judged by this version's validation, before its controller takes
    over: an object it refuses has no last good version in a controller that has just started, so it
    would not be in force after the upgrade (a refused AuthorizationPolicy is as good as deleted).
    Lists each refusal (object, field, reason) and stops the upgrade, unless `force`."""
    from ambitctl import cluster
    from controller.validation import validate_object
    try:
        objs = cluster.cluster_objects(k.api)
    except cluster.TargetError as e:
        raise InstallError(f"cannot read the cluster's configuration to check it: {e}") from None
    refused = [e for o in objs for e in validate_object(o)]
    if not refused:
        return True
    refs = sorted({e.ref for e in refused})
    print(f"{'warning' if force else 'error'}: Ambit {version} refuses {len(refs)} object(s) of this cluster; after "
          "the upgrade they would not be in force (fix them first, `ambit analyze -A` lists them as AMB0001):",
          file=sys.stderr)
    for e in refused:
        print(f"  {e}", file=sys.stderr)
    if force:
        print("warning: upgrading anyway (--force)", file=sys.stderr)
    return force


def cmd_uninstall(args: argparse.Namespace) -> int:
    from ambitctl import kubeapply as ka
    try:
        k = kube(args)
        inv = ka.read_inventory(k, args.namespace)
        if inv is not None:
            refs = list(inv["objects"])
        else:       # installed by `kubectl apply` of the YAML: remove what this version renders
            refs = [ka.ref(x) for x in objects(parse(["--namespace", args.namespace]))]
            print(f"warning: no {ka.INVENTORY} inventory in {args.namespace}: removing the objects this "
                  "version renders", file=sys.stderr)
        inv_ref = ("v1", "ConfigMap", args.namespace, ka.INVENTORY)
        # Reverse apply order; the inventory goes after what it lists, the namespace last of all.
        order = ([r for r in refs if r[1] == "Namespace"] + [inv_ref]
                 + [r for r in refs if r[1] != "Namespace" and r != inv_ref])
        suffix = " (dry run)" if args.dry_run else ""
        deleted = 0
        for r in reversed(order):
            if r[1] == "CustomResourceDefinition" and not args.purge_crds:
                print(f"{ka.show(r)} kept (--purge-crds removes it and every resource of its kind)")
                continue
            gone = (k.get(r) is not None) if args.dry_run else k.delete(r)
            deleted += gone
            print(f"{ka.show(r)} {'deleted' if gone else 'not found'}{suffix}")
        print(f"{deleted} objects deleted{suffix}")
        return 0
    except (InstallError, ka.KubeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
