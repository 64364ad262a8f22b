"""The config push measure end to end: real ConfigServer and ConfigClient over gRPC on loopback."""

from __future__ import annotations

from bench import confpush


def test_every_change_is_seen_by_the_client_and_timed():
    r = confpush.run(pods=200, changes=5)
    assert r.pods == 200
    assert len(r.latencies_ms) == 5
    assert all(x > 0 for x in r.latencies_ms)
    s = r.summary()
    assert s["p50_ms"] <= s["p99_ms"] <= s["max_ms"]


def test_synthetic_pods_are_distinct_and_spread_over_nodes():
    ws = confpush.synthetic_workloads(1000)
    assert len({w.uid for w in ws}) == 1000
    assert len({w.ips[0] for w in ws}) == 1000
    assert {w.node for w in ws} == {"node1", "node2"}
