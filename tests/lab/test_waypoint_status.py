"""The controller's waypoint status and `ambit apply` warnings in a running lab, through the real
CLI: a selector policy with HTTP rules is reported (ZtunnelAccepted=False) and warned about, a
route for a host no waypoint serves is warned about, and a waypoint Gateway becomes Programmed
with its Service's VIP as its address (`ambit waypoint apply --wait`, `list`, `status`).

The waypoint's own Service is created here by hand, as the lab's waypoint pods do, so this test
needs only the controller and the store."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.lab.labctl import Lab
from tests.support.wait import wait_for

pytestmark = pytest.mark.lab

NS = "hwc-wp"


def _cond(lab: Lab, kind: str, name: str, type_: str) -> dict | None:
    o = json.loads(lab.ambit("get", kind, name, "-n", NS, "-o", "json").stdout)
    return next((c for c in (o.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def test_policy_condition_route_warning_and_waypoint_programmed(lab: Lab) -> None:
    objs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NS},
         "spec": {"clusterIP": "10.96.77.10", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}},
        {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "get-only", "namespace": NS},
         "spec": {"selector": {"matchLabels": {"app": "web"}},
                  "rules": [{"to": [{"operation": {"methods": ["GET"], "paths": ["/api/*"]}}]}]}},
        {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "web", "namespace": NS},
         "spec": {"hosts": ["web"], "http": [{"route": [{"destination": {"host": "web"}}],
                                                  "match": [{"uri": {"prefix": "/"}, "statPrefix": "web"}],
                                                  "retries": {"attempts": 2, "retryRemoteLocalities": True},
                                                  "corsPolicy": {"allowOrigins": [{"exact": "https://a.example"}]}}]}},
    ]
    try:
        p = lab.ambit("apply", "-f", "-", input=yaml.safe_dump_all(objs))
        assert "authorizationpolicy.security.istio.io/get-only created" in p.stdout
        assert (f"Warning: AuthorizationPolicy/{NS}/get-only: spec.rules[0].to[0].operation.methods: ztunnel cannot "
                "enforce HTTP attributes and fails closed") in p.stderr
        assert (f"Warning: VirtualService/{NS}/web: no waypoint serves this host: accepted, but not enforced until a "
                f"waypoint serves web.{NS}.svc.cluster.local") in p.stderr
        assert (f"Warning: VirtualService/{NS}/web: spec.http[0].match[0].statPrefix: accepted, "
                "not applied") in p.stderr
        # retries and CORS are applied: no warning
        assert "spec.http[0].retries" not in p.stderr and "corsPolicy" not in p.stderr

        # the running controller writes the policy's condition into the store
        c = wait_for(lambda: _cond(lab, "authorizationpolicy", "get-only", "ZtunnelAccepted"), timeout=10,
                     what="ZtunnelAccepted")
        assert (c["status"], c["reason"]) == ("False", "UnsupportedValue")

        # a waypoint: the lab runs it as a pod with a Service, and the Gateway is Programmed with that VIP
        p = lab.ambit("waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait", "--timeout", "30")
        assert f"waypoint {NS}/waypoint applied" in p.stdout
        c = wait_for(lambda: _cond(lab, "gateway", "waypoint", "Programmed"), timeout=20, what="Programmed")
        assert (c["status"], c["reason"]) == ("True", "Programmed"), c
        # the address is the VIP of the Service the lab created for the waypoint
        svc = json.loads(lab.ambit("get", "service", "waypoint", "-n", NS, "-o", "json").stdout)
        vip = svc["spec"]["clusterIP"]
        gw = json.loads(lab.ambit("get", "gateway", "waypoint", "-n", NS, "-o", "json").stdout)
        assert [a["value"] for a in gw["status"]["addresses"]] == [vip]
        listed = lab.ambit("waypoint", "list", "-n", NS).stdout.splitlines()
        assert listed[1].split() == ["waypoint", "ambit-waypoint", "service", "True", vip], listed
        assert lab.ambit("waypoint", "status", "-n", NS).returncode == 0

        # now a waypoint serves the host: the route applies without the "no waypoint" warning
        p = lab.ambit("apply", "-f", "-", input=yaml.safe_dump(objs[3]))
        assert "no waypoint serves" not in p.stderr and "spec.http[0].match[0].statPrefix" in p.stderr
    finally:
        lab.ambit("waypoint", "delete", "-n", NS, "--all", check=False)
        lab.ambit("delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all(objs[1:]), check=False)
        lab.ambit("delete", "service", "waypoint", "-n", NS, "--ignore-not-found", check=False)
        lab.ambit("delete", "namespace", NS, "--ignore-not-found", check=False)
