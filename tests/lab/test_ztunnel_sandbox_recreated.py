"""A pod's sandbox re-created at the same netns path, with the same uid and IP (as a runtime does
when a sandbox dies): ztunnel must serve the new netns, not keep its listeners in the old one
because the pod looks the same. A replay of the same netns (an agent reconnecting) keeps serving.
Real netns of the test's own, always removed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from ambit.dataplane.ports import PORT_INBOUND
from ambit.netns import entered, netns_path
from ambit.zds import PodInfo
from ztunnel.pods import PodRegistry

pytestmark = pytest.mark.lab

POD = PodInfo(uid="u-ztf", name="server", namespace="mesh", ip="10.79.0.5", node="node1", service_account="sa")


def _fresh_netns(name: str) -> int:
    """(Re)create netns `name` and return an fd on it."""
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    with entered(name):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    return os.open(netns_path(name), os.O_RDONLY)


@pytest.fixture
def ns_name() -> Iterator[str]:
    name = f"ztf-sb-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _listening(fd: int, port: int) -> bool:
    with entered(fd), open("/proc/net/tcp") as fh:     # /proc/net follows the thread's netns
        return any(int(ln.split()[1].split(":")[1], 16) == port and ln.split()[3] == "0A"
                   for ln in list(fh)[1:])


def test_a_sandbox_re_created_at_the_same_path_is_served_in_the_new_netns(ns_name: str) -> None:
    async def handler(pod, leg) -> None:     # noqa: ANN001 - never called: nothing connects
        leg.close()

    async def go() -> None:
        reg = PodRegistry(handler, handler, reuseport=True)
        first = _fresh_netns(ns_name)
        probe_old = os.dup(first)                       # the test's own view of the old netns
        await reg.add(POD, first)
        old_proxy = reg.pods[POD.uid]
        await reg.add(POD, os.open(netns_path(ns_name), os.O_RDONLY))     # replay: same netns
        assert reg.pods[POD.uid] is old_proxy, "a replay of the same netns keeps serving as it was"
        second = _fresh_netns(ns_name)                  # the sandbox dies and is re-created there
        probe_new = os.dup(second)
        await reg.add(POD, second)
        assert reg.pods[POD.uid] is not old_proxy
        assert _listening(probe_new, PORT_INBOUND), "ztunnel does not listen in the new sandbox"
        assert not _listening(probe_old, PORT_INBOUND), "the old sandbox's listeners were kept"
        await reg.remove(POD.uid, drain=0)
        os.close(probe_old)
        os.close(probe_new)

    asyncio.run(go())
