"""DestinationRule `tls.credentialName` at TLS origination, on the wire: a ServiceEntry bound to a
waypoint, a DestinationRule naming a Secret, the Secret in the waypoint's namespace, all through the
controller's real translation into a real `WaypointProxy` given the `ClientCredential`s the config
server would send it; curl speaks plain HTTP to it and the endpoint is a Python TLS server that asks
for client certificates of its own CA.

- MUTUAL presents the Secret's client certificate and verifies the server against its CA;
- SIMPLE verifies against the CA of the `<name>-cacert` Secret (Istio's generic `cacert` key);
- a Secret that is missing, whose CA did not sign the server, or whose CRLs revoke the server's
  certificate: 503 `UF`, never plaintext nor the system roots;
- a rotated Secret is in force for the next connection, without a restart.

Before, `credentialName` was accepted with a warning and the waypoint originated without it."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ambit.configclient import ConfigUpdate
from ambit.model import ClientCredential, Service, WaypointRoutes
from controller.translate import translate
from tests.support.testca import make_ca, make_leaf, pem
from tests.support.wait import wait_for
from tests.unit.waypoint import test_backendtls_wire as wire
from tests.unit.waypoint.harness import Proxy
from tests.unit.waypoint.test_backendtls_wire import HOST, NS, TlsOrigin
from tests.unit.waypoint.test_origination_crl_wire import Origin
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.request import Downstream
from waypoint.settings import load

pytestmark = pytest.mark.timeout(60)
Obj = dict[str, Any]

CLIENT_CA, CLIENT_CA_KEY = make_ca("partner-client-ca")
CLIENT_CERT, CLIENT_KEY = make_leaf(CLIENT_CA, CLIENT_CA_KEY, "waypoint.demo")


@pytest.fixture()
def origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Origin]:
    """The endpoint, asking every client for a certificate its client CA signed."""
    o = Origin(tmp_path, monkeypatch)
    o.ctx.verify_mode = ssl.CERT_REQUIRED
    o.ctx.load_verify_locations(cadata=pem(CLIENT_CA))
    yield o
    o.close()


def _secret(name: str, data: dict[str, str], type_: str = "Opaque") -> Obj:
    return {"apiVersion": "v1", "kind": "Secret", "type": type_, "metadata": {"name": name, "namespace": NS},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def objects(port: int, tls: Obj, *secrets: Obj) -> list[Obj]:
    entry = [o for o in wire.objects(port, None) if o["kind"] in ("ServiceEntry", "Gateway")]
    return [*entry, *secrets, {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                               "metadata": {"name": "api", "namespace": NS},
                               "spec": {"host": HOST, "trafficPolicy": {"tls": tls}}}]


class Wire(wire.Wire):
    """wire.Wire (curl in front of waypoint demo/egress), given the ClientCredentials the config
    server sends that waypoint too, and re-applied on `apply` (a rotated Secret)."""

    def __init__(self, objs: list[Obj]) -> None:    # (not super().__init__: the same proxy, other config)
        self.cfg = WaypointConfig(Waypoint(NS, "egress"), "cluster.local")
        self.version = 0
        self.apply(objs)
        s = load(["--waypoint", f"{NS}/egress", "--pod-name", "egress-0", "--node", "node1"])
        self.waypoint = WaypointProxy(s, self.cfg, None)
        self.proxy = Proxy(self.waypoint.decide, upstream=self.waypoint.upstream,
                           downstream=Downstream(source_ip="127.0.0.1", destination_ip="240.240.0.1",
                                                 destination_port=80, service=f"{NS}/{HOST}", hostname=HOST))

    def apply(self, objs: list[Obj]) -> None:
        tr = translate(objs)
        assert not tr.errors, tr.errors
        self.version += 1
        creds = [c for c in tr.credentials.credentials if c.namespace == NS]
        for t, items in ((Service.TYPE, tr.services), (WaypointRoutes.TYPE, tr.waypoint_routes),
                         (ClientCredential.TYPE, creds)):
            self.cfg.apply(ConfigUpdate(t, str(self.version), {}, frozenset(), {r.resource_name: r for r in items}))


def run(objs: list[Obj]) -> tuple[int, str, str]:
    return wire.run(objs, Wire)


def _client_tls(origin: TlsOrigin) -> Obj:
    """A kubernetes.io/tls Secret as `kubectl create secret tls` makes it, with the server's CA in ca.crt."""
    return _secret("partner", {"tls.crt": CLIENT_CERT, "tls.key": CLIENT_KEY, "ca.crt": pem(origin.ca)},
                   "kubernetes.io/tls")


def test_mutual_presents_the_secrets_client_certificate(origin: Origin) -> None:
    status, body, _ = run(objects(origin.port, {"mode": "MUTUAL", "credentialName": "partner"}, _client_tls(origin)))
    assert status == 200, body
    assert json.loads(body) == {"tls": True, "client": "waypoint.demo"}
    assert origin.sni == [HOST]


def test_simple_verifies_against_the_cacert_secret(origin: Origin) -> None:
    """SIMPLE presents no certificate, so this endpoint (which asks for one) refuses it; with the
    same CA, MUTUAL from Istio's generic keys passes. A CA that did not sign the server: 503 UF."""
    ca = _secret("partner-cacert", {"cacert": pem(origin.ca)})
    generic = _secret("partner", {"cert": CLIENT_CERT, "key": CLIENT_KEY})
    status, body, _ = run(objects(origin.port, {"mode": "MUTUAL", "credentialName": "partner"}, generic, ca))
    assert status == 200 and json.loads(body)["client"] == "waypoint.demo", body
    origin.ctx.verify_mode = ssl.CERT_NONE
    status, body, _ = run(objects(origin.port, {"mode": "SIMPLE", "credentialName": "partner"}, ca))
    assert status == 200 and json.loads(body) == {"tls": True, "client": None}, body
    other, _ = make_ca("not-the-servers-ca")
    status, _, flags = run(objects(origin.port, {"mode": "SIMPLE", "credentialName": "partner"},
                                   _secret("partner-cacert", {"cacert": pem(other)})))
    assert status == 503 and "UF" in flags.split(","), flags


def test_a_missing_secret_fails_closed(origin: Origin) -> None:
    status, _, flags = run(objects(origin.port, {"mode": "SIMPLE", "credentialName": "partner"}))
    assert status == 503 and "UF" in flags.split(","), flags
    assert origin.sni == [] and origin.failed_handshakes == 0, "nothing was sent: no plaintext, no system roots"


def test_the_secrets_crl_revoking_the_server_fails_the_connection(origin: Origin) -> None:
    secret = _client_tls(origin)
    secret["data"]["ca.crl"] = base64.b64encode(origin.crl(origin.serial)).decode()
    status, _, flags = run(objects(origin.port, {"mode": "MUTUAL", "credentialName": "partner"}, secret))
    assert status == 503 and "UF" in flags.split(","), flags
    secret["data"]["ca.crl"] = base64.b64encode(origin.crl(origin.serial + 1)).decode()
    status, body, _ = run(objects(origin.port, {"mode": "MUTUAL", "credentialName": "partner"}, secret))
    assert status == 200, body


def test_a_rotated_secret_is_in_force_for_the_next_connection(origin: Origin) -> None:
    tls = {"mode": "MUTUAL", "credentialName": "partner"}
    other, other_key = make_ca("another-client-ca")
    cert, key = make_leaf(other, other_key, "old.demo")
    stale = _secret("partner", {"tls.crt": cert, "tls.key": key, "ca.crt": pem(origin.ca)}, "kubernetes.io/tls")
    w = Wire(objects(origin.port, tls, stale))
    try:
        status, _, flags = w.get()
        # the endpoint refuses that client CA (after TLS 1.3's handshake: a reset, UC, or UF)
        assert status == 503, flags
        # the origin's thread records the refused handshake after the waypoint has seen the reset
        wait_for(lambda: origin.failed_handshakes >= 1, timeout=10, what="the origin refusing the stale client CA")
        w.apply(objects(origin.port, tls, _client_tls(origin)))
        status, body, _ = w.get()
        assert status == 200 and json.loads(body)["client"] == "waypoint.demo", body
    finally:
        w.close()
