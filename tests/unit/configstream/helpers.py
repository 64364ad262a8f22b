"""Builders for model resources and small async helpers shared by the config stream tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ambit.model import (
    Authorization,
    Endpoint,
    Match,
    PeerAuthn,
    Rule,
    Service,
    ServicePort,
    Workload,
    spiffe_id,
)

ALL_TYPES = [PeerAuthn.TYPE, Authorization.TYPE, Workload.TYPE, Service.TYPE]


def workload(uid: str, node: str, ns: str = "default", ip: str = "10.0.0.1", sa: str = "default",
             waypoint: str = "", labels: dict[str, str] | None = None) -> Workload:
    return Workload(uid=uid, name=f"pod-{uid}", namespace=ns, ips=[ip], node=node, service_account=sa,
                    identity=spiffe_id("cluster.local", ns, sa), labels=labels or {"app": uid},
                    enrolled=True, waypoint=waypoint)


def service(name: str, ns: str = "default", endpoints: list[Workload] | None = None, waypoint: str = "",
            vip: str = "10.96.0.10") -> Service:
    return Service(name=name, namespace=ns, hostname=f"{name}.{ns}.svc.cluster.local", vips=[vip],
                   ports=[ServicePort(port=80, target_port=8080, name="http", protocol="HTTP")],
                   endpoints=[Endpoint(workload_uid=w.uid, ip=w.ips[0], node=w.node) for w in endpoints or []],
                   waypoint=waypoint)


def authz(name: str, ns: str = "default", scope: str = "namespace", action: str = "ALLOW") -> Authorization:
    return Authorization(name=name, namespace=ns, action=action, scope=scope,
                         rules=[Rule(clauses=[[Match(namespaces=[ns], ports=[8080])]])])


def peerauthn(name: str, ns: str = "default", mode: str = "STRICT") -> PeerAuthn:
    return PeerAuthn(name=name, namespace=ns, mode=mode, port_modes={9000: "PERMISSIVE"})


async def eventually(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll until pred() holds; the timeout only bounds a failing test, it is not asserted."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
