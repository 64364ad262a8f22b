"""Fuzzing what the data plane makes of hostile deltas from the controller: the config client's
decode and stage (ambit/configclient/state.py, codec.py, ambit/model.py) and ztunnel's apply
(ztunnel/meshstate.py), sans-IO, as `ConfigClient._handle` runs them.

What must hold for any delta: it is accepted, or refused with a DecodeError or ConfigRejected (the
NACK's message) that names the resource or the type; a refusal leaves the last good state in force
(the client's TypeState and ztunnel's view the very objects they were, nothing half-applied); no
other exception (a TypeError out of an index names no resource and records no rejection); an
accepted Service or Workload state holds only TCP ports and IP addresses. Deltas: valid encoded
resources of every type ztunnel takes, then JSON values replaced by values of other types and
absurd ones (ports over 65535, negative, strings, lists where objects go, invalid CIDRs and IPs,
empty names), bodies truncated and bit-flipped, names that are not the body's, duplicated and
both-updated-and-removed names, versions that do not match, type URLs ztunnel does not take.
Three budgets:
- the unit suite: a few hundred examples (a few seconds);
- `-m fuzz`: `AMBIT_FUZZ_EXAMPLES` examples (default 3,000);
- a long local run: `python -m tests.unit.configstream.test_configclient_fuzz --cases 200000`.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import random
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ambit.configclient.codec import DecodeError, Encoded, content_version, encode
from ambit.configclient.state import TypeState
from ambit.model import (
    Authorization,
    Endpoint,
    Match,
    MeshSettings,
    PeerAuthn,
    Rule,
    Service,
    ServicePort,
    Workload,
)
from tests.support import fuzzing
from ztunnel.meshstate import ConfigRejected, MeshState

UNIT_EXAMPLES = 300
LONG_EXAMPLES = fuzzing.fuzz_examples(3000)
TD = "cluster.local"


def _wl(i: int) -> Workload:
    return Workload(uid=f"uid-{i}", name=f"p{i}", namespace="demo", ips=[f"10.0.0.{i}"], node="node1",
                    service_account="sa", identity=f"spiffe://{TD}/ns/demo/sa/sa", labels={"app": "a"},
                    enrolled=True, services={"demo/s": [80]}, probe_ports=[8080])


GOOD = {
    Workload.TYPE: [_wl(1), _wl(2)],
    Service.TYPE: [Service(name="s", namespace="demo", hostname="s.demo.svc.cluster.local", vips=["10.96.0.1"],
                           ports=[ServicePort(80, 8080, "http")],
                           endpoints=[Endpoint("uid-1", "10.0.0.1", "node1"), Endpoint("uid-2", "10.0.0.2", "node1")]),
                   Service(name="e", namespace="demo", hostname="e.example", vips=["240.0.0.1"],
                           ports=[ServicePort(443, 443, "https")], kind="ServiceEntry", resolution="STATIC",
                           location="MESH_EXTERNAL", subnets=["192.168.0.0/16"],
                           endpoints=[Endpoint("", "1.2.3.4", ports=[ServicePort(443, 8443)])])],
    Authorization.TYPE: [Authorization(name="a", namespace="demo", action="ALLOW", selector={"app": "a"},
                                       rules=[Rule(clauses=[[Match(ip_blocks=["10.0.0.0/8"], ports=[80])]])])],
    PeerAuthn.TYPE: [PeerAuthn(name="pa", namespace="demo", mode="STRICT", port_modes={8080: "PERMISSIVE"})],
    MeshSettings.TYPE: [MeshSettings(name="mesh", trust_domain=TD)],
}
TYPES = list(GOOD)


def fresh() -> tuple[MeshState, dict[str, TypeState]]:
    """ztunnel's config and the client's type states, each type holding GOOD."""
    mesh = MeshState()
    states = {t: TypeState(t) for t in TYPES}
    for t in (MeshSettings.TYPE, PeerAuthn.TYPE, Authorization.TYPE, Workload.TYPE, Service.TYPE):
        staged = states[t].stage("v1", [encode(r) for r in GOOD[t]], ())
        mesh.apply(staged.update)
        states[t].commit(staged)
    return mesh, states


def handle(mesh: MeshState, states: dict[str, TypeState], type_url: str, changed: list[Encoded],
           removed: list[str]) -> str | None:
    """`ConfigClient._handle` without the stream: None (ACK) or the NACK's message. Checks that a
    refusal changed nothing and that only DecodeError and ConfigRejected refuse."""
    state = states.get(type_url)
    if state is None:
        return "not subscribed"
    before = (mesh.view, state.resources, state.encoded, state.system_version)
    t0 = time.process_time()
    try:
        staged = state.stage("v2", changed, removed)
        mesh.apply(staged.update)
    except (DecodeError, ConfigRejected) as e:
        assert str(e) and (type_url in str(e) or any(repr(c.name) in str(e) for c in changed)), str(e)
        assert (mesh.view, state.resources, state.encoded, state.system_version) == before
        assert mesh.view is before[0], "a refused update changed ztunnel's view"
        return str(e)
    finally:
        assert time.process_time() - t0 < 2.0, "a delta took over 2 s of CPU"
    state.commit(staged)
    check_view(mesh)
    return None


def check_view(mesh: MeshState) -> None:
    """What an accepted state may hold: TCP ports, IP addresses, CIDRs."""
    v = mesh.view
    for ip, w in v.workloads_by_ip.items():
        ipaddress.ip_address(ip)
        assert isinstance(w, Workload)
    for s in v.services.values():
        assert isinstance(s, Service)
        for p in s.ports:
            assert isinstance(p, ServicePort) and type(p.port) is int and 0 < p.port < 65536, p
            assert type(p.target_port) is int and 0 <= p.target_port < 65536, p
        for ep in s.endpoints:
            assert isinstance(ep, Endpoint), ep
            if ep.ip:
                ipaddress.ip_address(ep.ip)
            for p in ep.ports:
                assert isinstance(p, ServicePort) and type(p.port) is int, p
    for (vip, port) in v.service_ports:
        ipaddress.ip_address(vip)
        assert type(port) is int and 0 < port < 65536
    for a in v.authorizations:
        assert isinstance(a, Authorization)
        for r in a.rules:
            assert isinstance(r, Rule)
            for clause in r.clauses:
                for m in clause:
                    assert isinstance(m, Match), m
    for p in v.peer_authns:
        assert all(type(k) is int for k in p.port_modes), p.port_modes


# --- mutations ---------------------------------------------------------------------------------------

ODD_VALUES = [None, True, False, 0, -1, 65536, 70000, 2**63, 1.5, "", "x", "80", "10.0.0.999", "10.0.0.0/33",
              "::g", "spiffe://other/ns/a/sa/b", [], [1], ["x"], [None], [[]], {}, {"a": 1}, {"port": "x"},
              "\u0000", "a" * 300]


def _paths(v: object, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(v, dict):
        for k, x in v.items():
            out += _paths(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += _paths(x, (*path, i))
    return out


def _set(doc: object, path: tuple, value: object) -> object:
    if not path:
        return value
    parent = doc
    for k in path[:-1]:
        parent = parent[k]  # type: ignore[index]
    parent[path[-1]] = value  # type: ignore[index]
    return doc


def mutate_body(rng: random.Random, body: bytes) -> bytes:
    doc = json.loads(body)
    for _ in range(rng.randint(1, 3)):
        paths = _paths(doc)
        path = rng.choice(paths[1:] or paths)
        op = rng.randrange(4)
        if op == 0 or not path:
            doc = _set(doc, path, json.loads(json.dumps(rng.choice(ODD_VALUES))))
        elif op == 1:                               # a list grown by a copy of an element, or emptied
            parent = doc
            for k in path[:-1]:
                parent = parent[k]
            if isinstance(parent, list):
                parent.append(json.loads(json.dumps(parent[path[-1]])))
            elif isinstance(parent, dict):
                del parent[path[-1]]                # a field left out
        elif op == 2:                               # another part of the body put here (an object for a list...)
            other = doc
            for k in rng.choice(paths):
                other = other[k]
            doc = _set(doc, path, json.loads(json.dumps(other)))
        else:                                       # an unknown field
            if isinstance(doc, dict):
                doc[rng.choice(["zzz", "_advisory", "ports", "uid"])] = json.loads(json.dumps(rng.choice(ODD_VALUES)))
    return json.dumps(doc).encode()


def mutate_bytes(rng: random.Random, body: bytes) -> bytes:
    b = bytearray(body)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(max(len(b), 1))
        op = rng.randrange(3)
        if op == 0 and b:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            del b[pos:]
        else:
            b[pos:pos] = rng.choice([b"\xff", b'"', b"{", b"]", b"\\u0000", b"1e999"])
    return bytes(b)


def delta(rng: random.Random) -> tuple[str, list[Encoded], list[str]]:
    """A hostile delta for one type: mostly bodies of valid resources, mutated."""
    t = rng.choice(TYPES)
    resources = [encode(r) for r in GOOD[t]]
    changed = []
    for e in resources:
        if rng.random() < 0.3:
            continue
        body = e.body
        r = rng.random()
        if r < 0.65:
            body = mutate_body(rng, body)
        elif r < 0.8:
            body = mutate_bytes(rng, body)
        name, version = e.name, content_version(body)
        r = rng.random()
        if r < 0.05:
            name = rng.choice(["", "other/x", e.name + "\n"])
        elif r < 0.08:
            version = "0" * 16
        changed.append(Encoded(name, version, body))
    if changed and rng.random() < 0.05:
        changed.append(changed[0])                  # the same name twice
    removed = [e.name for e in resources if rng.random() < 0.1]
    if rng.random() < 0.05:
        t = rng.choice(["ambit.io/Nope", "", "ambit.io/WaypointRoutes"])
    return t, changed, removed


def run_case(seed: int, steps: int = 3) -> None:
    rng = random.Random(seed)
    mesh, states = fresh()
    for _ in range(steps):
        t, changed, removed = delta(rng)
        handle(mesh, states, t, changed, removed)
    # and the last good state still takes a valid update
    t = rng.choice(TYPES)
    assert handle(mesh, states, t, [encode(r) for r in GOOD[t]], []) is None


@given(st.integers(0, 2**32))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_a_hostile_delta_is_nacked_naming_it_and_changes_nothing(seed: int) -> None:
    run_case(seed)


@pytest.mark.fuzz
@given(st.integers(0, 2**32))
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_hostile_deltas_long(seed: int) -> None:
    run_case(seed, steps=6)


def long_run(cases: int, seed: int) -> int:
    """Case i is `run_case(seed * 1_000_003 + i)`: the number a crash names replays it alone."""
    return fuzzing.long_run(cases, seed, lambda _rng: itertools.count(seed * 1_000_003),
                            lambda case_seed: run_case(case_seed, steps=4),
                            describe=lambda case_seed: f"run_case({case_seed}, steps=4)")


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=200_000))
