"""`ambit bug-report`: the archive has what it promises, and no key or token material at all."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from ambitctl.cli import main
from ambitctl.commands.bugreport import build, redact

PEM = ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5jYkmMTBdpAcqoAoGCCqGSM49\n"
       "AwEHoUQDQgAE2Vt0bYUZ1yHpNHX8pLmKpIjJsO3n1r4uXo=\n-----END EC PRIVATE KEY-----\n")
PKCS8 = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSECRETPKCS8\n-----END PRIVATE KEY-----"
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IkFCQyJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJlc2lnbmF0dXJl"
BOOTSTRAP = "q8W3-x_9aLr2VmT0pZ6cYk1uNhE4sJbDf7gXoQiRwA5"    # token_urlsafe(32), as controller/ca issues
BEARER = "Authorization: Bearer s3cr3tB3arerT0ken42"
SECRET_VALUE = "c3VwZXJzZWNyZXRwYXNzd29yZA=="


def lab(tmp_path: Path) -> Path:
    base = tmp_path / "lab"
    (base / "logs").mkdir(parents=True)
    (base / "node-a").mkdir()
    (base / "node-a" / "bootstrap-token").write_text(BOOTSTRAP + "\n")
    (base / "ca").mkdir()
    (base / "ca" / "ca.key").write_text(PKCS8)
    (base / "store.json").write_text(json.dumps({"revision": 3, "objects": [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "demo"},
         "data": {"password": SECRET_VALUE}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "demo"}}]}))
    (base / "logs" / "controller.log").write_text(
        f"INFO started\nDEBUG loaded key\n{PEM}INFO node token {BOOTSTRAP} accepted\n{BEARER}\n")
    (base / "logs" / "ztunnel-node-a.log").write_text(
        f'access {{"src.workload": "client", "token": "{JWT}"}}\nWARNING api_key=abcd1234efgh\n')
    return base


def test_no_key_or_token_material_in_the_archive(tmp_path: Path) -> None:
    base = lab(tmp_path)
    out = tmp_path / "report.tar.gz"
    build(base, out, run_cli=lambda argv: f"ran {argv}; password: hunter2hunter2 {JWT}\n")
    with tarfile.open(out) as t:
        names = t.getnames()
        blob = b"".join(t.extractfile(m).read() for m in t.getmembers() if m.isfile())  # type: ignore[union-attr]
    for secret in (PEM.splitlines()[1], "SECRETPKCS8", JWT, JWT.split(".")[1], BOOTSTRAP, "s3cr3tB3arerT0ken42",
                   SECRET_VALUE, "abcd1234efgh", "hunter2hunter2"):
        assert secret.encode() not in blob, f"{secret!r} leaked into the bug report"
    assert not any(n.endswith((".key", "bootstrap-token")) for n in names)
    # ...while what a maintainer needs is there
    root = "report"
    assert {f"{root}/versions.json", f"{root}/config/store.json", f"{root}/logs/controller.log",
            f"{root}/logs/ztunnel-node-a.log", f"{root}/check.txt", f"{root}/analyze.json",
            f"{root}/MANIFEST"} <= set(names)
    assert b'"src.workload": "client"' in blob and b"INFO started" in blob and b"kind" in blob
    assert b"ran ['check']" in blob and b"ran ['analyze', '-A', '-o', 'json']" in blob


def test_redact_keeps_ordinary_text() -> None:
    text = "GET /api 200 in 3ms; tokens_per_s=12 is not secret? route demo/echo keys=2"
    assert redact("plain line: src=client dst=echo") == "plain line: src=client dst=echo"
    assert "GET /api 200" in redact(text)


def test_output_to_a_directory_or_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`-o DIR` was an IsADirectoryError traceback; `-o` into a missing directory a bare errno line."""
    from ambitctl.commands import bugreport
    monkeypatch.setenv("AMBIT_LAB_DIR", str(lab(tmp_path)))
    written: list[Path] = []

    def fake_build(base: Path, out: Path, log_tail: int) -> SimpleNamespace:
        out.write_bytes(b"x")
        written.append(out)
        return SimpleNamespace(members=["a"], errors=[])
    monkeypatch.setattr(bugreport, "build", fake_build)
    reports = tmp_path / "reports"
    reports.mkdir()
    with pytest.raises(SystemExit) as e:
        main(["bug-report", "-o", str(reports)])
    assert e.value.code == 0
    assert [p.parent for p in written] == [reports] and written[0].name.startswith("ambit-bug-report-")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["bug-report", "-o", str(tmp_path / "nowhere" / "r.tgz")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err == (f"error: cannot write {tmp_path}/nowhere/r.tgz: {tmp_path}/nowhere is not "
                                         "a directory this user can write to\n")
