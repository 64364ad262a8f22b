"""ztunnel's DNS proxy in the lab: every enrolled pod has 127.0.0.1:15053 (UDP and TCP) in its
netns, answering the mesh's Service names from that pod's namespace's view; a pod ztunnel does not
serve has none. Queried straight at 15053 (the capture of port 53 is tested with it elsewhere)."""

from __future__ import annotations

import pytest

from ambit.dataplane.ports import PORT_DNS
from tests.lab.labctl import Lab

pytestmark = pytest.mark.lab


def dig(lab: Lab, pod: str, *args: str) -> str:
    p = lab.exec(pod, "dig", "@127.0.0.1", "-p", str(PORT_DNS), "+tries=2", "+timeout=1", *args, timeout=30)
    return p.stdout


def vip(lab: Lab, name: str) -> str:
    return next(s["vip"] for s in lab.status()["services"] if s["name"] == name)


def test_enrolled_pods_get_ztunnels_dns_proxy(lab: Lab) -> None:
    echo = vip(lab, "echo")
    for pod in ("demo/client", "demo/echo-v2"):     # node1 and node2: each node's ztunnel serves its pods
        for proto in ("+notcp", "+tcp"):
            assert dig(lab, pod, proto, "+short", "echo.demo.svc.cluster.local").split() == [echo], (pod, proto)
            # a short name is the pod's own namespace's Service, as its search list would make it
            assert dig(lab, pod, proto, "+short", "echo").split() == [echo], (pod, proto)
        out = dig(lab, pod, "echo.demo.svc.cluster.local")
        assert "status: NOERROR" in out and " aa" in out.split("flags:", 1)[1].split(";")[0], out
    # legacy/client is not enrolled: no ztunnel listener in its netns
    out = dig(lab, "legacy/client", "+tcp", "+tries=1", "echo.demo.svc.cluster.local")
    assert "status:" not in out, f"a pod ztunnel does not serve got an answer: {out}"
