"""xxHash64, hash keys, the ring hash and the Maglev table: distribution and minimal disruption."""

from __future__ import annotations

import random
from collections import Counter

from ambit.model import TrafficPolicy
from waypoint.request import Downstream, RequestHead
from waypoint.traffic.hashkey import HashPolicy, cookie_value, set_cookie_value
from waypoint.traffic.hashring import RingHash
from waypoint.traffic.maglev import Maglev
from waypoint.traffic.xxhash64 import xxh64

HOSTS = [f"10.0.0.{i}:8080" for i in range(1, 6)]


def test_xxh64_matches_the_reference_vectors() -> None:
    # XXH64 test vectors (seed 0), as the reference implementation and Envoy's HashUtil compute them
    assert xxh64(b"") == 0xEF46DB3751D8E999
    assert xxh64(b"a") == 0xD24EC4F1A98C6E5B
    assert xxh64(b"abc") == 0x44BC2CF5AD770999
    assert xxh64("abc") == xxh64(b"abc")
    # the >= 32 byte path (checked against the C library when written)
    assert xxh64(b"x" * 100, 1) == 0xA27AEC103FA2BDAE


def keys(n: int = 20000) -> list[int]:
    rng = random.Random(7)
    return [rng.getrandbits(64) for _ in range(n)]


def test_ring_size_and_even_spread() -> None:
    r = RingHash(HOSTS)
    assert len(r) == 5 * 205                           # ceil(1024 / 5) points per host
    got = Counter(r.pick(k) for k in keys(5000))
    assert set(got) == set(HOSTS)
    assert all(abs(n / 5000 - 0.2) < 0.06 for n in got.values()), got   # ketama with ~200 points: +-25 %
    assert len(RingHash(HOSTS, 4096)) == 5 * 820


def test_ring_removing_a_host_moves_its_keys_and_some_more_as_envoys_ring_does() -> None:
    # Envoy gives each host ceil(minimumRingSize / N) points: with one host fewer the others get
    # more points, which take keys from one another too (measured: 0.35 moved for the ideal 0.25)
    hosts = HOSTS[:4]
    ks = keys(5000)
    r4, r3 = RingHash(hosts), RingHash(hosts[:3])
    before = {k: r4.pick(k) for k in ks}
    after = {k: r3.pick(k) for k in ks}
    moved = {k for k in ks if before[k] != after[k]}
    gone = {k for k in ks if before[k] == hosts[3]}
    assert gone <= moved
    assert abs(len(gone) / len(ks) - 0.25) < 0.05 and len(moved) / len(ks) < 0.25 + 0.15
    # a host's points do not depend on the others': with the same points per host (a ring of 3
    # hosts and one of 4 with the same per-host count), only the leaving host's keys move
    r4b = RingHash(hosts, 4 * 342)
    assert len(r4b) == len(r3) + 342
    assert {k for k in ks if r4b.pick(k) != after[k]} == {k for k in ks if r4b.pick(k) == hosts[3]}


def test_ring_walk_skips_a_host_as_a_ring_without_its_points_would() -> None:
    r5 = RingHash(HOSTS)
    r4 = RingHash(HOSTS[:4], 4 * 205)                      # the same points for the four others
    for k in keys(500):
        walk = list(r5.walk(k))
        assert sorted(walk) == sorted(HOSTS)
        assert next(h for h in walk if h != HOSTS[4]) == r4.pick(k)


def test_maglev_table_is_even_and_moves_little() -> None:
    m = Maglev(HOSTS, 65537)
    slots = Counter(m.owner(i) for i in range(m.size))
    assert max(slots.values()) - min(slots.values()) <= 1          # M/N each, +-1
    m4 = Maglev(HOSTS[:4], 65537)
    moved = sum(1 for i in range(m.size) if m.owner(i) != HOSTS[4] and m.owner(i) != m4.owner(i))
    assert moved / m.size < 0.05                                   # the others keep almost all their slots
    ks = keys(5000)
    assert all(abs(n / 5000 - 0.2) < 0.03 for n in Counter(m.pick(k) for k in ks).values())
    assert Maglev(list(reversed(HOSTS)), 251)._table == Maglev(HOSTS, 251)._table    # set, not order
    assert sorted(Maglev(HOSTS, 251).walk(12345)) == sorted(HOSTS)


def head(*headers: tuple[str, str], path: str = "/") -> RequestHead:
    return RequestHead("GET", path, "svc", headers=list(headers))


def test_hash_keys_from_header_cookie_source_ip_and_query() -> None:
    p = HashPolicy.from_policy(TrafficPolicy(lb="CONSISTENT_HASH", hash_header="X-User"))
    assert p is not None and p.key(head(("x-user", "ann")), None).value == xxh64("ann")
    assert p.key(head(), None).value is None
    assert HashPolicy.from_policy(TrafficPolicy(lb="ROUND_ROBIN", hash_header="x")) is None
    ip = HashPolicy.from_policy(TrafficPolicy(lb="CONSISTENT_HASH", hash_source_ip=True))
    assert ip is not None and ip.key(head(), Downstream(source_ip="10.1.2.3")).value == xxh64("10.1.2.3")
    q = HashPolicy.from_policy(TrafficPolicy(lb="CONSISTENT_HASH", hash_query_param="u"))
    assert q is not None and q.key(head(path="/a?x=1&u=bob&u=eve"), None).value == xxh64("bob")
    assert q.key(head(path="/a"), None).value is None


def test_cookie_key_and_generated_cookie() -> None:
    assert cookie_value(head(("cookie", 'a=1; sid="v1"; b=2')), "sid") == "v1"
    assert cookie_value(head(("cookie", "a=1"), ("cookie", "sid=v2")), "sid") == "v2"
    assert cookie_value(head(("cookie", "sidx=1")), "sid") is None
    p = HashPolicy.from_policy(TrafficPolicy(lb="CONSISTENT_HASH", hash_cookie="sid", hash_cookie_path="/app",
                                             hash_cookie_ttl=30.0, hash_cookie_attributes={"SameSite": "Strict",
                                                                                           "Secure": ""}))
    assert p is not None
    assert p.key(head(("cookie", "sid=abc")), None).value == xxh64("abc")
    k = p.key(head(("x-request-id", "r-1")), None)
    value = f"{xxh64('r-1'):016x}"
    assert k.value == xxh64(value)                  # the next request, with the cookie, hashes the same
    assert k.set_cookie == f'sid="{value}"; Max-Age=30; Path=/app; SameSite=Strict; Secure; HttpOnly'
    assert p.key(head(("x-request-id", "r-1")), None) == k       # a retry of the request: the same
    no_ttl = HashPolicy.from_policy(TrafficPolicy(lb="CONSISTENT_HASH", hash_cookie="sid"))
    assert no_ttl is not None and no_ttl.key(head(), None).value is None
    assert set_cookie_value("s", "v", "", 0) == 's="v"; HttpOnly'


def test_a_zero_ttl_sets_a_session_cookie_as_envoy_does() -> None:
    """`httpCookie: {name: sid, ttl: 0s}` (Istio passes the zero ttl on to Envoy, which then makes
    a session cookie) was read as no ttl: no cookie was set, and no client ever stuck."""
    from tests.unit.waypoint.support import translated
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
          "metadata": {"name": "sticky", "namespace": "default"},
          "spec": {"host": "myapp", "trafficPolicy": {"loadBalancer": {"consistentHash": {
              "httpCookie": {"name": "sid", "ttl": "0s", "path": "/"}}}}}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "myapp", "namespace": "default"},
           "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "myapp"}, "ports": [{"name": "http", "port": 80}]}}
    [policy] = [wr.policy for wr in translated([svc, dr]).waypoint_routes if wr.policy is not None]
    p = HashPolicy.from_policy(policy)
    assert p is not None
    k = p.key(head(("x-request-id", "r-2")), None)
    assert k.set_cookie == f'sid="{xxh64("r-2"):016x}"; Path=/; HttpOnly'       # no Max-Age: a session cookie
    assert k.value == xxh64(f"{xxh64('r-2'):016x}")
    unset = {**dr, "spec": {**dr["spec"], "trafficPolicy": {"loadBalancer": {"consistentHash": {
        "httpCookie": {"name": "sid"}}}}}}
    [policy] = [wr.policy for wr in translated([svc, unset]).waypoint_routes if wr.policy is not None]
    assert HashPolicy.from_policy(policy).key(head(("x-request-id", "r-2")), None).set_cookie == ""


def test_weighted_ring_gives_each_host_points_in_proportion_as_envoys_does() -> None:
    # Envoy's Ring: the lightest host gets ceil(share * minimumRingSize) points, the others in
    # proportion (running sums); equal weights build the unweighted ring
    r = RingHash(HOSTS[:3], 1024, (1, 2, 5))
    per = Counter(r._owners)
    assert per[HOSTS[0]] == 128 and per[HOSTS[1]] == 256 and per[HOSTS[2]] == 640
    assert RingHash(HOSTS, 1024, (2,) * 5)._hashes == RingHash(HOSTS)._hashes
    got = Counter(r.pick(k) for k in keys())
    assert abs(got[HOSTS[2]] / 20000 - 5 / 8) < 0.05, got


def test_a_weighted_ring_is_bounded_whatever_the_weights() -> None:
    # weights 1 and 2**32 - 1 would make Envoy's ring its 8 M maximum; the waypoint builds at most
    # ambit.hashtable.MAX_RING_SIZE points (it builds on its event loop), the light host keeps one
    from ambit.hashtable import MAX_RING_SIZE
    r = RingHash(HOSTS[:2], 1024, (1, 2**32 - 1))
    assert len(r) <= MAX_RING_SIZE + 1 and Counter(r._owners)[HOSTS[0]] == 1


def test_weighted_maglev_shares_the_table_by_weight() -> None:
    m = Maglev(HOSTS[:3], 65537, (1, 2, 5))
    per = Counter(m.owner(i) for i in range(65537))
    assert all(abs(per[h] - 65537 * w / 8) <= 2 for h, w in zip(HOSTS[:3], (1, 2, 5), strict=True)), per
    assert Maglev(HOSTS, 65537, (4,) * 5)._table == Maglev(HOSTS)._table


def test_a_maglev_table_size_that_is_not_prime_is_not_built_so_it_cannot_hang_the_waypoint() -> None:
    # filling a table whose size is not prime never ended (a host's permutation cycles through a
    # part of the table): validation refuses such a tableSize, and should one arrive the waypoint
    # builds the default table instead of spinning on its event loop
    assert Maglev(HOSTS, 64).size == 65537 and Maglev(HOSTS, 4).size == 65537
    assert Maglev(HOSTS, 13).size == 13 and Maglev(HOSTS, 5_000_011).size == 65537
