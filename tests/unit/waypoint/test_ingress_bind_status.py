"""An ingress listener whose port cannot be bound, end to end without mocks: a real controller
process writing status through the API-server emulator (tests/support/kube_emulator.py) with the
official client, and a real ingress process (`python -m waypoint`, class ambit) whose Gateway has
two listeners, one on a port this test holds. The held listener's status must say so
(`Accepted=False PortUnavailable`, `Programmed=False`, naming the port and the OS error), the
Gateway's `Programmed` too, while the other listener serves; once the port is freed the ingress
binds it on its own (retry with backoff) and the status recovers."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.kube_emulator import KubeEmulator
from tests.support.net import connectable, free_port
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[3]
GW_V1 = "gateway.networking.k8s.io/v1"


def _conds(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj or {}).get("conditions") or []}


def _listener(emu: KubeEmulator, name: str) -> dict[str, Any] | None:
    st = (emu.get(GW_V1, "Gateway", "gw", "web") or {}).get("status") or {}
    return next((ln for ln in st.get("listeners") or [] if ln["name"] == name), None)


@pytest.fixture
def held() -> Iterator[socket.socket]:
    """A port someone else listens on (what the ingress's listener wants)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


def test_unbindable_listener_is_reported_in_gateway_status_and_heals(tmp_path: Path, held: socket.socket) -> None:
    busy, free = held.getsockname()[1], free_port()
    emu = KubeEmulator().start()
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}})
        emu.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw", "namespace": "web"},
                    "spec": {"clusterIP": "10.96.0.60", "type": "LoadBalancer", "ports": [{"port": 80}]},
                    "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}})
        emu.create({"apiVersion": GW_V1, "kind": "Gateway", "metadata": {"name": "gw", "namespace": "web"},
                    "spec": {"gatewayClassName": "ambit", "listeners": [
                        {"name": "busy", "port": busy, "protocol": "HTTP"},
                        {"name": "free", "port": free, "protocol": "HTTP"}]}})
        cport, mport = free_port(), free_port()
        target = f"127.0.0.1:{cport}"
        for name, argv in (
                ("controller", ["-m", "controller", "--kube", "--kube-host", emu.url, "--listen", target,
                                "--insecure-config-stream", "--debounce", "0.01", "--dashboard-address", ""]),
                ("ingress", ["-m", "waypoint", "--waypoint", "web/gw", "--pod-name", "gw-abc", "--node", "node-1", "--gateway-class",
                             "ambit", "--controller", target, "--ingress-address", "127.0.0.1",
                             "--admin-address", "", "--report-interval", "0.3",
                             "--metrics-address", f"127.0.0.1:{mport}"])):
            log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed below
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
            if name == "controller":
                wait_for(lambda: connectable(cport) or procs[0].poll() is not None, timeout=30,
                         what="controller listening")
                assert procs[0].poll() is None, (tmp_path / "controller.log").read_text()

        def refused() -> dict[str, Any] | None:
            ln = _listener(emu, "busy")
            return ln if _conds(ln).get("Accepted", {}).get("status") == "False" else None
        try:
            ln = wait_for(refused, timeout=30, what="the busy listener's Accepted=False")
        except AssertionError:
            print("Gateway status:", (emu.get(GW_V1, "Gateway", "gw", "web") or {}).get("status"))
            print((tmp_path / "ingress.log").read_text())
            raise
        c = _conds(ln)
        assert c["Accepted"]["reason"] == "PortUnavailable"
        assert str(busy) in c["Accepted"]["message"] and "Address already in use" in c["Accepted"]["message"]
        assert "gw-abc" in c["Accepted"]["message"]
        assert (c["Programmed"]["status"], c["Programmed"]["reason"]) == ("False", "PortUnavailable")
        # the other listener serves, and says so
        assert _conds(_listener(emu, "free"))["Programmed"]["status"] == "True"
        with pytest.raises(urllib.error.HTTPError) as e:      # no route: 404, from the ingress
            urllib.request.urlopen(f"http://127.0.0.1:{free}/", timeout=5)
        assert e.value.code == 404
        gw = _conds((emu.get(GW_V1, "Gateway", "gw", "web") or {}).get("status"))
        assert (gw["Programmed"]["status"], gw["Programmed"]["reason"]) == ("False", "Pending")
        assert str(busy) in gw["Programmed"]["message"]
        # ... and its metrics count it, for the alert (deploy/alerts.yaml: AmbitIngressListenerUnbound)
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        assert "ambit_listeners_unbound 1.0" in text
        assert f'ambit_listener_bind_failures_total{{port="{busy}"}}' in text

        # free the port: the ingress binds it without a restart, and the status follows
        held.close()

        def healed() -> dict[str, Any] | None:
            ln = _listener(emu, "busy")
            return ln if _conds(ln).get("Programmed", {}).get("status") == "True" else None
        ln = wait_for(healed, timeout=30, what="the busy listener's Programmed=True once the port is free")
        assert _conds(ln)["Accepted"]["status"] == "True"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{busy}/", timeout=5)
        assert e.value.code == 404
        gw = _conds((emu.get(GW_V1, "Gateway", "gw", "web") or {}).get("status"))
        assert gw["Programmed"]["status"] == "True"
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        assert "ambit_listeners_unbound 0.0" in text
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        for f in logs:
            f.close()
        emu.stop()
