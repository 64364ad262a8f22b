"""kubectl habits the `ambit` CLI follows (issue 14): positional names anywhere, `-o
yaml|json|wide|name`, `-l` selectors, `-w`, colour only on a terminal and never with NO_COLOR, no
traceback on a closed pipe, and label keys and values checked by Kubernetes' rules."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from ambit.labstore import LabStore
from ambitctl import selectors
from ambitctl.cli import build_parser
from ambitctl.lab import lab as labmod
from ambitctl.lab.paths import store_path
from ambitctl.term import colour_enabled, paint
from controller.validation import validate_object

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def lab_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path))
    return tmp_path


def pod(name: str, ns: str = "demo", **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": "node1"}, "status": {"phase": "Running", "podIP": "10.1.0.5"}}


@pytest.fixture
def store(lab_dir: Path) -> LabStore:
    s = LabStore(store_path())
    s.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}},
             pod("echo-v1", app="echo", version="v1"), pod("echo-v2", app="echo", version="v2"),
             pod("client", app="client"), pod("other", ns="legacy", app="echo", version="v1")])
    return s


def run(*argv: str, **extra: object) -> tuple[int, str, str]:
    args = build_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    args.stdout, args.stderr = out, err
    for k, v in extra.items():
        setattr(args, k, v)
    rc = args.func(args)
    return rc, out.getvalue(), err.getvalue()


def names(out: str) -> list[str]:
    return [line.split()[0] for line in out.splitlines()[1:]]


# -- positional names anywhere --------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ("get", "po", "-n", "demo", "echo-v1"),
    ("get", "-n", "demo", "po", "echo-v1"),
    ("get", "po", "echo-v1", "-n", "demo"),
    ("get", "-n", "demo", "pods", "-o", "wide", "echo-v1"),
])
def test_names_after_flags(store: LabStore, argv: tuple[str, ...]) -> None:
    rc, out, err = run(*argv)
    assert rc == 0, err
    assert names(out) == ["echo-v1"]


def test_type_slash_name(store: LabStore) -> None:
    rc, out, _ = run("get", "po/echo-v1", "po/echo-v2", "-n", "demo", "-o", "name")
    assert rc == 0 and out.split() == ["pod/echo-v1", "pod/echo-v2"]
    rc, out, err = run("get", "po/echo-v1", "svc/echo", "-n", "demo")
    assert rc == 1 and "one TYPE/NAME form" in err
    rc, out, _ = run("delete", "-n", "demo", "pods/client")
    assert rc == 0 and out == 'pod "client" deleted\n'


def test_every_leaf_command_takes_positionals_after_flags(lab_dir: Path) -> None:
    args = build_parser().parse_args(["ztunnel-config", "-o", "json", "workloads", "--node", "node1"])
    assert (args.section, args.output, args.node) == ("workloads", "json", "node1")
    args = build_parser().parse_args(["authz", "check", "-X", "POST", "demo/client", "--path", "/x", "echo.demo"])
    assert (args.src, args.dst, args.method, args.path) == ("demo/client", "echo.demo", "POST", "/x")


def test_several_names_and_a_missing_one(store: LabStore) -> None:
    rc, out, err = run("get", "po", "echo-v2", "-n", "demo", "nope", "echo-v1")
    assert rc == 1
    assert names(out) == ["echo-v2", "echo-v1"]
    assert 'pods "nope" not found' in err


def test_delete_and_label_take_names_after_flags(store: LabStore) -> None:
    rc, out, _ = run("delete", "po", "-n", "demo", "client")
    assert rc == 0 and out == 'pod "client" deleted\n'
    rc, out, _ = run("label", "ns", "demo", "team=blue")
    assert rc == 0
    rc, out, _ = run("label", "ns", "team-", "demo")
    assert rc == 0 and store.get("Namespace", "", "demo")["metadata"].get("labels", {}) == {}


# -- -o ------------------------------------------------------------------------------------------------

def test_output_name_yaml_json(store: LabStore) -> None:
    rc, out, _ = run("get", "po", "-n", "demo", "-o", "name")
    assert rc == 0 and out.splitlines() == ["pod/client", "pod/echo-v1", "pod/echo-v2"]
    rc, out, _ = run("get", "po", "-n", "demo", "echo-v1", "-o", "json")
    assert json.loads(out)["metadata"]["name"] == "echo-v1"
    rc, out, _ = run("get", "po", "-n", "demo", "echo-v1", "echo-v2", "-o", "yaml")
    doc = yaml.safe_load(out)
    assert doc["kind"] == "List" and [i["metadata"]["name"] for i in doc["items"]] == ["echo-v1", "echo-v2"]
    rc, out, _ = run("get", "po", "-n", "demo", "echo-v1", "-o", "wide")
    assert out.splitlines()[0].split()[-2:] == ["SERVICE-ACCOUNT", "LABELS"]


def test_output_name_of_a_mesh_kind(lab_dir: Path) -> None:
    LabStore(store_path()).apply([{"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                                   "metadata": {"name": "r", "namespace": "default"},
                                   "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}]}]}}])
    rc, out, _ = run("get", "vs", "-o", "name")
    assert out == "virtualservice.networking.istio.io/r\n"


# -- -l ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("selector,want", [
    ("app=echo", ["echo-v1", "echo-v2"]),
    ("app==echo,version=v2", ["echo-v2"]),
    ("app!=echo", ["client"]),
    ("version in (v1, v3)", ["echo-v1"]),
    ("version notin (v1)", ["client", "echo-v2"]),
    ("version", ["echo-v1", "echo-v2"]),
    ("!version", ["client"]),
    ("app=echo,!version", []),
])
def test_label_selectors(store: LabStore, selector: str, want: list[str]) -> None:
    rc, out, _ = run("get", "po", "-n", "demo", "-l", selector, "-o", "name")
    assert rc == 0 and out.split() == [f"pod/{n}" for n in want]


def test_selector_across_namespaces_and_delete_by_selector(store: LabStore) -> None:
    rc, out, _ = run("get", "po", "-A", "-l", "app=echo,version=v1")
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [["demo", "echo-v1"], ["legacy", "other"]]
    rc, out, _ = run("delete", "po", "-n", "demo", "-l", "app=echo")
    assert rc == 0 and sorted(out.splitlines()) == ['pod "echo-v1" deleted', 'pod "echo-v2" deleted']
    assert [o["metadata"]["name"] for o in store.list("Pod", "demo")] == ["client"]


@pytest.mark.parametrize("bad", ["app=(x", "bad key", "app in ()", "a=b,,c=d", "app=bad value"])
def test_bad_selectors_are_refused_naming_the_problem(store: LabStore, bad: str) -> None:
    rc, out, err = run("get", "po", "-l", bad)
    assert rc == 1 and out == "" and err.startswith("error: ") and "selector" in err


def test_selector_parser_semantics() -> None:
    sel = selectors.parse("env in (prod,staging),tier!=db,app")
    assert sel({"env": "prod", "app": "x"})
    assert not sel({"env": "prod", "app": "x", "tier": "db"})
    assert not sel({"env": "dev", "app": "x"})
    assert not sel({"env": "prod"})


# -- -w ------------------------------------------------------------------------------------------------

def test_watch_prints_each_change(store: LabStore) -> None:
    stop = threading.Event()
    out = io.StringIO()

    def change() -> None:
        time.sleep(0.3)
        store.apply([pod("echo-v3", app="echo", version="v3")])
        time.sleep(0.3)
        store.delete([("Pod", "demo", "echo-v1")])
        time.sleep(0.3)
        store.apply([pod("client", app="client", extra="x")])     # does not match: not printed
        time.sleep(0.3)
        stop.set()

    t = threading.Thread(target=change)
    t.start()
    args = build_parser().parse_args(["get", "po", "-n", "demo", "-l", "app=echo", "-w"])
    args.stdout, args.stderr, args.watch_stop, args.watch_interval = out, io.StringIO(), stop.is_set, 0.05
    assert args.func(args) == 0
    t.join()
    lines = out.getvalue().splitlines()
    assert lines[0].split()[0] == "NAME" and [ln.split()[0] for ln in lines[1:]] == [
        "echo-v1", "echo-v2", "echo-v3", "echo-v1"]


def test_watch_only_with_name_output(store: LabStore) -> None:
    stop = threading.Event()

    def change() -> None:
        time.sleep(0.3)
        store.apply([pod("new", app="x")])
        time.sleep(0.3)
        stop.set()

    t = threading.Thread(target=change)
    t.start()
    rc, out, _ = run("get", "po", "-n", "demo", "--watch-only", "-o", "name", watch_stop=stop.is_set,
                     watch_interval=0.05)
    t.join()
    assert rc == 0 and out == "pod/new\n"


# -- colour --------------------------------------------------------------------------------------------

class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("TERM", raising=False)
    assert colour_enabled(_Tty()) and paint("ok", "green", _Tty()) == "\033[32mok\033[0m"
    assert not colour_enabled(io.StringIO()) and paint("ok", "green", io.StringIO()) == "ok"
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_enabled(_Tty()) and paint("ok", "green", _Tty()) == "ok"
    monkeypatch.setenv("NO_COLOR", "")            # no-color.org: only a non-empty value disables
    assert colour_enabled(_Tty())
    monkeypatch.setenv("TERM", "dumb")
    assert not colour_enabled(_Tty())


def _cli(*argv: str, env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ambitctl.cli", *argv], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=60, **kw)  # type: ignore[arg-type]


def test_check_and_lab_progress_write_no_escape_codes_to_a_pipe(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    p = _cli("check")
    assert "[ok  ]" in p.stdout or "[FAIL]" in p.stdout or "[warn]" in p.stdout
    assert "\033" not in p.stdout
    monkeypatch.delenv("NO_COLOR", raising=False)
    labmod.progress("building")                      # what `lab up` prints; capsys is not a terminal
    assert capsys.readouterr().out == "==> building\n"


def test_check_on_a_terminal_honours_no_color() -> None:
    """`script` gives the command a real terminal: colour, unless NO_COLOR is set."""
    import shutil
    if not shutil.which("script"):
        pytest.skip("script(1) is not installed")
    cmd = f"{sys.executable} -m ambitctl.cli check"
    tty = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, cwd=REPO,
                         env={k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")} | {"TERM": "xterm"},
                         timeout=60)
    assert "\033[" in tty.stdout
    plain = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, cwd=REPO,
                           env={**os.environ, "NO_COLOR": "1", "TERM": "xterm"}, timeout=60)
    assert "\033[" not in plain.stdout and "ok" in plain.stdout


# -- closed pipe -------------------------------------------------------------------------------------------

def test_no_traceback_when_the_reader_goes_away(store: LabStore, lab_dir: Path) -> None:
    store.apply([pod(f"p{i}", app="bulk") for i in range(400)])
    env = {**os.environ, "AMBIT_LAB_DIR": str(lab_dir)}
    p = subprocess.run(f"{sys.executable} -m ambitctl.cli get po -A -o yaml | head -n 2; exit ${{PIPESTATUS[0]}}",
                       shell=True, executable="/bin/bash", capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=60)
    assert p.stdout.splitlines() == ["apiVersion: v1", "kind: List"]
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
    assert p.returncode == 141


# -- labels by Kubernetes' rules ------------------------------------------------------------------------

@pytest.mark.parametrize("assignment,named,rule", [
    ("bad key=1", '"bad key"', "must start and end with an alphanumeric character"),
    ("lead-=1", '"lead-"', "must start and end with an alphanumeric character"),
    ("Ambit.IO/x=1", '"Ambit.IO"', "lowercase DNS subdomain"),
    ("/x=1", '"/x"', "prefix before \"/\" must not be empty"),
    ("x" * 64 + "=1", '"' + "x" * 64 + '"', "no more than 63 characters"),
    ("team=bad value", '"bad value"', "must be empty or consist of alphanumeric characters"),
    ("team=" + "v" * 64, '"' + "v" * 64 + '"', "no more than 63 characters"),
    ("bad key-", '"bad key"', "must start and end with an alphanumeric character"),
])
def test_label_refuses_bad_keys_and_values(store: LabStore, assignment: str, named: str, rule: str) -> None:
    with pytest.raises(labmod.LabError) as e:
        run("label", "ns", "demo", assignment)
    assert named in str(e.value) and rule in str(e.value)
    assert store.get("Namespace", "", "demo")["metadata"].get("labels", {}) == {}


def test_label_cli_exit_code_and_message(store: LabStore, lab_dir: Path) -> None:
    p = _cli("label", "ns", "demo", "bad key=1", env={"AMBIT_LAB_DIR": str(lab_dir)})
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert 'label key "bad key": the name part must consist of alphanumeric characters' in p.stderr


def test_good_labels_are_accepted(store: LabStore) -> None:
    rc, _, _ = run("label", "ns", "demo", "ambit.io/dataplane-mode=ambient", "team=", "a_b.c-d=X.y_z")
    assert rc == 0
    assert store.get("Namespace", "", "demo")["metadata"]["labels"] == {
        "ambit.io/dataplane-mode": "ambient", "team": "", "a_b.c-d": "X.y_z"}


def test_apply_checks_labels_of_every_object_by_the_same_rules() -> None:
    errs = validate_object(pod("x", **{"bad key": "v", "ok": "bad value"}))
    assert sorted(e.path for e in errs) == ["metadata.labels[bad key]", "metadata.labels[ok]"]


def test_delete_of_a_malformed_file_is_one_line(store: LabStore, tmp_path: Path) -> None:
    """`metadata` that is not a map was an AttributeError traceback."""
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: reviews\n")
    rc, _, err = run("delete", "-f", str(f))
    assert rc == 1 and err == ("error: cannot delete VirtualService/default/<no name>: a known kind and "
                               "metadata.name are required\n")
