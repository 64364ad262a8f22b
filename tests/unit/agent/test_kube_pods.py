"""Finding pod sandboxes (cgroup, netns) on fixture cgroup trees laid out as kubelets lay them out.

The trees are plain directories with `cgroup.procs` files holding the pids of real processes (the
test's children), so the netns paths are real /proc nsfs files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.kube_pods import SandboxError, SandboxFinder, kubepods_roots, main, pod_cgroups, pod_uid_of_dir

UID_A = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
UID_B = "6fa459ea-ee8a-3ca4-894e-db77e160355e"
UID_C = "0e2c1a4d-7e0c-4a4e-9d0f-1d2b3c4d5e6f"


def us(uid: str) -> str:
    return uid.replace("-", "_")


def cgroup(root: Path, rel: str, *pids: int) -> Path:
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    return d


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def spawn(procs: list[subprocess.Popen]) -> int:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    procs.append(p)
    return p.pid


def test_uid_is_read_from_both_cgroup_drivers_names() -> None:
    assert pod_uid_of_dir(f"kubepods-besteffort-pod{us(UID_A)}.slice") == UID_A
    assert pod_uid_of_dir(f"kubepods-pod{us(UID_A)}.slice") == UID_A
    assert pod_uid_of_dir(f"pod{UID_A}") == UID_A
    assert pod_uid_of_dir(f"pod{UID_A.upper()}") == UID_A
    assert pod_uid_of_dir("kubepods-besteffort.slice") is None
    assert pod_uid_of_dir(f"cri-containerd-{'a' * 64}.scope") is None
    assert pod_uid_of_dir("podman-1234.scope") is None


def test_systemd_layout_finds_every_qos_class_and_stops_at_the_pod(tmp_path: Path) -> None:
    cgroup(tmp_path, "system.slice/containerd.service")
    ks = "kubepods.slice"
    a = cgroup(tmp_path, f"{ks}/kubepods-besteffort.slice/kubepods-besteffort-pod{us(UID_A)}.slice")
    b = cgroup(tmp_path, f"{ks}/kubepods-burstable.slice/kubepods-burstable-pod{us(UID_B)}.slice")
    c = cgroup(tmp_path, f"{ks}/kubepods-pod{us(UID_C)}.slice")          # Guaranteed: no QoS level
    # A container cgroup inside a pod that happens to look like a pod dir must not shadow it.
    cgroup(a, f"cri-containerd-pod{UID_B}.scope")
    assert pod_cgroups(tmp_path) == {UID_A: a, UID_B: b, UID_C: c}


def test_cgroupfs_layout_below_a_parent_as_k3s_in_a_container(tmp_path: Path) -> None:
    a = cgroup(tmp_path, f"k3s/kubepods/besteffort/pod{UID_A}")
    c = cgroup(tmp_path, f"k3s/kubepods/pod{UID_C}")
    assert kubepods_roots(tmp_path) == [tmp_path / "k3s" / "kubepods"]
    assert pod_cgroups(tmp_path) == {UID_A: a, UID_C: c}


def test_no_kubepods_tree_means_no_pods(tmp_path: Path) -> None:
    cgroup(tmp_path, f"user.slice/pod{UID_A}")       # not under kubepods: not the kubelet's
    assert pod_cgroups(tmp_path) == {}
    assert SandboxFinder(tmp_path, host_netns=None).find(UID_A) is None


def test_netns_is_the_oldest_process_of_the_pod(tmp_path: Path, procs: list[subprocess.Popen]) -> None:
    pause = spawn(procs)
    time.sleep(0.05)                                  # start times are in clock ticks (10 ms)
    app = spawn(procs)
    pod = cgroup(tmp_path, f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{us(UID_A)}.slice")
    cgroup(pod, f"cri-containerd-{'a' * 64}.scope", app)      # the app container, listed first
    cgroup(pod, f"cri-containerd-{'b' * 64}.scope", app + 10**7, pause)   # a vanished pid, then pause
    finder = SandboxFinder(tmp_path, netns_dir=tmp_path / "no-netns-dir", host_netns=None)
    sb = finder.find(UID_A)
    assert sb is not None
    assert sb.cgroup == pod
    assert sb.netns == Path(f"/proc/{pause}/ns/net")
    st = os.stat(f"/proc/{pause}/ns/net")
    assert sb.netns_id == (st.st_dev, st.st_ino)
    assert finder.still_valid(sb)


def test_a_named_netns_is_preferred_to_a_pid_path(tmp_path: Path, procs: list[subprocess.Popen]) -> None:
    pid = spawn(procs)
    cgroup(tmp_path, f"kubepods/besteffort/pod{UID_A}/{'c' * 64}", pid)
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    (netns_dir / "cni-unrelated").write_text("")      # another netns (here: not even one)
    (netns_dir / "cni-2f6c").symlink_to(f"/proc/{pid}/ns/net")  # stands in for containerd's bind mount
    sb = SandboxFinder(tmp_path, netns_dir=netns_dir, host_netns=None).find(UID_A)
    assert sb is not None and sb.netns == netns_dir / "cni-2f6c"


def test_pod_without_live_processes_has_no_sandbox_yet(tmp_path: Path, procs: list[subprocess.Popen]) -> None:
    pid = spawn(procs)
    procs[-1].kill()
    procs[-1].wait()
    cgroup(tmp_path, f"kubepods/pod{UID_A}", pid)     # a pid that no longer exists
    assert SandboxFinder(tmp_path, host_netns=None).find(UID_A) is None


def test_a_recycled_or_dead_pid_invalidates_the_sandbox(tmp_path: Path, procs: list[subprocess.Popen]) -> None:
    pid = spawn(procs)
    cgroup(tmp_path, f"kubepods/pod{UID_A}", pid)
    finder = SandboxFinder(tmp_path, netns_dir=tmp_path / "none", host_netns=None)
    sb = finder.find(UID_A)
    assert sb is not None and finder.still_valid(sb)
    procs[-1].kill()
    procs[-1].wait()
    assert not finder.still_valid(sb), "a dead pause process must not keep naming a netns"
    # and a removed pod cgroup invalidates it too
    pid2 = spawn(procs)
    cgroup(tmp_path, f"kubepods/pod{UID_B}", pid2)
    sb2 = finder.find(UID_B)
    assert sb2 is not None
    (tmp_path / "kubepods" / f"pod{UID_B}" / "cgroup.procs").unlink()
    (tmp_path / "kubepods" / f"pod{UID_B}").rmdir()
    assert not finder.still_valid(sb2)


def test_a_pod_in_the_host_netns_is_refused(tmp_path: Path, procs: list[subprocess.Popen]) -> None:
    pid = spawn(procs)                                # shares the test's netns, which we call the host's
    cgroup(tmp_path, f"kubepods/besteffort/pod{UID_A}", pid)
    finder = SandboxFinder(tmp_path, host_netns=Path("/proc/self/ns/net"))
    with pytest.raises(SandboxError, match=f"pod {UID_A}.*host's network namespace"):
        finder.find(UID_A)


def test_cli_prints_the_pod_cgroup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pod = cgroup(tmp_path, f"kubepods.slice/kubepods-pod{us(UID_C)}.slice")
    assert main(["pod-cgroup", UID_C, "--cgroup-root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(pod)
    assert main(["pod-cgroup", UID_A, "--cgroup-root", str(tmp_path)]) == 1
    assert f"no cgroup for pod {UID_A}" in capsys.readouterr().err
