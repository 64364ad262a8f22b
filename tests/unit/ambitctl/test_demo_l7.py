"""The demo's L7 steps without a waypoint: each says it is skipped, runs nothing, and the demo goes on."""

from __future__ import annotations

import subprocess

import pytest

from ambitctl.lab import demo_l7, demo_steps


def test_l7_steps_are_in_the_demo_after_the_l4_ones() -> None:
    names = [f.__name__ for f in demo_steps.STEPS]
    assert names[:7] == ["plain_routing", "captured_next_to_uncaptured", "enrol_at_runtime", "encrypted_on_the_wire",
                         "spiffe_identities", "denied_by_policy", "strict_mtls"]
    assert names[7:] == [f.__name__ for f in demo_l7.STEPS]


def test_without_the_waypoint_binary_every_l7_step_says_skipped_and_runs_nothing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo_l7, "waypoint_binary", lambda: (False, "No module named waypoint.__main__"))
    ran: list[object] = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a))
    for fn in demo_l7.STEPS:
        fn()
    out = capsys.readouterr().out
    assert out.count("waypoint not available: skipped") == 4, out
    assert "No module named waypoint.__main__" in out and not ran


def test_the_waypoint_probe_is_python_m_waypoint_help() -> None:
    ok, why = demo_l7.waypoint_binary()
    import importlib.util
    has_main = importlib.util.find_spec("waypoint.__main__") is not None
    assert ok == has_main, why


def test_the_seed_examples_the_steps_apply_exist() -> None:
    if not demo_l7.EXAMPLES.is_dir():
        pytest.skip(f"no seed examples at {demo_l7.EXAMPLES}")
    for name in ("virtual-service.yaml", "canary-deployment.yaml", "authorization-policy.yaml", "destination-rule.yaml"):
        assert (demo_l7.EXAMPLES / name).is_file()
    assert "myapp.example.com" in (demo_l7.EXAMPLES / "canary-deployment.yaml").read_text()


def test_replies_are_counted_by_version_and_denials_by_status(monkeypatch: pytest.MonkeyPatch) -> None:
    out = ('{"pod": "myapp-v1", "version": "v1"}\n\n200\n{"pod": "myapp-v2", "version": "v2"}\n\n200\n'
           'RBAC: access denied\n403\n\n000\n')
    seen: list[list[str]] = []

    def fake_run(argv, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, out, "")
    monkeypatch.setattr(subprocess, "run", fake_run)
    replies = demo_l7._requests("default/frontend", 4, "x-canary: true")
    assert demo_l7._versions(replies) == {"v1": 1, "v2": 1, "HTTP 403": 1, "HTTP 0": 1}
    (argv,) = seen
    assert argv[-5:-1] == ["default/frontend", "--", "sh", "-c"] and "seq 4" in argv[-1] and "'x-canary: true'" in argv[-1]
