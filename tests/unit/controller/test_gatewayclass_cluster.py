"""GatewayClasses in a cluster, against the API-server emulator through the official client (no
mocks), with a real KubeSource feeding the waypoint reconciler as the controller wires them: the
built-in classes are created once with Ambit's controllerName and `Accepted=True`, as istiod does
for its own; a class of a built-in name another controller owns is left alone; an Ambit class of
another name is `Accepted=False`; nothing is written again while nothing changes; a cluster
without the Gateway API CRDs gets no GatewayClass written; `--no-status` writes none.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from controller.__main__ import make_source, waypoint_hook
from controller.settings import load as controller_settings
from controller.translate import translate
from controller.validation import validate_object
from controller.waypoints.advisories import advisories
from controller.waypoints.labstatus import desired_statuses
from tests.support.kube_emulator import _MESH_GROUPS, KubeEmulator
from tests.support.kube_source import running
from tests.support.wait import wait_for

GW_V1 = "gateway.networking.k8s.io/v1"
AMBIT = "ambit.io/gateway-controller"
Obj = dict[str, Any]


def gateway_class(name: str, controller: str, **spec: Any) -> Obj:
    return {"apiVersion": GW_V1, "kind": "GatewayClass", "metadata": {"name": name},
            "spec": {"controllerName": controller, **spec}}


def accepted(obj: Obj | None) -> tuple[str, str, int] | None:
    c = next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == "Accepted"), None)
    return (c["status"], c["reason"], c.get("observedGeneration")) if c else None


def class_writes(emu: KubeEmulator) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _ in emu.requests if m != "GET" and "/gatewayclasses" in p]


@contextmanager
def controller(emu: KubeEmulator, *flags: str) -> Iterator[list[int]]:
    """The controller's source and waypoint duty, from its own settings and wiring
    (controller/__main__.py: `make_source`, `waypoint_hook`); yields the count of passes made."""
    args = controller_settings(["--kube", "--kube-host", emu.url, *flags], {})
    source = make_source(args)
    hook = waypoint_hook(args, None, source)
    assert hook is not None
    passes = [0]

    def on_snapshot(objs: list[Obj]) -> None:
        hook(objs, translate(objs))
        passes[0] += 1
    with running(source, on_snapshot):
        yield passes


def settle(emu: KubeEmulator, passes: list[int]) -> None:
    """Make one more snapshot (an unrelated Namespace) and wait until the reconciler has passed over it."""
    before = passes[0]
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"tick-{before}"}})
    wait_for(lambda: passes[0] > before, timeout=10, what="a reconciler pass")


def test_builtin_classes_created_once_accepted_and_a_foreign_class_left_alone(caplog: Any) -> None:
    with KubeEmulator() as emu:
        # istiod was here first: its `istio` class is its own
        emu.create(gateway_class("istio", "istio.io/gateway-controller", description="The default Istio GatewayClass"))
        emu.create(gateway_class("custom", AMBIT))
        emu.create(gateway_class("other-mesh", "example.com/gateway"))
        with caplog.at_level(logging.WARNING, logger="ambit.controller.waypoints"), controller(emu) as passes:
            def all_accepted() -> bool:
                return all(accepted(emu.get(GW_V1, "GatewayClass", n, "")) == ("True", "Accepted", 1)
                           for n in ("ambit-waypoint", "istio-waypoint", "ambit"))
            wait_for(all_accepted, timeout=10, what="the built-in classes Accepted")
            wait_for(lambda: accepted(emu.get(GW_V1, "GatewayClass", "custom", "")), timeout=10,
                     what="the custom class's status")
            for n in ("ambit-waypoint", "istio-waypoint", "ambit"):
                spec = emu.get(GW_V1, "GatewayClass", n, "")["spec"]
                assert spec["controllerName"] == AMBIT and len(spec["description"]) <= 64
            # an Ambit class of a name Ambit does not serve says so
            custom = emu.get(GW_V1, "GatewayClass", "custom", "")
            assert accepted(custom) == ("False", "Unsupported", 1)
            msg = next(c["message"] for c in custom["status"]["conditions"] if c["type"] == "Accepted")
            assert "built-in class names" in msg and "not served" in msg
            # another controller's `istio` is neither overwritten nor given a status; Ambit says so
            istio = emu.get(GW_V1, "GatewayClass", "istio", "")
            assert istio["spec"]["controllerName"] == "istio.io/gateway-controller" and not istio.get("status")
            assert not emu.get(GW_V1, "GatewayClass", "other-mesh", "").get("status")
            said = [r.getMessage() for r in caplog.records if "GatewayClass istio exists" in r.getMessage()]
            assert len(said) == 1 and "controllerName 'istio.io/gateway-controller'" in said[0]
            writes = class_writes(emu)
            assert sorted(p for m, p in writes if m == "POST") == [f"/apis/{GW_V1}/gatewayclasses"] * 3
            assert not any(p.endswith(("/istio/status", "/istio", "/other-mesh/status")) for _, p in writes)

            # quiet: more snapshots write nothing
            settle(emu, passes)
            settle(emu, passes)
            assert class_writes(emu) == writes
            assert len([r for r in caplog.records if "GatewayClass istio exists" in r.getMessage()]) == 1

            # a deleted class comes back, once
            emu.delete(GW_V1, "GatewayClass", "ambit")
            wait_for(lambda: accepted(emu.get(GW_V1, "GatewayClass", "ambit", "")), timeout=10,
                     what="the ambit class created again and Accepted")
            settle(emu, passes)
            again = class_writes(emu)[len(writes):]
            assert [m for m, _ in again] == ["POST", "PATCH"], again


def test_a_class_validation_refuses_is_not_created_again() -> None:
    """A built-in class that exists but fails validation (a field of a newer Gateway API, say) is not
    in the snapshot: it is not taken for missing, so no create is tried against it."""
    with KubeEmulator() as emu:
        emu.create(gateway_class("istio", AMBIT, futureField=True))
        with controller(emu) as passes:
            wait_for(lambda: accepted(emu.get(GW_V1, "GatewayClass", "ambit", "")), timeout=10,
                     what="the ambit class created and Accepted")
            settle(emu, passes)
            assert [m for m, _ in class_writes(emu)].count("POST") == 3


def test_no_gateway_api_crds_no_gatewayclass_request() -> None:
    """A cluster without Gateway API: the install works, and the controller creates nothing."""
    with KubeEmulator(groups=[g for g in _MESH_GROUPS if g != "gateway.networking.k8s.io"]) as emu, \
            controller(emu) as passes:
        wait_for(lambda: passes[0] > 0, timeout=10, what="a first reconciler pass")
        settle(emu, passes)
        assert class_writes(emu) == []


def test_no_status_creates_and_writes_no_class() -> None:
    """`--no-status`: the controller writes nothing about Gateway API objects, classes included."""
    with KubeEmulator() as emu:
        emu.create(gateway_class("ambit", AMBIT))
        # with --waypoint-image the duty runs (it deploys waypoints), writing no status
        with controller(emu, "--no-status", "--waypoint-image", "ambit:test") as passes:
            wait_for(lambda: passes[0] > 0, timeout=10, what="a first reconciler pass")
            settle(emu, passes)
        assert class_writes(emu) == [] and not emu.get(GW_V1, "GatewayClass", "ambit", "").get("status")


def test_in_the_lab_an_applied_class_is_accepted_and_its_parameters_ref_named() -> None:
    """The lab has no API server and creates no class; one applied to it is validated and gets the
    status a cluster's controller would write, and its parametersRef is said to be not read."""
    cls = {**gateway_class("ambit", AMBIT, parametersRef={"group": "", "kind": "ConfigMap", "name": "p",
                                                          "namespace": "ambit-system"}),
           "metadata": {"name": "ambit", "generation": 2}}
    assert validate_object(cls) == []
    assert [e.path for e in validate_object(gateway_class("ambit", ""))] == ["spec.controllerName"]
    out = desired_statuses([cls, gateway_class("theirs", "example.com/gw")])
    assert list(out) == [("GatewayClass", "", "ambit")]
    cond = out[("GatewayClass", "", "ambit")]["conditions"][0]
    assert (cond["status"], cond["reason"], cond["observedGeneration"]) == ("True", "Accepted", 2)
    assert "spec.parametersRef is not read" in cond["message"]
    found = [a for a in advisories([cls, gateway_class("mine", AMBIT), gateway_class("theirs", "example.com/gw")])
             if a.ref.startswith("GatewayClass")]
    assert [(a.ref, a.path) for a in found] == [("GatewayClass/ambit", "spec.parametersRef"),
                                                ("GatewayClass/mine", "metadata.name")]
    assert "not read by Ambit" in found[0].reason and "Gateways of class mine are not served" in found[1].reason
