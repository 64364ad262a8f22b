"""`ambit install`: the Kubernetes manifests that run Ambit in a cluster, rendered from code.

    ambit install --dry-run [--namespace ambit-system] [--image ambit:0.1.0] > ambit.yaml
    ambit install                        # the same, piped to `kubectl apply --server-side`

The manifests are built as data, not text templates, so that they can be checked against the code
they run (tests/unit/deploy): the RBAC rules come from the tables of what the controller's
KubeSource and the agent's KubePodSource watch, the CRDs from the kind registry, and the container
arguments must parse with each component's own argument parser. `deploy/ambit.yaml` is this
command's default output, kept for people who apply plain YAML.

What runs:
- `ambit-controller` (Deployment): Kubernetes watches -> config stream and CA on gRPC port 15012,
  Prometheus metrics on 15014. Node credentials are projected service-account tokens checked by
  TokenReview. It also deploys waypoints: per waypoint Gateway a Deployment, Service and
  ServiceAccount it owns (controller.waypoints.render), and writes their status.
- `ambit-node` (DaemonSet, one pod per node): the agent and ztunnel, sharing the zds socket in an
  emptyDir; ztunnel's Istio-named metrics on 15020. hostPID gives the agent every pod's /proc/<pid>/ns/net; the host's cgroup v2 tree,
  bpffs, /var/run/netns and (for bcc) the host's kernel headers are mounted in.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

import yaml

Obj = dict[str, Any]

CONTROLLER = "ambit-controller"
NODE = "ambit-node"
ZTUNNEL_SA = "ztunnel"             # the controller's CA admits ztunnels by this service account
GRPC_PORT = 15012                  # config stream + CA
METRICS_PORT = 15014
ZTUNNEL_METRICS_PORT = 15020
CA_AUDIENCE = "ambit-ca"           # the audience of the token ztunnel presents to the CA
RUN_DIR = "/var/run/ambit"         # the emptyDir agent and ztunnel share
TOKEN_DIR = "/var/run/secrets/ambit"
CA_DIR = "/var/lib/ambit/ca"
ENTRYPOINT = "/opt/ambit/entrypoint.sh"
LABELS = {"app.kubernetes.io/part-of": "ambit"}
# Ambit's own pods are never captured, even if someone enrols their namespace.
OPT_OUT = {"ambit.io/dataplane-mode": "none"}


def default_image() -> str:
    try:
        from importlib.metadata import version
        return f"ambit:{version('ambit')}"
    except Exception:  # noqa: BLE001 - not installed as a distribution (a bare checkout)
        return "ambit:dev"


def _md(name: str, namespace: str | None = None, **labels: str) -> Obj:
    md: Obj = {"name": name, "labels": {**LABELS, **labels}}
    if namespace:
        md["namespace"] = namespace
    return md


# -- RBAC, derived from what the code watches ------------------------------------------------------

def controller_rules() -> list[Obj]:
    """list/watch of every type the controller's KubeSource watches, status of the mesh kinds it
    writes conditions to, TokenReviews for the CA's node credentials, and what it writes for
    waypoint Gateways (their status; their Deployment, Service and ServiceAccount)."""
    from controller.sources.kube import STATUS_GROUP_SUFFIXES, default_types
    watched: dict[str, set[str]] = {}
    status: dict[str, set[str]] = {}
    for t in default_types():
        watched.setdefault(t.group, set()).add(t.plural)
        if t.group.endswith(STATUS_GROUP_SUFFIXES):
            status.setdefault(t.group, set()).add(f"{t.plural}/status")
    rules = [{"apiGroups": [g], "resources": sorted(r), "verbs": ["get", "list", "watch"]}
             for g, r in sorted(watched.items())]
    rules += [{"apiGroups": [g], "resources": sorted(r), "verbs": ["get", "patch", "update"]}
              for g, r in sorted(status.items())]
    rules.append({"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]})
    from controller.waypoints.reconcile import RBAC_RULES
    return rules + [dict(r) for r in RBAC_RULES]


def node_rules() -> list[Obj]:
    """What the agent's KubePodSource lists and watches."""
    from agent.podsource import RBAC_GROUP, RBAC_VERBS, RESOURCES
    return [{"apiGroups": [RBAC_GROUP], "resources": sorted(r.plural for r in RESOURCES),
             "verbs": list(RBAC_VERBS)}]


def _rbac(name: str, namespace: str, sa: str, rules: list[Obj]) -> list[Obj]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _md(sa, namespace)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": _md(name),
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": _md(name),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]},
    ]


# -- workloads --------------------------------------------------------------------------------------

def _env(**field_paths: str) -> list[Obj]:
    return [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in field_paths.items()]


def controller_args(o: argparse.Namespace) -> list[str]:
    return ["--kube", "--listen", f"0.0.0.0:{GRPC_PORT}", "--ca-dir", CA_DIR,
            "--trust-domain", o.trust_domain, "--root-namespace", o.namespace,
            "--ztunnel-service-account", f"system:serviceaccount:{o.namespace}:{ZTUNNEL_SA}",
            "--metrics-port", str(METRICS_PORT), "--log-level", o.log_level,
            "--waypoint-image", o.image, "--waypoint-pull-policy", o.pull_policy,
            "--waypoint-controller", f"{CONTROLLER}.{o.namespace}.svc:{GRPC_PORT}"]


def controller_objects(o: argparse.Namespace) -> list[Obj]:
    sel = {"app": CONTROLLER}
    ca_volume: Obj = ({"name": "ca", "secret": {"secretName": o.ca_secret, "defaultMode": 0o440}} if o.ca_secret
                      else {"name": "ca", "emptyDir": {}})
    pod = {
        "serviceAccountName": CONTROLLER,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1337, "runAsGroup": 1337, "fsGroup": 1337},
        "containers": [{
            "name": "controller", "image": o.image, "imagePullPolicy": o.pull_policy,
            "command": ["python3", "-m", "controller"], "args": controller_args(o),
            "ports": [{"name": "grpc", "containerPort": GRPC_PORT},
                      {"name": "http-metrics", "containerPort": METRICS_PORT}],
            # It binds its port only after translating the first snapshot: open port = ready.
            "readinessProbe": {"tcpSocket": {"port": GRPC_PORT}, "periodSeconds": 5},
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "ca", "mountPath": CA_DIR}],
        }],
        "volumes": [ca_volume],
    }
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": _md(CONTROLLER, o.namespace, **sel),
         "spec": {"selector": sel, "ports": [
             {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "appProtocol": "grpc"},
             {"name": "http-metrics", "port": METRICS_PORT, "targetPort": "http-metrics"}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _md(CONTROLLER, o.namespace, **sel),
         "spec": {"replicas": 1, "selector": {"matchLabels": sel}, "strategy": {"type": "Recreate"},
                  "template": {"metadata": {"labels": {**LABELS, **OPT_OUT, **sel}, "annotations": {
                      "prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}},
                      "spec": pod}}},
    ]


def ztunnel_args(o: argparse.Namespace) -> list[str]:
    return ["--node", "$(NODE_NAME)", "--zds-socket", f"{RUN_DIR}/zds.sock",
            "--controller", f"{CONTROLLER}.{o.namespace}.svc:{GRPC_PORT}",
            "--config-cache", f"{RUN_DIR}/config-cache.json", "--root-namespace", o.namespace,
            "--admin-address", "127.0.0.1:15000", "--admin-socket", f"{RUN_DIR}/ztunnel-admin.sock",
            "--node-token-file", f"{TOKEN_DIR}/token", "--trust-domain", o.trust_domain,
            "--cert-cache", f"{RUN_DIR}/certs", "--metrics-address", f"0.0.0.0:{ZTUNNEL_METRICS_PORT}",
            "--log-level", o.log_level]


def agent_args(o: argparse.Namespace) -> list[str]:
    # --ztunnel-cgroup is appended by the entrypoint: the cgroup of this pod (AMBIT_ZTUNNEL_POD_UID),
    # which only the host knows. ztunnel's container cgroup is below it, so the getsockopt program
    # attached there answers ztunnel's SO_ORIGINAL_DST.
    return ["--node", "$(NODE_NAME)", "--zds-socket", f"{RUN_DIR}/zds.sock", "--node-ip", "$(HOST_IP)",
            "--pin-base", "/sys/fs/bpf/ambit", "--capture", o.capture,
            "--status-file", f"{RUN_DIR}/agent-status.json"]


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
        "securityContext": {"privileged": True},     # BPF, cgroup attach, setns, bidirectional mounts
        "readinessProbe": {"exec": {"command": ["test", "-s", f"{RUN_DIR}/agent-status.json"]},
                           "periodSeconds": 5},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": [
            run,
            {"name": "bpffs", "mountPath": "/sys/fs/bpf", "mountPropagation": "Bidirectional"},
            {"name": "cgroup", "mountPath": "/sys/fs/cgroup"},
            {"name": "netns", "mountPath": "/var/run/netns", "mountPropagation": "HostToContainer"},
            {"name": "modules", "mountPath": "/host/lib/modules", "readOnly": True},
            {"name": "usr-src", "mountPath": "/host/usr/src", "readOnly": True},
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
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "volumeMounts": [run, {"name": "ca-token", "mountPath": TOKEN_DIR, "readOnly": True}],
    }
    pod = {
        "serviceAccountName": ZTUNNEL_SA,
        "hostPID": True,
        "priorityClassName": "system-node-critical",
        "terminationGracePeriodSeconds": 30,
        "tolerations": [{"operator": "Exists"}],
        "containers": [agent, ztunnel],
        "volumes": [
            {"name": "run", "emptyDir": {}},
            _host("bpffs", "/sys/fs/bpf", "DirectoryOrCreate"),
            _host("cgroup", o.host_cgroup),
            _host("netns", "/var/run/netns", "DirectoryOrCreate"),
            _host("modules", "/lib/modules"),
            _host("usr-src", "/usr/src"),
            {"name": "ca-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": CA_AUDIENCE, "expirationSeconds": 3600, "path": "token"}}]}},
        ],
    }
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _md(NODE, o.namespace, **sel),
            "spec": {"selector": {"matchLabels": sel},
                     "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                     "template": {"metadata": {"labels": {**LABELS, **OPT_OUT, **sel}, "annotations": {
                         "prometheus.io/scrape": "true", "prometheus.io/port": str(ZTUNNEL_METRICS_PORT)}},
                         "spec": pod}}}


# -- all of it --------------------------------------------------------------------------------------

def crds() -> list[Obj]:
    from controller.kinds import KINDS
    from controller.kinds.crds import crd
    return [crd(k) for k in KINDS if k.ambit_group]


def objects(o: argparse.Namespace) -> list[Obj]:
    """Every object, in the order `kubectl apply` must create them."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": _md(o.namespace)}
    return ([ns] + crds()
            + _rbac(CONTROLLER, o.namespace, CONTROLLER, controller_rules())
            + _rbac(NODE, o.namespace, ZTUNNEL_SA, node_rules())
            + controller_objects(o) + [node_daemonset(o)])


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
            if k in defaults and k not in ("func", "dry_run") and v != defaults[k]]


# -- the command ------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the manifests instead of applying them")
    p.add_argument("--namespace", default="ambit-system", help="where the controller and node pods run")
    p.add_argument("--image", default=default_image(), help="the Ambit image (all components)")
    p.add_argument("--pull-policy", default="IfNotPresent", choices=("IfNotPresent", "Always", "Never"))
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--capture", default="ebpf", choices=("ebpf", "iptables"))
    p.add_argument("--host-cgroup", default="/sys/fs/cgroup",
                   help="where the nodes mount the cgroup v2 hierarchy (it must be unified cgroup v2)")
    p.add_argument("--ca-secret", default="",
                   help="a Secret with ca.crt and ca.key to use as the CA (default: generated at start, "
                        "kept in an emptyDir: a controller restart makes a new root)")
    p.add_argument("--log-level", default="INFO")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ambit install")
    add_arguments(p)
    return p.parse_args(argv)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("install", help="install Ambit into a Kubernetes cluster (--dry-run: print YAML)")
    add_arguments(p)
    p.set_defaults(func=cmd_install)


def cmd_install(args: argparse.Namespace) -> int:
    text = render(args)
    if args.dry_run:
        sys.stdout.write(text)
        return 0
    try:
        p = subprocess.run(["kubectl", "apply", "--server-side", "--field-manager=ambit", "-f", "-"],
                           input=text, text=True)
    except FileNotFoundError:
        print("error: kubectl not found; use `ambit install --dry-run | kubectl apply --server-side -f -`",
              file=sys.stderr)
        return 1
    return p.returncode
