"""VirtualService `retries.retryRemoteLocalities` on the wire: a real `WaypointProxy` (its decide,
its clusters with locality failover, its upstream) behind the engine on loopback, a Service with
two endpoints in the waypoint's own zone (127.0.0.1-2, answering 503) and one in another region
(127.0.0.3, answering 200), driven by curl. The endpoints are mesh pods; the HBONE hop to them is
replaced by a plain connection to the pod's address (zoned.py): the tunnel is not what this is
about, which endpoint each try goes to is.

As Istio configures Envoy (the retry priority previous_priorities, update_frequency 2), the third
try leaves the locality the first two failed in; without the field every try stays local, since
the local endpoints are healthy (not ejected). Before, the field was accepted, warned about and
ignored: the third try stayed local."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator

import pytest

from ambit.model import (
    HttpRoute,
    Retry,
    RouteDestination,
    TrafficPolicy,
    WaypointRoutes,
)
from tests.unit.waypoint.harness import Proxy, address_origins
from tests.unit.waypoint.traffic.zoned import HOST, apply, loopback_waypoint, zoned_config

LOCAL, REMOTE = "r1/z1/", "r2/z1/"
WHERE = {"127.0.0.1": LOCAL, "127.0.0.2": LOCAL, "127.0.0.3": REMOTE}


@pytest.fixture()
def origins() -> Iterator[tuple[int, Counter[str]]]:
    """503 from the waypoint's own zone, 200 elsewhere; each answer names the address it came from."""
    with address_origins(list(WHERE), lambda ip: 503 if WHERE[ip] == LOCAL else 200) as (port, hits):
        yield port, hits


def _waypoint(port: int, remote_localities: bool) -> Proxy:
    """The waypoint (in LOCAL) for the Service, its route retrying 503 twice, locality failover on
    (outlier detection, which no endpoint reaches here: 5 consecutive 5xx)."""
    cfg = zoned_config(WHERE, LOCAL, port)
    route = HttpRoute(source="VirtualService/demo/web", destinations=[RouteDestination(HOST, service="demo/web", port=80)],
                      retries=Retry(attempts=2, retry_on=["503"], backoff=0.001, remote_localities=remote_localities))
    wr = WaypointRoutes(hostname=HOST, namespace="demo", service="demo/web", waypoint="default/waypoint",
                        http=[route], policy=TrafficPolicy(outlier_detection=True))
    apply(cfg, WaypointRoutes.TYPE, {wr.resource_name: wr})
    return loopback_waypoint(cfg)


def _curl(proxy: Proxy) -> tuple[int, str]:
    r = subprocess.run(["curl", "-sS", "-m", "10", "-o", "-", "-w", " %{http_code}", f"http://127.0.0.1:{proxy.port}/"],
                       capture_output=True, text=True, timeout=20)
    body, _, code = r.stdout.rpartition(" ")
    assert code.isdigit(), (r.stdout, r.stderr)
    return int(code), body


def test_the_third_try_goes_to_the_other_locality_after_two_local_failures_only_with_the_field(
        origins: tuple[int, Counter[str]]) -> None:
    port, hits = origins
    p = _waypoint(port, remote_localities=True)
    try:
        for n in range(1, 3):
            assert _curl(p) == (200, "127.0.0.3")
            # the first two tries in the waypoint's zone (both endpoints: previous hosts), the
            # third in the other region
            assert hits == {"127.0.0.1": n, "127.0.0.2": n, "127.0.0.3": n}
    finally:
        p.close()
    hits.clear()
    p = _waypoint(port, remote_localities=False)
    try:        # without it every try stays in the local locality, which is healthy (not ejected)
        code, body = _curl(p)
        assert code == 503 and body in ("127.0.0.1", "127.0.0.2")     # the retries exhausted
        assert hits["127.0.0.3"] == 0 and hits["127.0.0.1"] + hits["127.0.0.2"] == 3
    finally:
        p.close()
