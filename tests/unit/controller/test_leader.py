"""Leader election over a coordination.k8s.io/v1 Lease, against the API-server emulator (real HTTP,
real resourceVersion conflicts, the official client), with the clocks injected."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from ambit.kube.client import make_api_client
from controller.leader import CREATE, FOLLOW, RENEW, TAKEOVER, LeaseElector, LeaseView, decide
from tests.support.kube_emulator import Fault, KubeEmulator
from tests.support.wait import wait_for

NS, NAME = "ambit-system", "ambit-controller"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Clock:
    def __init__(self, t: float = T0.timestamp()) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("lease, action", [
    (None, CREATE),
    (LeaseView("a", T0, 15), RENEW),                                       # ours: renew, however old
    (LeaseView("b", T0, 15), FOLLOW),                                      # another's, fresh
    (LeaseView("b", T0 - dt.timedelta(seconds=14), 15), FOLLOW),
    (LeaseView("b", T0 - dt.timedelta(seconds=15), 15), TAKEOVER),        # expired at renewTime + duration
    (LeaseView("b", T0 - dt.timedelta(seconds=20), None), TAKEOVER),      # no duration: ours (15s) applies
    (LeaseView(None, None, 15), TAKEOVER),                                  # released
])
def test_decide(lease: LeaseView | None, action: str) -> None:
    assert decide(lease, "a", T0, 15) == action


@pytest.fixture
def emu():
    with KubeEmulator() as e:
        yield e


def elector(emu: KubeEmulator, me: str, clock: Clock) -> LeaseElector:
    return LeaseElector(make_api_client(emu.url), NS, NAME, me, lease_duration=15, renew_deadline=10,
                        retry_period=0.05, clock=clock)


def lease(emu: KubeEmulator) -> k8s.V1Lease:
    return k8s.CoordinationV1Api(make_api_client(emu.url)).read_namespaced_lease(NAME, NS)


def test_one_leader_then_a_takeover_only_after_the_lease_expires(emu: KubeEmulator) -> None:
    clock = Clock()
    a, b = elector(emu, "pod-a", clock), elector(emu, "pod-b", clock)
    assert a.try_once() is True                       # no Lease yet: a creates it and leads
    assert b.try_once() is False
    spec = lease(emu).spec
    assert (spec.holder_identity, spec.lease_duration_seconds, spec.lease_transitions) == ("pod-a", 15, 0)

    clock.t += 8
    assert a.try_once() is True and b.try_once() is False      # a renews; b still follows
    clock.t += 14                                              # a silent for 14s < 15s since its renewal
    assert b.try_once() is False
    assert a.is_leader() is False       # but a, unable to renew for > renew_deadline (10s), already stepped down
    clock.t += 1                                               # 15s: expired
    assert b.try_once() is True
    spec = lease(emu).spec
    assert (spec.holder_identity, spec.lease_transitions) == ("pod-b", 1)
    assert a.try_once() is False                               # a comes back: follows the new holder


def test_of_two_replicas_racing_for_an_expired_lease_only_one_wins(emu: KubeEmulator) -> None:
    clock = Clock()
    old = elector(emu, "pod-old", clock)
    assert old.try_once()
    clock.t += 60                                              # the old leader died long ago
    a, b = elector(emu, "pod-a", clock), elector(emu, "pod-b", clock)
    assert a.try_once() is False and b.try_once() is False    # new replicas first see the Lease ...
    clock.t += 15                                              # ... and take it once it stood still that long
    stale = lease(emu)                                         # a reads the Lease ...
    assert b.try_once() is True                                # ... b takes it over meanwhile ...
    with pytest.raises(ApiException) as e:                     # ... a's write on its stale read conflicts
        a._write(TAKEOVER, stale)
    assert e.value.status == 409
    assert a.try_once() is False                               # and a, reading again, follows b
    assert lease(emu).spec.holder_identity == "pod-b"
    assert b.is_leader() and not a.is_leader()


def test_a_stopping_leader_releases_the_lease_so_the_next_need_not_wait(emu: KubeEmulator) -> None:
    clock = Clock()
    a, b = elector(emu, "pod-a", clock), elector(emu, "pod-b", clock)
    changes: list[bool] = []
    a.on_change = changes.append
    stop = threading.Event()
    t = a.start(stop)
    wait_for(a.is_leader, timeout=10, what="pod-a leading")
    stop.set()
    t.join(5)
    assert changes == [True, False]
    assert not lease(emu).spec.holder_identity
    assert b.try_once() is True                                # at once, no expiry wait (the clock stood still)


def test_renew_deadline_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ValueError, match="shorter than the lease duration"):
        LeaseElector(None, NS, NAME, "x", lease_duration=10, renew_deadline=10)


def test_a_slow_renewal_does_not_outlast_the_lease_the_others_see(emu: KubeEmulator) -> None:
    """The leader counted its term from when the API server *answered* its renewal, the others from
    the renewTime it wrote: a renewal that took 12 s let it lead until 22 s after that renewTime,
    while another replica takes the Lease over at 15 s. Two leaders, both writing."""
    clock = Clock()
    a, b = elector(emu, "pod-a", clock), elector(emu, "pod-b", clock)
    assert a.try_once() and b.try_once() is False
    slow = emu.inject(Fault(path=f"/leases/{NAME}", method="PUT", delay=2.0, times=1))
    renewing = threading.Thread(target=a.try_once)
    renewing.start()
    wait_for(lambda: slow.hits == 1, timeout=10, what="the renewal to reach the API server")
    clock.t += 12                                       # the API server takes 12 s to accept it
    renewing.join(10)
    clock.t += 3.5                                      # 15.5 s after the renewTime a wrote
    assert b.try_once() is True                         # the Lease expired: b takes it over
    assert a.is_leader() is False, "a must have stepped down before b could take over"


def test_the_election_survives_an_api_server_that_refuses_connections(emu: KubeEmulator) -> None:
    """A refused connection (an API server restarting) raised out of the election loop and ended
    its thread: the replica never led again, so status and waypoint writes stopped for good."""
    port = int(emu.url.rsplit(":", 1)[1])
    emu.stop()                                          # nothing listens there now
    a = LeaseElector(make_api_client(f"http://127.0.0.1:{port}"), NS, NAME, "pod-a", lease_duration=15,
                     renew_deadline=10, retry_period=0.05, clock=Clock())
    stop = threading.Event()
    thread = a.start(stop)
    try:
        time.sleep(0.5)                                 # the outage: several attempts are refused
        with KubeEmulator(port=port):                   # the API server is back
            wait_for(a.is_leader, timeout=10, what="pod-a leading once the API server is back")
            assert thread.is_alive()
    finally:
        stop.set()
        thread.join(5)


def test_a_follower_ahead_of_the_leaders_clock_does_not_take_a_live_lease(emu: KubeEmulator) -> None:
    """Followers compared the holder's renewTime with their own clock: a leader whose clock ran
    20 s behind looked expired to the others at every renewal, and two replicas led at once.
    Expiry is counted from when the follower saw the record change, by its own clock."""
    behind, ahead = Clock(T0.timestamp() - 20), Clock()
    a, b = elector(emu, "pod-a", behind), elector(emu, "pod-b", ahead)
    for _ in range(3):
        assert a.try_once() is True
        assert b.try_once() is False, "b took a Lease its holder renews"
        behind.t += 5
        ahead.t += 5
    # a dies: b takes over a full lease duration after it last saw a renewal, by b's own clock
    ahead.t += 9                        # 14 s after b last saw the record change
    assert b.try_once() is False
    ahead.t += 1
    assert b.try_once() is True
