"""IdCache: the data plane's caches keyed by config objects' identity (peer labels, the waypoint's
label values and access-log peers) never keep those objects alive, and never answer for a new
object that got a freed one's id."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TypeVar

from ambit.dataplane.idcache import IdCache
from ambit.dataplane.telemetry.peers import peer_labels
from ambit.model import Workload
from waypoint.http.record import RequestRecord
from waypoint.request import Downstream
from waypoint.telemetry.accesslog import request_line
from waypoint.telemetry.metrics import HttpMetrics

T = TypeVar("T")


class Obj:
    def __init__(self, n: int) -> None:
        self.n = n


def wl(name: str, app: str) -> Workload:
    return Workload(uid=f"demo/{name}", name=name, namespace="demo", ips=["10.0.0.1"], node="node1",
                    service_account="sa", identity=f"spiffe://cluster.local/ns/demo/sa/{app}", labels={"app": app})


def reused(make: Callable[[int], T], use: Callable[[T], object], check: Callable[[T], None]) -> int:
    """Make an object, `use` it (cache it), drop it, make new ones until one has the freed
    object's id (CPython hands the freed block out again), and `check` that one. Returns how
    many times an id was reused, so a test can tell it tested something."""
    hits = 0
    for i in range(50):
        first = make(2 * i)
        use(first)
        old = id(first)
        del first
        for j in range(20):
            again = make(1000 * i + j + 1)
            if id(again) == old:
                check(again)
                hits += 1
                break
            del again
    return hits


def test_an_entry_goes_with_its_object_and_the_others_stay() -> None:
    c: IdCache[str] = IdCache(100)
    a, b = Obj(1), Obj(2)
    c.put((id(a), id(b)), "a+b", a, b)
    c.put((id(a), None), "a", a, None)
    c.put(id(b), "b", b)
    assert c.get((id(a), id(b))) == "a+b" and len(c) == 3
    ra = weakref.ref(a)
    del a
    assert ra() is None                      # the cache did not keep it
    assert len(c) == 1 and c.get(id(b)) == "b"
    del b
    assert len(c) == 0 and c._watch == {}


def test_a_new_object_with_a_freed_objects_id_never_gets_its_entry() -> None:
    c: IdCache[int] = IdCache(100)

    def check(o: Obj) -> None:
        assert c.get(id(o)) is None, "a freed object's entry answered for the new one at its id"

    assert reused(Obj, lambda o: c.put(id(o), o.n, o), check) > 0


def test_insertions_are_bounded_and_so_is_the_bookkeeping() -> None:
    c: IdCache[int] = IdCache(10)
    keep = Obj(0)
    for i in range(95):
        o = Obj(i)
        c.put((id(keep), id(o)), i, keep, o)     # keep's list of keys would grow without the bound
    assert len(c) == 1 and len(c._watch[id(keep)][1]) <= 10
    c.clear()
    assert len(c) == 0 and c._watch == {}
    c.put(id(keep), 1, keep)
    assert c.get(id(keep)) == 1


def test_peer_labels_of_a_new_workload_at_a_freed_ones_id_are_its_own() -> None:
    def check(w: Workload) -> None:
        assert peer_labels(w)[0] == w.name and peer_labels(w)[2] == w.labels["app"]

    assert reused(lambda n: wl(f"pod-{n}", f"app{n}"), peer_labels, check) > 0


def test_waypoint_label_values_and_log_peers_of_a_new_workload_at_a_freed_ones_id_are_its_own() -> None:
    m = HttpMetrics()
    down = Downstream(source_ip="10.0.0.9", service="demo/echo", hostname="echo.demo.svc.cluster.local")
    rec = RequestRecord("GET", "/", "echo", "HTTP/1.1", down, status=200, service="demo/echo")
    dst = wl("echo-0", "echo")

    def use(src: Workload) -> None:
        m.label_values(rec, src, dst)
        request_line(rec, src, dst)

    def check(src: Workload) -> None:
        assert m.label_values(rec, src, dst) == m.compute_label_values(rec, src, dst)
        assert m.label_values(rec, src, dst)[1] == src.name
        assert f'"source_workload": "{src.name}"' in request_line(rec, src, dst)

    assert reused(lambda n: wl(f"client-{n}", f"client{n}"), use, check) > 0
