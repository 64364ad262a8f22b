"""Fuzzing what a node sends the controller's debug API (hypothesis): status reports
(`DebugServicer.Report`) and tap feed uploads (`DebugServicer._upload`, as `Feed` calls it),
driven in process without a socket, with the controller's real node credential check, report
store, ingress pod-condition writer (`PodConditionWriter.offer`, as the controller wires it in a
cluster), feed hub and readers.

Reports: valid node identities and others' (other nodes, waypoints of other nodes), state JSON of
every shape — ingress bind entries whose ports, listeners and errors are of any JSON type, deep
nesting (to thousands of levels), NaN, huge numbers, bytes that are no JSON or no UTF-8. Tap
events likewise, against readers with every kind of filter. What must hold:
- a report is stored, or refused with a status and a message (INVALID_ARGUMENT, PERMISSION_DENIED,
  UNAUTHENTICATED, RESOURCE_EXHAUSTED); no other exception leaves the servicer;
- a report is stored only under the identity its credential may speak for; another node's report
  is untouched;
- whatever is stored, everything built from it works afterwards, for every reader and every
  Gateway: `ambit proxy-status` (ProxyStatus's answer), `ambit proxy-config` of the proxy, the
  Gateway's bind failures (`bind_failures`) and the pod condition;
- a feed upload never raises; what reaches a reader encodes as its tap stream does.
Three budgets:
- the unit suite: a couple of hundred examples each (a few seconds);
- `-m fuzz`: `AMBIT_FUZZ_EXAMPLES` examples each (default 500);
- a long local run: `python -m tests.unit.debugapi.test_report_fuzz --cases 20000`.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ambit.api import config_pb2, debug_pb2
from ambit.configclient.node import NodeInfo
from ambit.kube.client import make_api_client
from ambit.tapfilter import Filter
from controller.ca.credentials import BootstrapTokens
from controller.configserver import ConfigServer
from controller.configserver.auth import NodeAuthenticator
from controller.configserver.server import _Stream
from controller.configserver.subscription import Subscription
from controller.debug import DebugServicer, ReportStore
from controller.debug.service import _event
from controller.waypoints.bindcondition import condition_of
from controller.waypoints.ingress_status import bind_failures
from controller.waypoints.podcondition import PodConditionWriter
from tests.support import fuzzing

UNIT_EXAMPLES = 200
LONG_EXAMPLES = fuzzing.fuzz_examples(500)   # (bounded: the unit suite runs it)
ALLOWED_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                 grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
PODS = {"node-a": {("demo", "gw", "wp-0")}, "node-b": {("other", "gw", "wp-1")}}
OTHER = NodeInfo("ztunnel", "node-b")
OTHER_STATE = {"certs": [{"identity": "spiffe://cluster.local/ns/x/sa/y"}], "ingress": []}
FILTERS = [Filter(), Filter(namespace="demo"), Filter(to="svc/echo"), Filter(from_="demo/client"),
           Filter(pod="client-abc12"), Filter(status="5xx,403"), Filter(verdict="denied"), Filter(layer="L7"),
           Filter(to="pod/x", status="2xx", layer="l4")]


class Aborted(Exception):
    pass


class Ctx:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code, self.details = code, details
        raise Aborted(code, details)


class Readers:
    async def check(self, token: str) -> str:
        return "reader"


class World:
    """A controller's debug API as the controller wires it in a cluster."""

    def __init__(self) -> None:
        self.tokens = BootstrapTokens()
        self.token = {n: self.tokens.issue(n) for n in ("node-a", "node-b")}
        self.config = ConfigServer(debounce=0.0, registry=CollectorRegistry(),
                                   authenticator=NodeAuthenticator(self.tokens, lambda n: PODS.get(n, set())))
        self.config.update({}, "v1")
        self.writer = PodConditionWriter(API)
        self.reports = ReportStore(ttl=600, on_report=self.writer.offer, on_change=lambda: None)
        self.debug = DebugServicer(self.config, Readers(), self.reports)
        for node in (OTHER, NodeInfo("ztunnel", "node-a"), NodeInfo("waypoint", "wp-0", "demo/gw")):
            # connected subscribers, so that their reports show in proxy-status and proxy-config
            self.config._register(_Stream(Subscription(node, "peer", time.time())))

    def ctx(self, node: str, token_ok: bool = True) -> Ctx:
        token = self.token[node] if token_ok else "not-a-token"
        return Ctx((("authorization", f"Bearer {token}"), ("x-ambit-node", node)))


API = make_api_client("http://127.0.0.1:9")      # never called: `offer` only queues


def entitled(node: config_pb2.Node, caller: str) -> bool:
    if node.kind in ("ztunnel", "agent"):
        return node.name == caller and not node.waypoint
    if node.kind == "waypoint":
        ns, _, gw = node.waypoint.partition("/")
        return (ns, gw, node.name) in PODS.get(caller, ())
    return False


async def _report(world: World, node: config_pb2.Node, version: str, state: bytes, token_ok: bool) -> None:
    ctx = world.ctx("node-a", token_ok)
    req = debug_pb2.ProxyReport(node=node, version=version, state_json=state)
    before = world.reports.get(OTHER.key)
    try:
        reply = await world.debug.Report(req, ctx)
        assert isinstance(reply, debug_pb2.ReportReply)
    except Aborted:
        assert ctx.code in ALLOWED_CODES, (ctx.code, ctx.details)
        assert ctx.details and len(ctx.details) < 8192
    stored = ctx.code is None
    if stored:
        assert token_ok and entitled(node, "node-a"), f"a report as {node} was stored for node-a's credential"
    assert world.reports.get(OTHER.key) == before, "another node's report changed"
    await _read_everything(world)


async def _read_everything(world: World) -> None:
    """What readers and the Gateway status make of the stored reports: none of it may fail."""
    status = world.debug.status_response()
    status.SerializeToString()
    for row in status.proxies:
        if row.report_json:
            json.loads(row.report_json)
    for proxy in ("ztunnel/node-a", "waypoint/demo/gw@wp-0", "ztunnel/node-b"):
        doc = await world.debug.ProxyConfig(debug_pb2.ProxyConfigRequest(proxy=proxy, local_only=True),
                                            Ctx((("authorization", "Bearer r"),)))
        json.loads(doc.json)
    for ref in ("demo/gw", "other/gw"):
        bind_failures(world.reports.of_waypoint(ref))
        bind_failures(world.writer.unreported(world.reports.of_waypoint(ref), ref))
    for r in world.reports.all():
        condition_of(r.state)


def run_report(node: config_pb2.Node, version: str, state: bytes, token_ok: bool = True) -> None:
    async def main() -> None:
        world = World()
        world.reports.put(OTHER, "1.0", OTHER_STATE)
        await _report(world, node, version, state, token_ok)
    asyncio.run(main())


def run_upload(events: list[bytes], dropped: int, scrape: int, metrics: str) -> None:
    async def main() -> None:
        world = World()
        hub = world.debug.feeds
        readers = [hub.add_reader(f) for f in FILTERS]
        feed = hub.open_feed("ztunnel/node-a")
        await world.debug._upload(feed, debug_pb2.FeedUpload(events_json=events, dropped=dropped, scrape=scrape,
                                                             metrics=metrics, generation=1))
        for r in readers:
            assert r is not None
            for ev in r.sub.drain():
                json.loads(_event(ev).json)
    asyncio.run(main())


# --- strategies ------------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-10, max_value=70_000),
                    st.floats(), st.text(max_size=12), st.sampled_from(["", "a", "l1", "Bad Name", "x" * 300,
                                                                         "\n", "a;b", "5xx", "403", "L7"]))
json_values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                           max_leaves=20)
entries = st.fixed_dictionaries({}, optional={
    "port": json_values, "bound": st.one_of(st.just(False), json_values),
    "listeners": st.one_of(st.lists(st.sampled_from(["http", "https", "l-1", "Bad", ""]), max_size=4), json_values),
    "error": json_values, "attempts": json_values})
states = st.one_of(
    st.fixed_dictionaries({}, optional={"ingress": st.one_of(st.lists(st.one_of(entries, json_values), max_size=5),
                                                             json_values),
                                        "certs": json_values, "version": json_values, "age": json_values}),
    json_values)


def nest(value: Any, depth: int, kind: str) -> str:
    text = json.dumps(value)
    return ("[" * depth + text + "]" * depth) if kind == "list" else ('{"a":' * depth + text + "}" * depth)


@st.composite
def state_bytes(draw: Any) -> bytes:
    how = draw(st.sampled_from(["json", "json", "json", "deep", "raw", "const"]))
    if how == "json":
        return json.dumps(draw(states)).encode()
    if how == "deep":
        depth = draw(st.sampled_from([30, 31, 32, 33, 100, 500, 900, 990, 1500, 5000, 100_000]))
        inner = draw(st.sampled_from([{"ingress": [{"port": 80, "bound": False, "listeners": ["http"]}]}, 1, []]))
        text = nest(inner, depth, draw(st.sampled_from(["list", "dict"])))
        return ('{"ingress": [' + text + "]}" if draw(st.booleans()) else '{"x": ' + text + "}").encode()
    if how == "const":
        return draw(st.sampled_from([b'{"a": NaN}', b'{"a": Infinity}', b'{"a": 1e999}', b'{"a": ' + b"9" * 5000 + b"}",
                                     b'{"a": "\\ud800"}', b'{"a": 1, "a": 2}']))
    return draw(st.binary(max_size=40))


nodes = st.one_of(
    st.sampled_from([config_pb2.Node(kind="ztunnel", name="node-a"), config_pb2.Node(kind="agent", name="node-a"),
                     config_pb2.Node(kind="waypoint", name="wp-0", waypoint="demo/gw"),
                     config_pb2.Node(kind="ztunnel", name="node-b"),
                     config_pb2.Node(kind="waypoint", name="wp-1", waypoint="other/gw"),
                     config_pb2.Node(kind="waypoint", name="wp-0", waypoint="other/gw")]),
    st.builds(lambda k, n, w: config_pb2.Node(kind=k, name=n, waypoint=w),
              st.sampled_from(["ztunnel", "waypoint", "x", ""]), st.text(max_size=10), st.text(max_size=10)))
entitled_nodes = st.sampled_from([config_pb2.Node(kind="ztunnel", name="node-a"),
                                  config_pb2.Node(kind="waypoint", name="wp-0", waypoint="demo/gw")])
events = st.one_of(
    st.builds(lambda d: json.dumps(d).encode(), st.fixed_dictionaries(
        {"type": st.sampled_from(["flow", "status", "flow"])},
        optional={"src": json_values, "dst": st.one_of(st.fixed_dictionaries({}, optional={
            "namespace": json_values, "pod": json_values, "workload": json_values, "service": json_values}),
            json_values), "status": json_values, "verdict": json_values, "layer": json_values,
            "source": json_values})),
    state_bytes())


@given(st.one_of(entitled_nodes, nodes), st.text(max_size=10), state_bytes(), st.booleans())
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_status_reports_survive_arbitrary_state(node: config_pb2.Node, version: str, state: bytes, token_ok: bool) -> None:
    run_report(node, version, state, token_ok)


@given(st.lists(events, max_size=6), st.integers(0, 2**64 - 1), st.integers(0, 3), st.text(max_size=20))
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_feed_uploads_survive_arbitrary_events(evs: list[bytes], dropped: int, scrape: int, metrics: str) -> None:
    run_upload(evs, dropped, scrape, metrics)


@pytest.mark.fuzz
@given(st.one_of(entitled_nodes, nodes), st.text(max_size=10), state_bytes(), st.booleans())
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_status_reports_long(node: config_pb2.Node, version: str, state: bytes, token_ok: bool) -> None:
    run_report(node, version, state, token_ok)


@pytest.mark.fuzz
@given(st.lists(events, max_size=12), st.integers(0, 2**64 - 1), st.integers(0, 3), st.text(max_size=20))
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_feed_uploads_long(evs: list[bytes], dropped: int, scrape: int, metrics: str) -> None:
    run_upload(evs, dropped, scrape, metrics)


# --- a long local run: random mutations of a valid ingress report, no shrinking -----------------------

VALID = {"certs": [{"identity": "spiffe://cluster.local/ns/demo/sa/gw", "expires": 1.0}],
         "ingress": [{"port": 80, "bound": False, "listeners": ["http"], "error": "EADDRINUSE"},
                     {"port": 443, "bound": True, "listeners": ["https"]}]}
JUNK: list[Any] = [None, True, 0, -1, 70000, 1.5, float("nan"), "", "x", [], {}, [1], {"a": 1}, "Bad Name", 2**70]


def mutate(rng: random.Random, value: Any, depth: int = 0) -> Any:
    if rng.random() < 0.15 or depth > 4:
        return rng.choice(JUNK)
    if isinstance(value, dict):
        return {k: mutate(rng, v, depth + 1) if rng.random() < 0.5 else v for k, v in value.items()}
    if isinstance(value, list):
        return [mutate(rng, v, depth + 1) for v in value] * rng.choice([1, 1, 2])
    return value


def _long_cases(rng: random.Random) -> Iterator[tuple[config_pb2.Node, bytes, Any]]:
    """(the reporter, its state's bytes, the state): the valid report mutated, now and then nested deep."""
    while True:
        state = mutate(rng, VALID)
        raw = json.dumps(state).encode()
        if rng.random() < 0.1:
            raw = nest(state, rng.choice([10, 40, 800, 3000]), rng.choice(["list", "dict"])).encode()
        node = rng.choice([config_pb2.Node(kind="waypoint", name="wp-0", waypoint="demo/gw"),
                           config_pb2.Node(kind="ztunnel", name="node-a")])
        yield node, raw, state


def _check_case(case: tuple[config_pb2.Node, bytes, Any]) -> None:
    """The state reported, then uploaded as tap events (itself, and as a flow's fields)."""
    node, raw, state = case
    run_report(node, "1.0", raw)
    run_upload([raw, json.dumps({"type": "flow", **(state if isinstance(state, dict) else {})}).encode()],
               0, 0, "")


def long_run(cases: int, seed: int) -> int:
    return fuzzing.long_run(cases, seed, _long_cases, _check_case, describe=lambda case: repr(case[1][:300]),
                            max_crashes=5)


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=2000, seed=None))
