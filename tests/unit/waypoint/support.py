"""Builders for the waypoint's pure tests: Kubernetes-shaped objects through the REAL controller
translation (controller.translate, as the config stream would deliver it), then into the
waypoint's cores. Tests may import the controller; the waypoint package may not."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from controller.translate import Translation, translate
from waypoint.request import Decision, Downstream, Forward, LocalReply, RequestHead
from waypoint.routing import RouteTable, build_table, route

SHARED = Path(__file__).resolve().parents[4] / "shared"
if not SHARED.is_dir():
    SHARED = Path("/work/shared")
EXAMPLES = SHARED / "examples"
CONFORMANCE = SHARED / "upstream" / "gateway-api-conformance-mesh"
MESH_NS = "gateway-conformance-mesh"


def load_yaml(path: Path) -> list[dict[str, Any]]:
    assert path.is_file(), f"{path} is missing: shared/ must sit beside the clone"
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def service(name: str, ns: str, ports: dict[str, int], selector: dict[str, str] | None = None,
            ip: str = "10.96.0.10") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "selector": selector or {"app": name},
                     "ports": [{"name": n, "port": p} for n, p in ports.items()]}}


def conformance_services() -> list[dict[str, Any]]:
    """The GAMMA conformance backends (gateway-api conformance/mesh/manifests.yaml): echo, echo-v1,
    echo-v2 and echo-v3, each serving http on 80, http-alt on 8080 and grpc on 7070."""
    ports = {"http": 80, "http-alt": 8080, "grpc": 7070}
    return [namespace(MESH_NS, **{"ambit.io/dataplane-mode": "ambient"}),
            service("echo", MESH_NS, ports, {"app": "echo"}, "10.96.1.1"),
            service("echo-v1", MESH_NS, ports, {"app": "echo", "version": "v1"}, "10.96.1.2"),
            service("echo-v2", MESH_NS, ports, {"app": "echo", "version": "v2"}, "10.96.1.3"),
            service("echo-v3", MESH_NS, ports, {"app": "echo", "version": "v3"}, "10.96.1.4")]


def translated(objs: list[dict[str, Any]], **kw: Any) -> Translation:
    t = translate(objs, **kw)
    assert t.errors == [], [str(e) for e in t.errors]
    return t


def table_of(objs: list[dict[str, Any]]) -> RouteTable:
    t = build_table(translated(objs).waypoint_routes)
    assert t.errors == ()
    return t


def req(path: str = "/", authority: str = "echo", method: str = "GET", headers: dict[str, str] | None = None,
        scheme: str = "http", grpc: bool = False) -> RequestHead:
    return RequestHead(method=method, path=path, authority=authority, scheme=scheme,
                       headers=[(k.lower(), v) for k, v in (headers or {}).items()], grpc=grpc)


def to(name: str, port: int = 80, ns: str = MESH_NS, **kw: Any) -> Downstream:
    """A tunnel whose destination is Service `ns/name` on `port`."""
    return Downstream(service=f"{ns}/{name}", hostname=f"{name}.{ns}.svc.cluster.local",
                      destination_port=port, **kw)


def decide(table: RouteTable, head: RequestHead, down: Downstream, seed: int = 1) -> Decision:
    return route(table, head, down, random.Random(seed))


def backend(d: Decision) -> str:
    """"ns/name" (and "/subset") a Forward goes to; the status for a LocalReply."""
    if isinstance(d, Forward):
        return d.service + (f"/{d.subset}" if d.subset else "")
    assert isinstance(d, LocalReply)
    return str(d.status)


def split(table: RouteTable, head: RequestHead, down: Downstream, n: int, seed: int = 7) -> Counter[str]:
    rand = random.Random(seed)
    return Counter(backend(route(table, head, down, rand)) for _ in range(n))


def upstream_headers(d: Decision, sent: dict[str, str]) -> dict[str, str]:
    """The request headers the backend sees (repeated names joined with "," as Go's echo reports)."""
    assert isinstance(d, Forward), d
    out: dict[str, list[str]] = {}
    for k, v in d.request_headers.apply([(k.lower(), v) for k, v in sent.items()]):
        out.setdefault(k, []).append(v)
    return {k: ",".join(v) for k, v in out.items()}


# HTTPRouteRequestHeaderModifier's cases (upstream's Go test; its ResponseHeaderModifier has the
# same ones, tests/unit/controller/test_ingress_conformance.py): path, headers sent, headers the
# receiving side must see (repeated names joined with ","), and must not.
HEADER_MODIFIER_CASES: list[tuple[str, dict[str, str], dict[str, str], list[str]]] = [
    ("/set", {"Some-Other-Header": "val"}, {"some-other-header": "val", "x-header-set": "set-overwrites-values"}, []),
    ("/set", {"Some-Other-Header": "val", "X-Header-Set": "some-other-value"},
     {"some-other-header": "val", "x-header-set": "set-overwrites-values"}, []),
    ("/add", {"Some-Other-Header": "val"}, {"some-other-header": "val", "x-header-add": "add-appends-values"}, []),
    ("/add", {"Some-Other-Header": "val", "X-Header-Add": "some-other-value"},
     {"some-other-header": "val", "x-header-add": "some-other-value,add-appends-values"}, []),
    ("/remove", {"X-Header-Remove": "val"}, {}, ["x-header-remove"]),
    ("/multiple", {"X-Header-Set-2": "set-val-2", "X-Header-Add-2": "add-val-2", "X-Header-Remove-2": "remove-val-2",
                   "Another-Header": "another-header-val"},
     {"x-header-set-1": "header-set-1", "x-header-set-2": "header-set-2", "x-header-add-1": "header-add-1",
      "x-header-add-2": "add-val-2,header-add-2", "x-header-add-3": "header-add-3",
      "another-header": "another-header-val"}, ["x-header-remove-1", "x-header-remove-2"]),
    ("/case-insensitivity", {"x-header-set": "original-val-set", "x-header-add": "original-val-add",
                             "x-header-remove": "original-val-remove", "Another-Header": "another-header-val"},
     {"x-header-set": "header-set", "x-header-add": "original-val-add,header-add",
      "another-header": "another-header-val"}, ["x-header-remove"]),
]
