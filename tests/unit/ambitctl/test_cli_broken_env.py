"""The CLI when its environment is broken, as an operator meets it at 3 a.m.: an API server that
accepts and never answers, one that answers garbage, a manifest that is not text. Each must end
in one `error:` line and exit 1, never a traceback and never a hang. The CLI's `main()` is driven
as a user runs it, against real sockets (tests/support/net.py's StubServer)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from ambitctl.cli import main
from tests.support.net import StubServer, http_answer

# The bound every test waits for a command: far above the command's own (shortened) timeouts, far
# below the hang the old code showed (forever, or 4 x 30 s).
PATIENCE = 20.0


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path / "no-lab"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("AMBIT_CONTROLLER", raising=False)
    # The CLI's read timeout, shortened so a silent server costs the test 0.5 s (a CLI without the
    # knob has no bound to shorten, and is caught by PATIENCE).
    try:
        from ambitctl import kubeclient
    except ImportError:
        return
    monkeypatch.setattr(kubeclient, "READ_TIMEOUT", 0.5)


def kubeconfig(tmp_path: Path, server: str) -> str:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "c", "cluster": {"server": server}}],
           "users": [{"name": "u", "user": {"token": "t"}}],
           "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`ambit ARGV` in a thread, bounded by PATIENCE: (exit code, stdout, stderr). An exception
    other than SystemExit (a traceback for the user) fails the test with it."""
    result: dict[str, object] = {}

    def target() -> None:
        try:
            main(argv)
            result["rc"] = 0
        except SystemExit as e:
            result["rc"] = e.code
        except BaseException as e:  # noqa: BLE001 - reported below
            result["exc"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(PATIENCE)
    assert not t.is_alive(), f"`ambit {' '.join(argv)}` still running after {PATIENCE:g} s"
    if "exc" in result:
        raise AssertionError(f"`ambit {' '.join(argv)}` raised (a traceback): {result['exc']!r}")
    out, err = capsys.readouterr()
    return int(result["rc"]), out, err   # type: ignore[call-overload]


def one_error(err: str, *words: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], err


# -- an API server that accepts and never answers --------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["get", "po", "-A"],
    ["describe", "pod", "echo", "-n", "demo"],
    ["analyze", "-A"],
])
def test_read_commands_give_up_on_a_silent_api_server_after_one_attempt(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with StubServer(answer=None) as api:
        rc, out, err = run_main([*argv, "--kubeconfig", kubeconfig(tmp_path, api.url)], capsys)
        assert api.accepted == 1        # a read that timed out is not sent again (it was, 3 times)
    assert rc == 1 and out == ""
    one_error(err, api.url, "did not answer")


@pytest.mark.parametrize("argv", [
    ["install"],
    ["upgrade", "--dry-run"],
    ["uninstall"],
])
def test_install_commands_do_not_hang_on_a_silent_api_server(
        capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with StubServer(answer=None) as api:
        rc, out, err = run_main([*argv, "--server", api.url], capsys)
    assert rc == 1
    assert "did not answer" in err and "Traceback" not in err


def test_waypoint_kube_does_not_hang_on_a_silent_api_server(capsys: pytest.CaptureFixture[str]) -> None:
    with StubServer(answer=None) as api:
        rc, _, err = run_main(["waypoint", "list", "--kube-host", api.url], capsys)
    assert rc == 1
    one_error(err, "did not answer")


# -- an API server (or something in front of it) that answers garbage ------------------------------

@pytest.mark.parametrize("body", [b"{{{{{", b"<html>502 Bad Gateway</html>", b"[1, 2]", b'{"items": [1]}'])
def test_get_names_a_list_answer_that_is_no_kubernetes_list(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], body: bytes) -> None:
    with StubServer(answer=http_answer(body)) as api:
        rc, out, err = run_main(["get", "po", "-A", "--kubeconfig", kubeconfig(tmp_path, api.url)], capsys)
    assert rc == 1 and out == ""
    one_error(err, "list /", api.url)


def test_get_shows_why_the_api_server_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = b'{"kind": "Status", "status": "Failure", "message": "Unauthorized", "code": 401}'
    with StubServer(answer=http_answer(status, "401 Unauthorized")) as api:
        rc, _, err = run_main(["get", "po", "-A", "--kubeconfig", kubeconfig(tmp_path, api.url)], capsys)
    assert rc == 1
    one_error(err, "401", "Unauthorized")


@pytest.mark.parametrize("argv", [["install"], ["upgrade", "--dry-run"], ["uninstall"]])
def test_install_commands_name_an_answer_that_is_not_json(
        capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with StubServer(answer=http_answer(b"<html>502 Bad Gateway</html>", content_type="text/html")) as api:
        rc, _, err = run_main([*argv, "--server", api.url], capsys)
    assert rc == 1
    one_error(err, "not JSON", "/api/v1/namespaces/ambit-system/configmaps/ambit-install")


# -- manifests that are not text -------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["apply", "--dry-run", "-f"],
    ["analyze", "--offline", "-f"],
    ["delete", "-f"],
])
def test_a_manifest_that_is_not_utf8_is_refused_by_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    from ambit.labstore import LabStore
    LabStore(tmp_path / "no-lab" / "store.json").apply(      # a lab's store, for `delete`
        [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}])
    bad = tmp_path / "policy.yaml"
    bad.write_bytes(b"\xff\xfe\x00kind: AuthorizationPolicy\n")
    rc, out, err = run_main([*argv, str(bad)], capsys)
    assert rc == 1 and out == ""
    one_error(err, str(bad), "UTF-8")


# -- `ambit version` with no controller ------------------------------------------------------------

def test_version_without_a_controller_says_why_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """stdout has what is known (the client's version, for scripts); the failure is an `error:`
    line on stderr, as kubectl's "The connection to the server ... was refused" (it was a
    `server: unreachable: ...` line on stdout, with nothing on stderr and exit 1)."""
    from ambit.version import VERSION
    rc, out, err = run_main(["version"], capsys)
    assert rc == 1
    assert out == f"client version: {VERSION}\n"
    one_error(err, "cannot reach the controller", "debug API token")


# -- a kubeconfig that is not one -------------------------------------------------------------------

@pytest.mark.parametrize("text", [b"clusters: {name: a\n", b"apiVersion: v1\nkind: Config\nclusters: 5\n",
                                  b"\xff\xfe\x00kind: Config\n"], ids=["not-yaml", "wrong-shape", "not-utf8"])
@pytest.mark.parametrize("argv", [
    ["get", "po"],
    ["describe", "pod", "echo"],
    ["analyze", "-A"],
    ["status", "--controller", "127.0.0.1:1"],
    ["install"],
    ["waypoint", "list", "--kube"],
])
def test_a_malformed_kubeconfig_is_one_line_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: bytes, argv: list[str]) -> None:
    """A kubeconfig that does not parse (a bad edit at 3 a.m.) was a PyYAML or TypeError traceback
    from deep inside the kubernetes client, from every command that talks to a cluster."""
    cfg = tmp_path / "kubeconfig"
    cfg.write_bytes(text)
    rc, out, err = run_main([*argv, "--kubeconfig", str(cfg)], capsys)
    assert rc == 1 and out == ""
    one_error(err, "kubeconfig", "not a usable kubeconfig")


# -- the lab's writing commands with no lab --------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["delete", "vs", "reviews"],
    ["label", "ns", "demo", "team=a"],
    ["waypoint", "list"],
    ["waypoint", "delete"],
])
def test_lab_commands_with_no_lab_say_so_and_create_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """With no lab, `delete` said `Error from server (NotFound)`, `waypoint list` "No waypoints
    found" (exit 0), and each left a lab directory with a store lock behind."""
    rc, out, err = run_main(argv, capsys)
    assert rc == 1 and out == ""
    one_error(err, "no lab is up", str(tmp_path / "no-lab"))
    assert not (tmp_path / "no-lab").exists()
