"""`ambit status`'s table (ambitctl/commands/mesh.py `format_status`) from the controller's
StatusResponse: what SYNC says for components that are connected and for ones that are gone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ambit.api import config_pb2
from ambitctl.cli import main
from ambitctl.commands.mesh import format_status


def _subscriber(name: str, connected: bool, in_sync: bool) -> config_pb2.SubscriberStatus:
    s = config_pb2.SubscriberStatus(node=config_pb2.Node(kind="ztunnel", name=name, instance_id=name[-1] * 8),
                                    connected=connected, peer="unix:")
    s.connected_since.FromSeconds(1000)
    if not connected:
        s.disconnected_at.FromSeconds(1100)
    s.types.add(type_url="ambit.io/Workload", acked_version="v1", sent_version="v2", in_sync=in_sync, resources=3)
    return s


def _row(text: str, who: str) -> dict[str, str]:
    """The row of `who`, by column (columns are set apart by 3 or more spaces)."""
    lines = text.splitlines()
    header = next(ln for ln in lines if ln.startswith("COMPONENT"))
    line = next(ln for ln in lines if ln.startswith(who))
    return dict(zip(re.split(r"\s{3,}", header), re.split(r"\s{3,}", line), strict=True))


def test_sync_of_connected_and_gone_components() -> None:
    resp = config_pb2.StatusResponse(version="v2", subscribers=[
        _subscriber("node1", True, False), _subscriber("node2", False, False), _subscriber("node3", True, True)])
    text = format_status(resp, "unix:/x", now=1200)
    assert _row(text, "ztunnel/node1")["SYNC"] == "pending"      # a response is on its way
    assert _row(text, "ztunnel/node3")["SYNC"] == "in sync"
    gone = _row(text, "ztunnel/node2")
    assert gone["STATE"] == "gone 1m40s" and gone["SYNC"] == "-"


def test_a_refused_status_call_is_one_readable_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The controller's refusal (grpclib's GRPCError) printed as a tuple repr:
    `(<Status.UNAUTHENTICATED: 16>, "...", None)`; it reads as every debug API command says it."""
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    import ambit.configclient

    async def refused(*args: object, **kw: object) -> None:
        raise GRPCError(Status.UNAUTHENTICATED, "debug API: not the debug token")
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path))
    (tmp_path / "store.json").write_text('{"revision": 0, "objects": []}')
    monkeypatch.setattr(ambit.configclient, "fetch_status", refused)
    with pytest.raises(SystemExit) as e:
        main(["status", "--token", "wrong"])
    assert e.value.code == 1
    assert capsys.readouterr().err == (f"error: cannot read the controller's status at unix:{tmp_path}/controller.sock: "
                                       "UNAUTHENTICATED: debug API: not the debug token\n")
