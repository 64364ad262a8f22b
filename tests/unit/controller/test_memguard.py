"""The controller's memory guard (controller/memguard.py): where a cgroup's limit is found, and a
new config stream refused RESOURCE_EXHAUSTED over gRPC once the process holds its fraction of it,
while the streams already served go on getting their config."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from ambit.api import config_pb2, config_pb2_grpc
from ambit.configclient import NodeInfo
from ambit.model import Workload
from controller import fairness
from controller.configserver import ConfigServer
from controller.health import ControllerHealth
from controller.memguard import MemoryGuard, limit_files, parse_limit, read_limit
from controller.settings import load
from tests.unit.configstream.helpers import workload

# This machine's shape: a hybrid host (v1 memory controller, cgroup2 at /sys/fs/cgroup/unified).
HYBRID_MOUNTINFO = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
44 31 0:41 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
"""
HYBRID_CGROUP = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n"
# A pod on a cgroup v2 node with a cgroup namespace: the mount's root is the pod's own cgroup.
POD_MOUNTINFO = "1200 1100 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw\n"
POD_CGROUP = "0::/\n"


def test_the_limit_is_found_on_a_v2_mount_wherever_it_is_and_on_v1_as_a_fallback() -> None:
    files = limit_files(HYBRID_MOUNTINFO, HYBRID_CGROUP)
    assert files[0] == Path("/sys/fs/cgroup/unified/memory.max")
    assert Path("/sys/fs/cgroup/memory/process_api/abc/memory.limit_in_bytes") in files
    assert limit_files(POD_MOUNTINFO, POD_CGROUP)[0] == Path("/sys/fs/cgroup/memory.max")
    node = "30 20 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert limit_files(node, "0::/kubepods/pod1/c1\n")[0] == Path("/sys/fs/cgroup/kubepods/pod1/c1/memory.max")
    assert parse_limit("max\n") is None and parse_limit("9223372036854771712") is None
    assert parse_limit("1073741824\n") == 1 << 30


def test_a_missing_v2_file_falls_through_to_the_v1_limit(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "memory.limit_in_bytes").write_text("536870912\n")
    assert read_limit([tmp_path / "nope" / "memory.max", tmp_path / "v1" / "memory.limit_in_bytes"]) == \
        (512 << 20, tmp_path / "v1" / "memory.limit_in_bytes")
    assert read_limit([tmp_path / "nope"]) == (None, None)


def fake_proc(tmp_path: Path, limit: str) -> tuple[Path, Path]:
    """A /proc/self whose cgroup v2 mount is under `tmp_path`, its memory.max holding `limit`."""
    cg = tmp_path / "cg"
    (cg / "pod").mkdir(parents=True)
    (cg / "pod" / "memory.max").write_text(limit + "\n")
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text(f"41 31 0:38 / {cg} rw,relatime - cgroup2 cgroup2 rw\n")
    (proc / "cgroup").write_text("0::/pod\n")
    return proc, cg / "pod" / "memory.max"


class _NoController:
    version, last_applied_at, snapshots = "", 0.0, 0


async def _open(stub: config_pb2_grpc.ConfigServiceStub, node: NodeInfo):
    call = stub.DeltaStream()
    await call.write(config_pb2.DeltaRequest(node=node.to_proto(), type_url=Workload.TYPE, subscribe=True))
    await call.initial_metadata()
    if call.done():
        return grpc.aio.AioRpcError(await call.code(), grpc.aio.Metadata(), grpc.aio.Metadata(), await call.details())
    first = await asyncio.wait_for(call.read(), 10)
    await call.write(config_pb2.DeltaRequest(type_url=first.type_url, response_nonce=first.nonce))
    return call


def test_past_its_share_of_the_cgroup_limit_a_new_stream_is_refused_and_held_ones_are_served(tmp_path: Path) -> None:
    proc, limit_file = fake_proc(tmp_path, str(1 << 40))      # 1 TiB: room for anything
    guard = MemoryGuard.from_proc(0.8, proc=proc)
    assert guard.limit == 1 << 40 and guard.source == str(limit_file)
    server = ConfigServer(debounce=0.0, registry=CollectorRegistry(), memory_guard=guard)
    server.update({Workload.TYPE: [workload("a1", "node-a")]}, "v1")

    async def go() -> None:
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = config_pb2_grpc.ConfigServiceStub(ch)
                held = await _open(stub, NodeInfo("ztunnel", "node-a"))
                assert isinstance(held, grpc.aio.StreamStreamCall), held
                # The pod's limit, as the kubelet would have set it below what the process holds now.
                limit_file.write_text("1048576\n")
                tight = MemoryGuard.from_proc(0.8, proc=proc)
                assert tight.limit == 1 << 20
                server.memory_guard = tight
                before = fairness.REFUSED["memory"]
                over = await _open(stub, NodeInfo("ztunnel", "node-b"))
                assert isinstance(over, grpc.aio.AioRpcError), "a new stream past the memory guard was served"
                assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "ztunnel/node-b: the controller holds" in over.details()
                assert "over 80% of its memory limit (1 MiB" in over.details()
                assert "--memory-guard-fraction" in over.details()
                assert fairness.REFUSED["memory"] == before + 1
                # Counted where operators alert on it.
                health = ControllerHealth(_NoController())
                limited = {s.labels["limit"]: s.value for m in health.collect() if m.name == "ambit_controller_limited"
                           for s in m.samples if s.name.endswith("_total")}
                assert limited["memory"] == before + 1
                # The stream already held still gets its config.
                server.update({Workload.TYPE: [workload("a1", "node-a"), workload("a2", "node-a", ip="10.0.1.9")]},
                              "v2")
                resp = await asyncio.wait_for(held.read(), 10)
                assert resp.system_version_info == "v2" and resp.resources, resp
                held.cancel()
        finally:
            await server.stop(None)

    asyncio.run(go())


def test_the_guard_is_on_by_default_and_can_be_turned_off() -> None:
    assert load(["--lab-store", "/tmp/x"]).memory_guard_fraction == 0.8
    assert load(["--lab-store", "/tmp/x", "--memory-guard-fraction", "0"]).memory_guard_fraction == 0
    off = MemoryGuard(1 << 20, 0.0, usage=lambda: 1 << 30)
    assert off.over() is None
    assert MemoryGuard(None, 0.8, usage=lambda: 1 << 30).over() is None
    assert MemoryGuard(1 << 20, 0.8, usage=lambda: 900_000).over() == 900_000
