"""An ingress Gateway listener on a port its pod cannot bind, in a running lab through the real
CLI: a process in the gateway pod's netns holds the port (as a sidecar container of the pod, or a
`hostNetwork` neighbour, would), so the gateway cannot bind 0.0.0.0:<port>. The Gateway's status
(the lab store, written by the controller from the pod's status reports) must say so, naming the
port and the OS error, while the other listener is Programmed and serves; once the port is free
the gateway's retry binds it and the status clears, without a restart.

(The ports the gateway pod binds for itself, 15000/15020/15021, are refused by validation before
they get here: tests/unit/controller/test_ingress_reserved_ports.py.)"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
from typing import Any

import pytest
import yaml

from ambitctl.lab import outside
from ambitctl.lab.topology import LabNames
from tests.lab.labctl import Lab

pytestmark = pytest.mark.lab

NS = "demo"
HELD = 8099
GATEWAY = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
           "metadata": {"name": "binds", "namespace": NS},
           "spec": {"gatewayClassName": "ambit", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}
WITH_HELD = copy.deepcopy(GATEWAY)
WITH_HELD["spec"]["listeners"].append({"name": "held", "port": HELD, "protocol": "HTTP"})

# Listens on 0.0.0.0:<port> in the netns it runs in until its stdin closes.
HOLDER = ("import socket, sys; s = socket.socket(); s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(); "
          "print('held', flush=True); sys.stdin.read()")


def _conds(entry: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c.get("message", "")) for c in entry.get("conditions") or []}


def _status(lab: Lab) -> dict[str, Any]:
    return json.loads(lab.ambit("get", "gateway", "binds", "-n", NS, "-o", "json").stdout).get("status") or {}


def _listener(lab: Lab, name: str) -> tuple[dict[str, Any], dict[str, tuple[str, str, str]]] | None:
    st = _status(lab)
    ln = next((x for x in st.get("listeners") or [] if x["name"] == name), None)
    return (st, _conds(ln)) if ln is not None else None


def _curl_outside(lab: Lab, url: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", outside.netns(LabNames(lab.name)), "curl", "-s", "-o",
                          "/dev/null", "-w", "%{http_code}", "-m", "10", url],
                         capture_output=True, text=True, timeout=40)
    return out.stdout


def test_a_listener_whose_port_is_held_in_the_pod_is_not_accepted_until_freed(lab: Lab) -> None:
    holder: subprocess.Popen[str] | None = None
    try:
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump(GATEWAY))
        gw = lab.wait_for(lambda: next((w for w in lab.status()["waypoints"]
                                        if w["name"] == "binds" and w["ready"]), None),
                          timeout=40, what="the ingress gateway pod ready")
        netns = LabNames(lab.name).pod_netns(NS, gw["pod"])
        holder = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", HOLDER, str(HELD)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held", "the holder did not listen"

        lab.ambit("apply", "-f", "-", input=yaml.safe_dump(WITH_HELD))

        def refused() -> tuple[dict[str, Any], dict[str, tuple[str, str, str]]] | None:
            got = _listener(lab, "held")
            return got if got is not None and got[1].get("Accepted", ("",))[0] == "False" else None
        st, held = lab.wait_for(refused, timeout=40, what="listener held: Accepted=False")
        _status_, reason, msg = held["Accepted"]
        assert reason == "PortUnavailable" and str(HELD) in msg and "EADDRINUSE" in msg, msg
        assert held["Programmed"][:2] == ("False", "PortUnavailable")
        ls = {x["name"]: _conds(x) for x in st["listeners"]}
        assert ls["http"]["Programmed"][:2] == ("True", "Programmed")
        assert _conds(st)["Programmed"][:2] == ("False", "Pending")
        # the other listener serves (no route: the gateway's 404)
        ip = st["addresses"][0]["value"]
        assert _curl_outside(lab, f"http://{ip}/") == "404"

        # the port is freed: the gateway's retry binds it, the condition clears, the listener serves
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        holder = None

        def accepted() -> dict[str, tuple[str, str, str]] | None:
            got = _listener(lab, "held")
            return got[1] if got is not None and got[1].get("Programmed", ("",))[0] == "True" else None
        held = lab.wait_for(accepted, timeout=60, what="listener held: Programmed=True once the port is free")
        assert held["Accepted"][:2] == ("True", "Accepted"), held
        assert _curl_outside(lab, f"http://{ip}:{HELD}/") == "404"
    finally:
        if holder is not None:
            with contextlib.suppress(Exception):
                holder.kill()
                holder.wait(timeout=10)
        lab.ambit("delete", "gateway", "binds", "-n", NS, check=False)
