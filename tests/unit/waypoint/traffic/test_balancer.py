"""The simple balancers, driven with a seeded random source: round robin, least request (power of
two choices), random, and their weighted form under slow start."""

from __future__ import annotations

import random
from collections import Counter

from waypoint.traffic.balancer import (
    HashBalancer,
    LeastRequest,
    Random,
    RoundRobin,
    SmoothWeighted,
    simple_balancer,
)

H = ["a:1", "b:1", "c:1"]


def test_round_robin_goes_in_turn_from_a_random_start() -> None:
    rr = RoundRobin(random.Random(1))
    picks = [rr.pick(H, {}) for _ in range(6)]
    assert picks[:3] == picks[3:] and sorted(picks[:3]) == sorted(H)
    other = RoundRobin(random.Random(2))
    starts = {RoundRobin(random.Random(s)).pick(H, {}) for s in range(20)}
    assert len(starts) == 3 and other.pick(H, {}) in H    # proxies do not all start on the same host


def test_least_request_takes_the_less_loaded_of_two_random_draws() -> None:
    lr = LeastRequest(random.Random(3))
    active = {"a:1": 5, "b:1": 0, "c:1": 5}
    got = Counter(lr.pick(H, active) for _ in range(3000))
    # b wins unless both draws miss it: P = 1 - (2/3)^2 = 5/9
    assert abs(got["b:1"] / 3000 - 5 / 9) < 0.03, got
    # two hosts: half the draws pick the same one twice (Envoy draws with replacement)
    got2 = Counter(lr.pick(["a:1", "b:1"], {"a:1": 3}) for _ in range(4000))
    assert abs(got2["b:1"] / 4000 - 0.75) < 0.03, got2
    # equal load: the first draw wins, i.e. uniform
    got3 = Counter(lr.pick(H, {}) for _ in range(3000))
    assert all(abs(n / 3000 - 1 / 3) < 0.04 for n in got3.values())


def test_least_request_under_a_simulated_slow_host_favours_the_fast_one() -> None:
    # requests arrive every tick; "slow" holds each for 8 ticks, "fast" for 1
    lr = LeastRequest(random.Random(4))
    active: dict[str, int] = {}
    ends: list[tuple[int, str]] = []
    got: Counter = Counter()
    for t in range(4000):
        for e in [e for e in ends if e[0] <= t]:
            ends.remove(e)
            active[e[1]] -= 1
        for _ in range(2):
            h = lr.pick(["fast", "slow"], active)
            got[h] += 1
            active[h] = active.get(h, 0) + 1
            ends.append((t + (8 if h == "slow" else 1), h))
    assert got["fast"] / sum(got.values()) > 0.65, got


def test_random_is_uniform() -> None:
    rb = Random(random.Random(6))
    got = Counter(rb.pick(H, {}) for _ in range(3000))
    assert all(abs(n / 3000 - 1 / 3) < 0.04 for n in got.values())


def test_smooth_weighted_follows_the_weights_and_interleaves() -> None:
    sw = SmoothWeighted()
    picks = [sw.pick(["a", "b", "c"], [5, 1, 1]) for _ in range(7)]
    assert Counter(picks) == {"a": 5, "b": 1, "c": 1}
    assert picks[:3] != ["a", "a", "a"]                     # smooth: not in bursts
    got = Counter(sw.pick(["a", "b"], [0.1, 1.0]) for _ in range(1100))
    assert got == {"a": 100, "b": 1000}


def test_weighted_round_robin_and_least_request() -> None:
    rr = RoundRobin(random.Random(1))
    assert Counter(rr.pick(["a", "b"], {}, [0.25, 1.0]) for _ in range(500)) == {"a": 100, "b": 400}
    lr = LeastRequest(random.Random(1))
    # weights divided by (active + 1): b's 3 active requests make it count as 1/4
    assert Counter(lr.pick(["a", "b"], {"b": 3}, [1.0, 1.0]) for _ in range(500)) == {"a": 400, "b": 100}


def test_the_default_is_least_request_as_istio() -> None:
    rng = random.Random(0)
    assert isinstance(simple_balancer("", rng), LeastRequest)
    assert isinstance(simple_balancer("LEAST_REQUEST", rng), LeastRequest)
    assert isinstance(simple_balancer("PASSTHROUGH", rng), LeastRequest)
    assert isinstance(simple_balancer("ROUND_ROBIN", rng), RoundRobin)
    assert isinstance(simple_balancer("RANDOM", rng), Random)


def test_hash_balancer_skips_unusable_hosts_and_caches_tables() -> None:
    hb = HashBalancer("RING_HASH")
    hosts = [f"10.0.0.{i}:80" for i in range(4)]
    first = hb.pick(hosts, hosts, 42)
    others = [h for h in hosts if h != first]
    second = hb.pick(hosts, others, 42)
    assert second != first and hb.pick(hosts, others, 42) == second
    assert hb.table(hosts) is hb.table(list(reversed(hosts)))
    mg = HashBalancer("MAGLEV", 251)
    assert mg.pick(hosts, hosts, 7) == mg.pick(hosts, hosts, 7 + 251)
