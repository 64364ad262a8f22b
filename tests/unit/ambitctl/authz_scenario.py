"""The scenario `ambit authz check` is tested on (unit and lab): the built-in lab (demo: ambient, no
waypoint; legacy: outside the mesh; default: ambient, myapp behind the waypoint default/waypoint)
with tests/fixtures/authz/policies.yaml, and a table of requests with the verdict Istio's
semantics give each (and the policy and rule that decide)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
POLICIES = REPO / "tests" / "fixtures" / "authz" / "policies.yaml"
GW_LABEL = "gateway.networking.k8s.io/gateway-name"


def policies() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(POLICIES.read_text()) if d]


def lab_objects() -> list[dict[str, Any]]:
    """What the lab's store holds once `ambit waypoint apply -n default --enroll-namespace` ran."""
    from ambitctl.lab import lab, topology
    from ambitctl.lab import spec as specmod
    objs = lab.store_objects(specmod.default_spec(None), topology.LabNames("cl"))
    for o in objs:
        if o["kind"] == "Namespace" and o["metadata"]["name"] == "default":
            o["metadata"]["labels"]["ambit.io/use-waypoint"] = "waypoint"
    return objs + [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": "waypoint", "namespace": "default", "labels": {"ambit.io/waypoint-for": "service"}},
         "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008,
                                                                        "protocol": "HBONE"}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "waypoint-0", "namespace": "default",
                      "labels": {GW_LABEL: "waypoint", "ambit.io/dataplane-mode": "none"}},
         "spec": {"nodeName": "node1", "serviceAccountName": "waypoint",
                  "containers": [{"name": "waypoint", "ports": [{"name": "mesh", "containerPort": 15008}]}]},
         "status": {"phase": "Running", "podIP": "10.210.1.50", "podIPs": [{"ip": "10.210.1.50"}]}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "waypoint", "namespace": "default", "labels": {GW_LABEL: "waypoint"}},
         "spec": {"selector": {GW_LABEL: "waypoint"}, "clusterIP": "10.96.0.50",
                  "ports": [{"name": "mesh", "port": 15008, "targetPort": 15008}]}},
        *policies(),
    ]


# (source pod, destination, method, path, headers) -> (allowed, deciding policy, rule) where the
# decider is the hop that denied, or for an allowed request the first hop that named a policy
# ("" when the default decided).
ECHO, IPERF, MYAPP = "echo.demo:8080", "iperf.demo:5201", "myapp.default:80"
CASES: list[tuple[str, str, str, str, tuple[tuple[str, str], ...], bool, str, str]] = [
    # demo/echo: L4 only (no waypoint): selector policies at the destination ztunnel
    ("demo/client", ECHO, "GET", "/", (), True, "demo/echo-from-client", "spec.rules[0]"),
    ("demo/client", ECHO, "POST", "/anything", (), True, "demo/echo-from-client", "spec.rules[0]"),
    ("demo/client", "demo/echo", "GET", "/", (), True, "demo/echo-from-client", "spec.rules[0]"),
    ("demo/client", "10.96.0.10:8080", "GET", "/", (), True, "demo/echo-from-client", "spec.rules[0]"),
    ("demo/client", "demo/echo-v1:8080", "GET", "/", (), True, "demo/echo-from-client", "spec.rules[0]"),
    ("demo/client", "demo/echo-v2:8080", "GET", "/", (), True, "demo/echo-from-client", "spec.rules[0]"),
    ("demo/iperf", ECHO, "GET", "/", (), False, "demo/echo-deny-iperf", "spec.rules[0]"),
    ("demo/iperf", "demo/echo-v1:8080", "GET", "/", (), False, "demo/echo-deny-iperf", "spec.rules[0]"),
    ("default/frontend", ECHO, "GET", "/", (), False, "demo/echo-from-client", ""),
    ("default/myapp-v1", ECHO, "GET", "/", (), False, "demo/echo-from-client", ""),
    ("default/myapp-v2", "demo/echo-v2:8080", "GET", "/", (), False, "demo/echo-from-client", ""),
    ("legacy/client", ECHO, "GET", "/", (), True, "demo/echo-from-client", "spec.rules[1]"),
    ("legacy/client", "demo/echo-v1:8080", "GET", "/", (), True, "demo/echo-from-client", "spec.rules[1]"),
    # demo/iperf: no AuthorizationPolicy; STRICT for it
    ("demo/client", IPERF, "GET", "/", (), True, "", ""),
    ("default/frontend", IPERF, "GET", "/", (), True, "", ""),
    ("legacy/client", IPERF, "GET", "/", (), False, "demo/iperf-strict", ""),
    ("legacy/client", "demo/iperf:5201", "GET", "/", (), False, "demo/iperf-strict", ""),
    # default/myapp: L7 at the waypoint, then the destination ztunnel sees the waypoint
    ("default/frontend", MYAPP, "GET", "/api/users", (), True, "default/myapp-api", "spec.rules[0]"),
    ("default/frontend", MYAPP, "HEAD", "/api/users", (), True, "default/myapp-api", "spec.rules[0]"),
    ("default/frontend", MYAPP, "POST", "/api/users", (), False, "default/myapp-api", ""),
    ("default/frontend", MYAPP, "GET", "/other", (), False, "default/myapp-api", ""),
    ("default/frontend", MYAPP, "GET", "/healthz", (), True, "default/myapp-api", "spec.rules[1]"),
    ("default/frontend", MYAPP, "GET", "/admin", (), False, "default/no-admin", "spec.rules[0]"),
    ("default/frontend", MYAPP, "GET", "/admin/users", (), False, "default/no-admin", "spec.rules[0]"),
    ("default/frontend", MYAPP, "DELETE", "/api/users", (), False, "default/no-admin", "spec.rules[1]"),
    ("default/frontend", "myapp.default.svc.cluster.local", "GET", "/api/x", (), True, "default/myapp-api",
     "spec.rules[0]"),
    ("demo/client", MYAPP, "GET", "/healthz", (), True, "default/myapp-api", "spec.rules[1]"),
    ("demo/client", MYAPP, "GET", "/api/users", (), False, "default/myapp-api", ""),
    ("demo/client", MYAPP, "GET", "/anything", (("x-team", "blue"),), True, "default/myapp-api", "spec.rules[2]"),
    ("demo/client", MYAPP, "GET", "/anything", (("x-team", "red"),), False, "default/myapp-api", ""),
    ("demo/client", MYAPP, "GET", "/admin", (("x-team", "blue"),), False, "default/no-admin", "spec.rules[0]"),
    ("default/frontend", MYAPP, "GET", "/anything", (("x-team", "blue"),), False, "default/myapp-api", ""),
    ("demo/iperf", MYAPP, "GET", "/healthz", (), True, "default/myapp-api", "spec.rules[1]"),
    # around the waypoint: straight to a pod that is bound to it
    ("default/frontend", "default/myapp-v1:8080", "GET", "/api/x", (), False, "", ""),
    ("demo/client", "default/myapp-v2:8080", "GET", "/healthz", (), False, "", ""),
    # outside the mesh: no waypoint; the destination ztunnel allows only the waypoint's identity
    ("legacy/client", MYAPP, "GET", "/healthz", (), False, "default/myapp-via-waypoint", ""),
]
