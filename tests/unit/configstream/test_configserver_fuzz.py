"""Fuzzing what a node sends the controller on the config stream (hypothesis): `ConfigServer.DeltaStream`
driven in process without a socket (a stand-in for grpc's servicer context: a queue of requests,
a list of responses, `abort` raising as grpc's does), with the controller's real `NodeAuthenticator`
over the CA's `BootstrapTokens`.

The caller holds node-a's credential (or a wrong one) and sends anything: first messages naming
any kind, node, waypoint and instance; subscriptions to every served type, unknown and huge type
URLs; `initial_resource_versions` naming other nodes' pods, other namespaces' credentials and
gateways, with right and wrong versions and junk names; ACKs and NACKs with current, stale and
made-up nonces, other type URLs, control characters and megabyte messages; requests that are
neither. A well-behaved subscriber (agent/node-b) runs beside it. What must hold:
- the caller's stream ends normally or is refused with a status and a message (INVALID_ARGUMENT,
  PERMISSION_DENIED, UNAUTHENTICATED, RESOURCE_EXHAUSTED); no other exception leaves the servicer
  (grpc would answer it as an internal error), and it ends once the caller stops sending;
- a caller not entitled to the identity it claims is refused; an admitted one receives only
  resources of its own scoped view (controller/configserver/scope.py, by the authenticated node);
- the other subscriber ends holding exactly its own view, its stream never refused;
- what the caller sent reaches the log, the status and the metrics' labels only printable and
  bounded, and the metrics' labels only as type URLs the controller serves.
Three budgets:
- the unit suite: a hundred-odd examples (a few seconds);
- `-m fuzz`: `AMBIT_FUZZ_EXAMPLES` examples (default 500);
- a long local run: `python -m tests.unit.configstream.test_configserver_fuzz --cases 20000`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from ambit.api import config_pb2
from ambit.configclient.node import NodeInfo
from ambit.model import (
    Authorization,
    ClientCredential,
    IngressGateway,
    MeshSettings,
    PeerAuthn,
    Resource,
    Service,
    Workload,
)
from controller.ca.credentials import BootstrapTokens
from controller.configserver import ConfigServer
from controller.configserver.auth import NodeAuthenticator
from controller.configserver.scope import scope
from tests.support import fuzzing

from .helpers import authz, peerauthn, service, workload

UNIT_EXAMPLES = 120
LONG_EXAMPLES = fuzzing.fuzz_examples(500)   # (bounded: the unit suite runs it)

WA1, WA2 = workload("a1", "node-a", ns="demo", ip="10.0.1.1"), workload("a2", "node-a", ns="demo", ip="10.0.1.2")
WB1 = workload("b1", "node-b", ns="other", ip="10.0.2.1", waypoint="other/gw")
WP = workload("wp0", "node-a", ns="demo", ip="10.0.1.9")
SNAPSHOT: dict[str, list[Resource]] = {
    MeshSettings.TYPE: [MeshSettings(name="mesh", trust_domain="cluster.local")],
    Workload.TYPE: [WA1, WA2, WB1, WP],
    Service.TYPE: [service("s", "demo", [WA1, WA2], waypoint="demo/gw"), service("t", "other", [WB1], waypoint="other/gw")],
    Authorization.TYPE: [authz("ga", "istio-system", scope="global"), authz("da", "demo"), authz("oa", "other"),
                         authz("cx", "other", action="CUSTOM")],
    PeerAuthn.TYPE: [peerauthn("pa", "demo")],
    IngressGateway.TYPE: [IngressGateway(name="gw", namespace="demo"), IngressGateway(name="gw", namespace="other")],
    ClientCredential.TYPE: [ClientCredential(name="cc", namespace="demo", key_pem="KEY-demo"),
                            ClientCredential(name="cc", namespace="other", key_pem="KEY-other")],
}
TYPES = list(SNAPSHOT)
NAMES = sorted({r.resource_name for rs in SNAPSHOT.values() for r in rs})
# node-a hosts pod wp-0 of waypoint demo/gw; node-b hosts wp-1 of other/gw
PODS = {"node-a": {("demo", "gw", "wp-0")}, "node-b": {("other", "gw", "wp-1")}}
ALLOWED_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                 grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
EOF = grpc.aio.EOF
STATS = {"runs": 0, "admitted": 0}     # how many runs' callers were served (the long run prints it)


class Aborted(Exception):
    pass


@dataclass
class Ctx:
    """What DeltaStream uses of grpc's servicer context, for a client scripted by the test."""

    metadata: tuple[tuple[str, str], ...]
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    written: list[config_pb2.DeltaResponse] = field(default_factory=list)
    code: grpc.StatusCode | None = None
    details: str = ""
    headers: bool = False
    new_response: asyncio.Event = field(default_factory=asyncio.Event)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    async def read(self) -> Any:
        return await self.inbox.get()

    async def write(self, msg: config_pb2.DeltaResponse) -> None:
        # what grpc does with it: serialize (a str that is no UTF-8 would fail here)
        self.written.append(config_pb2.DeltaResponse.FromString(msg.SerializeToString()))
        self.new_response.set()

    async def send_initial_metadata(self, md: Any) -> None:
        self.headers = True

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code, self.details = code, details
        raise Aborted(code, details)


def entitled(first: config_pb2.DeltaRequest, node: str) -> NodeInfo | None:
    """The identity a stream with `node`'s credential and this first message may have (as the
    server must scope it), or None: it must be refused. Written from docs/config-stream.md, not
    from the server's code."""
    if not first.HasField("node"):
        return None
    n = first.node
    fields = (n.name, n.waypoint, n.instance_id)
    if any(len(v) > 253 or not v.isprintable() for v in fields) or not n.name:
        return None
    if n.kind in ("ztunnel", "agent") and not n.waypoint and n.name == node:
        return NodeInfo(n.kind, node, "", n.instance_id)
    if n.kind == "waypoint":
        ns, _, gw = n.waypoint.partition("/")
        if (ns, gw, n.name) in PODS.get(node, ()):
            return NodeInfo("waypoint", n.name, n.waypoint, n.instance_id)
    return None


def view_names(node: NodeInfo, type_url: str) -> set[str]:
    return {r.resource_name for r in scope(node, type_url, SNAPSHOT)}


@dataclass
class Step:
    req: config_pb2.DeltaRequest | None = None
    answer: str = ""        # "ack" / "nack": the newest response's nonce
    message: str = ""
    type_url: str | None = None     # the answer's type_url (None: the response's own)


def _good_client(ctx: Ctx, node: NodeInfo, types: list[str], stop: asyncio.Event) -> asyncio.Task:
    """A subscriber that ACKs everything it gets; returns the task (its state: `held`)."""
    async def run() -> dict[str, dict[str, str]]:
        held: dict[str, dict[str, str]] = {}
        for i, t in enumerate(types):
            ctx.inbox.put_nowait(config_pb2.DeltaRequest(node=node.to_proto() if i == 0 else None, type_url=t,
                                                         subscribe=True))
        seen = 0
        while not stop.is_set() or seen < len(ctx.written):
            if seen < len(ctx.written):
                r = ctx.written[seen]
                seen += 1
                h = held.setdefault(r.type_url, {})
                for res in r.resources:
                    h[res.name] = res.version
                for name in r.removed_resources:
                    h.pop(name, None)
                ctx.inbox.put_nowait(config_pb2.DeltaRequest(type_url=r.type_url, response_nonce=r.nonce))
                continue
            ctx.new_response.clear()
            waits = [asyncio.ensure_future(ctx.new_response.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        return held
    return asyncio.ensure_future(run())


async def _scenario(token_ok: bool, first: config_pb2.DeltaRequest, steps: list[Step],
                    update_midway: bool) -> None:
    tokens = BootstrapTokens()
    token = {n: tokens.issue(n) for n in ("node-a", "node-b")}
    registry = CollectorRegistry()
    server = ConfigServer(debounce=0.0, registry=registry,
                          authenticator=NodeAuthenticator(tokens, lambda n: PODS.get(n, set())))
    server.update(SNAPSHOT, "v1")
    server._loop = asyncio.get_running_loop()
    catcher = fuzzing.LogCatcher()
    logger = logging.getLogger("ambit.controller.configserver")
    logger.addHandler(catcher)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        # the other subscriber, on node-b
        good_node = NodeInfo("agent", "node-b", instance_id="good")
        good = Ctx((("authorization", f"Bearer {token['node-b']}"), ("x-ambit-node", "node-b")))
        good_stop = asyncio.Event()
        good_handler = asyncio.ensure_future(server.DeltaStream(None, good))
        good_client = _good_client(good, good_node, TYPES, good_stop)

        auth = token["node-a"] if token_ok else "not-a-token"
        bad = Ctx((("authorization", f"Bearer {auth}"), ("x-ambit-node", "node-a")))
        handler = asyncio.ensure_future(server.DeltaStream(None, bad))
        bad.inbox.put_nowait(first)
        for i, s in enumerate(steps):
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if handler.done():
                break
            if update_midway and i == len(steps) // 2:
                server.update({**SNAPSHOT, Workload.TYPE: [WA1, WB1, WP]}, "v2")
                await asyncio.sleep(0.001)
            if s.req is not None:
                bad.inbox.put_nowait(s.req)
            elif bad.written:
                nonce = bad.written[-1].nonce
                req = config_pb2.DeltaRequest(type_url=bad.written[-1].type_url if s.type_url is None else s.type_url,
                                              response_nonce=nonce)
                if s.answer == "nack":
                    req.error_detail.message = s.message
                bad.inbox.put_nowait(req)
        for _ in range(5):
            await asyncio.sleep(0)
        bad.inbox.put_nowait(EOF)
        try:
            await asyncio.wait_for(handler, 5.0)
        except Aborted:
            pass
        except TimeoutError:
            raise AssertionError("DeltaStream did not end within 5 s of the client's end of stream") from None
        # anything else raised out of the servicer: a finding (grpc would answer INTERNAL)

        # --- the caller ---
        who = entitled(first, "node-a") if token_ok else None
        if bad.code is not None:
            assert bad.code in ALLOWED_CODES, (bad.code, bad.details)
            assert bad.details and bad.details.isprintable() and len(bad.details) < 8192, bad.details[:300]
        if who is None:
            assert bad.code is not None, f"a stream not entitled to {first.node} was admitted"
            assert not bad.written, "a refused stream received config"
        for r in bad.written:
            assert who is not None
            allowed = view_names(who, r.type_url)
            for res in r.resources:
                assert res.name in allowed, f"{who.key} received {r.type_url} {res.name!r} outside its view"
                if r.type_url in (IngressGateway.TYPE, ClientCredential.TYPE):
                    assert who.kind == "waypoint"

        # --- the other subscriber ---
        deadline = time.monotonic() + 5.0   # the other subscriber's round trips (its last update, its ACKs)
        while not all(t.in_sync for s in server.status() if s.node.instance_id == "good" for t in s.types):
            assert time.monotonic() < deadline, f"the other subscriber is not in sync: {server.status()}"
            await asyncio.sleep(0)
        good_stop.set()
        held = await asyncio.wait_for(good_client, 5.0)
        good.inbox.put_nowait(EOF)
        await asyncio.wait_for(good_handler, 5.0)
        assert good.code is None, (good.code, good.details)
        STATS["admitted"] += bool(bad.written)
        STATS["runs"] += 1
        final = server._snapshot.resources
        for t in TYPES:
            want = {r.resource_name for r in scope(good_node, t, final)}
            assert set(held.get(t, {})) == want, (t, held.get(t), want)

        # --- what the caller's words became ---
        for st_ in server.status():
            for t in st_.types:
                if t.last_nack is not None:
                    assert t.last_nack.message.isprintable() and len(t.last_nack.message) <= 4096
        server.status_answer().SerializeToString()
        for m in catcher.messages:
            assert m.isprintable(), f"a log line with control characters: {m[:300]!r}"
            assert len(m) < 16_384, f"a log line of {len(m)} characters"
        for metric in registry.collect():
            for sample in metric.samples:
                t = sample.labels.get("type_url")
                assert t is None or t in TYPES, f"metric {sample.name} labelled type_url={t[:100]!r}"
    finally:
        logger.removeHandler(catcher)
        logger.setLevel(old_level)


def run_scenario(token_ok: bool, first: config_pb2.DeltaRequest, steps: list[Step], update_midway: bool) -> None:
    asyncio.run(_scenario(token_ok, first, steps, update_midway))


# --- strategies ------------------------------------------------------------------------------------

odd_text = st.one_of(st.sampled_from(["", "x", "node-a", "node-b", "demo/gw", "other/gw", "demo/gw/x", "/", "a/",
                                      "wp-0", "wp-1", "\n", "a\x00b", "\u202e", "é", "x" * 300]),
                     st.text(max_size=20))
kinds = st.sampled_from(["ztunnel", "agent", "waypoint", "", "Ztunnel", "controller", "ztunnel\n"])
node_msgs = st.builds(lambda k, n, w, i: config_pb2.Node(kind=k, name=n, waypoint=w, instance_id=i),
                      kinds, odd_text, odd_text, st.one_of(st.just(""), odd_text))
type_urls = st.one_of(st.sampled_from(TYPES), st.sampled_from(["", "ambit.io/Unknown", "ambit.io/Workload ",
                                                                 "ambit.io/x\nforged line", "t" * 300, "\x1b[31m"]),
                      st.text(max_size=12))
names = st.one_of(st.sampled_from(NAMES), st.sampled_from(["", "\x00", "a\x00b", "demo/", "x" * 300]),
                  st.text(max_size=10))
versions = st.one_of(st.just(""), st.text(max_size=16), st.sampled_from(["0" * 16, "zz"]))
nonces = st.one_of(st.sampled_from(["1", "2", "3", "0", "-1", "01", " 1", "99999999999999999999"]), st.text(max_size=6))
messages = st.one_of(st.sampled_from(["", "bad", "line1\nline2", "\x1b[2J", "\u202eevil", "x" * 5000]),
                     st.text(max_size=40))


@st.composite
def requests(draw: Any) -> config_pb2.DeltaRequest:
    req = config_pb2.DeltaRequest()
    if draw(st.booleans()):
        req.type_url = draw(type_urls)
    if draw(st.integers(0, 9)) == 0:
        req.node.CopyFrom(draw(node_msgs))
    shape = draw(st.sampled_from(["subscribe", "subscribe", "ack", "nack", "both", "neither"]))
    if shape in ("subscribe", "both"):
        req.subscribe = True
        for n, v in draw(st.dictionaries(names, versions, max_size=6)).items():
            req.initial_resource_versions[n] = v
    if shape in ("ack", "nack", "both"):
        req.response_nonce = draw(nonces)
    if shape == "nack" or (shape == "both" and draw(st.booleans())):
        req.error_detail.message = draw(messages)
    return req


@st.composite
def steps(draw: Any) -> Step:
    what = draw(st.sampled_from(["req", "req", "ack", "ack", "nack"]))
    if what == "req":
        return Step(req=draw(requests()))
    return Step(answer=what, message=draw(messages) if what == "nack" else "",
                type_url=draw(st.one_of(st.none(), st.none(), type_urls)))


@st.composite
def firsts(draw: Any) -> config_pb2.DeltaRequest:
    """A first message: mostly an entitled identity (so the stream goes on), else anything."""
    req = config_pb2.DeltaRequest(type_url=draw(st.sampled_from(TYPES)), subscribe=True)
    choice = draw(st.integers(0, 5))
    if choice == 0:
        req.node.CopyFrom(config_pb2.Node(kind="ztunnel", name="node-a", instance_id="i"))
    elif choice == 1:
        req.node.CopyFrom(config_pb2.Node(kind="agent", name="node-a"))
    elif choice == 2:
        req.node.CopyFrom(config_pb2.Node(kind="waypoint", name="wp-0", waypoint="demo/gw"))
    elif choice == 3:
        req.node.CopyFrom(draw(st.sampled_from([
            config_pb2.Node(kind="agent", name="node-b"), config_pb2.Node(kind="waypoint", name="wp-1", waypoint="other/gw"),
            config_pb2.Node(kind="waypoint", name="wp-0", waypoint="other/gw"),
            config_pb2.Node(kind="ztunnel", name="node-a", waypoint="demo/gw")])))
    elif choice == 4:
        req.node.CopyFrom(draw(node_msgs))
    if draw(st.integers(0, 3)) == 0:
        req.CopyFrom(draw(requests()))
        if choice < 3:
            req.node.CopyFrom(config_pb2.Node(kind="ztunnel", name="node-a"))
    return req


@given(st.just(True), firsts(), st.lists(steps(), max_size=14), st.booleans())
@fuzzing.unit_budget(UNIT_EXAMPLES)
def test_config_stream_survives_arbitrary_requests(token_ok: bool, first: config_pb2.DeltaRequest, script: list[Step],
                                                   update_midway: bool) -> None:
    run_scenario(token_ok, first, script, update_midway)


@given(firsts(), st.lists(steps(), max_size=4))
@fuzzing.unit_budget(20)
def test_config_stream_without_a_valid_credential_gets_nothing(first: config_pb2.DeltaRequest,
                                                               script: list[Step]) -> None:
    run_scenario(False, first, script, False)


@pytest.mark.fuzz
@given(st.booleans(), firsts(), st.lists(steps(), max_size=30), st.booleans())
@fuzzing.fuzz_budget(LONG_EXAMPLES)
def test_fuzz_config_stream_long(token_ok: bool, first: config_pb2.DeltaRequest, script: list[Step],
                                 update_midway: bool) -> None:
    run_scenario(token_ok, first, script, update_midway)


# --- a long local run: random scripts, no shrinking --------------------------------------------------

def _rand(rng: random.Random) -> Step:
    r = rng.random()
    if r < 0.3:
        return Step(answer="ack")
    if r < 0.45:
        return Step(answer="nack", message=rng.choice(["x", "a\nb", "\x1b", "y" * 6000]),
                    type_url=rng.choice([None, None, "a\nb", "ambit.io/Unknown", "t" * 5000]))
    req = config_pb2.DeltaRequest()
    req.type_url = rng.choice(TYPES + ["", "ambit.io/New", "z" * 400, "a\nb"])
    if rng.random() < 0.6:
        req.subscribe = True
        for _ in range(rng.randint(0, 8)):
            req.initial_resource_versions[rng.choice(NAMES + ["x", "a\x00", "q" * 300])] = rng.choice(["", "v", "0" * 16])
    if rng.random() < 0.4:
        req.response_nonce = str(rng.randint(-1, 40))
        if rng.random() < 0.5:
            req.error_detail.message = rng.choice(["m", "\n", ""])
    return Step(req=req)


Scenario = tuple[bool, config_pb2.DeltaRequest, list[Step], bool]


def _long_cases(rng: random.Random) -> Iterator[Scenario]:
    """(credential valid, first message, script, update midway): an entitled or another node's
    identity, then random steps."""
    firsts_ = [config_pb2.Node(kind="ztunnel", name="node-a"), config_pb2.Node(kind="agent", name="node-a"),
               config_pb2.Node(kind="waypoint", name="wp-0", waypoint="demo/gw"),
               config_pb2.Node(kind="agent", name="node-b")]
    while True:
        first = config_pb2.DeltaRequest(node=rng.choice(firsts_), type_url=rng.choice(TYPES), subscribe=True)
        script = [_rand(rng) for _ in range(rng.randint(0, 40))]
        yield rng.random() < 0.95, first, script, rng.random() < 0.5


def long_run(cases: int, seed: int) -> int:
    crashes = fuzzing.long_run(cases, seed, _long_cases, lambda case: run_scenario(*case),
                               describe=lambda case: f"first={case[1]} script={case[2]!r}", max_crashes=5)
    print(f"{STATS['admitted']} of {STATS['runs']} callers served config")
    return crashes


if __name__ == "__main__":
    sys.exit(fuzzing.main(long_run, cases=2000, seed=None))
