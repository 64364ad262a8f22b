"""`ambit ztunnel-config` in the lab, read from each node's ztunnel admin socket: a node whose
ztunnel is down (restarting, being rolled) is an error for that node, not for the whole command."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from ambitctl.cli import main
from ambitctl.lab import components, state

CERT = {"identity": "spiffe://cluster.local/ns/demo/sa/client", "state": "VALID", "serial": "ab12",
        "not_after": "2026-12-06T00:00:00+00:00", "last_error": ""}


class _Admin(BaseHTTPRequestHandler):
    """ztunnel's admin endpoint, as much of it as `ztunnel-config certs` reads."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = {"/certs": [CERT], "/healthz/ready": {"version": "v1"}}.get(self.path)
        data = json.dumps(body).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A two-node lab whose node1 ztunnel answers and whose node2 ztunnel is down."""
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path))
    state.save(state.LabState(name="t", lab_dir=str(tmp_path), spec={"nodes": [{"name": "node1"}, {"name": "node2"}]}),
               tmp_path)
    sock = components.ztunnel_admin_socket(tmp_path, "node1")
    sock.parent.mkdir(parents=True)
    server = socketserver.ThreadingUnixStreamServer(str(sock), _Admin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield tmp_path
    finally:
        server.shutdown()
        server.server_close()


def test_a_node_that_is_down_does_not_hide_the_others(lab: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["ztunnel-config", "certs"])
    out, err = capsys.readouterr()
    assert e.value.code == 1
    assert out.startswith("ztunnel/node1  config version v1\n") and "spiffe://cluster.local/ns/demo/sa/client" in out
    assert err.startswith("error: ztunnel on node2: cannot reach its admin socket") and err.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        main(["ztunnel-config", "certs", "--node", "node2"])
    assert e.value.code == 1 and capsys.readouterr().out == ""


def test_controller_flag_in_the_lab_reads_through_the_controller(lab: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`--controller` was accepted and ignored in the lab (the admin sockets were read); it takes the
    debug API path there too, as tap, stat and top do."""
    from types import SimpleNamespace

    from ambitctl import cluster
    asked: list[str] = []

    def proxy_status(target: cluster.DebugTarget) -> SimpleNamespace:
        asked.append(target.address)
        node = SimpleNamespace(kind="ztunnel", name="node2")
        return SimpleNamespace(proxies=[SimpleNamespace(node=node, connected=True)])

    def proxy_config(target: cluster.DebugTarget, proxy: str) -> dict[str, object]:
        asked.append(proxy)
        return {"config": {}, "report": {"certs": [CERT], "config_version": "v9"}}
    monkeypatch.setattr(cluster, "proxy_status", proxy_status)
    monkeypatch.setattr(cluster, "proxy_config", proxy_config)
    with pytest.raises(SystemExit) as e:
        main(["ztunnel-config", "certs", "--controller", "unix:/elsewhere.sock", "--token", "t"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and asked == ["unix:/elsewhere.sock", "ztunnel/node2"]
    assert out.startswith("ztunnel/node2  config version v9\n")     # node2's ztunnel is down in the lab
