"""What a data plane holds of each decoded resource: equal to what the controller encoded (every
type of a translated cluster, and random per-pod resources), with its strings shared among
resources and no instance dict on the per-pod objects. At 10,000 pods that is about a third of a
waypoint's or ztunnel's config (docs/performance.md, "The waypoint and the node agent at 10,000
pods"; bench/wpmem.py measures it, no timing or sizes here)."""

from __future__ import annotations

import random
import weakref

import pytest

from ambit.configclient.codec import canonical_body, decode, encode
from ambit.configclient.state import TypeState
from ambit.model import Endpoint, Service, ServicePort, Workload
from bench.ctrlscale import cluster
from controller.sources.cache import LastGoodCache
from controller.translate import translate


def _word(rng: random.Random) -> str:
    return rng.choice(["", "a", "ns-1", "node-7", "app/x", "ü-é", "x" * rng.randrange(1, 40)]) + str(rng.randrange(3))


def random_workload(rng: random.Random, i: int) -> Workload:
    return Workload(
        uid=f"uid-{i}", name=f"pod-{i}", namespace=_word(rng), ips=[f"10.0.{i // 250}.{i % 250}"] * rng.randrange(3),
        node=_word(rng), service_account=_word(rng), identity=f"spiffe://td/ns/{_word(rng)}/sa/{_word(rng)}",
        labels={_word(rng): _word(rng) for _ in range(rng.randrange(4))}, enrolled=rng.random() < 0.5,
        waypoint=_word(rng), protocol=rng.choice(["HBONE", "TCP"]),
        services={_word(rng): [rng.randrange(1, 65536) for _ in range(rng.randrange(3))] for _ in range(rng.randrange(3))},
        annotations={_word(rng): _word(rng) for _ in range(rng.randrange(3))},
        probe_ports=[rng.randrange(1, 65536) for _ in range(rng.randrange(3))], locality=_word(rng))


def random_service(rng: random.Random, i: int, workloads: list[Workload]) -> Service:
    ports = [ServicePort(rng.randrange(1, 65536), rng.randrange(0, 65536), _word(rng), rng.choice(["TCP", "HTTP"]),
                         _word(rng)) for _ in range(rng.randrange(3))]
    eps = [Endpoint(w.uid, w.ips[0] if w.ips else "", w.node, rng.random() < 0.8,
                    ports=[ServicePort(p.port, rng.randrange(1, 65536)) for p in ports if rng.random() < 0.3],
                    hostname=_word(rng), weight=rng.randrange(3), labels={_word(rng): _word(rng)},
                    locality=_word(rng)) for w in rng.sample(workloads, rng.randrange(min(5, len(workloads))))]
    return Service(name=f"svc-{i}", namespace=_word(rng), hostname=_word(rng), vips=[f"10.96.0.{i % 250}"],
                   ports=ports, endpoints=eps, waypoint=_word(rng), kind=rng.choice(["Service", "ServiceEntry"]),
                   subnets=[_word(rng)] * rng.randrange(2), export_to=[_word(rng)] * rng.randrange(2),
                   node_local=rng.random() < 0.2, traffic_distribution=rng.choice(["", "PreferSameZone"]))


def test_every_decoded_resource_equals_what_was_encoded() -> None:
    c = LastGoodCache()
    c.replace(cluster(300, seed=4), owns=lambda _k: True)
    by_type = translate(c.objects()).by_type()
    rng = random.Random(7)
    workloads = [random_workload(rng, i) for i in range(300)]
    by_type[Workload.TYPE] = [*by_type.get(Workload.TYPE, []), *workloads]
    by_type[Service.TYPE] = [*by_type.get(Service.TYPE, []), *(random_service(rng, i, workloads) for i in range(100))]
    assert len(by_type) >= 6
    for t, resources in by_type.items():
        for r in resources:
            body = canonical_body(r)
            got = decode(t, r.resource_name, body)
            assert got == r, r.resource_name
            assert canonical_body(got) == body, r.resource_name


def test_decoded_resources_share_their_strings() -> None:
    a = Workload("uid-a", "a", "ns-shared", ["10.1.0.1"], "node-shared", "sa-x", "spiffe://td/ns/ns-shared/sa/sa-x",
                 labels={"app.kubernetes.io/name": "app-x"}, services={"ns-shared/svc-x": [80]})
    b = Workload("uid-b", "b", "ns-shared", ["10.1.0.2"], "node-shared", "sa-x", "spiffe://td/ns/ns-shared/sa/sa-x",
                 labels={"app.kubernetes.io/name": "app-x"}, services={"ns-shared/svc-x": [80]})
    svc = Service("svc-x", "ns-shared", "svc-x.ns-shared.svc.cluster.local", ["10.96.0.1"], [ServicePort(80, 8080)],
                  [Endpoint("uid-a", "10.1.0.1", "node-shared")])
    ts_w, ts_s = TypeState(Workload.TYPE), TypeState(Service.TYPE)
    ts_w.commit(ts_w.stage("v1", [encode(a), encode(b)], ()))
    ts_s.commit(ts_s.stage("v1", [encode(svc)], ()))
    da, db = ts_w.resources["uid-a"], ts_w.resources["uid-b"]
    ds = ts_s.resources["ns-shared/svc-x"]
    assert (da, db, ds) == (a, b, svc)
    assert da.namespace is db.namespace and da.node is db.node and da.identity is db.identity
    (ka, va), (kb, vb) = next(iter(da.labels.items())), next(iter(db.labels.items()))
    assert ka is kb and va is vb
    assert next(iter(da.services)) is next(iter(db.services))
    # an endpoint names its workload with the workload's own strings, and its node too
    ep = ds.endpoints[0]
    assert ep.workload_uid is da.uid and ep.ip is da.ips[0] and ep.node is da.node
    assert ds.namespace is da.namespace


@pytest.mark.parametrize("obj", [Workload("u", "n", "ns", ["10.0.0.1"], "node", "sa", "id"),
                                 Service("s", "ns", "s.ns.svc"), Endpoint("u", "10.0.0.1"), ServicePort(80, 8080)])
def test_per_pod_objects_have_no_instance_dict(obj: object) -> None:
    assert not hasattr(obj, "__dict__")
    with pytest.raises(AttributeError):
        obj.not_a_field = 1     # type: ignore[attr-defined]
    assert weakref.ref(obj)() is obj        # peer-label caches hold them weakly (ambit/dataplane/idcache.py)
