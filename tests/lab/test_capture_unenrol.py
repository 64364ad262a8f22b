"""Unenrolling a pod whose netns disappears while we clean it up (a sandbox deleted at any point
of `cleanup_pod_netns`): the agent must carry on, not die on the error. A real netns of the
test's own, deleted from a hook at each step; always removed at the end."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.capture import engine, iptables, maps, podnet
from ambit.netns import netns_cookie, netns_path
from tests.lab.labctl import scratch_netns

pytestmark = pytest.mark.lab

POD_IP, NODE_IP = "10.78.0.11", "10.78.0.1"


@pytest.fixture
def pod_ns() -> Iterator[str]:
    with scratch_netns("ztf-un") as name:
        yield name


def enrolled(name: str, mode: int) -> maps.Meta:
    """The netns as enrolment leaves it (delivery rules; iptables chains in that mode) and its record."""
    path = str(netns_path(name))
    podnet.setup_delivery(path)
    if mode == maps.MODE_IPTABLES:
        iptables.apply(path, iptables.IptablesPlan(pod_ip=POD_IP, node_ip=NODE_IP, ztunnel_cgroups=()))
    return maps.Meta(uid="pod-ztf", netns=netns_cookie(path), pod_ip=POD_IP, node_ip=NODE_IP, mode=mode,
                     tc_mode=maps.TC_CLSACT if mode == maps.MODE_EBPF else maps.TC_NONE,
                     netns_path=path, cgroup_path="")


MODES = {"ebpf": maps.MODE_EBPF, "iptables": maps.MODE_IPTABLES}


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
def test_unenrol_cleans_the_pod_netns(pod_ns: str, mode: int) -> None:
    """Positive control: with the netns in place, its rules are all removed."""
    meta = enrolled(pod_ns, mode)
    engine.cleanup_pod_netns(meta)
    assert podnet.delivery_state(meta.netns_path) == (False, False, False)
    assert not iptables.present(meta.netns_path)


# The steps of `cleanup_pod_netns` the netns may vanish before, in the modes that take them:
# (module, function name, mode).
STEPS = {
    "after its identity check, ebpf": (engine, "netns_cookie", maps.MODE_EBPF),
    "after its identity check, iptables": (engine, "netns_cookie", maps.MODE_IPTABLES),
    "before the clsact detach": (podnet, "clsact_detach", maps.MODE_EBPF),
    "before the iptables removal": (iptables, "remove", maps.MODE_IPTABLES),
    "before the delivery teardown": (podnet, "teardown_delivery", maps.MODE_EBPF),
    "before the IPv6 reset": (podnet, "set_ipv6", maps.MODE_EBPF),
}


@pytest.mark.parametrize("step", STEPS.values(), ids=STEPS.keys())
def test_unenrol_survives_the_netns_vanishing_at_any_step(pod_ns: str, step: tuple[Any, str, int],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    module, fn, mode = step
    meta = enrolled(pod_ns, mode)
    real: Callable[..., Any] = getattr(module, fn)
    deleted: list[str] = []

    def vanish_then(*args: Any, **kw: Any) -> Any:
        if fn == "netns_cookie":        # the check itself runs first, then the sandbox goes
            out = real(*args, **kw)
            _delete(pod_ns, deleted)
            return out
        _delete(pod_ns, deleted)
        return real(*args, **kw)

    monkeypatch.setattr(module, fn, vanish_then)
    engine.cleanup_pod_netns(meta)          # no exception: the agent carries on
    assert deleted and not netns_path(pod_ns).exists(), "the netns went at that step"


def _delete(name: str, deleted: list[str]) -> None:
    if not deleted:
        subprocess.run(["ip", "netns", "del", name], check=True)
        deleted.append(name)
