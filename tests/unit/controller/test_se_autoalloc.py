"""ServiceEntry address auto-allocation (controller.translate.autoalloc), as Istio's ipallocate:
what a user of an entry without `addresses` relies on: each host gets a stable VIP from
240.240.0.0/16, in status.addresses and in the registry, and it never moves for someone else."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from ambit.labstore import LabStore
from controller.translate import translate
from controller.translate.autoalloc import AutoAllocate, allocate, parse_prefix
from controller.waypoints.labstatus import LabWaypointStatus

ON = AutoAllocate()
PREFIX = ipaddress.ip_network("240.240.0.0/16")


def se(name: str, hosts: list[str], *, created: str = "2026-01-01T00:00:00Z", resolution: str = "DNS",
       addresses: list[str] | None = None, status: list[dict[str, str]] | None = None,
       labels: dict[str, str] | None = None, ns: str = "egress") -> dict[str, Any]:
    spec: dict[str, Any] = {"hosts": hosts, "resolution": resolution,
                            "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]}
    if addresses:
        spec["addresses"] = addresses
    obj: dict[str, Any] = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
                           "metadata": {"name": name, "namespace": ns, "creationTimestamp": created,
                                        "labels": labels or {}}, "spec": spec}
    if status is not None:
        obj["status"] = {"addresses": status}
    return obj


def vips(entries: list[dict[str, Any]], settings: AutoAllocate = ON) -> dict[tuple[str, str], dict[str, str]]:
    return allocate(entries, settings).vips


def test_each_non_wildcard_host_gets_its_own_address_in_the_prefix() -> None:
    got = vips([se("api", ["a.example.com", "b.example.com", "*.example.org"])])[("egress", "api")]
    assert set(got) == {"a.example.com", "b.example.com"}      # the wildcard gets none
    assert got["a.example.com"] != got["b.example.com"]
    assert all(ipaddress.ip_address(v) in PREFIX for v in got.values())
    status = allocate([se("api", ["a.example.com", "b.example.com"])], ON).status[("egress", "api")]
    assert status == [{"value": got["a.example.com"], "host": "a.example.com"},
                      {"value": got["b.example.com"], "host": "b.example.com"}]


def test_addresses_do_not_move_when_other_entries_come_and_go() -> None:
    alone = vips([se("api", ["api.example.com"])])
    crowd = [se(f"e{i}", [f"h{i}.example.com"], created="2025-01-01T00:00:00Z") for i in range(50)]
    assert vips([*crowd, se("api", ["api.example.com"])])[("egress", "api")] == alone[("egress", "api")]


def test_a_status_address_is_kept_even_where_the_hash_would_differ() -> None:
    """Written status wins (ours or istiod's): a restart or a migration keeps every address."""
    got = vips([se("api", ["api.example.com"], status=[{"value": "240.240.0.1", "host": "api.example.com"},
                                                        {"value": "2001:2::1", "host": "api.example.com"}])])
    assert got[("egress", "api")] == {"api.example.com": "240.240.0.1"}
    status = allocate([se("api", ["api.example.com"], status=[{"value": "240.240.0.1", "host": "api.example.com"},
                                                               {"value": "2001:2::1", "host": "api.example.com"}])],
                      ON).status[("egress", "api")]
    assert status == [{"value": "240.240.0.1", "host": "api.example.com"},
                      {"value": "2001:2::1", "host": "api.example.com"}]   # istiod's IPv6 stays, unused


def test_status_addresses_outside_the_prefix_or_of_removed_hosts_are_replaced() -> None:
    got = vips([se("api", ["api.example.com"], status=[{"value": "10.0.0.1", "host": "api.example.com"},
                                                        {"value": "240.240.0.9", "host": "gone.example.com"}])])
    assert got[("egress", "api")]["api.example.com"] not in ("10.0.0.1", "240.240.0.9")


def test_a_conflict_is_resolved_oldest_first() -> None:
    claim = [{"value": "240.240.3.3", "host": "x.example.com"}]
    old = se("old", ["x.example.com"], created="2025-01-01T00:00:00Z", status=claim)
    young = se("young", ["x.example.com"], created="2026-01-01T00:00:00Z", status=claim, ns="other")
    for order in ([old, young], [young, old]):
        got = vips(order)
        assert got[("egress", "old")] == {"x.example.com": "240.240.3.3"}
        assert got[("other", "young")]["x.example.com"] != "240.240.3.3"


def test_a_user_address_in_the_prefix_is_never_allocated_to_another_entry() -> None:
    user = se("user", ["u.example.com"], addresses=["240.240.3.3"], created="2026-06-01T00:00:00Z")
    auto = se("auto", ["x.example.com"], status=[{"value": "240.240.3.3", "host": "x.example.com"}])
    got = vips([user, auto])
    assert ("egress", "user") not in got
    assert got[("egress", "auto")]["x.example.com"] != "240.240.3.3"


@pytest.mark.parametrize("entry", [
    se("none", ["n.example.com"], resolution="NONE"),
    se("user", ["u.example.com"], addresses=["192.0.2.1"]),
    se("optout", ["o.example.com"], labels={"networking.istio.io/enable-autoallocate-ip": "False"}),
], ids=["resolution-none", "user-addresses", "opt-out-label"])
def test_entries_that_do_not_qualify_get_nothing_and_stale_status_is_cleared(entry: dict[str, Any]) -> None:
    assert allocate([entry], ON).vips == {}
    assert allocate([entry], ON).status == {}           # nothing written, nothing to clear
    entry["status"] = {"addresses": [{"value": "240.240.0.5", "host": entry["spec"]["hosts"][0]}]}
    out = allocate([entry], ON)
    assert out.vips == {} and out.status == {("egress", entry["metadata"]["name"]): []}


def test_the_feature_off_clears_and_allocates_nothing() -> None:
    entry = se("api", ["api.example.com"], status=[{"value": "240.240.0.5", "host": "api.example.com"}])
    out = allocate([entry], AutoAllocate(enabled=False))
    assert out.vips == {} and out.status == {("egress", "api"): []}


def test_an_exhausted_prefix_is_reported_naming_the_entry_and_host() -> None:
    small = AutoAllocate(prefix=parse_prefix("240.240.0.0/30"))       # two usable addresses
    out = allocate([se(f"e{i}", [f"h{i}.example.com"]) for i in range(3)], small)
    assert sum(len(v) for v in out.vips.values()) == 2
    [err] = out.errors
    assert err.ref.startswith("ServiceEntry/egress/e") and err.path == "status.addresses"
    assert "no address left in 240.240.0.0/30" in err.reason


@pytest.mark.parametrize("text", ["240.240.0.1/16", "2001:2::/48", "240.240.0.0/31", "nonsense"])
def test_the_prefix_is_checked(text: str) -> None:
    with pytest.raises(ValueError):
        parse_prefix(text)


def test_the_registry_gives_each_host_its_own_vip() -> None:
    """ztunnel and the waypoints see the allocated addresses as the hosts' VIPs, unchanged."""
    tr = translate([se("api", ["a.example.com", "b.example.com"],
                       status=[{"value": "240.240.7.7", "host": "b.example.com"}])])
    by_host = {s.name: s.vips for s in tr.services if s.kind == "ServiceEntry"}
    assert by_host["b.example.com"] == ["240.240.7.7"]
    assert len(by_host["a.example.com"]) == 1 and ipaddress.ip_address(by_host["a.example.com"][0]) in PREFIX
    assert tr.entry_addresses[("egress", "api")][1] == {"value": "240.240.7.7", "host": "b.example.com"}


def test_an_allocated_address_never_takes_a_services_cluster_ip() -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "odd", "namespace": "egress"},
           "spec": {"clusterIP": "240.240.7.7", "ports": [{"port": 80}]}}
    tr = translate([svc, se("api", ["a.example.com"], status=[{"value": "240.240.7.7", "host": "a.example.com"}])])
    [entry] = [s for s in tr.services if s.name == "a.example.com"]
    assert entry.vips and entry.vips != ["240.240.7.7"]
    assert not tr.errors


def test_the_lab_store_keeps_the_addresses_in_status_across_a_reapply(tmp_path: Path) -> None:
    """`ambit get se NAME -o yaml` in the lab shows status.addresses (the controller writes them
    into the lab store as into the API), and `ambit apply` of the same entry again keeps them."""
    store = LabStore(tmp_path / "store.json")
    writer = LabWaypointStatus(store)
    obj = se("api", ["a.example.com"])
    del obj["metadata"]["creationTimestamp"]
    store.apply([obj])

    def reconcile() -> dict[str, Any]:
        objects = store.list()
        writer.reconcile(objects, translate(objects))
        got = store.get("ServiceEntry", "egress", "api")
        assert got is not None
        return got
    first = reconcile()["status"]["addresses"]
    assert [a["host"] for a in first] == ["a.example.com"]
    assert ipaddress.ip_address(first[0]["value"]) in PREFIX
    store.apply([se("api", ["a.example.com"])])          # re-applied without status
    assert reconcile()["status"]["addresses"] == first
    opted_out = se("api", ["a.example.com"], labels={"networking.istio.io/enable-autoallocate-ip": "false"})
    store.apply([opted_out])
    assert reconcile()["status"]["addresses"] == []
