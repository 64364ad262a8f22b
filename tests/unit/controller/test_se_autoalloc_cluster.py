"""ServiceEntry address auto-allocation in a cluster: real `python -m controller` replicas against
the API-server emulator (tests/support/kube_emulator.py), read by a real config-stream client.

What an operator relies on: the leader writes each host's address into `status.addresses`; a
ztunnel (any replica's) gets it as the host's VIP; a follower and a restarted controller serve
the same addresses; and addresses istiod already wrote are kept (a migration moves nothing).
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from ambit.configclient import Backoff, ConfigClient, ConfigUpdate, NodeInfo
from ambit.model import Service
from controller.translate.autoalloc import probe
from tests.support.wait import wait_for
from tests.unit.controller import test_ha_replicas
from tests.unit.controller.test_ha_replicas import Cluster, holder, two_replicas

cluster = test_ha_replicas.cluster     # the emulator and the replicas started against it (stopped after)
SE_V1 = "networking.istio.io/v1"
PREFIX = ipaddress.IPv4Network("240.240.0.0/16")


def entry(name: str, hosts: list[str], status: list[dict[str, str]] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": SE_V1, "kind": "ServiceEntry", "metadata": {"name": name, "namespace": "egress"},
                           "spec": {"hosts": hosts, "resolution": "DNS",
                                    "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]}}
    if status is not None:
        obj["status"] = {"addresses": status}
    return obj


def written(c: Cluster, name: str) -> dict[str, str]:
    got = (c.emu.get(SE_V1, "ServiceEntry", name, "egress") or {}).get("status") or {}
    return {a["host"]: a["value"] for a in got.get("addresses") or []}


def served_vips(address: str, hosts: set[str]) -> dict[str, list[str]]:
    """The VIPs of `hosts` in the config a ztunnel subscribed at `address` receives."""
    async def go() -> dict[str, list[str]]:
        got: dict[str, list[str]] = {}
        done = asyncio.Event()

        def apply(u: ConfigUpdate) -> None:
            for r in u.state.values():
                if isinstance(r, Service) and r.name in hosts:
                    got[r.name] = list(r.vips)
            if set(got) == hosts and all(got.values()):
                done.set()
        client = ConfigClient(address, NodeInfo("ztunnel", "node-1", instance_id="t"), [Service.TYPE], apply,
                              backoff=Backoff(0.05, 0.5))
        await client.start()
        try:
            await asyncio.wait_for(done.wait(), 30)
        finally:
            await client.stop()
        return got
    return asyncio.run(go())


def test_the_leader_writes_addresses_and_every_replica_serves_them(cluster: Cluster) -> None:
    cluster.emu.create(entry("api", ["a.example.com", "b.example.com"]))
    a, b = two_replicas(cluster)
    wait_for(lambda: len(written(cluster, "api")) == 2, timeout=30, what="status.addresses written by the leader")
    status = written(cluster, "api")
    assert all(ipaddress.ip_address(v) in PREFIX for v in status.values())
    assert status["a.example.com"] != status["b.example.com"]
    want = {h: [v] for h, v in status.items()}
    assert served_vips(a, set(status)) == want          # the leader's config stream
    assert served_vips(b, set(status)) == want          # the follower's: the same addresses
    assert holder(cluster.emu) == "ctl-a"

    # a restart of every replica keeps them (read back from status)
    for name in ("ctl-a", "ctl-b"):
        cluster.procs[name].terminate()
        cluster.procs[name].wait(10)
    c = cluster.controller("ctl-c")
    assert served_vips(c, set(status)) == want
    assert written(cluster, "api") == status


def test_addresses_istiod_wrote_are_kept(cluster: Cluster) -> None:
    istiod = [{"value": "240.240.0.1", "host": "api.example.com"}, {"value": "2001:2::1", "host": "api.example.com"}]
    cluster.emu.create(entry("api", ["api.example.com"], status=istiod))
    address = cluster.controller("ctl-a")
    assert served_vips(address, {"api.example.com"}) == {"api.example.com": ["240.240.0.1"]}
    got = (cluster.emu.get(SE_V1, "ServiceEntry", "api", "egress") or {}).get("status") or {}
    assert got["addresses"] == istiod


def test_stale_addresses_are_cleared_once_the_entry_has_its_own(cluster: Cluster) -> None:
    cluster.emu.create(entry("api", ["api.example.com"]))
    cluster.controller("ctl-a")
    wait_for(lambda: written(cluster, "api"), timeout=30, what="status.addresses written")
    se = cluster.emu.get(SE_V1, "ServiceEntry", "api", "egress")
    assert se is not None
    se["spec"]["addresses"] = ["192.0.2.10"]
    cluster.emu.update(se)
    wait_for(lambda: not written(cluster, "api"), timeout=30, what="the stale status.addresses cleared")


def test_an_address_does_not_move_when_the_entry_it_was_probed_past_goes(cluster: Cluster) -> None:
    """`b` would hash to an address `a` holds, so it gets the next one; once written it stays
    there after `a` is deleted and the controller restarts (read back from status, not re-hashed)."""
    hashed = str(probe(PREFIX, "egress/b/b.example.com", set()))
    cluster.emu.create(entry("a", ["a.example.com"], status=[{"value": hashed, "host": "a.example.com"}]))
    cluster.emu.create(entry("b", ["b.example.com"]))
    cluster.controller("ctl-a")
    wait_for(lambda: written(cluster, "b"), timeout=30, what="b's status.addresses written")
    moved = written(cluster, "b")["b.example.com"]
    assert moved != hashed
    cluster.emu.delete(SE_V1, "ServiceEntry", "a", "egress")
    cluster.procs["ctl-a"].terminate()
    cluster.procs["ctl-a"].wait(10)
    address = cluster.controller("ctl-b")
    assert served_vips(address, {"b.example.com"}) == {"b.example.com": [moved]}
    assert written(cluster, "b") == {"b.example.com": moved}
