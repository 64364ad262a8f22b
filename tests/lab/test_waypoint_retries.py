"""Retries, retry budgets and timeouts end to end: the real waypoint process (python -m waypoint)
in its own pod, real HBONE on both hops, real clients (python http.client, h2load, grpcio) in a lab
pod, and backends that fail or stall on their own (tests/lab/specs/retries.yaml).

Each test applies its VirtualService / DestinationRule, waits until the waypoint has it (a response
header the VirtualService sets, or the behaviour itself), measures, and deletes it. Retry counts come
from the waypoint's per-cluster stats (admin `/clusters`, Envoy's names).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ambit.dataplane import endpoint
from ambitctl.lab import waypoints as waypoints_mod
from tests.lab.labctl import Lab, artifacts, running_lab
from tests.lab.test_waypoint import GATEWAY, access_records, apply, delete, waypoints

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

SPEC = Path(__file__).parent / "specs" / "retries.yaml"
CLIENT = "default/client"

# N requests over C keep-alive connections (threads); prints {"codes": {...}, "times": [...], "marks": {...}}
_LOAD = r"""
import http.client, json, sys, threading, time, urllib.parse
url, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
u = urllib.parse.urlsplit(url)
codes, times, marks, lock = {}, [], {}, threading.Lock()
def worker(k):
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=20)
    for i in range(k):
        t0 = time.monotonic()
        try:
            conn.request("GET", (u.path or "/") + "?i=%d" % i)
            r = conn.getresponse(); r.read(); code = r.status; mark = r.getheader("x-rt-vs", "")
        except Exception as e:
            code, mark = type(e).__name__, ""
            conn.close(); conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=20)
        dt = time.monotonic() - t0
        with lock:
            codes[str(code)] = codes.get(str(code), 0) + 1; times.append(dt); marks[mark] = marks.get(mark, 0) + 1
ts = [threading.Thread(target=worker, args=(n // c + (1 if j < n % c else 0),)) for j in range(c)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"codes": codes, "times": times, "marks": marks}))
"""


def load(lab: Lab, url: str, n: int, c: int = 1) -> dict[str, Any]:
    p = lab.exec(CLIENT, sys.executable, "-c", _LOAD, url, str(n), str(c), timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def vs(host: str, mark: str, **http: Any) -> dict:
    route: dict[str, Any] = {"route": [{"destination": {"host": host}}],
                             "headers": {"response": {"set": {"x-rt-vs": mark}}}, **http}
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": f"rt-{mark}", "namespace": "default"},
            "spec": {"hosts": [host], "http": [route]}}


def dr(host: str, name: str, policy: dict) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": f"rt-{name}", "namespace": "default"},
            "spec": {"host": host, "trafficPolicy": policy}}


def cluster_stats(lab: Lab, host: str, port: int = 80) -> dict[str, float]:
    name = f"outbound|{port}||{host}.default.svc.cluster.local"
    _, clusters = endpoint.get_json(waypoints_mod.admin_socket(lab.dir, "default", "waypoint"), "/clusters")
    return next((c["stats"] for c in clusters if c["name"] == name), {})


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0) - before.get(key, 0)


def wait_mark(lab: Lab, url: str, mark: str) -> None:
    lab.wait_for(lambda: load(lab, url, 2)["marks"].get(mark) == 2, timeout=20, interval=0.3,
                 what=f"VirtualService {mark} in force")


@pytest.fixture(scope="module")
def rlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("rlab"), "rt", SPEC, "retries-lab") as lab:
        lab.tmp = tmp_path_factory.mktemp("rcfg")  # type: ignore[attr-defined]
        apply(lab, [GATEWAY], lab.tmp, "gateway")  # type: ignore[attr-defined]
        lab.wait_for(lambda: [w for w in waypoints(lab) if w["ready"]], timeout=30, what="waypoint ready")
        lab.wait_for(lambda: load(lab, "http://plain/", 1)["codes"].get("200") == 1, timeout=30,
                     interval=0.5, what="plain through the waypoint")
        yield lab


def test_default_policy_does_not_retry_a_503(rlab: Lab) -> None:
    before = cluster_stats(rlab, "flaky")
    r = load(rlab, "http://flaky/", 40)
    # every 2nd answer of the pod is a 503, and Istio's default retryOn has no status code
    assert r["codes"] == {"200": 20, "503": 20}, r["codes"]
    assert delta(cluster_stats(rlab, "flaky"), before, "upstream_rq_retry") == 0


def test_retries_turn_a_half_failing_service_into_success(rlab: Lab) -> None:
    # 4 concurrent clients share the pod's every-2nd-fails counter, so a try fails about half the
    # time whatever came before; with retryOn 5xx and attempts 9 a request fails only if its 10
    # tries all do: 0.5^10 = 0.1 %. (With attempts 2 the same load measured 94 % success: 0.5^3.)
    f = apply(rlab, [vs("flaky", "retry5xx", retries={"attempts": 9, "retryOn": "5xx"})], rlab.tmp, "flaky")  # type: ignore[attr-defined]
    try:
        wait_mark(rlab, "http://flaky/", "retry5xx")
        before = cluster_stats(rlab, "flaky")
        r = load(rlab, "http://flaky/", 400, 4)
        after = cluster_stats(rlab, "flaky")
        ok = r["codes"].get("200", 0) / 400
        retries = delta(after, before, "upstream_rq_retry")
        succ = delta(after, before, "upstream_rq_retry_success")
        print(f"\nretryOn 5xx, attempts 9, fail-every 2, 4 clients: success {ok:.4f}, retries {retries:.0f} "
              f"for 400 requests, retry_success {succ:.0f}")
        assert ok >= 0.99, r["codes"]
        assert 250 <= retries <= 800            # about one retry per request (half fail, then half of those ...)
        assert 150 <= succ <= r["codes"].get("200", 0)
    finally:
        delete(rlab, f)


def test_the_retry_budget_caps_retries_against_a_dead_service(rlab: Lab) -> None:
    docs = [vs("dead", "budget", retries={"attempts": 3, "retryOn": "5xx", "backoff": "5ms"})]
    f = apply(rlab, docs, rlab.tmp, "dead")  # type: ignore[attr-defined]
    out = artifacts("retries-lab") / "budget.txt"
    try:
        wait_mark(rlab, "http://dead/", "budget")
        # control: no budget, every request is retried 3 times
        before = cluster_stats(rlab, "dead")
        load(rlab, "http://dead/", 200, 20)
        free = delta(cluster_stats(rlab, "dead"), before, "upstream_rq_retry") / 200
        # the budget: concurrent retries <= max(2, 20 % of active requests)
        # a new policy rebuilds the cluster, and its counters start again from 0: read before the
        # DestinationRule, since the old cluster may be gone by the time `apply` returns
        pre = cluster_stats(rlab, "dead").get("upstream_rq_retry", 0)
        assert pre > 0
        g = apply(rlab, [dr("dead", "budget", {"retryBudget": {"percent": 20, "minRetryConcurrency": 2}})],
                  rlab.tmp, "dead-dr")  # type: ignore[attr-defined]
        try:
            rlab.wait_for(lambda: load(rlab, "http://dead/", 1) and cluster_stats(rlab, "dead").get(
                "upstream_rq_retry", 0) < pre, timeout=20, interval=0.3, what="DestinationRule in force")
            before = cluster_stats(rlab, "dead")
            r = load(rlab, "http://dead/", 600, 20)
            after = cluster_stats(rlab, "dead")
        finally:
            delete(rlab, g)
        retries = delta(after, before, "upstream_rq_retry")
        overflow = delta(after, before, "upstream_rq_retry_overflow")
        share = retries / (600 + retries)
        line = (f"no budget: {free:.2f} retries/request; budget 20 %/min 2 at 20 concurrent: "
                f"{retries / 600:.2f} retries/request, retries {share:.1%} of attempts, overflow {overflow:.0f}")
        out.write_text(line + "\n")
        print("\n" + line)
        assert r["codes"] == {"503": 600}
        assert free == pytest.approx(3.0, abs=0.05)
        assert overflow > 0 and retries / 600 < 1.0
        # the share of attempts that are retries stays near the budget's 20 % (the min concurrency and
        # the backoff, during which a retry counts but is no request, give some slack)
        assert share <= 0.35
        dead = '"destination_service": "default/dead"'
        assert access_records(rlab, dead, where=lambda a: a["response_flags"] == "UO")
        assert access_records(rlab, dead, where=lambda a: a["response_flags"] == "URX")
    finally:
        delete(rlab, f)


def test_a_timeout_gives_504_on_time(rlab: Lab) -> None:
    f = apply(rlab, [vs("slow", "timeout", timeout="0.5s")], rlab.tmp, "slow")  # type: ignore[attr-defined]
    try:
        rlab.wait_for(lambda: load(rlab, "http://slow/", 1)["codes"].get("504") == 1, timeout=20, interval=0.3,
                      what="timeout in force")
        r = load(rlab, "http://slow/", 6, 3)
        times = sorted(r["times"])
        print(f"\ntimeout 0.5 s against --delay 2: 504 after {[round(t, 3) for t in times]} s")
        assert r["codes"] == {"504": 6}
        assert all(0.48 <= t <= 0.5 + 0.3 for t in times), times
        recs = access_records(rlab, '"destination_service": "default/slow"', at_least=6,
                              where=lambda a: a["response_code"] == 504)
        assert len(recs) >= 6 and all(a["response_flags"] == "UT" for a in recs)
        assert all(a["response_code_details"] == "upstream request timeout" for a in recs)
        assert cluster_stats(rlab, "slow").get("upstream_rq_timeout", 0) >= 6
    finally:
        delete(rlab, f)


def test_a_per_try_timeout_is_retried_onto_the_fast_endpoint(rlab: Lab) -> None:
    spec = {"attempts": 2, "perTryTimeout": "0.3s", "retryOn": "gateway-error"}
    f = apply(rlab, [vs("mixed", "pertry", retries=spec)], rlab.tmp, "mixed")  # type: ignore[attr-defined]
    try:
        wait_mark(rlab, "http://mixed/", "pertry")
        before = cluster_stats(rlab, "mixed")
        # the retry excludes the pod already tried (retryIgnorePreviousHosts), so it lands on the
        # fast one; the first try is the balancer's (least request: about half go to the slow pod)
        r = load(rlab, "http://mixed/", 30, 1)
        after = cluster_stats(rlab, "mixed")
        per_try = delta(after, before, "upstream_rq_per_try_timeout")
        print(f"\nslow+fast, perTryTimeout 0.3 s: {r['codes']}, per-try timeouts {per_try:.0f}, "
              f"max latency {max(r['times']):.3f} s")
        assert r["codes"] == {"200": 30}
        # Binomial(30, 1/2) first tries on the slow pod: 5..25 holds but for odds below 1e-4
        assert 5 <= per_try <= 25
        assert delta(after, before, "upstream_rq_retry_success") == per_try
        assert max(r["times"]) < 0.3 + 0.5       # never the 2 s of the slow one
    finally:
        delete(rlab, f)


def _tally(lab: Lab, n: int) -> dict[str, int]:
    p = lab.exec(CLIENT, sys.executable, "-m", "ambitctl.lab.apps.grpc_echo", "call", "grpc:9000",
                 "--repeat", str(n), "--tally", timeout=90)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_grpc_unavailable_is_retried(rlab: Lab) -> None:
    # Istio's default policy retries `unavailable`: the pod fails every 2nd call, all succeed
    before = cluster_stats(rlab, "grpc", 9000)
    assert _tally(rlab, 60) == {"OK": 60}
    after = cluster_stats(rlab, "grpc", 9000)
    assert delta(after, before, "upstream_rq_retry") >= 25
    # control: retries off (attempts 0), about half fail
    f = apply(rlab, [vs("grpc", "noretry", retries={"attempts": 0})], rlab.tmp, "grpc")  # type: ignore[attr-defined]
    try:
        rlab.wait_for(lambda: _tally(rlab, 4).get("UNAVAILABLE", 0) >= 1, timeout=20, interval=0.3,
                      what="attempts 0 in force")
        t = _tally(rlab, 40)
        assert t.get("UNAVAILABLE", 0) in range(15, 26) and t.get("OK", 0) + t.get("UNAVAILABLE", 0) == 40, t
    finally:
        delete(rlab, f)


def _h2load(lab: Lab, url: str) -> float:
    p = lab.exec(CLIENT, "h2load", "--h1", "-n", "3000", "-c", "10", url, timeout=120)
    assert re.search(r"3000 succeeded", p.stdout), p.stdout
    return float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", p.stdout).group(1))  # type: ignore[union-attr]


def test_happy_path_cost_of_a_retry_policy(rlab: Lab) -> None:
    """Not a pass/fail figure: req/s through the waypoint to one fast pod, without retries
    (attempts 0) and with a retry policy (5xx, 2 attempts, perTryTimeout), alternated."""
    docs = [vs("plain", "plain", retries={"attempts": 0}),
            vs("plainr", "plainr", retries={"attempts": 2, "retryOn": "5xx,reset", "perTryTimeout": "2s"},
               timeout="5s")]
    f = apply(rlab, docs, rlab.tmp, "bench")  # type: ignore[attr-defined]
    try:
        wait_mark(rlab, "http://plain/", "plain")
        wait_mark(rlab, "http://plainr/", "plainr")
        runs: dict[str, list[float]] = {"plain": [], "plainr": []}
        for _ in range(2):
            for host in runs:
                runs[host].append(_h2load(rlab, f"http://{host}/"))
        line = (f"h2load --h1 -c 10 -n 3000 through the waypoint: no retry policy {runs['plain']} req/s, "
                f"retry policy + timeouts {runs['plainr']} req/s")
        (artifacts("retries-lab") / "bench.txt").write_text(line + "\n")
        print("\n" + line)
    finally:
        delete(rlab, f)
