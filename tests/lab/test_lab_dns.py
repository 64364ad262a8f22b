"""The lab's cluster DNS (ambitctl/lab/dns.py): dnsmasq standing in for kube-dns, and each pod's
resolv.conf as the kubelet writes it. What a pod (not captured: its namespace is not enrolled)
relies on: Service names resolve, through the resolver, by full name and through the search path;
other names are NXDOMAIN; and `lab down` leaves neither the resolver nor its files behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab import hoststate
from tests.lab.labctl import Lab, gone

pytestmark = pytest.mark.lab

SPEC = """
nodes: 2
namespaces: [{name: shop}]
pods:
  - {name: web, namespace: shop, node: node2, command: [python, -m, ambitctl.lab.apps.echo, --port, "9090"],
     labels: {app: web}, ports: [{containerPort: 9090}]}
  - {name: shopper, namespace: shop, node: node1, command: [sleep, infinity]}
services:
  - {name: web, namespace: shop, selector: {app: web}, ports: [{port: 80, targetPort: 9090}]}
"""


@pytest.mark.host_exclusive
def test_service_names_resolve_through_the_lab_dns_and_down_removes_it(fresh_lab: Lab, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    before = hoststate.snapshot()
    fresh_lab.up("--spec", str(spec))
    vip = next(s["vip"] for s in fresh_lab.status()["services"] if s["name"] == "web")
    pod_dir = Path("/etc/netns") / f"{fresh_lab.name}.shop.shopper"
    assert (pod_dir / "resolv.conf").read_text() == (
        "nameserver 10.200.0.251\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n")
    assert "web" not in (pod_dir / "hosts").read_text()     # names come from DNS, as in a cluster

    for name in ("web.shop.svc.cluster.local", "web", "web.shop"):
        p = fresh_lab.exec("shop/shopper", "getent", "hosts", name)
        assert p.returncode == 0 and p.stdout.split()[0] == vip, (name, p.stdout, p.stderr)
    assert "query[A] web.shop.svc.cluster.local from 10.210.1." in fresh_lab.log("dns")
    p = fresh_lab.exec("shop/shopper", "dig", "+tries=1", "+time=2", "nothere.shop.svc.cluster.local")
    assert "status: NXDOMAIN" in p.stdout
    assert fresh_lab.curl("shop/shopper", "http://web/")["pod"] == "web"     # an app resolves it too

    dnsmasq = fresh_lab.proc_pid("dns")
    assert dnsmasq
    fresh_lab.down()
    assert gone(dnsmasq)
    assert not pod_dir.exists()
    left = {k: {x for x in v if fresh_lab.name in x or "dnsmasq" in x}
            for k, v in hoststate.diff(before, hoststate.snapshot()).items()}   # other labs may run beside
    assert not any(left.values()), f"lab down left things behind: {left}"
