"""What a VirtualService delegation leaves out is said, naming the object and the field: `ambit
apply`'s warnings, the objects' `Enforced` status condition and `ambit analyze` AMB0123
(controller.translate.delegates through controller.waypoints.advisories)."""

from __future__ import annotations

from typing import Any

from ambitctl.analyze import analyze
from controller.waypoints.advisories import advisories, object_conditions

NET = "networking.istio.io/v1"
ROUTE = [{"destination": {"host": "web"}}]


def vs(name: str, ns: str, http: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": NET, "kind": "VirtualService", "metadata": {"name": name, "namespace": ns},
            "spec": {"http": http, **spec}}


ROOT = vs("root", "platform", [{"match": [{"uri": {"prefix": "/shop"}}], "delegate": {"name": "shop", "namespace": "team"}},
                               {"match": [{"uri": {"prefix": "/gone"}}], "delegate": {"name": "gone", "namespace": "team"}},
                               {"match": [{"uri": {"prefix": "/mine"}}], "delegate": {"name": "mine"}},
                               {"route": ROUTE}], hosts=["web.example.com"])
SHOP = vs("shop", "team", [{"match": [{"uri": {"prefix": "/shop/cart"}}], "route": ROUTE},
                           {"match": [{"uri": {"prefix": "/cart"}}], "route": ROUTE}], exportTo=["."])
MINE = vs("mine", "platform", [{"route": ROUTE}], hosts=["other.example.com"])
LONELY = vs("lonely", "team", [{"route": ROUTE}])


def notes(objs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(a.ref, a.path, a.reason) for a in advisories(objs) if a.cause.startswith("Delegate")
            or a.path == "spec.exportTo"]


def test_each_delegation_left_out_is_said_on_the_object_that_can_fix_it() -> None:
    found = notes([ROOT, SHOP, MINE, LONELY])
    tail = ": this route is left out (requests it matches go on to the next route), as in Istio"
    assert found == [
        ("VirtualService/platform/root", "spec.http[0].delegate", "VirtualService/team/shop is not exported to "
         "namespace platform (its exportTo: .)" + tail),
        ("VirtualService/platform/root", "spec.http[1].delegate", "delegate VirtualService team/gone does not exist" + tail),
        ("VirtualService/platform/root", "spec.http[2].delegate", "VirtualService/platform/mine has hosts, so it is no "
         "delegate (a delegate VirtualService has no hosts and no gateways)" + tail),
        ("VirtualService/team/lonely", "spec.hosts", "no hosts, and no VirtualService delegates to it "
         "(http[].delegate): it routes nothing")]
    # exported: its route outside the root's prefix is the one said; its exportTo is honoured, not warned
    shared = {**SHOP, "spec": {**SHOP["spec"], "exportTo": [".", "platform"]}}
    assert notes([ROOT, shared, MINE]) == [
        ("VirtualService/team/shop", "spec.http[1].match", "no match fits inside the matches of "
         "VirtualService/platform/root spec.http[0], which delegates to it: this route is left out there, as in "
         "Istio (a delegate's matches must narrow its root's)"), *found[1:3]]


def test_the_status_condition_and_analyze_say_it() -> None:
    found = advisories([ROOT, SHOP])
    [cond] = object_conditions(ROOT, found)
    assert cond["type"] == "Enforced" and cond["status"] == "False" and "spec.http[1].delegate" in cond["message"]
    complete = {(f.code, f.ref, f.path) for f in analyze([ROOT, SHOP, LONELY], complete=True) if f.code == "AMB0123"}
    assert complete == {("AMB0123", "VirtualService/platform/root", f"spec.http[{i}].delegate") for i in range(3)} | {
        ("AMB0123", "VirtualService/team/lonely", "spec.hosts")}
    # files alone: the missing delegate and the lonely delegate's root may be in other files
    partial = {(f.ref, f.path) for f in analyze([ROOT, SHOP, LONELY], complete=False) if f.code == "AMB0123"}
    assert partial == {("VirtualService/platform/root", "spec.http[0].delegate")}
