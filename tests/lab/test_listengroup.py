"""ztunnel's pod listeners in a real netns: two ztunnels (a surge roll) share them through
SO_REUSEPORT, a pod's own listener on the port is refused whether or not it set SO_REUSEPORT."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from ambit.dataplane.ports import AMBIT_LISTENER_MARK, PORT_HBONE, PORT_INBOUND, PORT_OUTBOUND
from ambit.netns import entered
from tests.lab.labctl import scratch_netns
from ztunnel import listengroup
from ztunnel.pods import ListenerError, open_listeners

pytestmark = pytest.mark.lab


@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns("ambit-lg") as name:
        yield name


def _squatter(reuseport: bool) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", PORT_INBOUND))
    s.listen(4)
    return s


def test_two_ztunnels_share_every_pod_listener(netns: str) -> None:
    with entered(netns):
        old = open_listeners(with_hbone=True, reuseport=True)
        new = open_listeners(with_hbone=True, reuseport=True)
        try:
            assert set(old) == set(new) == {PORT_OUTBOUND, PORT_INBOUND, PORT_HBONE}
            assert listengroup.listener_marks(PORT_INBOUND) == [AMBIT_LISTENER_MARK] * 2
            assert listengroup.unmarked_listeners(PORT_HBONE, AMBIT_LISTENER_MARK) == 0
            # The old one closes its listeners: a new connection still finds the new one.
            for s in old.values():
                s.close()
            c = socket.create_connection(("127.0.0.1", PORT_INBOUND), timeout=2)
            c.close()
        finally:
            for s in (*old.values(), *new.values()):
                s.close()


@pytest.mark.parametrize("reuseport", [False, True], ids=["plain", "so_reuseport"])
def test_a_pods_own_listener_on_ztunnels_port_is_refused(netns: str, reuseport: bool) -> None:
    with entered(netns):
        squat = _squatter(reuseport)
        try:
            assert listengroup.unmarked_listeners(PORT_INBOUND, AMBIT_LISTENER_MARK) == 1
            with pytest.raises(ListenerError, match="port 15006 in use in the pod's netns"):
                open_listeners(with_hbone=True, reuseport=True)
            # all or nothing: the listeners opened before the refused one were closed again
            assert listengroup.listener_marks(PORT_OUTBOUND) == []
        finally:
            squat.close()


def test_a_delivery_socket_is_made_in_the_pods_netns_and_the_thread_comes_home(netns: str) -> None:
    """`socket_at` (every delivered connection's socket): made in the pod's netns, and the thread is
    back in its own netns after each call, the home fd reused (ambit/netns.py)."""
    import os

    from ambit.netns import SO_NETNS_COOKIE, netns_cookie, socket_at
    home = os.stat("/proc/thread-self/ns/net").st_ino
    fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        for _ in range(3):
            s = socket_at(fd)
            try:
                cookie = int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
            finally:
                s.close()
            assert cookie == netns_cookie(netns) != netns_cookie()
            assert os.stat("/proc/thread-self/ns/net").st_ino == home
    finally:
        os.close(fd)
