"""What an operator types at `ambit lab logs|stop|start|restart` and the other commands: the names
`ambit lab status` prints work, a wrong name or a missing lab is one `error:` line and exit 1 (never a
traceback), and the CLI runs as `python -m ambitctl`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ambitctl.cli import main
from ambitctl.cluster import ROOT_CERT_ENV
from ambitctl.lab import logs, state
from ambitctl.lab.lab import LabError

REPO = Path(__file__).resolve().parents[3]


def _proc(pid_id: str, component: str) -> state.ProcSpec:
    return state.ProcSpec(id=pid_id, component=component, argv=["true"], cgroup="")


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lab's state as `lab up` leaves it, two nodes, one waypoint running and one deleted (its
    log stays), with no processes behind it."""
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path))
    procs = [_proc("controller", "controller"), _proc("pod/demo/client", "app")]
    procs += [_proc(f"{c}/{n}", c) for n in ("node1", "node2") for c in ("agent", "ztunnel")]
    procs.append(_proc("waypoint/default/waypoint", "waypoint"))
    spec = {"nodes": [{"name": "node1"}, {"name": "node2"}],
            "pods": [{"namespace": "demo", "name": "client"}]}
    st = state.LabState(name="t", lab_dir=str(tmp_path), spec=spec, processes=procs,
                        waypoints=[{"namespace": "default", "name": "waypoint", "pod": "waypoint-0"}])
    state.save(st, tmp_path)
    (tmp_path / "logs").mkdir()
    for f in ("controller", "ztunnel-node1", "ztunnel-node2", "waypoint-default-waypoint",
              "waypoint-gone-waypoint", "pod-demo-client"):
        (tmp_path / "logs" / f"{f}.log").write_text(f"{f}\n")
    return tmp_path


def test_logs_take_the_names_lab_status_prints(lab: Path) -> None:
    d = lab / "logs"
    assert logs.log_file("ztunnel/node1", None) == d / "ztunnel-node1.log"
    assert logs.log_file("ztunnel", "node2") == d / "ztunnel-node2.log"
    assert logs.log_file("waypoint/default/waypoint", None) == d / "waypoint-default-waypoint.log"
    assert logs.log_file("demo/client", None) == d / "pod-demo-client.log"
    assert logs.log_file("default/waypoint-0", None) == d / "waypoint-default-waypoint.log"   # its pod


def test_logs_of_the_one_running_waypoint_despite_a_deleted_ones_log(lab: Path) -> None:
    assert logs.log_file("waypoint", None) == lab / "logs" / "waypoint-default-waypoint.log"
    # the deleted one's log can still be read by its name
    assert logs.log_file("waypoint/gone/waypoint", None) == lab / "logs" / "waypoint-gone-waypoint.log"


def test_waypoint_log_names_match_exactly(lab: Path) -> None:
    (lab / "logs" / "waypoint-default-waypoint2.log").write_text("")
    with state.editing(lab) as st:
        st.waypoints.append({"namespace": "default", "name": "waypoint2", "pod": "waypoint2-0"})
    assert logs.log_file("waypoint/default/waypoint", None) == lab / "logs" / "waypoint-default-waypoint.log"
    with pytest.raises(LabError, match=r"several waypoints.*waypoint/default/waypoint, waypoint/default/waypoint2"):
        logs.log_file("waypoint", None)


def test_a_wrong_node_or_name_says_what_exists(lab: Path) -> None:
    with pytest.raises(LabError, match=r"no node 'node9' in the lab \(have: node1, node2\)"):
        logs.log_file("ztunnel", "node9")
    with pytest.raises(LabError, match=r"pick one with --node or as ztunnel/NODE \(node1, node2\)"):
        logs.log_file("ztunnel", None)
    with pytest.raises(LabError, match=r"no waypoint 'x/y' \(have: waypoint/default/waypoint\)"):
        logs.log_file("waypoint/x/y", None)


def test_process_ids_from_every_form(lab: Path) -> None:
    st = state.load(lab)
    assert st is not None
    assert logs.process_id("waypoint/default/waypoint", None, st) == "waypoint/default/waypoint"
    assert logs.process_id("waypoint", None, st) == "waypoint/default/waypoint"
    assert logs.process_id("ztunnel/node1", None, st) == "ztunnel/node1"
    assert logs.process_id("agent", "node2", st) == "agent/node2"
    assert logs.process_id("demo/client", None, st) == "pod/demo/client"
    assert logs.process_id("controller", None, st) == "controller"
    assert logs.process_id("default/waypoint-0", None, st) == "waypoint/default/waypoint"
    with pytest.raises(LabError, match="no node 'node9'"):
        logs.process_id("agent", "node9", st)


def test_stop_and_start_a_waypoint_by_its_status_name(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["lab", "stop", "waypoint/default/waypoint"])
    assert e.value.code == 0, capsys.readouterr().err
    st = state.load(lab)
    assert st is not None and not st.proc("waypoint/default/waypoint").enabled
    with pytest.raises(SystemExit):
        main(["lab", "restart", "waypoint"])       # a stopped process is started again
    st = state.load(lab)
    assert st is not None and st.proc("waypoint/default/waypoint").enabled


def _error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 1, err
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv", [["lab", "stop", "controller"], ["lab", "logs", "ztunnel"],
                                  ["lab", "logs", "waypoint"], ["get", "po", "-A"]])
def test_no_lab_is_one_line(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path / "none"))
    assert "no lab is up" in _error_line(argv, capsys)
    assert not (tmp_path / "none").exists()


def test_authz_check_with_a_missing_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path))
    err = _error_line(["authz", "check", "demo/client", "echo.demo:8080", "-f", str(tmp_path / "nope.yaml")], capsys)
    assert "does not exist" in err


def test_python_dash_m_ambitctl() -> None:
    r = subprocess.run([sys.executable, "-m", "ambitctl", "version", "--client", "--short"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    from ambit.version import VERSION
    assert r.stdout.strip() == VERSION


def _closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", [["status"], ["proxy-status"], ["tap", "--duration", "1"]])
def test_an_unreachable_api_server_is_one_line(command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The debug API's commands read the controller's root from the API server first: an API server
    that cannot be reached was a urllib3 traceback."""
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path / "none"))
    monkeypatch.delenv(ROOT_CERT_ENV, raising=False)
    port = _closed_port()
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "a",
        "clusters": [{"name": "a", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "a", "context": {"cluster": "a", "user": "u"}}]}))
    err = _error_line([*command, "--kubeconfig", str(cfg), "--controller", f"127.0.0.1:{port}"], capsys)
    assert f"cannot reach the API server (http://127.0.0.1:{port})" in err


def test_label_warns_as_apply_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in the enrolment label's value enrols nothing: `ambit label` says so, as `ambit apply`
    of the same Namespace does (it used to say only `labeled`)."""
    from ambit.labstore import LabStore
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path))
    LabStore(tmp_path / "store.json").apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "legacy"}}])
    with pytest.raises(SystemExit) as e:
        main(["label", "ns", "legacy", "ambit.io/dataplane-mode=ambiant"])
    out, err = capsys.readouterr()
    assert e.value.code == 0 and out == "namespace/legacy labeled\n"
    assert err.startswith("Warning: Namespace/legacy: metadata.labels[ambit.io/dataplane-mode]: 'ambiant' is neither")
    with pytest.raises(SystemExit):
        main(["label", "ns", "legacy", "ambit.io/dataplane-mode=ambient"])
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):         # no such waypoint: the namespace's traffic is refused
        main(["label", "ns", "legacy", "ambit.io/use-waypoint=wp"])
    assert capsys.readouterr().err.startswith('Warning: Namespace/legacy: metadata.labels[ambit.io/use-waypoint]: '
                                              'no Gateway "legacy/wp" exists: ztunnel refuses')


def test_lab_alone_lists_the_lab_actions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["lab"])
    assert e.value.code == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: ambit lab ") and "roll" in out


def test_lab_exec_of_an_unknown_pod_lists_the_waypoint_pods_too(lab: Path) -> None:
    """A waypoint's pod can be exec'd (`lab exec default/waypoint-0`), so the list says so."""
    from ambitctl.lab.lab import exec_in_pod
    with pytest.raises(LabError, match=r"no pod demo/nope in the lab \(have: demo/client, default/waypoint-0\)"):
        exec_in_pod("demo/nope", ["true"], lab)


def test_lab_down_of_another_name_leaves_this_directorys_lab_alone(lab: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`AMBIT_LAB_NAME=other ambit lab down` (or `--name other`) with lab "t" in the directory
    deleted t's state and store while t's netns and processes ran on: `lab status` then said "no
    lab is up" and nothing could find or stop t any more."""
    (lab / "store.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["lab", "down", "--name", "other"])
    assert e.value.code == 0
    assert "holds lab 't', left running" in capsys.readouterr().out
    st = state.load(lab)
    assert st is not None and st.name == "t"
    assert (lab / "store.json").exists() and (lab / "logs" / "controller.log").exists()


@pytest.mark.parametrize("name", ["t.x", "../escape", "UPPER", "-x", "x" * 41, ""])
def test_a_lab_name_that_cannot_prefix_its_netns_is_refused(name: str, lab: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A lab's name prefixes its netns ("NAME.node1"), cgroup and pins, and teardown removes what
    starts with "NAME.": with a dot, `lab down --name t` also removed lab "t.x"'s netns; a "/"
    reached outside the cgroup tree; a long name failed at the first pod, half built. (The `lab`
    fixture's state makes a `lab up` that skipped the check stop at "already up", never build.)"""
    for argv in (["lab", "up", f"--name={name}"], ["lab", "down", f"--name={name}"]):
        if argv[1] == "down" and not name:
            continue                    # `down --name ''`: no name given, the state file's is used
        err = _error_line(argv, capsys)
        assert "lab name" in err
    st = state.load(lab)
    assert st is not None and st.name == "t"
