"""The lab supervisor's hand-over of a running process (a surge roll's new node pod becoming the
node's) and the roll's naming of new node pod generations, with real child processes."""

from __future__ import annotations

import subprocess
from dataclasses import replace

from ambitctl.lab import supervisor
from ambitctl.lab.roll import next_cgroup
from ambitctl.lab.state import ProcSpec


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


def test_adopting_spec_takes_the_running_process_over_and_the_old_one_is_stopped() -> None:
    old = ProcSpec("ztunnel/node1", "ztunnel", ["zt"], "/cg/node1/ztunnel", stop_grace=5)
    new = ProcSpec("ztunnel/node1~surge", "ztunnel", ["zt"], "/cg/node1/ztunnel.g1", stop_grace=5)
    children = {old.id: supervisor.Child(old, popen=_sleeper()), new.id: supervisor.Child(new, popen=_sleeper())}
    old_p, new_p = children[old.id].popen, children[new.id].popen
    draining: list = []
    try:
        supervisor.reconcile(children, {old.id: replace(new, id=old.id, adopt=new.id)}, draining)
        assert set(children) == {"ztunnel/node1"}
        assert children["ztunnel/node1"].popen is new_p          # not restarted
        assert [p for p, _ in draining] == [old_p]                # SIGTERMed, reaped later
        assert old_p.wait(5) == -15 and new_p.poll() is None
        # Dropping the `adopt` marker later is no change of process.
        supervisor.reconcile(children, {old.id: replace(new, id=old.id)}, draining)
        assert children["ztunnel/node1"].popen is new_p and new_p.poll() is None
        supervisor.reap(draining)
        assert draining == []
    finally:
        for p in (old_p, new_p):
            p.kill()
            p.wait()


def test_a_changed_spec_is_stopped_without_blocking_and_killed_after_its_grace() -> None:
    spec = ProcSpec("agent/node1", "agent", ["a"], "/cg", stop_grace=0.0)
    # a process that ignores SIGTERM: only once the trap is set (on a busy machine a TERM sent
    # before it would end the shell at once, and the old process would be gone too early)
    p = subprocess.Popen(["sh", "-c", "trap '' TERM; echo ready; exec sleep 60"], start_new_session=True,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    children = {spec.id: supervisor.Child(spec, popen=p)}
    draining: list = []
    try:
        supervisor.reconcile(children, {spec.id: replace(spec, argv=["b"])}, draining)
        assert children[spec.id].popen is None                   # the new spec starts afresh,
        assert not children[spec.id].may_start(1e9)              # but not beside the old one
        supervisor.reap(draining)                                 # grace 0: SIGKILL (it ignores TERM)
        assert draining == [] and p.poll() is not None
        assert children[spec.id].may_start(1e9)                  # now it may
    finally:
        p.kill()
        p.wait()


def test_each_node_pod_generation_gets_new_cgroups() -> None:
    assert str(next_cgroup("/cg/lab/node1/ztunnel")) == "/cg/lab/node1/ztunnel.g1"
    assert str(next_cgroup("/cg/lab/node1/ztunnel.g1")) == "/cg/lab/node1/ztunnel.g2"
    assert ProcSpec("ztunnel/node1~surge", "ztunnel", [], "").log_name == "ztunnel-node1"


def test_a_data_plane_process_starts_only_once_its_node_credential_exists(tmp_path) -> None:
    """As the kubelet starts no container before its projected token is there: started before the
    controller had written it, every lab ztunnel logged four warnings and retried."""
    token = tmp_path / "node1" / "bootstrap-token"
    child = supervisor.Child(ProcSpec("ztunnel/node1", "ztunnel", ["zt"], "/cg", needs=[str(token)]))
    assert not child.may_start(1e9)
    token.parent.mkdir()
    token.write_text("t\n")
    assert child.may_start(1e9)
