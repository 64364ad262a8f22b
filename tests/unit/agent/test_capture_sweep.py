"""The heartbeat's re-created-sandbox sweep (`CaptureEngine.replaced_sandboxes`) over many captured
pods: one stat per pod in the steady state, no netns cookie read (setns in and out) and no map
lookup, yet a sandbox re-created at the same path is still found, inode reuse included.

Runs the real engine code without root: the pods' "netns" are plain files and the cookie reader is
replaced by one keyed on the file's inode, as the kernel keys its nsfs inodes."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from agent.__main__ import Agent
from agent.capture import engine as engine_mod
from agent.capture import maps
from agent.enrolment import PodRef

OWN = 1


class MetaMap(dict):
    """ambit_meta as a dict, counting lookups (one bpf syscall each on a node)."""

    lookups = 0

    def get(self, key: bytes) -> bytes | None:  # type: ignore[override]
        self.lookups += 1
        return dict.get(self, key)


class Sandboxes:
    """Pod "netns" files, each with a cookie the kernel would give it; counts cookie reads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cookies: dict[int, int] = {}
        self.next = itertools.count(100)
        self.reads = 0

    def create(self, name: str) -> tuple[str, int]:
        """A new sandbox at root/name (replacing any there): a new inode and a new cookie."""
        path = self.root / name
        tmp = self.root / f".{name}.new"
        tmp.write_text("")
        os.replace(tmp, path)
        cookie = next(self.next)
        self.cookies[path.stat().st_ino] = cookie
        return str(path), cookie

    def cookie(self, target: str | int | None = None) -> int:
        self.reads += 1
        if target is None:
            return OWN
        st = os.fstat(target) if isinstance(target, int) else os.stat(target)
        return self.cookies[st.st_ino]


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[engine_mod.CaptureEngine, Sandboxes, MetaMap]:
    sandboxes = Sandboxes(tmp_path)
    monkeypatch.setattr(engine_mod, "netns_cookie", sandboxes.cookie)
    (tmp_path / "zt").mkdir()
    engine = engine_mod.CaptureEngine("node1", tmp_path / "zt", pin_base=tmp_path / "pins")
    engine.layout.root.mkdir(parents=True)
    engine._module = object()           # loaded, as far as the sweep is concerned
    meta = MetaMap()
    engine._maps["ambit_meta"] = meta
    return engine, sandboxes, meta


def capture(engine: engine_mod.CaptureEngine, sandboxes: Sandboxes, meta: MetaMap, uid: str) -> PodRef:
    path, cookie = sandboxes.create(uid)
    m = maps.Meta(uid=uid, netns=cookie, pod_ip="10.9.0.1", node_ip="10.0.0.1", mode=maps.MODE_EBPF,
                  tc_mode=maps.TC_TCX, netns_path=path, cgroup_path="/sys/fs/cgroup")
    dict.__setitem__(meta, m.key(), m.pack())
    return PodRef(uid=uid, name=uid, namespace="mesh", ip=m.pod_ip, service_account="sa", netns=path,
                  cgroup="/sys/fs/cgroup")


def test_the_sweep_over_200_captured_pods_reads_no_cookie_and_no_map_in_the_steady_state(node) -> None:  # noqa: ANN001
    engine, sandboxes, meta = node
    a = Agent("node1", source=None, engine=engine, link=None, node_ip="10.0.0.1")
    a.applied = {f"p{i:03d}": capture(engine, sandboxes, meta, f"p{i:03d}") for i in range(200)}
    a.recapture_replaced()                      # the first sweep looks at each pod once
    sandboxes.reads = meta.lookups = 0
    for _ in range(5):
        a.recapture_replaced()
    assert (sandboxes.reads, meta.lookups) == (0, 0), "every heartbeat enters 200 netns and reads 200 map entries"


def test_a_sandbox_re_created_at_the_same_path_is_found_and_a_gone_one_let_go(node) -> None:  # noqa: ANN001
    engine, sandboxes, meta = node
    for uid in ("a", "b", "c"):
        capture(engine, sandboxes, meta, uid)
    assert engine.replaced_sandboxes(["a", "b", "c"]) == set()
    fds = len(os.listdir("/proc/self/fd"))
    sandboxes.create("b")                       # re-created: the held old inode cannot be reused
    (sandboxes.root / "c").unlink()             # gone
    assert engine.replaced_sandboxes(["a", "b", "c"]) == {"b"}
    assert engine.replaced_sandboxes(["a", "b", "c"]) == {"b"}, "until it is captured again"
    assert len(os.listdir("/proc/self/fd")) == fds - 2, "the old netns of b and c must be let go"
    capture(engine, sandboxes, meta, "b")        # the agent captures the new one (a new ambit_meta)
    assert engine.replaced_sandboxes(["a", "b"]) == set()
    assert len(os.listdir("/proc/self/fd")) == fds - 1, "a and the new b are held, c is not"


def test_the_nodes_own_netns_at_a_pods_path_is_never_recaptured(node) -> None:  # noqa: ANN001
    engine, sandboxes, meta = node
    r = capture(engine, sandboxes, meta, "a")
    assert engine.replaced_sandboxes(["a"]) == set()
    sandboxes.create("a")
    sandboxes.cookies[os.stat(r.netns).st_ino] = OWN
    assert engine.replaced_sandboxes(["a"]) == set()
