"""An ingress Gateway listener on a port its pod cannot bind, in a running lab through the real
CLI: the gateway pod's admin endpoint holds 127.0.0.1:15000 in its netns, so a listener on 15000
cannot bind 0.0.0.0:15000. The Gateway's status (the lab store, written by the controller from the
pod's status reports) must say so, naming the port and the OS error, while the other listener is
Programmed and serves."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import yaml

from ambitctl.lab import outside
from ambitctl.lab.topology import LabNames
from tests.lab.labctl import Lab

pytestmark = pytest.mark.lab

NS = "demo"
GATEWAY = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": "binds", "namespace": NS},
           "spec": {"gatewayClassName": "ambit", "listeners": [
               {"name": "http", "port": 80, "protocol": "HTTP"},
               {"name": "clash", "port": 15000, "protocol": "HTTP"}]}}


def _conds(entry: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c.get("message", "")) for c in entry.get("conditions") or []}


def _status(lab: Lab) -> dict[str, Any]:
    return json.loads(lab.ambit("get", "gateway", "binds", "-n", NS, "-o", "json").stdout).get("status") or {}


def test_a_listener_whose_port_the_pod_holds_is_not_accepted(lab: Lab) -> None:
    try:
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump(GATEWAY))

        def refused() -> dict[str, Any] | None:
            st = _status(lab)
            ln = next((x for x in st.get("listeners") or [] if x["name"] == "clash"), None)
            return st if ln is not None and _conds(ln).get("Accepted", ("",))[0] == "False" else None
        st = lab.wait_for(refused, timeout=40, what="listener clash: Accepted=False")
        ls = {x["name"]: _conds(x) for x in st["listeners"]}
        status, reason, msg = ls["clash"]["Accepted"]
        assert reason == "PortUnavailable" and "15000" in msg and "EADDRINUSE" in msg, msg
        assert ls["clash"]["Programmed"][:2] == ("False", "PortUnavailable")
        assert ls["http"]["Programmed"][:2] == ("True", "Programmed")
        assert _conds(st)["Programmed"][:2] == ("False", "Pending")
        # the other listener serves (no route: the gateway's 404)
        ip = st["addresses"][0]["value"]
        out = subprocess.run(["ip", "netns", "exec", outside.netns(LabNames(lab.name)), "curl", "-s", "-o",
                              "/dev/null", "-w", "%{http_code}", "-m", "10", f"http://{ip}/"],
                             capture_output=True, text=True, timeout=40)
        assert out.stdout == "404", out
    finally:
        lab.ambit("delete", "gateway", "binds", "-n", NS, check=False)
