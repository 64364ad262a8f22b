"""The cluster manifests (`ambit install --dry-run`) checked against the code they run.

No cluster: the manifests are parsed and their RBAC, arguments, ports, paths and volumes are checked
against what the controller, the agent and ztunnel actually watch, accept and use.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.metrics import AgentMetrics
from agent.podsource import RESOURCES
from ambitctl.commands import install
from controller.sources.kube import STATUS_GROUP_SUFFIXES, default_types

REPO = Path(__file__).resolve().parents[3]
Obj = dict[str, Any]

EXPECTED_API_VERSIONS = {
    "Namespace": "v1", "ServiceAccount": "v1", "Service": "v1", "ConfigMap": "v1",
    "CustomResourceDefinition": "apiextensions.k8s.io/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1", "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "Role": "rbac.authorization.k8s.io/v1", "RoleBinding": "rbac.authorization.k8s.io/v1",   # CA Secret, Lease
    "Deployment": "apps/v1", "DaemonSet": "apps/v1",
    "ValidatingWebhookConfiguration": "admissionregistration.k8s.io/v1",
}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                  "ValidatingWebhookConfiguration"}


def render(*argv: str) -> list[Obj]:
    docs = [d for d in yaml.safe_load_all(install.render(install.parse(list(argv)))) if d is not None]
    assert all(isinstance(d, dict) for d in docs)
    return docs


def one(docs: list[Obj], kind: str, name: str) -> Obj:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def container(docs: list[Obj], kind: str, name: str, cname: str) -> Obj:
    pod = one(docs, kind, name)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == cname)


def expand(args: list[str], c: Obj) -> list[str]:
    """Kubernetes' $(VAR) expansion from the container's env; an undefined reference fails."""
    env = {e["name"]: f"<{e['name']}>" for e in c.get("env") or []}

    def sub(m: re.Match[str]) -> str:
        assert m.group(1) in env, f"container {c['name']}: $({m.group(1)}) is not in its env"
        return env[m.group(1)]
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, a) for a in args]


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


# -- shape ------------------------------------------------------------------------------------------

def test_every_object_has_the_right_kind_api_version_and_namespace() -> None:
    docs = render("--namespace", "mesh-ops")
    kinds = {d["kind"] for d in docs}
    assert kinds == set(EXPECTED_API_VERSIONS)
    for d in docs:
        assert d["apiVersion"] == EXPECTED_API_VERSIONS[d["kind"]], d["metadata"]["name"]
        assert d["metadata"]["name"]
        if d["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in d["metadata"], d["metadata"]["name"]
        else:
            assert d["metadata"]["namespace"] == "mesh-ops", f"{d['kind']}/{d['metadata']['name']}"
    assert docs[0] == {"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "mesh-ops", "labels": {"app.kubernetes.io/part-of": "ambit"}}}
    # CRDs before anything; workloads last (kubectl apply order).
    order = [d["kind"] for d in docs]
    assert order.index("CustomResourceDefinition") < order.index("ClusterRole") < order.index("Deployment")


def test_the_checked_in_yaml_is_the_default_rendering() -> None:
    assert (REPO / "deploy" / "ambit.yaml").read_text() == install.render(install.parse([])), \
        "deploy/ambit.yaml is stale: run `ambit install --dry-run > deploy/ambit.yaml`"


def test_crds_are_the_generated_ones_in_deploy_crds() -> None:
    rendered = [d for d in render() if d["kind"] == "CustomResourceDefinition"]
    on_disk = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "deploy" / "crds").glob("*.yaml"))]
    key = lambda d: d["metadata"]["name"]  # noqa: E731
    assert sorted(rendered, key=key) == sorted(on_disk, key=key)
    assert {d["spec"]["group"] for d in rendered} == {"security.ambit.io", "networking.ambit.io", "telemetry.ambit.io"}


# -- RBAC -------------------------------------------------------------------------------------------

def allowed(docs: list[Obj], namespace: str, sa: str, group: str, resource: str, verb: str) -> bool:
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    for b in (d for d in docs if d["kind"] == "ClusterRoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == namespace
                   for s in b["subjects"]):
            continue
        assert b["roleRef"]["kind"] == "ClusterRole" and b["roleRef"]["name"] in roles
        for rule in roles[b["roleRef"]["name"]]["rules"]:
            if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
                return True
    return False


def test_controller_may_list_and_watch_everything_its_kube_source_watches() -> None:
    docs = render("--namespace", "mesh-ops")
    sa = one(docs, "Deployment", "ambit-controller")["spec"]["template"]["spec"]["serviceAccountName"]
    types = default_types()
    assert {t.plural for t in types} >= {"pods", "services", "endpointslices", "namespaces", "nodes",
                                         "serviceaccounts", "authorizationpolicies", "httproutes"}
    for t in types:
        for verb in ("list", "watch"):
            assert allowed(docs, "mesh-ops", sa, t.group, t.plural, verb), f"{verb} {t.plural}.{t.group}"
        writes_status = t.group.endswith(STATUS_GROUP_SUFFIXES) or (t.group, t.plural) in {
            ("gateway.networking.k8s.io", p) for p in ("gateways", "httproutes", "grpcroutes", "tlsroutes", "tcproutes",
                                                   "backendtlspolicies", "gatewayclasses")
        } | {("", "pods")}      # an ingress pod's ListenersBound condition (controller/waypoints/podcondition.py)
        assert allowed(docs, "mesh-ops", sa, t.group, f"{t.plural}/status", "patch") == writes_status, t.plural
        for verb in ("get", "update"):       # status is only merge-patched, never read or replaced whole
            assert not allowed(docs, "mesh-ops", sa, t.group, f"{t.plural}/status", verb), (verb, t.plural)
    assert allowed(docs, "mesh-ops", sa, "authentication.k8s.io", "tokenreviews", "create")
    # Secrets: read cluster-wide, for certificates (the source asks for no Helm release nor service account
    # token, and keeps only certificate keys: tests/unit/controller/test_ingress_cluster.py); never written
    # outside its own namespace
    for verb in ("get", "list", "watch"):
        assert allowed(docs, "mesh-ops", sa, "", "secrets", verb), verb
    for verb in ("create", "update", "patch", "delete", "deletecollection"):
        assert not allowed(docs, "mesh-ops", sa, "", "secrets", verb), verb
    assert [t.field_selector for t in types if t.plural == "secrets"] == [
        "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token"]
    assert all(not t.field_selector for t in types if t.plural != "secrets")
    # ConfigMaps: read cluster-wide for client CA bundles, kept as their name and ca.crt alone
    # (tests/unit/controller/test_kube_source_configmaps.py); only ambit-root-cert is ever written
    for verb in ("list", "watch"):
        assert allowed(docs, "mesh-ops", sa, "", "configmaps", verb), verb
    assert not allowed(docs, "mesh-ops", sa, "", "configmaps", "delete")
    kept = {t.plural: t.data_keys for t in types if t.data_keys is not None}
    assert kept == {"configmaps": ("ca.crt",),
                    "secrets": ("tls.crt", "tls.key", "ca.crt", "ca.crl", "cert", "key", "cacert", "crl")}
    # ... and a Gateway's parameter overlays, each kept only up to 16 KiB (controller/waypoints/params.py)
    assert [(t.bounded_keys, t.key_bound) for t in types if t.bounded_keys] == [
        (("deployment", "service", "serviceAccount", "horizontalPodAutoscaler", "podDisruptionBudget"), 16384)]
    assert not allowed(docs, "mesh-ops", sa, "", "pods", "patch")
    # waypoints: it owns their Deployment, Service and ServiceAccount (deleted by the GC, not by it)
    for group, resource in (("apps", "deployments"), ("", "services"), ("", "serviceaccounts")):
        for verb in ("get", "create", "update"):
            assert allowed(docs, "mesh-ops", sa, group, resource, verb), f"{verb} {resource}"
        assert not allowed(docs, "mesh-ops", sa, group, resource, "delete")
    # and the HPA and PDB a Gateway's parameters ask for, which it deletes when they no longer do
    for group, resource in (("autoscaling", "horizontalpodautoscalers"), ("policy", "poddisruptionbudgets")):
        for verb in ("get", "create", "update", "delete"):
            assert allowed(docs, "mesh-ops", sa, group, resource, verb), f"{verb} {resource}"
        assert not allowed(docs, "mesh-ops", sa, group, resource, "list")
    assert allowed(docs, "mesh-ops", sa, "gateway.networking.k8s.io", "gateways/finalizers", "update")
    assert not allowed(docs, "mesh-ops", sa, "gateway.networking.k8s.io", "gateways", "update")
    # its built-in GatewayClasses: created when missing, never changed nor deleted (another
    # controller's class of the same name is left alone: controller/waypoints/gatewayclasses.py)
    assert allowed(docs, "mesh-ops", sa, "gateway.networking.k8s.io", "gatewayclasses", "create")
    for verb in ("update", "patch", "delete"):
        assert not allowed(docs, "mesh-ops", sa, "gateway.networking.k8s.io", "gatewayclasses", verb), verb


def test_node_pods_may_watch_what_the_agent_watches_and_nothing_more() -> None:
    docs = render()
    pod = one(docs, "DaemonSet", "ambit-node")["spec"]["template"]["spec"]
    sa = pod["serviceAccountName"]
    assert {r.plural for r in RESOURCES} == {"pods", "namespaces", "nodes"}
    for r in RESOURCES:
        for verb in ("list", "watch"):
            assert allowed(docs, "ambit-system", sa, "", r.plural, verb), f"{verb} {r.plural}"
    assert not allowed(docs, "ambit-system", sa, "", "secrets", "get")
    assert not allowed(docs, "ambit-system", sa, "authentication.k8s.io", "tokenreviews", "create")


# What each --repair-pods mode may do to pods beyond list/watch: the calls of agent/repair_kube.py
# (tests/unit/agent/test_repair_kube.py checks them against the requests on the wire), no more.
REPAIR_GRANTS = {
    "off": set(),
    "label": {("pods", "get"), ("pods/status", "patch"), ("events", "create")},
    "delete": {("pods", "get"), ("pods", "delete"), ("pods/status", "patch"), ("events", "create")},
}


@pytest.mark.parametrize("mode", ["off", "label", "delete", None])
def test_node_pods_may_repair_pods_exactly_as_their_mode_needs(mode: str | None) -> None:
    """Deleting pods is granted only with `--repair-pods delete` (the default: an uncaptured pod is a
    STRICT gap, and a deleted pod comes back through the CNI plugin, which fails closed); never
    create, update or patch of pods, and never an Event's update or delete."""
    docs = render(*(["--repair-pods", mode] if mode else []))
    mode = mode or "delete"
    sa = one(docs, "DaemonSet", "ambit-node")["spec"]["template"]["spec"]["serviceAccountName"]
    checked = [(r, v) for r in ("pods", "pods/status", "events")
               for v in ("get", "create", "update", "patch", "delete", "deletecollection")]
    granted = {(r, v) for r, v in checked if allowed(docs, "ambit-system", sa, "", r, v)}
    assert granted == REPAIR_GRANTS[mode]
    agent = container(docs, "DaemonSet", "ambit-node", "agent")
    assert flag(agent["args"], "--repair-pods") == mode
    port = int(flag(agent["args"], "--metrics-port"))
    assert {"name": "agent-metrics", "containerPort": port} in agent["ports"]


def namespaced_grants(docs: list[Obj], namespace: str, sa: str) -> list[Obj]:
    """The rules of every Role bound to `sa` in `namespace`."""
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == namespace}
    return [rule for b in docs if b["kind"] == "RoleBinding" and b["metadata"]["namespace"] == namespace
            and any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == namespace
                    for s in b["subjects"])
            for rule in roles[b["roleRef"]["name"]]["rules"]]


def test_the_controller_reads_and_replaces_only_its_own_configmap_and_lease() -> None:
    """It replaces the ambit-root-cert ConfigMap (controller/ca/publish.py) in the namespaces it
    publishes to and its leader Lease, by name, and writes no other ConfigMap. It reads ConfigMaps
    cluster-wide: an ingress Gateway's client certificate validation may name a CA bundle in any
    of them (spec.tls.frontend caCertificateRefs; it keeps their ca.crt alone, docs/security.md)."""
    from controller.ca.publish import ROOT_CONFIGMAP
    from controller.leader import LEASE_NAME
    docs = render("--namespace", "mesh-ops")
    sa = one(docs, "Deployment", "ambit-controller")["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    cm_rules = [r for r in roles["ambit-controller"]["rules"] if "configmaps" in r["resources"]]
    assert all(r.get("resourceNames") == [ROOT_CONFIGMAP] for r in cm_rules if "update" in r["verbs"])
    assert allowed(docs, "mesh-ops", sa, "", "configmaps", "create")
    assert {v for r in cm_rules for v in r["verbs"]} == {"get", "list", "watch", "create", "update"}
    lease_rules = [r for r in namespaced_grants(docs, "mesh-ops", sa) if "leases" in r["resources"]]
    assert all(r.get("resourceNames") == [LEASE_NAME] for r in lease_rules if set(r["verbs"]) - {"create"})
    assert {v for r in lease_rules for v in r["verbs"]} == {"get", "create", "update"}


def test_the_agent_reads_its_own_daemonset_and_no_other() -> None:
    """`--cleanup-on-delete NS/NAME` reads one DaemonSet when the agent stops (agent/shutdown.py): a
    cluster-wide `get daemonsets` would hand every node's credential the pod templates (env, images)
    of every DaemonSet in the cluster."""
    docs = render("--namespace", "mesh-ops")
    ds = one(docs, "DaemonSet", "ambit-node")
    sa = ds["spec"]["template"]["spec"]["serviceAccountName"]
    agent = container(docs, "DaemonSet", "ambit-node", "agent")
    ns, _, name = flag(agent["args"], "--cleanup-on-delete").partition("/")
    assert ns == "$(POD_NAMESPACE)" and name == ds["metadata"]["name"]
    assert not allowed(docs, "mesh-ops", sa, "apps", "daemonsets", "get"), "no cluster-wide DaemonSet reads"
    grants = [r for r in namespaced_grants(docs, "mesh-ops", sa) if "daemonsets" in r["resources"]]
    assert grants == [{"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get"],
                       "resourceNames": [name]}]


# -- arguments, ports, paths ------------------------------------------------------------------------

def test_controller_arguments_parse_and_match_the_service_and_the_ca_admission() -> None:
    from controller.__main__ import parse_args
    docs = render("--namespace", "mesh-ops", "--trust-domain", "example.org")
    c = container(docs, "Deployment", "ambit-controller", "controller")
    assert c["command"][-2:] == ["-m", "controller"]
    args = parse_args(expand(c["args"], c))
    assert args.kube and args.ca_secret == "ambit-ca" and args.root_namespace == "mesh-ops"
    assert args.trust_domain == "example.org" and args.ca_dir is None
    port = int(args.listen.rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["grpc"] == port and ports["http-metrics"] == args.metrics_port
    assert c["readinessProbe"]["tcpSocket"]["port"] == port
    svc = one(docs, "Service", "ambit-controller")
    assert svc["spec"]["selector"] == one(docs, "Deployment", "ambit-controller")["spec"]["selector"]["matchLabels"]
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    # The CA admits exactly the node pods' service account.
    ds_sa = one(docs, "DaemonSet", "ambit-node")["spec"]["template"]["spec"]["serviceAccountName"]
    assert args.ztunnel_service_account == f"system:serviceaccount:mesh-ops:{ds_sa}"
    # It serves TLS as the identity ztunnel pins, under the Service's name, and may elect a leader.
    zt = container(docs, "DaemonSet", "ambit-node", "ztunnel")
    assert flag(zt["args"], "--controller-identity") == args.identity
    assert flag(zt["args"], "--controller").startswith(f"{args.controller_service_account}.mesh-ops.svc:")
    assert args.leader_elect and {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]


def test_the_webhook_configuration_reaches_the_controllers_webhook_under_its_certificates_name() -> None:
    """The API server calls `<service>.<namespace>.svc:<port><path>` and checks that name in the
    certificate: the Service must be the controller's, its port must lead to the port
    `--webhook-listen` binds, the name must be one the controller's certificate carries, and
    the configuration starts `Ignore` (the controller switches it: controller/admission/patcher.py)."""
    from controller.__main__ import parse_args
    from controller.admission import parse_listen
    from controller.admission.patcher import CONFIG_NAME, PROBE_GROUP, PROBE_PLURAL, WEBHOOK_NAME
    from controller.admission.server import PATH
    from controller.ca_setup import serving_hosts
    docs = render("--namespace", "mesh-ops")
    c = container(docs, "Deployment", "ambit-controller", "controller")
    args = parse_args(expand(c["args"], c))
    cfg = one(docs, "ValidatingWebhookConfiguration", CONFIG_NAME)
    [wh] = cfg["webhooks"]
    assert wh["name"] == WEBHOOK_NAME and wh["failurePolicy"] == "Ignore" and wh["sideEffects"] == "None"
    assert wh["admissionReviewVersions"] == ["v1"] and "caBundle" not in wh["clientConfig"]
    ref = wh["clientConfig"]["service"]
    assert ref["path"] == PATH and args.webhook_config == CONFIG_NAME
    svc = one(docs, "Service", ref["name"])
    assert svc["metadata"]["namespace"] == ref["namespace"] == "mesh-ops"
    [port] = [p for p in svc["spec"]["ports"] if p["port"] == ref["port"]]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports[port["targetPort"]] == parse_listen(args.webhook_listen)[1]
    assert f"{ref['name']}.{ref['namespace']}.svc" in serving_hosts(args.identity, args.cluster_domain)
    # Istio's and Ambit's groups, creates and updates only (status writes are a subresource: not matched)
    [rule] = wh["rules"]
    assert {"security.istio.io", "networking.istio.io", "telemetry.istio.io", "security.ambit.io"} <= set(rule["apiGroups"])
    assert not any("gateway.networking.k8s.io" in g for g in rule["apiGroups"])
    assert rule["resources"] == ["*"] and rule["operations"] == ["CREATE", "UPDATE"]
    # RBAC: this configuration alone, by name; the dry run's create in the root namespace alone
    sa = one(docs, "Deployment", "ambit-controller")["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    hook_rules = [r for r in roles["ambit-controller"]["rules"] if "validatingwebhookconfigurations" in r["resources"]]
    assert hook_rules == [{"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"],
                           "verbs": ["get", "update"], "resourceNames": [CONFIG_NAME]}]
    assert not allowed(docs, "mesh-ops", sa, PROBE_GROUP, PROBE_PLURAL, "create")
    assert {"apiGroups": [PROBE_GROUP], "resources": [PROBE_PLURAL], "verbs": ["create"]} in \
        namespaced_grants(docs, "mesh-ops", sa)
    # the configuration goes after the controller (kubectl apply order; uninstall deletes it first)
    order = [d["kind"] for d in docs]
    assert order.index("Deployment") < order.index("ValidatingWebhookConfiguration")


@pytest.mark.parametrize("argv", [("--config-validation", "false"), ("--set", "global.configValidation=false")])
def test_config_validation_off_renders_no_webhook_configuration_and_no_webhook_listener(argv: tuple[str, ...]) -> None:
    from controller.__main__ import parse_args
    o = install.parse(list(argv[:2]) if argv[0] != "--set" else [])
    if argv[0] == "--set":
        o = install.apply_sets(o, [argv[1]])
    docs = [d for d in yaml.safe_load_all(install.render(o)) if d is not None]
    assert not any(d["kind"] == "ValidatingWebhookConfiguration" for d in docs)
    c = container(docs, "Deployment", "ambit-controller", "controller")
    assert parse_args(expand(c["args"], c)).webhook_listen == ""
    assert any(d["kind"] == "ValidatingWebhookConfiguration" for d in render())     # on by default


def test_outbound_traffic_policy_reaches_the_controller_through_its_mounted_mesh_config(tmp_path: Path) -> None:
    """`--set meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY` (istioctl's key): a ConfigMap the
    controller mounts as its --mesh-config, which the controller's own parser accepts."""
    from controller import meshconfig
    from controller.__main__ import parse_args
    for argv, mode in [((), "ALLOW_ANY"), (("--outbound-traffic-policy", "REGISTRY_ONLY"), "REGISTRY_ONLY")]:
        docs = render(*argv)
        c = container(docs, "Deployment", "ambit-controller", "controller")
        path = parse_args(expand(c["args"], c)).mesh_config
        mount = next(m for m in c["volumeMounts"] if str(path).startswith(m["mountPath"] + "/"))
        vol = next(v for v in one(docs, "Deployment", "ambit-controller")["spec"]["template"]["spec"]["volumes"]
                   if v["name"] == mount["name"])
        cm = one(docs, "ConfigMap", vol["configMap"]["name"])
        f = tmp_path / path.name
        f.write_text(cm["data"][path.name])
        assert meshconfig.load(f, "cluster.local").outbound_traffic_policy == mode


def test_ztunnel_arguments_parse_and_reach_the_controller_service() -> None:
    from controller.__main__ import parse_args as controller_parse_args
    from ztunnel.settings import load as parse_args
    docs = render("--namespace", "mesh-ops", "--trust-domain", "example.org")
    c = container(docs, "DaemonSet", "ambit-node", "ztunnel")
    args = parse_args(expand(c["args"], c))
    ctl = container(docs, "Deployment", "ambit-controller", "controller")
    assert args.node == "<NODE_NAME>" and args.root_namespace == "mesh-ops"
    assert args.trust_domain == controller_parse_args(expand(ctl["args"], ctl)).trust_domain == "example.org"
    assert args.ca is None, "certificates come from the controller's address"
    # The CA credential is the projected token, read from its mount (re-read: it rotates).
    token_mounts = {m["mountPath"] for m in c["volumeMounts"] if m["name"] == "ca-token"}
    assert str(args.node_token_file.parent) in token_mounts
    metrics_port = int(args.metrics_address.rsplit(":", 1)[1])
    assert {"name": "http-metrics", "containerPort": metrics_port} in c["ports"]
    annotations = one(docs, "DaemonSet", "ambit-node")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)
    host, port = args.controller.rsplit(":", 1)
    svc = one(docs, "Service", "ambit-controller")
    assert host == f"{svc['metadata']['name']}.mesh-ops.svc"
    assert int(port) in {p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"}
    assert args.admin_address.startswith("127.0.0.1:"), "the admin endpoint must not face the network"
    probe = c["readinessProbe"]["exec"]["command"]
    assert flag(probe, "--unix-socket") == str(args.admin_socket) and probe[-1].endswith("/healthz/ready")
    # the path is one ztunnel's admin endpoint serves, and curl fails (-f) on its 503
    from urllib.parse import urlsplit

    from ztunnel import admin
    from ztunnel.meshstate import MeshState
    assert urlsplit(probe[-1]).path in admin.routes(MeshState()) and "-sf" in probe


def test_the_annotated_port_serves_the_agents_metrics_with_ztunnels() -> None:
    """Prometheus's annotation-based discovery scrapes one port per pod: the one the node pod names
    (ztunnel's). It must serve the agent's families too, or the alerts on them (AmbitPodsUncaptured,
    AmbitPodRepairFailing) never fire in such a cluster. ztunnel is told to merge the agent's, from
    the port and path the agent serves, over the pod's loopback; one scrape, over real HTTP, of
    ztunnel's endpoint built from these arguments (the agent's real endpoint on a free loopback port
    standing for the pod's 15014) carries both."""
    import dataclasses
    import socket
    import threading
    import urllib.request

    from agent import health
    from agent.settings import load as agent_settings
    from ambit.dataplane.telemetry.merge import MetricsMerger, parse_source
    from ambit.dataplane.telemetry.metrics import Metrics, MetricsServer
    from ztunnel.settings import load as ztunnel_settings
    docs = render()
    z, a = (container(docs, "DaemonSet", "ambit-node", n) for n in ("ztunnel", "agent"))
    zs = ztunnel_settings(expand(z["args"], z))
    s = agent_settings([*expand(a["args"], a), "--ztunnel-cgroup", "/sys/fs/cgroup/kubepods.slice/pod"], {})
    annotations = one(docs, "DaemonSet", "ambit-node")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == zs.metrics_address.rsplit(":", 1)[1]
    assert zs.merge_metrics_from, "ztunnel does not merge the agent's metrics: annotation scrapes never see them"
    src = parse_source(zs.merge_metrics_from)
    assert src.host == "127.0.0.1" and src.port == s.metrics_port, "ztunnel merges a port the agent does not serve"
    assert "hostNetwork" not in one(docs, "DaemonSet", "ambit-node")["spec"]["template"]["spec"], \
        "agent and ztunnel must share the pod's loopback"

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    agent = AgentMetrics()
    agent.uncaptured.set(1)
    aport = free_port()
    served = health.serve(agent, lambda: None, aport, addr="127.0.0.1")
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    msrv = MetricsServer(Metrics(), MetricsMerger(dataclasses.replace(src, port=aport)))
    zport = free_port()
    try:
        asyncio.run_coroutine_threadsafe(msrv.start("127.0.0.1", zport), loop).result(10)
        path = annotations.get("prometheus.io/path", "/metrics")
        with urllib.request.urlopen(f"http://127.0.0.1:{zport}{path}", timeout=10) as r:
            text = r.read().decode()
    finally:
        asyncio.run_coroutine_threadsafe(msrv.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)
        served.close()
    assert "\nambit_agent_uncaptured_pods 1.0\n" in text
    assert "ambit_agent_pod_repairs_total{" in text and "ambit_metrics_merge_failures_total{" in text


def agent_usage() -> tuple[set[str], set[str]]:
    """(all flags, required flags) of `python -m agent`, from its own --help."""
    out = subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout
    usage = out.split("\n\n")[0]
    flags = set(re.findall(r"(--[\w-]+)", usage))
    optional = set(re.findall(r"\[(--[\w-]+)", usage))
    return flags, flags - optional


def test_agent_arguments_are_its_own_and_complete_with_the_entrypoints_cgroup() -> None:
    docs = render("--capture", "iptables")
    c = container(docs, "DaemonSet", "ambit-node", "agent")
    z = container(docs, "DaemonSet", "ambit-node", "ztunnel")
    assert c["command"][0] == install.ENTRYPOINT and c["command"][-2:] == ["-m", "agent"]
    args = expand(c["args"], c)
    flags, required = agent_usage()
    given = {a for a in args if a.startswith("--")}
    assert given <= flags, f"unknown agent flags: {given - flags}"
    # The entrypoint appends --ztunnel-cgroup when told this pod's UID.
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}["AMBIT_ZTUNNEL_POD_UID"] == "metadata.uid"
    assert required <= given | {"--ztunnel-cgroup"}, f"missing: {required - given}"
    assert "--store" not in given, "without --store the agent watches the Kubernetes API"
    # and they parse with the agent's own settings, as the entrypoint execs them
    from agent.settings import load as agent_settings
    s = agent_settings([*args, "--ztunnel-cgroup", "/sys/fs/cgroup/kubepods.slice/pod"], {})
    assert s.store is None and s.controller is None and s.cleanup_on_delete == "<POD_NAMESPACE>/ambit-node"
    assert flag(args, "--capture") == "iptables"
    assert flag(args, "--node-ip") == "<HOST_IP>"
    # agent and ztunnel meet on the same socket, in the volume both mount.
    zargs = expand(z["args"], z)
    sock = flag(args, "--zds-socket")
    assert sock == flag(zargs, "--zds-socket")
    shared = {m["mountPath"] for m in c["volumeMounts"] if m["name"] == "run"}
    assert shared == {m["mountPath"] for m in z["volumeMounts"] if m["name"] == "run"}
    assert any(sock.startswith(p + "/") for p in shared)
    assert flag(args, "--pin-base").startswith("/sys/fs/bpf/")


@pytest.mark.parametrize("argv,on", [((), True), (("--dns-capture", "false"), False), (("--dns-capture", "TRUE"), True)])
def test_dns_capture_option_reaches_the_agent_as_its_node_default(argv: tuple[str, ...], on: bool) -> None:
    c = container(render(*argv), "DaemonSet", "ambit-node", "agent")
    args = expand(c["args"], c)
    from agent.settings import load as agent_settings
    s = agent_settings([*args, "--ztunnel-cgroup", "/sys/fs/cgroup/kubepods.slice/pod"], {})
    assert s.dns_capture is on
    # --set dnsCapture=false, Helm's spelling, is the same option
    o = install.apply_sets(install.parse([]), ["dnsCapture=false"])
    assert o.dns_capture is False
    with pytest.raises(install.InstallError, match="dns-capture"):
        install.apply_sets(install.parse([]), ["dnsCapture=maybe"])


def test_agent_probe_asks_the_port_and_path_the_agent_serves() -> None:
    """The readiness probe is an httpGet the agent answers from memory (agent/health.py), not an exec
    that starts a Python on every node every period; its port must be one the agent's own arguments
    make it serve (`--metrics-port` is off by default), and its path the agent's readiness, not the
    metrics (which are 200 from the first second)."""
    c = container(render(), "DaemonSet", "ambit-node", "agent")
    probe = c["readinessProbe"]
    assert set(probe) & {"exec", "httpGet", "tcpSocket", "grpc"} == {"httpGet"}
    from agent import health
    from agent.settings import load as agent_settings
    s = agent_settings([*expand(c["args"], c), "--ztunnel-cgroup", "/sys/fs/cgroup/kubepods.slice/pod"], {})
    assert s.metrics_port and probe["httpGet"]["port"] == s.metrics_port, "the probe asks a port the agent does not serve"
    assert {"name": "agent-metrics", "containerPort": s.metrics_port} in c["ports"]
    assert probe["httpGet"]["path"] == health.READY_PATH
    status = health.AgentEndpoint(AgentMetrics(), lambda: "not yet").handle("GET", probe["httpGet"]["path"]).status
    assert status == 503, "the probe's path is not the agent's readiness"
    assert not c.get("livenessProbe"), "no liveness probe (docs/operations.md, readiness)"


def test_node_pod_has_the_host_access_capture_needs() -> None:
    docs = render("--host-cgroup", "/sys/fs/cgroup/unified")
    pod = one(docs, "DaemonSet", "ambit-node")["spec"]["template"]["spec"]
    assert pod["hostPID"] is True, "the agent opens /proc/<pid>/ns/net of other pods' processes"
    assert not pod.get("hostNetwork"), "nothing of Ambit's sits in the node's netns"
    volumes = {v["name"]: v for v in pod["volumes"]}
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    assert agent["securityContext"]["privileged"] is True
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    host = {path: volumes[m["name"]].get("hostPath", {}).get("path") for path, m in mounts.items()}
    assert host["/sys/fs/bpf"] == "/sys/fs/bpf" and mounts["/sys/fs/bpf"]["mountPropagation"] == "Bidirectional"
    assert host["/sys/fs/cgroup"] == "/sys/fs/cgroup/unified"
    assert host["/var/run/netns"] == "/var/run/netns"
    assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    assert host["/host/lib/modules"] == "/lib/modules" and host["/host/usr/src"] == "/usr/src"
    assert mounts["/host/lib/modules"]["readOnly"] and mounts["/host/usr/src"]["readOnly"]
    # Ambit's own pods opt out of capture.
    labels = one(docs, "DaemonSet", "ambit-node")["spec"]["template"]["metadata"]["labels"]
    from agent.enrolment import pod_opted_out
    assert pod_opted_out(labels)


def test_ztunnel_presents_a_projected_token_for_the_cas_audience() -> None:
    from controller.ca import TokenReviewVerifier
    docs = render()
    pod = one(docs, "DaemonSet", "ambit-node")["spec"]["template"]["spec"]
    z = next(c for c in pod["containers"] if c["name"] == "ztunnel")
    volumes = {v["name"]: v for v in pod["volumes"]}
    token_mount = next(m for m in z["volumeMounts"] if m["mountPath"] == install.TOKEN_DIR)
    src = volumes[token_mount["name"]]["projected"]["sources"][0]["serviceAccountToken"]
    assert src["audience"] in TokenReviewVerifier(None, set()).audiences
    assert src["expirationSeconds"] <= 3600 * 24
    caps = z["securityContext"]["capabilities"]
    assert not z["securityContext"]["privileged"] and caps["drop"] == ["ALL"]
    assert set(caps["add"]) == {"NET_ADMIN", "SYS_ADMIN", "NET_RAW"}


def test_every_mount_has_a_volume_and_every_container_the_chosen_image() -> None:
    docs = render("--image", "registry.example/ambit:1.2.3", "--pull-policy", "Always")
    for d in docs:
        if d["kind"] not in ("Deployment", "DaemonSet"):
            continue
        pod = d["spec"]["template"]["spec"]
        names = {v["name"] for v in pod.get("volumes", [])}
        assert len(names) == len(pod.get("volumes", []))
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        for c in pod["containers"]:
            assert c["image"] == "registry.example/ambit:1.2.3" and c["imagePullPolicy"] == "Always"
            for m in c.get("volumeMounts") or []:
                assert m["name"] in names, f"{d['metadata']['name']}/{c['name']}: no volume {m['name']}"


def test_ca_secret_names_the_secret_the_controller_keeps_its_ca_in() -> None:
    c = container(render("--ca-secret", "my-ca"), "Deployment", "ambit-controller", "controller")
    assert flag(c["args"], "--ca-secret") == "my-ca"
    # ztunnel pins the root the controller publishes (controller/ca/publish.py), not the channel's.
    docs = render()
    zt = container(docs, "DaemonSet", "ambit-node", "ztunnel")
    pod = one(docs, "DaemonSet", "ambit-node")["spec"]["template"]["spec"]
    mount = {m["name"]: m["mountPath"] for m in zt["volumeMounts"]}["root-cert"]
    assert flag(zt["args"], "--controller-root-cert") == f"{mount}/root-cert.pem"
    assert {v["name"]: v for v in pod["volumes"]}["root-cert"] == {"name": "root-cert",
                                                                  "configMap": {"name": "ambit-root-cert"}}


def test_the_header_says_how_to_reproduce_the_rendering() -> None:
    text = install.render(install.parse(["--namespace", "x", "--capture", "iptables"]))
    assert text.splitlines()[0] == "# Ambit: rendered by `ambit install --dry-run --namespace x --capture iptables`; do not edit."


@pytest.mark.parametrize("argv", [["install", "--dry-run"], ["install", "--dry-run", "--namespace", "n2"]])
def test_cli_command_prints_the_manifests(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers()
    install.register(sub)
    args = ap.parse_args(argv)
    assert args.func(args) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    ns = argv[-1] if "--namespace" in argv else "ambit-system"
    assert one(docs, "DaemonSet", "ambit-node")["metadata"]["namespace"] == ns


def test_node_daemonset_rolls_safely_on_linux_nodes_and_ztunnel_has_no_oom_limit() -> None:
    ds = one(render(), "DaemonSet", "ambit-node")
    roll = ds["spec"]["updateStrategy"]
    assert roll == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    z = next(c for c in pod["containers"] if c["name"] == "ztunnel")
    assert z["resources"]["requests"]["memory"] and "limits" not in z["resources"]
    # A surge roll's old ztunnel drains its connections before the kubelet's SIGKILL.
    drain = float(z["args"][z["args"].index("--termination-drain") + 1])
    assert 0 < drain < pod["terminationGracePeriodSeconds"]


def test_the_agent_installs_the_cni_plugin_into_the_hosts_cni_directories() -> None:
    docs = render("--cni-conf-dir", "/var/lib/rancher/k3s/agent/etc/cni/net.d")
    pod = one(docs, "DaemonSet", "ambit-node")["spec"]["template"]["spec"]
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    args = expand(agent["args"], agent)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]].get("hostPath", {}).get("path") for m in agent["volumeMounts"]}
    # The paths the agent writes into the host's conflist (socket, token copy) must be true on the host:
    # every CNI directory is mounted at its own host path.
    conf, bins, sock = flag(args, "--cni-conf-dir"), flag(args, "--cni-bin-dir"), flag(args, "--cni-socket")
    assert conf == "/var/lib/rancher/k3s/agent/etc/cni/net.d" and mounts[conf] == conf
    assert mounts[bins] == bins == "/opt/cni/bin"
    assert mounts[str(Path(sock).parent)] == str(Path(sock).parent)
    assert flag(args, "--cni-python") == "/usr/bin/python3"


@pytest.mark.parametrize(("argv", "memory"), [
    (["--ztunnel-workers", "1"], "256Mi"),
    (["--ztunnel-workers", "2"], "320Mi"),
    (["--ztunnel-workers", "4"], "448Mi"),
    ([], "704Mi"),                  # --ztunnel-workers 0 may resolve to 8 on a large node
    (["--ztunnel-workers", "4", "--ztunnel-memory-request", "1Gi"], "1Gi"),
])
def test_ztunnels_memory_request_follows_its_workers(argv: list[str], memory: str) -> None:
    """Every worker is a whole ztunnel, so a request sized for one process would let the scheduler pack
    a node below the working set of its workers; an explicit request wins."""
    z = container(render(*argv), "DaemonSet", "ambit-node", "ztunnel")
    assert z["resources"]["requests"]["memory"] == memory and "limits" not in z["resources"]
    assert flag(z["args"], "--workers") == (argv[1] if argv else "0")


@pytest.mark.parametrize("good", ["512Mi", "1Gi", "1.5Gi", "1G", "800M", "536870912", "0.5Gi"])
def test_any_kubernetes_memory_quantity_is_taken_as_given(good: str) -> None:
    z = container(render("--ztunnel-memory-request", good), "DaemonSet", "ambit-node", "ztunnel")
    assert z["resources"]["requests"]["memory"] == good


@pytest.mark.parametrize("bad", ["0Mi", "0", "0.0Gi", "lots", "512MB", "1.5.0Gi", "Mi", "1gi", "1e9"])
def test_a_memory_request_that_is_not_a_quantity_is_refused_naming_the_flag(
        bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        install.parse(["--ztunnel-memory-request", bad])
    err = capsys.readouterr().err
    assert "--ztunnel-memory-request" in err and repr(bad) in err and "quantity" in err


def test_set_reaches_the_workers_and_the_memory_request() -> None:
    o = install.apply_sets(install.parse([]), ["ztunnelWorkers=2", "waypointWorkers=3"])
    assert (o.ztunnel_workers, o.waypoint_workers) == (2, 3)
    assert install.ztunnel_memory_request(o) == "320Mi"
    o = install.apply_sets(o, ["ztunnelMemoryRequest=2Gi"])
    assert install.ztunnel_memory_request(o) == "2Gi"
    with pytest.raises(install.InstallError, match="ztunnel-memory-request"):
        install.apply_sets(o, ["ztunnelMemoryRequest=2GB"])


def test_controller_has_a_writable_temporary_directory_on_its_read_only_root() -> None:
    """With the gate in front of its gRPC port (the manifests' --listen is TCP and
    --max-connections-per-peer is on by default) the controller makes grpc's private socket
    directory with tempfile.mkdtemp at start; on a read-only root file system without a writable
    temporary directory that raises, and the controller crash-loops before serving anything."""
    import tempfile

    from controller import acceptgate
    from controller.__main__ import parse_args
    docs = render()
    c = container(docs, "Deployment", "ambit-controller", "controller")
    args = parse_args(expand(c["args"], c))
    assert acceptgate.gated(args.listen, args.max_connections_per_peer)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in c.get("env") or []}
    tmp = env.get("TMPDIR") or "/tmp"
    gate = acceptgate.AcceptGate(1, 1)
    try:
        assert gate.backend_path.startswith(tempfile.gettempdir() + "/"), "the gate's directory is the temp dir's"
    finally:
        import shutil
        shutil.rmtree(gate._dir, ignore_errors=True)
        acceptgate._GATES.pop(gate.prefix, None)
    pod = one(docs, "Deployment", "ambit-controller")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    [mount] = [m for m in c["volumeMounts"] if m["mountPath"] == tmp]
    assert not mount.get("readOnly") and "emptyDir" in volumes[mount["name"]]


def _mib(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_the_controllers_memory_holds_its_measured_working_set_and_its_defaults_full_house() -> None:
    """The request is at least a 1,000-pod cluster's measured working set (and the ~150 MB seen in
    the lab under pod churn); the limit serves every default connection carrying a subscription at
    10,000 pods before the memory guard refuses, so no default lets the process pass its own limit
    (controller/sizing.py, docs/operations.md "Sizing the controller")."""
    from controller import sizing
    from controller.__main__ import parse_args

    c = container(render(), "Deployment", "ambit-controller", "controller")
    request, limit = _mib(c["resources"]["requests"]["memory"]), _mib(c["resources"]["limits"]["memory"])
    assert request >= sizing.working_set_mib(sizing.TYPICAL) >= 150 * 1e6 / 2**20, c["resources"]
    args = parse_args(expand(c["args"], c))
    assert args.memory_guard_fraction > 0, "the manifest turns the memory guard off"
    full = sizing.Load(pods=10_000, subscriptions=args.max_connections, connections=args.max_connections)
    assert limit * args.memory_guard_fraction >= sizing.working_set_mib(full), (
        f"the controller's limit {limit:.0f} MiB refuses new streams at {args.memory_guard_fraction:.0%} before "
        f"--max-connections {args.max_connections} is served ({sizing.working_set_mib(full):.0f} MiB)")


def test_the_clusters_proxies_abort_a_wedged_event_loop_so_it_is_restarted() -> None:
    """No liveness probe can tell a wedged ztunnel or waypoint from one waiting for the controller
    (docs/operations.md), so the manifests turn on the event-loop watchdog's abort: the node pod's
    ztunnel and every waypoint Deployment the controller renders, parsed by the binaries' own settings."""
    from ambit.dataplane.settings import WATCHDOG_KILL_AFTER
    from controller.waypoints.render import WaypointDeploySettings, deployment
    from waypoint.settings import load as waypoint_settings
    from ztunnel.settings import load as ztunnel_settings
    assert WATCHDOG_KILL_AFTER > 1.0, "well past a mega-miss (1 s): a long stall is logged before any abort"
    z = container(render(), "DaemonSet", "ambit-node", "ztunnel")
    assert ztunnel_settings(expand(z["args"], z), {}).watchdog_kill_after == WATCHDOG_KILL_AFTER
    assert "livenessProbe" not in z
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
          "metadata": {"name": "wp", "namespace": "demo", "uid": "u1"},
          "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008,
                                                                        "protocol": "HBONE"}]}}
    dep = deployment(gw, WaypointDeploySettings(image="ambit:test", controller_address="ambit-controller:15012"))
    w = dep["spec"]["template"]["spec"]["containers"][0]
    assert waypoint_settings(expand(w["args"], w), {}).watchdog_kill_after == WATCHDOG_KILL_AFTER
    assert "livenessProbe" not in w


def test_the_documented_log_level_is_one_every_component_can_start_with() -> None:
    """`ambit install --set logLevel=debug` (docs/cli.md's example) rendered `--log-level debug`,
    which Python's logging refuses: every controller, ztunnel and agent died at start."""
    import logging
    o = install.apply_sets(install.parse([]), ["logLevel=debug"])
    levels = [c["args"][c["args"].index("--log-level") + 1]
              for obj in install.objects(o) if obj["kind"] in ("Deployment", "DaemonSet")
              for c in obj["spec"]["template"]["spec"]["containers"] if "--log-level" in (c.get("args") or [])]
    assert levels and set(levels) == {"DEBUG"}
    for level in levels:
        logging.getLogger("ambit-test").setLevel(level)       # what basicConfig(level=) does: raises if unknown
    with pytest.raises(install.InstallError, match="'loud': must be one of DEBUG, INFO"):
        install.apply_sets(install.parse([]), ["logLevel=loud"])
