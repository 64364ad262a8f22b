"""Fault injection and mirroring end to end: the real waypoint process, real HBONE on both hops,
real clients (curl, grpcio) in lab pods, VirtualServices and an HTTPRoute applied through the
controller. Statistical checks use a two-sided 99.9 % binomial bound (3.29 sigma).

Layout (tests/lab/specs/faults.yaml): clients and myapp v1/v2 on node1, the waypoint on node2;
mirror targets `shadow` (logs each request it got, tests/lab/shadow_sink.py), `slowshadow` (the
same, 1 s late) and `downshadow` (nothing listens).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane import endpoint
from ambit.dataplane.telemetry.metrics import scrape
from tests.lab.labctl import Lab, running_lab
from tests.lab.test_waypoint import GATEWAY, access_records, apply, delete, status_of, waypoints

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

SPEC = Path(__file__).parent / "specs" / "faults.yaml"
SINK = Path(__file__).parent / "shadow_sink.py"
Z = 3.29        # two-sided 99.9 %


def within(hits: int, n: int, p: float) -> bool:
    return abs(hits - n * p) <= Z * (n * p * (1 - p)) ** 0.5


def vs(name: str, host: str, http: list[dict]) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"hosts": [host], "http": http}}


def codes_and_times(lab: Lab, url: str, n: int, *opts: str) -> list[tuple[int, float]]:
    """`n` requests in one curl (URL globbing: one process, one keep-alive connection)."""
    p = lab.exec("default/frontend", "curl", "-s", "-o", "/dev/null", "-m", "30", "-w", "%{http_code} %{time_total}\n",
                 *opts, f"{url}?n=[1-{n}]", timeout=240)
    out = [(int(c), float(t)) for c, t in (line.split() for line in p.stdout.splitlines() if line.strip())]
    assert len(out) == n, (p.stdout[-500:], p.stderr[-500:])
    return out


def metric(lab: Lab, name: str, **labels: str) -> float:
    text = scrape(lab.dir / "waypoints" / "default.waypoint.metrics.sock")
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def requests_total(lab: Lab, **labels: str) -> float:
    return metric(lab, "istio_requests_total", **labels)


def shadow_got(lab: Lab, pod: str, prefix: str) -> list[dict]:
    """What a shadow_sink pod logged for paths starting with `prefix`."""
    f = lab.dir / "logs" / f"pod-default-{pod}.log"
    out = []
    for line in f.read_text(errors="replace").splitlines() if f.exists() else []:
        if line.startswith("{"):
            d = json.loads(line)
            if d["path"].startswith(prefix):
                out.append(d)
    return out


def mirror_stats(lab: Lab) -> dict:
    status, body = endpoint.get_json(lab.dir / "waypoints" / "default.waypoint.admin.sock", "/stats")
    assert status == 200, body
    return body["mirrors"]


def p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(0.99 * len(s)))]


@pytest.fixture(scope="module")
def flab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("flab")
    spec = base / "faults.yaml"
    spec.write_text(SPEC.read_text().replace("@SINK@", str(SINK)))
    with running_lab(base, "fm", spec, "faults-lab") as lab:
        lab.tmp = tmp_path_factory.mktemp("fcfg")  # type: ignore[attr-defined]
        apply(lab, [GATEWAY], lab.tmp, "gateway")  # type: ignore[attr-defined]
        lab.wait_for(lambda: [w for w in waypoints(lab) if w["ready"]], timeout=30, what="waypoint ready")
        lab.wait_for(lambda: status_of(lab, "default/frontend", "http://myapp/")[0] == 200, timeout=30,
                     interval=0.5, what="myapp through the waypoint")
        yield lab


def configured(lab: Lab, name: str, docs: list[dict], probe, what: str) -> Path:
    """Apply `docs` and wait until `probe()` says the waypoint has them."""
    f = apply(lab, docs, lab.tmp, name)  # type: ignore[attr-defined]
    lab.wait_for(probe, timeout=30, interval=0.3, what=what)
    return f


# --- fault injection ------------------------------------------------------------------------------

def test_abort_at_50_percent_lands_within_tolerance_flagged_fi(flab: Lab) -> None:
    f = configured(flab, "abort", [vs("myapp-abort", "myapp", [{
        "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 50}}},
        "route": [{"destination": {"host": "myapp"}}]}])],
        lambda: any(status_of(flab, "default/frontend", "http://myapp/probe")[1] == "fault filter abort"
                    for _ in range(10)), "the abort fault")
    try:
        before = requests_total(flab, response_flags="FI", response_code="503")
        n = 400
        res = codes_and_times(flab, "http://myapp/abort", n)
        aborted = sum(c == 503 for c, _ in res)
        assert {c for c, _ in res} <= {200, 503}
        assert within(aborted, n, 0.5), f"{aborted}/{n} aborted"
        lines = access_records(flab, '"/abort?n=', where=lambda x: x["path"].startswith("/abort?n="), at_least=n)
        assert len(lines) == n
        fi = [x for x in lines if x["response_flags"] == "FI"]
        assert len(fi) == aborted and all(x["response_code"] == 503 and "upstream_host" not in x for x in fi)
        assert all(x["response_flags"] == "-" for x in lines if x["response_code"] == 200)
        assert requests_total(flab, response_flags="FI", response_code="503") - before == aborted
        print(f"\nabort 50 %: {aborted}/{n} aborted (99.9 % bound {n / 2 - Z * 10:.0f}..{n / 2 + Z * 10:.0f})")
    finally:
        delete(flab, f)


def test_a_delay_adds_its_time_and_splits_at_50_percent(flab: Lab) -> None:
    f = configured(flab, "delay", [vs("myapp-delay", "myapp", [{
        "fault": {"delay": {"fixedDelay": "300ms", "percentage": {"value": 100}}},
        "route": [{"destination": {"host": "myapp"}}]}])],
        lambda: codes_and_times(flab, "http://myapp/probe", 1)[0][1] >= 0.3, "the delay fault")
    try:
        res = codes_and_times(flab, "http://myapp/delay100", 10)
        assert all(c == 200 and t >= 0.3 for c, t in res), res
        lines = access_records(flab, '"/delay100?n=', where=lambda x: x["path"].startswith("/delay100?n="), at_least=10)
        assert len(lines) == 10 and all(x["response_flags"] == "DI" for x in lines), lines
        f = apply(flab, [vs("myapp-delay", "myapp", [{
            "fault": {"delay": {"fixedDelay": "300ms", "percentage": {"value": 50}}},
            "route": [{"destination": {"host": "myapp"}}]}])], flab.tmp, "delay")  # type: ignore[attr-defined]
        flab.wait_for(lambda: min(t for _, t in codes_and_times(flab, "http://myapp/probe", 8)) < 0.25,
                      timeout=30, interval=0.3, what="the 50 % delay")
        n = 100
        res = codes_and_times(flab, "http://myapp/delay50", n)
        slow = [t for _, t in res if t >= 0.3]
        fast = [t for _, t in res if t < 0.3]
        assert all(c == 200 for c, _ in res)
        assert not [t for t in fast if t > 0.2], "bimodal: no request is in between"
        assert within(len(slow), n, 0.5), f"{len(slow)}/{n} delayed"
        assert max(slow) < 0.3 + 0.5
        print(f"\ndelay 300ms at 50 %: {len(slow)}/{n} delayed, fast max {max(fast) * 1000:.0f} ms, "
              f"slow min {min(slow) * 1000:.0f} ms")
    finally:
        delete(flab, f)


def test_grpc_abort_unavailable_reaches_a_grpcio_client(flab: Lab) -> None:
    def call() -> dict:
        p = flab.exec("default/frontend", sys.executable, "-m", "ambitctl.lab.apps.grpc_echo", "call", "grpc:9000",
                      "--message", "hi", timeout=60)
        return json.loads(p.stdout.strip().splitlines()[-1])
    f = configured(flab, "grpc-abort", [vs("grpc-abort", "grpc", [{
        "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}},
        "route": [{"destination": {"host": "grpc"}}]}])],
        lambda: call().get("code") == "UNAVAILABLE", "the gRPC abort")
    try:
        assert call() == {"code": "UNAVAILABLE", "details": "fault filter abort"}
        line = access_records(flab, '"destination_service": "default/grpc"')[-1]
        assert (line["response_code"], line["grpc_status"], line["response_flags"]) == (200, "14", "FI")
    finally:
        delete(flab, f)


# --- mirroring ------------------------------------------------------------------------------------

def test_mirror_percentage_reaches_the_shadow_with_the_body(flab: Lab) -> None:
    f = configured(flab, "mirror", [vs("myapp-mirror", "myapp", [{
        "route": [{"destination": {"host": "myapp"}}],
        "mirror": {"host": "shadow"}, "mirrorPercentage": {"value": 50}}])],
        lambda: bool(codes_and_times(flab, "http://myapp/mprobe", 10) and shadow_got(flab, "shadow", "/mprobe")),
        "the mirror")
    try:
        n = 400
        body = "b" * 1000
        res = codes_and_times(flab, "http://myapp/m50", n, "-d", body)
        assert all(c == 200 for c, _ in res)        # the primary's answer; the shadow answers 500
        flab.wait_for(lambda: mirror_stats(flab)["active"] == 0, timeout=20, what="shadows done")
        got = shadow_got(flab, "shadow", "/m50?n=")
        assert within(len(got), n, 0.5), f"{len(got)}/{n} mirrored"
        assert all(d["method"] == "POST" and d["body"] == 1000 and d["host"] == "myapp" for d in got), got[:3]
        assert len({d["path"] for d in got}) == len(got)
        # shadows are not downstream requests: one access-log line per client request, none for shadows
        assert len(access_records(flab, '"/m50?n=', where=lambda x: x["path"].startswith("/m50?n="), at_least=n)) == n
        print(f"\nmirror 50 %: {len(got)}/{n} at the shadow, each with its 1000-byte body, Host myapp")
    finally:
        delete(flab, f)


def test_a_slow_or_down_shadow_leaves_the_primary_latency_alone(flab: Lab) -> None:
    n = 200
    route = [{"destination": {"host": "myapp"}}]
    f = configured(flab, "mirror-lat", [vs("myapp-lat", "myapp", [{"route": route}])],
                   lambda: True, "the plain route")
    try:
        base = [t for _, t in codes_and_times(flab, "http://myapp/base", n)]
        before = mirror_stats(flab)
        apply(flab, [vs("myapp-lat", "myapp", [{"route": route, "mirror": {"host": "slowshadow"}}])],
              flab.tmp, "mirror-lat")  # type: ignore[attr-defined]
        flab.wait_for(lambda: codes_and_times(flab, "http://myapp/sprobe", 1) and
                      mirror_stats(flab)["started"] > before["started"], timeout=30, interval=0.3, what="slow mirror")
        slow = codes_and_times(flab, "http://myapp/slow", n)
        assert all(c == 200 for c, _ in slow)
        slow_t = [t for _, t in slow]
        apply(flab, [vs("myapp-lat", "myapp", [{"route": route, "mirror": {"host": "downshadow"}}])],
              flab.tmp, "mirror-lat")  # type: ignore[attr-defined]
        mid = mirror_stats(flab)
        flab.wait_for(lambda: codes_and_times(flab, "http://myapp/dprobe", 1) and
                      mirror_stats(flab)["failed"] > mid["failed"], timeout=30, interval=0.3, what="down mirror")
        down = codes_and_times(flab, "http://myapp/down", n)
        assert all(c == 200 for c, _ in down)
        down_t = [t for _, t in down]
        flab.wait_for(lambda: mirror_stats(flab)["active"] == 0, timeout=20, what="shadows done")
        after = mirror_stats(flab)
        # the slow shadow answers 1 s late: had the primary waited, every request would take >= 1 s
        print(f"\nprimary p99: no mirror {p99(base) * 1000:.1f} ms, slow shadow {p99(slow_t) * 1000:.1f} ms, "
              f"down shadow {p99(down_t) * 1000:.1f} ms; median {sorted(base)[n // 2] * 1000:.1f} / "
              f"{sorted(slow_t)[n // 2] * 1000:.1f} / {sorted(down_t)[n // 2] * 1000:.1f} ms; gate {after}")
        assert p99(slow_t) < p99(base) + 0.2 and p99(down_t) < p99(base) + 0.2
        assert sorted(slow_t)[n // 2] < sorted(base)[n // 2] * 2 + 0.02
        assert len(shadow_got(flab, "slowshadow", "/slow?n=")) >= n - (after["overflow"] - before["overflow"])
        assert after["failed"] - mid["failed"] >= n
        assert metric(flab, "ambit_waypoint_mirror_requests_total", result="failed") == after["failed"]
    finally:
        delete(flab, f)


def test_an_httproute_request_mirror(flab: Lab) -> None:
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "myapp-mirror", "namespace": "default"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "myapp", "port": 80}],
                      "rules": [{"filters": [{"type": "RequestMirror", "requestMirror": {
                          "backendRef": {"name": "shadow", "port": 80}, "percent": 100}}],
                          "backendRefs": [{"name": "myapp", "port": 80}]}]}}
    f = configured(flab, "httproute-mirror", [route],
                   lambda: bool(codes_and_times(flab, "http://myapp/hprobe", 3) and
                                shadow_got(flab, "shadow", "/hprobe")), "the RequestMirror")
    try:
        n = 50
        assert all(c == 200 for c, _ in codes_and_times(flab, "http://myapp/hr", n))
        flab.wait_for(lambda: len(shadow_got(flab, "shadow", "/hr?n=")) >= n, timeout=20, what="all mirrored")
        assert len(shadow_got(flab, "shadow", "/hr?n=")) == n
    finally:
        delete(flab, f)
