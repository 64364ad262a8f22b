"""`ambit tap`: the filters (pure), the human line, and the merge of several real tap endpoints."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from ambit.dataplane.endpoint import LocalEndpoint, Response
from ambit.dataplane.tap import TAP_PATH, TapHub, tap_response
from ambitctl.cli import build_parser
from ambitctl.commands.tap import Filter, event_matches, line, socket_producers, stream, validate_status


def l7(status: int = 200, verdict: str = "allowed", **kw: object) -> dict[str, object]:
    ev: dict[str, object] = {
        "type": "flow", "layer": "L7", "time": "2026-12-02T18:00:00.123456Z",
        "src": {"workload": "client", "pod": "client-7d9f8c6b5-abcde", "namespace": "demo", "identity": "spiffe://c/ns/demo/sa/client"},
        "dst": {"workload": "echo-v1", "pod": "echo-v1-5b7f9c8d-x2x4z", "namespace": "demo", "service": "demo/echo"},
        "method": "GET", "path": "/api", "status": status, "latency_ms": 1.5, "bytes_sent": 0, "bytes_recv": 12,
        "verdict": verdict, "policy": ""}
    ev.update(kw)
    return ev


L4 = {"type": "flow", "layer": "L4", "source": "ztunnel/n1", "direction": "inbound", "route": "inbound-hbone",
      "src": {"workload": "client-7d9f8c6b5-abcde", "pod": "client-7d9f8c6b5-abcde", "namespace": "demo"},
      "dst": {"workload": "db-0", "pod": "db-0", "namespace": "data"}, "verdict": "denied", "policy": "data/deny"}


@pytest.mark.parametrize(("f", "ev", "want"), [
    (Filter(), l7(), True),
    (Filter(namespace="demo"), l7(), True),
    (Filter(namespace="other"), l7(), False),
    (Filter(namespace="data"), L4, True),                       # either side
    (Filter(to="echo-v1"), l7(), True),
    (Filter(to="demo/echo-v1"), l7(), True),
    (Filter(to="other/echo-v1"), l7(), False),
    (Filter(to="echo"), l7(), False),                           # a workload name, not a prefix
    (Filter(to="svc/echo"), l7(), True),
    (Filter(to="pod/echo-v1-5b7f9c8d-x2x4z"), l7(), True),
    (Filter(from_="client"), L4, True),                         # ztunnel names pods: prefix of a pod
    (Filter(from_="echo-v1"), l7(), False),
    (Filter(to="db"), L4, True),                                # a StatefulSet's pod
    (Filter(pod="db-0"), L4, True),
    (Filter(status="5xx"), l7(503), True),
    (Filter(status="5xx"), l7(200), False),
    (Filter(status="4xx,503"), l7(503), True),
    (Filter(status="403"), l7(404), False),
    (Filter(status="5xx"), L4, False),                          # L4 flows have no status
    (Filter(verdict="denied"), L4, True),
    (Filter(verdict="denied"), l7(), False),
    (Filter(layer="l7"), L4, False),
    (Filter(), {"type": "status", "dropped": 0}, False),
])
def test_filters(f: Filter, ev: dict[str, object], want: bool) -> None:
    assert event_matches(ev, f) is want


@pytest.mark.parametrize("ev", [
    {"type": "flow", "src": None, "layer": None},
    {"type": "flow", "src": [1], "dst": "x", "status": "abc"},
    {"type": "flow", "dst": {"namespace": None, "service": 5, "pod": 7, "workload": ["a"]}, "status": [503]},
    {"type": "flow", "status": None, "layer": 4, "verdict": {"a": 1}},
])
def test_an_event_with_fields_of_the_wrong_type_never_matches_and_never_raises(ev: dict[str, object]) -> None:
    """An event is a proxy's JSON (in a cluster it reaches the controller over the node's feed): a
    null `layer`, a `src` that is a list, a `status` that is no number raised AttributeError,
    TypeError or ValueError out of the controller's feed upload, ending that node's feed."""
    for f in (Filter(layer="L7"), Filter(namespace="demo"), Filter(to="svc/echo"), Filter(from_="client"),
              Filter(pod="p"), Filter(status="5xx"), Filter(verdict="denied")):
        assert event_matches(ev, f) is False
    assert event_matches({"type": "flow", "status": "503"}, Filter(status="5xx")) is True


def test_status_spec_is_checked() -> None:
    assert validate_status("5xx,403") == "5xx,403"
    assert build_parser().parse_args(["tap"]).status == ""
    for bad in ("5x", "500s", "xx5", "600"):
        with pytest.raises(argparse.ArgumentTypeError):
            validate_status(bad)


def test_line_names_both_sides_the_request_and_the_deciding_policy() -> None:
    s = line(l7(403, "denied", policy="demo/no-admin"))
    assert "demo/client -> demo/echo-v1 (demo/echo)" in s and "GET /api 403" in s and "denied by demo/no-admin" in s
    assert "denied by data/deny" in line(L4) and "inbound inbound-hbone" in line(L4)


class _Admin(LocalEndpoint):
    def __init__(self, hub: TapHub) -> None:
        super().__init__()
        self.hub = hub

    def handle(self, method: str, path: str) -> Response:
        return tap_response(self.hub) if path == TAP_PATH else Response(404, b"{}")


def test_stream_merges_components_filters_and_reports_missing_ones(tmp_path: Path) -> None:
    async def main() -> tuple[list[dict[str, object]], list[str]]:
        hubs = {"ztunnel/n1": TapHub("ztunnel/n1"), "waypoint/demo/wp": TapHub("waypoint/demo/wp")}
        eps = []
        socks = {}
        for name, hub in hubs.items():
            ep = _Admin(hub)
            socks[name] = tmp_path / f"{name.replace('/', '.')}.sock"
            await ep.start(None, 0, socks[name])
            eps.append(ep)
        socks["ztunnel/gone"] = tmp_path / "nothing.sock"
        got: list[dict[str, object]] = []
        warns: list[str] = []

        def ready(_status: object) -> None:    # never: one component is missing
            raise AssertionError

        async def produce() -> None:
            while not all(h.active for h in hubs.values()):
                await asyncio.sleep(0.01)
            hubs["waypoint/demo/wp"].publish(lambda: l7(200))
            hubs["waypoint/demo/wp"].publish(lambda: l7(503))
            hubs["ztunnel/n1"].publish(lambda: dict(L4))
            hubs["waypoint/demo/wp"].publish(lambda: l7(502))

        prod = asyncio.ensure_future(produce())
        n = await stream(socket_producers(socks), Filter(namespace="demo", status="5xx"), got.append, warns.append, max_events=2,
                         duration=5.0, on_ready=ready)
        await prod
        assert n == 2
        for ep in eps:
            await ep.close()
        for _ in range(100):
            if not any(h.active for h in hubs.values()):
                break
            await asyncio.sleep(0.01)
        assert not any(h.active for h in hubs.values()), "a tap stayed subscribed after the CLI stopped"
        return got, warns

    got, warns = asyncio.run(main())
    assert [e["status"] for e in got] == [503, 502]
    assert all(e["source"] == "waypoint/demo/wp" for e in got)
    assert any("ztunnel/gone" in w and "cannot connect" in w for w in warns)


@pytest.mark.parametrize("flag", ["--max-events", "--duration"])
def test_a_negative_limit_is_refused_not_taken_as_reached(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`--max-events -1` stopped at once and exited 0, as if the tap had run."""
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["tap", flag, "-1"])
    assert e.value.code == 2
    assert f"argument {flag}: must be >= 0" in capsys.readouterr().err
    assert getattr(build_parser().parse_args(["tap", flag, "0"]), flag[2:].replace("-", "_")) == 0


def test_a_component_that_accepts_and_never_answers_is_given_up_and_the_rest_tapped(tmp_path: Path) -> None:
    """An admin socket that accepts and hangs (a wedged proxy) made `ambit tap` wait silently
    forever: no `tapping ...` line, no warning, no flows from the healthy components either."""
    async def main() -> tuple[int, list[dict[str, object]], list[str]]:
        hub = TapHub("ztunnel/n1")
        ep = _Admin(hub)
        good = tmp_path / "good.sock"
        await ep.start(None, 0, good)
        hung = tmp_path / "hung.sock"
        held: list[asyncio.StreamWriter] = []
        server = await asyncio.start_unix_server(lambda r, w: held.append(w), str(hung))
        got: list[dict[str, object]] = []
        warns: list[str] = []

        async def produce() -> None:        # a flow after the wedged one is given up: still tapped
            while not (hub.active and warns):
                await asyncio.sleep(0.01)
            hub.publish(lambda: dict(L4))

        prod = asyncio.ensure_future(produce())
        n = await asyncio.wait_for(stream(socket_producers({"ztunnel/n1": good, "ztunnel/wedged": hung}), Filter(),
                                          got.append, warns.append, max_events=1, ready_timeout=0.3), 10)
        await prod
        await ep.close()
        server.close()
        for w in held:
            w.close()
        return n, got, warns

    n, got, warns = asyncio.run(main())
    assert n == 1 and got[0]["source"] == "ztunnel/n1"
    assert any(w.startswith("ztunnel/wedged: no answer within 0.3 s") for w in warns), warns


def test_tap_through_a_controller_that_never_answers_fails_instead_of_waiting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`ambit tap --controller` against a debug API port that accepts and hangs: one warning that
    names it, an error, exit 1, instead of waiting silently forever."""
    from cryptography.hazmat.primitives import serialization

    from ambitctl.cli import main
    from controller.ca.authority import generate_root
    from tests.support.net import StubServer
    root = tmp_path / "root.pem"
    root.write_bytes(generate_root("cluster.local").cert.public_bytes(serialization.Encoding.PEM))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    monkeypatch.setenv("AMBIT_CONTROLLER_ROOT_CERT", str(root))
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path / "no-lab"))
    with StubServer(answer=None) as controller, pytest.raises(SystemExit) as e:
        main(["tap", "--kubeconfig", str(kubeconfig), "--token", "t", "--controller", f"127.0.0.1:{controller.port}",
              "--timeout", "0.5"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "controller: no answer within 0.5 s" in err and err.rstrip().splitlines()[-1].startswith("error: ")


def test_a_duration_shorter_than_the_bound_still_names_who_never_answered(tmp_path: Path) -> None:
    """`ambit tap --duration 2` against wedged components exited 0 with no output at all, as if
    nothing had flowed."""
    async def main() -> tuple[int, list[str]]:
        hung = tmp_path / "hung.sock"
        held: list[asyncio.StreamWriter] = []
        server = await asyncio.start_unix_server(lambda r, w: held.append(w), str(hung))
        warns: list[str] = []
        n = await asyncio.wait_for(stream(socket_producers({"ztunnel/wedged": hung}), Filter(), lambda ev: None,
                                          warns.append, duration=0.3, ready_timeout=10), 10)
        server.close()
        for w in held:
            w.close()
        return n, warns

    n, warns = asyncio.run(main())
    assert n == -1
    assert warns == ["ztunnel/wedged: no answer within the 0.3 s tapped"]


def test_an_oversized_line_ends_that_component_with_a_warning(tmp_path: Path) -> None:
    """A line over asyncio's 64 KiB limit (something that is no tap stream on the admin socket)
    killed that component's reader silently: no warning, and the tap waited forever."""
    async def main() -> tuple[int, list[str]]:
        sock = tmp_path / "odd.sock"

        async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.readuntil(b"\r\n\r\n")
            w.write(b'HTTP/1.1 200 OK\r\n\r\n{"type": "status", "dropped": 0}\n' + b"x" * 200_000 + b"\n")
            await w.drain()

        server = await asyncio.start_unix_server(answer, str(sock))
        warns: list[str] = []
        n = await asyncio.wait_for(stream(socket_producers({"ztunnel/odd": sock}), Filter(), lambda ev: None,
                                          warns.append), 10)
        server.close()
        return n, warns

    n, warns = asyncio.run(main())
    assert n == -1
    assert warns == ["ztunnel/odd: not a tap stream: a line over 64 KiB"]
