"""Client-side pieces without sockets: delta staging, decoding, the file cache and backoff."""

from __future__ import annotations

import json
import random

import pytest

from ambit.configclient import Backoff, DecodeError, Encoded, NodeInfo, encode
from ambit.configclient import cache as cfgcache
from ambit.configclient.codec import content_version
from ambit.configclient.state import TypeState
from ambit.model import Authorization, Endpoint, PeerAuthn, Service, ServicePort, Workload

from .helpers import peerauthn, workload


def test_stage_does_not_touch_state_until_commit():
    ts = TypeState(Workload.TYPE)
    a, b = workload("a", "n1"), workload("b", "n1")
    ts.commit(ts.stage("v1", [encode(a), encode(b)], []))
    staged = ts.stage("v2", [encode(workload("c", "n1"))], ["a"])
    assert sorted(ts.resources) == ["a", "b"], "staging must not change the good state"
    assert sorted(staged.update.state) == ["b", "c"]
    assert staged.update.removed == {"a"} and list(staged.update.changed) == ["c"]
    ts.commit(staged)
    assert sorted(ts.resources) == ["b", "c"] and ts.system_version == "v2"
    assert ts.resources["c"] == workload("c", "n1")


def test_removing_unknown_names_is_harmless_and_not_reported():
    ts = TypeState(Workload.TYPE)
    staged = ts.stage("v1", [], ["never-had"])
    assert staged.update.removed == frozenset()


def test_round_trip_keeps_int_keys_of_peerauthn_port_modes():
    ts = TypeState(PeerAuthn.TYPE)
    p = peerauthn("p")
    ts.commit(ts.stage("v1", [encode(p)], []))
    assert ts.resources["default/p"].port_modes == {9000: "PERMISSIVE"}


@pytest.mark.parametrize("entry, message", [
    (Encoded("a", "x", b"{"), "does not match its body"),
    (Encoded("a", encode(workload("b", "n")).version, encode(workload("b", "n")).body), "not the name"),
])
def test_bad_resources_are_rejected_with_their_name(entry, message):
    with pytest.raises(DecodeError, match=message):
        TypeState(Workload.TYPE).stage("v1", [entry], [])


def test_body_that_is_not_json_is_rejected_naming_type_and_resource():
    body = b"not json"
    with pytest.raises(DecodeError, match=r"ambit.io/Workload 'a': body is not JSON"):
        TypeState(Workload.TYPE).stage("v1", [Encoded("a", content_version(body), body)], [])


def test_update_and_removal_of_one_name_in_a_response_is_rejected():
    e = encode(workload("a", "n"))
    with pytest.raises(DecodeError, match="both updated and removed"):
        TypeState(Workload.TYPE).stage("v1", [e], ["a"])


def test_cache_round_trip_and_refuses_another_nodes_cache(tmp_path):
    path = tmp_path / "c.json"
    entries = [encode(workload("a", "n1"))]
    cfgcache.save(path, "agent/n1", {Workload.TYPE: ("v7", entries)})
    assert cfgcache.load(path, "agent/n1") == {Workload.TYPE: ("v7", entries)}
    with pytest.raises(ValueError, match="written for 'agent/n1', this is 'agent/n2'"):
        cfgcache.load(path, "agent/n2")
    path.write_text(json.dumps({"format": 99}))
    with pytest.raises(ValueError, match="format is 99"):
        cfgcache.load(path, "agent/n1")


def test_backoff_grows_to_the_cap_with_jitter_and_resets():
    b = Backoff(initial=0.1, maximum=5.0).attempts(random.Random(1))
    delays = [b.next_delay() for _ in range(12)]
    assert all(0.05 <= d <= 5.0 for d in delays)
    assert max(delays[-4:]) > 2.5, "backoff must grow towards the cap"
    assert len(set(delays)) == len(delays), "jittered delays differ"
    b.reset()
    assert b.next_delay() <= 0.1


def test_backoff_stays_at_the_cap_however_long_the_failures_last():
    """A component refused for days keeps retrying at the cap: 2.0 ** 1024 overflows a float, and
    that once ended the config client's reconnect loop after 1025 failures in a row."""
    b = Backoff(initial=0.01, maximum=0.02, jitter=0.0)
    assert [b.delay(n, 0.5) for n in (1, 2, 1025, 10**6)] == [0.01, 0.02, 0.02, 0.02]
    attempts = b.attempts(random.Random(1))
    attempts.failures = 5000
    assert attempts.next_delay() == 0.02


def test_node_info_validation_names_the_field():
    with pytest.raises(ValueError, match="node.kind: 'proxy'"):
        NodeInfo("proxy", "n").validate()
    with pytest.raises(ValueError, match="node.waypoint: '' must be 'namespace/name'"):
        NodeInfo("waypoint", "p").validate()
    with pytest.raises(ValueError, match="node.name: empty"):
        NodeInfo("agent", "").validate()


@pytest.mark.timeout(20)     # before the fix, this hung: stop() waited on a client that never ended
@pytest.mark.parametrize("teardown", ["error", "swallowed"])
def test_stop_ends_the_client_even_when_the_stream_turns_the_cancellation_into_an_error(teardown: str):
    """A stream library may catch the CancelledError of `stop()` in its teardown and raise its own
    error instead, or end the call as if the controller had closed the stream (both seen in `make
    test`: stop() waited 60 s while the client kept reconnecting). The client must stop anyway,
    not take it for one more attempt."""
    import asyncio

    from ambit.configclient import ConfigClient

    attempts = 0

    async def session() -> None:
        nonlocal attempts
        attempts += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            if teardown == "swallowed":
                return                      # the cancellation, swallowed: the call just ended
            raise ConnectionResetError("stream torn down") from None    # the cancellation, converted

    async def go() -> None:
        client = ConfigClient("127.0.0.1:1", NodeInfo("ztunnel", "node-a"), [Workload.TYPE], lambda u: None,
                              backoff=Backoff(initial=0.01, maximum=0.02))
        client._session = session       # type: ignore[method-assign]
        await client.start()
        await asyncio.sleep(0.05)
        await asyncio.wait_for(client.stop(), 2)

    asyncio.run(go())
    assert attempts == 1


@pytest.mark.parametrize("field, value", [("name", "node-1\nforged"), ("name", "n" * 254),
                                          ("instance_id", "\x1b[2J"), ("waypoint", "demo/" + "w" * 300)])
def test_node_info_fields_are_bounded_and_printable(field: str, value: str):
    kw = {"kind": "waypoint", "name": "p", "waypoint": "demo/wp", field: value}
    with pytest.raises(ValueError, match=f"node.{field}: must be at most 253 printable characters"):
        NodeInfo(**kw).validate()
    assert NodeInfo("waypoint", "waypoint-7d9c-x2", "demo/wp", "3f2a").validate()


def test_an_updates_state_is_the_committed_state_and_later_deltas_leave_it_as_it_was():
    """A component may keep `update.state` (the waypoint does, as its by-uid map): it is a read-only
    view of the very map the client commits, not a second copy of 10,000 workloads, and staging
    the next delta copies that map rather than editing it."""
    import gc
    from types import MappingProxyType

    ts = TypeState(Workload.TYPE)
    first = ts.stage("v1", [encode(workload("a", "n1")), encode(workload("b", "n1"))], [])
    ts.commit(first)
    kept = first.update.state
    assert isinstance(kept, MappingProxyType) and gc.get_referents(kept)[0] is ts.resources
    second = ts.stage("v2", [encode(workload("c", "n1"))], ["a"])
    ts.commit(second)
    assert sorted(kept) == ["a", "b"] and sorted(second.update.state) == ["b", "c"]
    assert gc.get_referents(second.update.state)[0] is ts.resources


# --- bodies whose values do not fit the model (found by test_configclient_fuzz.py) ------------------

def _service_body(**changes) -> dict:
    s = Service(name="s", namespace="demo", hostname="s.demo.svc.cluster.local", vips=["10.96.0.1"],
                ports=[ServicePort(80, 8080, "http")], endpoints=[Endpoint("uid-1", "10.0.0.1", "node1")])
    d = json.loads(encode(s).body)
    for path, value in changes.items():
        target = d
        *parents, last = path.split(".")
        for k in parents:
            target = target[int(k)] if isinstance(target, list) else target[k]
        target[int(last) if isinstance(target, list) else last] = value
    return d


@pytest.mark.parametrize(("changes", "message"), [
    # a string where a list of objects goes: iterated character by character, ztunnel's index then
    # raised AttributeError ('str' object has no attribute 'port'), naming no resource
    ({"endpoints.0.ports": "uid-1"}, "Endpoint.ports: expected list[ServicePort], got str"),
    ({"ports": ["http"]}, "Service.ports: expected a list of objects, got an item 'http'"),
    # an int that is no int: compared with 0 in ztunnel's index (TypeError), or kept as a port
    ({"ports.0.port": "80"}, "ServicePort.port: expected int, got str '80'"),
    ({"ports.0.target_port": {}}, "ServicePort.target_port: expected int, got dict"),
    ({"ports.0.port": True}, "ServicePort.port: expected int, got bool"),
    ({"vips": "10.96.0.1"}, "Service.vips: expected list[str], got str"),
    ({"vips": [1]}, "Service.vips[...]: expected list[str], got int"),
    ({"endpoints.0.ready": None}, "Endpoint.ready: expected bool, got NoneType"),
])
def test_a_value_of_the_wrong_type_is_rejected_naming_the_resource_and_field(changes, message):
    ts = TypeState(Service.TYPE)
    body = json.dumps(_service_body(**changes)).encode()
    with pytest.raises(DecodeError) as ei:
        ts.stage("v1", [Encoded("demo/s", content_version(body), body)], [])
    assert "ambit.io/Service 'demo/s'" in str(ei.value) and message in str(ei.value), str(ei.value)
    assert ts.resources == {}


@pytest.mark.parametrize(("rules", "message"), [
    ([{"clauses": ["ab"]}], "Rule.clauses: expected list[list[Match]]"),
    ([{"clauses": [["ab"]]}], "Rule.clauses: expected a list of objects, got an item 'ab'"),
    ("x", "Authorization.rules: expected list[Rule]"),
    ([{"clauses": [], "has_l7": "no"}], "Rule.has_l7: expected bool"),
])
def test_an_authorization_rule_that_is_no_rule_is_rejected(rules, message):
    body = json.loads(encode(Authorization(name="a", namespace="demo", action="ALLOW")).body)
    body["rules"] = rules
    raw = json.dumps(body).encode()
    with pytest.raises(DecodeError, match="ambit.io/Authorization 'demo/a'") as ei:
        TypeState(Authorization.TYPE).stage("v1", [Encoded("demo/a", content_version(raw), raw)], [])
    assert message in str(ei.value), str(ei.value)


@pytest.mark.parametrize("port", [" 80", "-5", "+80", "70000", "0", "eighty", "８０"])
def test_a_peerauthn_port_mode_for_no_tcp_port_is_rejected(port):
    """int(k) took " 80", "-5", "+80" and "70000" (and full-width digits) as ports."""
    body = json.loads(encode(peerauthn("p")).body)
    body["port_modes"] = {port: "STRICT"}
    raw = json.dumps(body).encode()
    with pytest.raises(DecodeError, match="is not a TCP port"):
        TypeState(PeerAuthn.TYPE).stage("v1", [Encoded("default/p", content_version(raw), raw)], [])
