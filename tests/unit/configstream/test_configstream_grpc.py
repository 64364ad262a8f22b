"""The config stream end to end: a real grpc.aio server and clients on 127.0.0.1 in this process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from prometheus_client import CollectorRegistry

from ambit.api import config_pb2, config_pb2_grpc
from ambit.configclient import Backoff, ConfigClient, ConfigUpdate, NodeInfo, fetch_status, format_status
from ambit.model import Authorization, PeerAuthn, Resource, Service, Workload
from controller.configserver import ConfigServer

from .helpers import ALL_TYPES, authz, eventually, peerauthn, service, workload

ZT = NodeInfo("ztunnel", "node-a", instance_id="zt-1")


def by_name(resources: list[Resource]) -> dict[str, Resource]:
    return {r.resource_name: r for r in resources}


def base_state() -> dict[str, list[Resource]]:
    a1, a2, b1 = workload("a1", "node-a", ip="10.0.1.1"), workload("a2", "node-a", ip="10.0.1.2"), \
        workload("b1", "node-b", ip="10.0.2.1")
    return {
        Workload.TYPE: [a1, a2, b1],
        Service.TYPE: [service("web", endpoints=[a1, b1]), service("db", endpoints=[a2], vip="10.96.0.11")],
        Authorization.TYPE: [authz("allow-web")],
        PeerAuthn.TYPE: [peerauthn("strict")],
    }


class Recorder:
    """The component's apply callback: records updates; `reject` makes it raise (a NACK)."""

    def __init__(self) -> None:
        self.updates: list[ConfigUpdate] = []
        self.reject: Callable[[ConfigUpdate], str | None] = lambda u: None

    def __call__(self, u: ConfigUpdate) -> None:
        why = self.reject(u)
        if why:
            raise RuntimeError(why)
        self.updates.append(u)

    def of(self, type_url: str) -> list[ConfigUpdate]:
        return [u for u in self.updates if u.type_url == type_url]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def status(port: int) -> config_pb2.StatusResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        return await config_pb2_grpc.ConfigServiceStub(ch).Status(config_pb2.StatusRequest(), timeout=5)


def client(port: int, rec, node: NodeInfo = ZT, types=ALL_TYPES, **kw) -> ConfigClient:
    return ConfigClient(f"127.0.0.1:{port}", node, types, rec, backoff=Backoff(0.05, 0.5), **kw)


async def started(state: dict[str, list[Resource]], version: str = "v1") -> tuple[ConfigServer, int]:
    """A server holding `state`, serving on a port of its own."""
    srv = ConfigServer(registry=CollectorRegistry())
    srv.update(state, version)
    return srv, await srv.start()


def types_of(st: config_pb2.StatusResponse, key_kind: str = "ztunnel") -> dict[str, config_pb2.TypeStatus]:
    (sub,) = [s for s in st.subscribers if s.node.kind == key_kind]
    return {t.type_url: t for t in sub.types}


def test_initial_sync_of_all_types_and_status_shows_acks():
    async def main():
        srv = ConfigServer(registry=CollectorRegistry())
        state = base_state()
        srv.update(state, "v1")
        port = await srv.start()
        rec = Recorder()
        c = client(port, rec)
        try:
            await c.start()
            await c.wait_synced(10)
            for t in ALL_TYPES:
                assert c.state(t) == by_name(state[t]), t
            assert c.versions() == {t: "v1" for t in ALL_TYPES}
            assert c.connected
            await eventually(lambda: all(t.in_sync for t in srv.status()[0].types), what="status in sync")
            st = await status(port)
            assert st.version == "v1"
            sub = st.subscribers[0]
            assert (sub.node.kind, sub.node.name, sub.node.instance_id) == ("ztunnel", "node-a", "zt-1")
            assert sub.connected and sub.connected_since.seconds > 0
            types = types_of(st)
            assert set(types) == set(ALL_TYPES)
            assert all(t.acked_version == "v1" and t.in_sync and not t.HasField("last_nack") for t in types.values())
            assert types[Workload.TYPE].resources == 3
        finally:
            await c.stop()
            await srv.stop(0)
    run(main())


def test_update_sends_only_the_delta():
    async def main():
        srv = ConfigServer(registry=CollectorRegistry())
        state = base_state()
        srv.update(state, "v1")
        port = await srv.start()
        rec = Recorder()
        c = client(port, rec)
        try:
            await c.start()
            await c.wait_synced(10)
            rec.updates.clear()
            a1, a2, b1 = state[Workload.TYPE]
            a2_moved = workload("a2", "node-a", ip="10.0.1.99")
            new = dict(state, **{Workload.TYPE: [a1, a2_moved, b1], Service.TYPE: state[Service.TYPE][:1]})
            srv.update(new, "v2")
            await eventually(lambda: c.versions()[Service.TYPE] == "v2", what="Service delta applied")
            (wu,) = rec.of(Workload.TYPE)
            assert dict(wu.changed) == {"a2": a2_moved} and wu.removed == frozenset()
            (su,) = rec.of(Service.TYPE)
            assert dict(su.changed) == {} and su.removed == {"default/db"}
            assert rec.of(PeerAuthn.TYPE) == [] and rec.of(Authorization.TYPE) == [], "unchanged types get nothing"
            assert c.state(Workload.TYPE) == by_name(new[Workload.TYPE])
            assert c.state(Service.TYPE) == by_name(new[Service.TYPE])
            # The whole state is handed over too, for components that rebuild instead of patching.
            assert dict(su.state) == by_name(new[Service.TYPE])
        finally:
            await c.stop()
            await srv.stop(0)
    run(main())


def test_rejected_update_is_nacked_old_state_kept_and_visible_in_status():
    async def main():
        registry = CollectorRegistry()
        srv = ConfigServer(registry=registry)
        state = base_state()
        srv.update(state, "v1")
        port = await srv.start()
        rec = Recorder()
        rec.reject = lambda u: "no netns for pod poison" if "poison" in u.changed else None
        c = client(port, rec)
        try:
            await c.start()
            await c.wait_synced(10)
            good = c.state(Workload.TYPE)
            bad = dict(state, **{Workload.TYPE: state[Workload.TYPE] + [workload("poison", "node-a")]})
            srv.update(bad, "v2")
            await eventually(lambda: any(t.last_nack for t in srv.status()[0].types), what="NACK recorded")
            pushes = srv.pushes
            await asyncio.sleep(0.3)  # room for a resend loop to show itself; none may happen
            assert srv.pushes == pushes, "a NACKed state must not be resent until the next update"
            assert c.state(Workload.TYPE) == good and c.versions()[Workload.TYPE] == "v1"
            types = types_of(await status(port))
            wl = types[Workload.TYPE]
            assert wl.acked_version == "v1" and not wl.in_sync
            assert wl.last_nack.version == "v2"
            assert "RuntimeError: no netns for pod poison" in wl.last_nack.message
            assert wl.last_nack.time.seconds > 0
            assert registry.get_sample_value(
                "ambit_config_nacks_total", {"type_url": Workload.TYPE, "kind": "ztunnel"}) == 1
            # The next update (poison gone, a new pod) is accepted; the NACK stays on record.
            fixed = dict(state, **{Workload.TYPE: state[Workload.TYPE] + [workload("c9", "node-b")]})
            srv.update(fixed, "v3")
            await eventually(lambda: c.versions()[Workload.TYPE] == "v3", what="v3 applied")
            assert c.state(Workload.TYPE) == by_name(fixed[Workload.TYPE])
            await eventually(lambda: srv.status()[0].types[2].in_sync, what="in sync after v3")
            wl = types_of(await status(port))[Workload.TYPE]
            assert wl.acked_version == "v3" and wl.in_sync and wl.last_nack.version == "v2"
            text = format_status(await fetch_status(f"127.0.0.1:{port}"))
            assert "ztunnel/node-a [zt-1] connected" in text
            assert "last NACK of v2" in text and "no netns for pod poison" in text
        finally:
            await c.stop()
            await srv.stop(0)
    run(main())


def test_reconnect_resyncs_only_differences_and_applies_removals():
    async def main():
        state = base_state()
        srv1, port = await started(state)
        rec = Recorder()
        c = client(port, rec)
        srv2 = ConfigServer(registry=CollectorRegistry())
        try:
            await c.start()
            await c.wait_synced(10)
            before = {t: c.state(t) for t in ALL_TYPES}
            await srv1.stop(0)
            await eventually(lambda: not c.connected, what="client notices the lost server")
            await asyncio.sleep(0.3)  # several failed reconnect attempts against a closed port
            assert {t: c.state(t) for t in ALL_TYPES} == before, "the last good config is kept"
            assert c.last_error

            # While the client was away: a1 deleted, b1 changed, n1 added; Services follow.
            _, a2, _ = state[Workload.TYPE]
            b1 = workload("b1", "node-b", ip="10.0.2.50")
            n1 = workload("n1", "node-b", ip="10.0.2.7")
            new = dict(state, **{Workload.TYPE: [a2, b1, n1], Service.TYPE: [service("web", endpoints=[b1, n1])]})
            srv2.update(new, "v2")
            rec.updates.clear()
            connects = c.connects
            await srv2.start(f"127.0.0.1:{port}")
            await eventually(lambda: c.connects > connects and c.versions()[Service.TYPE] == "v2",
                             what="resync with the new server")
            for t in ALL_TYPES:
                assert c.state(t) == by_name(new[t]), t
            (wu,) = rec.of(Workload.TYPE)
            assert set(wu.changed) == {"b1", "n1"}, "unchanged a2 must not be resent"
            assert wu.removed == {"a1"}, "a pod deleted while disconnected is removed"
            (su,) = rec.of(Service.TYPE)
            assert set(su.changed) == {"default/web"} and su.removed == {"default/db"}
            for t in (PeerAuthn.TYPE, Authorization.TYPE):
                (u,) = rec.of(t)
                assert not u.changed and not u.removed, f"{t}: nothing changed, nothing resent"
            await eventually(lambda: all(t.in_sync for t in srv2.status()[0].types), what="in sync")
        finally:
            await c.stop()
            await srv1.stop(0)
            await srv2.stop(0)
    run(main())


def test_file_cache_serves_a_restarted_client_before_the_controller_answers(tmp_path):
    async def main():
        state = base_state()
        srv = ConfigServer(registry=CollectorRegistry())
        srv.update(state, "v1")
        port = await srv.start()
        cache = tmp_path / "agent-cache.json"
        agent = NodeInfo("agent", "node-a")
        c1 = client(port, Recorder(), node=agent, types=[Workload.TYPE], cache_path=cache)
        await c1.start()
        await c1.wait_synced(10)
        await c1.stop()
        await srv.stop(0)

        rec = Recorder()
        c2 = client(port, rec, node=agent, types=[Workload.TYPE], cache_path=cache)
        srv2 = ConfigServer(registry=CollectorRegistry())
        try:
            await c2.start()
            assert not c2.connected
            (cached,) = rec.updates
            assert cached.from_cache and set(cached.state) == {"a1", "a2"}
            assert c2.state(Workload.TYPE) == c1.state(Workload.TYPE)
            a1 = state[Workload.TYPE][0]
            srv2.update(dict(state, **{Workload.TYPE: [a1, workload("a3", "node-a")]}), "v2")
            await srv2.start(f"127.0.0.1:{port}")
            await c2.wait_synced(10)
            fresh = rec.updates[-1]
            assert not fresh.from_cache and set(fresh.changed) == {"a3"} and fresh.removed == {"a2"}
            assert set(c2.state(Workload.TYPE)) == {"a1", "a3"}
        finally:
            await c2.stop()
            await srv2.stop(0)
    run(main())


def test_agent_is_scoped_to_its_node_and_async_callbacks_work():
    async def main():
        state = base_state()
        srv = ConfigServer(registry=CollectorRegistry())
        srv.update(state, "v1")
        port = await srv.start()
        seen: list[ConfigUpdate] = []

        async def apply(u: ConfigUpdate) -> None:
            await asyncio.sleep(0)
            seen.append(u)

        c = client(port, apply, node=NodeInfo("agent", "node-b"), types=[Workload.TYPE])
        try:
            await c.start()
            await c.wait_synced(10)
            assert set(c.state(Workload.TYPE)) == {"b1"}
            pushes = srv.pushes
            # A change on another node does not reach this agent at all.
            srv.update(dict(state, **{Workload.TYPE: state[Workload.TYPE] + [workload("a7", "node-a")]}), "v2")
            srv.update(dict(state, **{Workload.TYPE: state[Workload.TYPE][:2]}), "v3")  # b1 deleted
            await eventually(lambda: "b1" not in c.state(Workload.TYPE), what="b1 removal")
            assert srv.pushes == pushes + 1 and seen[-1].removed == {"b1"}
        finally:
            await c.stop()
            await srv.stop(0)
    run(main())


def test_bursts_of_updates_coalesce():
    async def main():
        srv = ConfigServer(debounce=0.5, registry=CollectorRegistry())
        state = base_state()
        srv.update(state, "v0")
        port = await srv.start()
        rec = Recorder()
        c = client(port, rec, types=[Workload.TYPE])
        try:
            await c.start()
            await c.wait_synced(10)
            pushes = srv.pushes
            workloads = list(state[Workload.TYPE])
            for i in range(20):
                workloads.append(workload(f"burst{i}", "node-b", ip=f"10.0.3.{i + 1}"))
                srv.update({Workload.TYPE: list(workloads)}, f"v{i + 1}")
                await asyncio.sleep(0)
            await eventually(lambda: c.versions()[Workload.TYPE] == "v20", what="last update applied")
            assert srv.pushes - pushes == 1, "20 updates in one burst must go out as one response"
            assert len(rec.updates[-1].changed) == 20
        finally:
            await c.stop()
            await srv.stop(0)
    run(main())


def test_disconnected_subscribers_stay_visible_and_metrics_track_connections():
    async def main():
        registry = CollectorRegistry()
        srv = ConfigServer(registry=registry)
        srv.update(base_state(), "v1")
        port = await srv.start()
        c = client(port, Recorder())
        try:
            await c.start()
            await c.wait_synced(10)
            gauge = {"kind": "ztunnel"}
            assert registry.get_sample_value("ambit_config_connected_subscribers", gauge) == 1
            assert registry.get_sample_value(
                "ambit_config_pushes_total", {"type_url": Workload.TYPE, "kind": "ztunnel"}) == 1
            await c.stop()
            await eventually(lambda: not srv.status()[0].connected, what="server sees the disconnect")
            (sub,) = (await status(port)).subscribers
            assert not sub.connected and sub.HasField("disconnected_at") and sub.node.name == "node-a"
            assert registry.get_sample_value("ambit_config_connected_subscribers", gauge) == 0
            # Coming back replaces the stale entry rather than adding a second one.
            await c.start()
            await c.wait_synced(10)
            await eventually(lambda: [s.connected for s in srv.status()] == [True], what="one live entry")
        finally:
            await c.stop()
            await srv.stop(0)
    run(main())


@pytest.mark.parametrize("first, detail", [
    (config_pb2.DeltaRequest(type_url=Workload.TYPE, subscribe=True), "DeltaRequest.node: required"),
    (config_pb2.DeltaRequest(node=config_pb2.Node(kind="sidecar", name="n"), type_url=Workload.TYPE,
                             subscribe=True), "DeltaRequest.node.kind: 'sidecar'"),
    (config_pb2.DeltaRequest(node=config_pb2.Node(kind="agent", name="n"), type_url="ambit.io/" + "x" * 300,
                             subscribe=True), "DeltaRequest.type_url: unknown type 'ambit.io/xxx"),
    (config_pb2.DeltaRequest(node=config_pb2.Node(kind="agent", name="n"), type_url=Workload.TYPE),
     "neither subscribe nor response_nonce"),
])
def test_invalid_requests_end_the_stream_with_a_clear_error(first, detail):
    async def main():
        srv = ConfigServer(registry=CollectorRegistry())
        port = await srv.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = config_pb2_grpc.ConfigServiceStub(ch).DeltaStream()
                await call.write(first)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call.read()
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert detail in err.value.details()
        finally:
            await srv.stop(0)
    run(main())


def test_a_nack_is_logged_and_counted_under_the_type_of_the_response_it_rejects(caplog):
    """A NACK's own type_url is the client's word: it went into the controller's log line (a
    newline in it forged a second line) and became a label of ambit_config_nacks_total (a new
    series, of any size, per NACK). The NACK is recorded under the type of the response whose
    nonce it names."""
    async def main():
        registry = CollectorRegistry()
        srv = ConfigServer(registry=registry)
        srv.update(base_state(), "v1")
        port = await srv.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = config_pb2_grpc.ConfigServiceStub(ch).DeltaStream()
                await call.write(config_pb2.DeltaRequest(node=ZT.to_proto(), type_url=Workload.TYPE, subscribe=True))
                resp = await asyncio.wait_for(call.read(), 10)
                forged = "ambit.io/x\nWARNING forged line " + "y" * 10_000
                await call.write(config_pb2.DeltaRequest(type_url=forged, response_nonce=resp.nonce,
                                                         error_detail=config_pb2.ErrorDetail(message="bad")))
                await eventually(lambda: any(t.last_nack for t in srv.status()[0].types), what="NACK recorded")
                call.cancel()
        finally:
            await srv.stop(0)
        assert registry.get_sample_value("ambit_config_nacks_total", {"type_url": Workload.TYPE, "kind": "ztunnel"}) == 1
        labels = {s.labels.get("type_url") for m in registry.collect() for s in m.samples}
        assert not any(t and "forged" in t for t in labels), "the NACK's type_url became a metric label"
        (line,) = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
        assert line == f"ztunnel/node-a rejected {Workload.TYPE} version v1: bad"
    run(main())


def test_update_from_another_thread_reaches_subscribers():
    async def main():
        srv = ConfigServer(registry=CollectorRegistry())
        state = base_state()
        srv.update(state, "v1")
        port = await srv.start()
        c = client(port, Recorder(), types=[Workload.TYPE])
        try:
            await c.start()
            await c.wait_synced(10)
            new = {Workload.TYPE: state[Workload.TYPE][:1]}
            await asyncio.to_thread(srv.update, new, "v2")  # e.g. a Kubernetes watch thread
            await eventually(lambda: c.versions()[Workload.TYPE] == "v2", what="v2 applied")
            assert c.state(Workload.TYPE) == by_name(new[Workload.TYPE])
            with pytest.raises(ValueError, match=r"resources_by_type\['ambit.io/Workload'\]\[0\]: is a Service"):
                srv.update({Workload.TYPE: [service("x")]}, "v3")
            assert srv.version == "v2", "a rejected update leaves the served state alone"
        finally:
            await c.stop()
            await srv.stop(0)
    run(main())


def test_authorizer_refuses_a_stream_claiming_another_node():
    def authorize(node: NodeInfo, context) -> None:
        if node.name != "node-a":
            raise PermissionError("credential belongs to node-a")

    async def main():
        srv = ConfigServer(registry=CollectorRegistry(), authorize=authorize)
        srv.update(base_state(), "v1")
        port = await srv.start()
        good = client(port, Recorder(), node=NodeInfo("agent", "node-a"), types=[Workload.TYPE])
        bad = client(port, Recorder(), node=NodeInfo("agent", "node-b"), types=[Workload.TYPE])
        try:
            await good.start()
            await bad.start()
            await good.wait_synced(10)
            await eventually(lambda: "PERMISSION_DENIED" in bad.last_error, what="refusal seen by the client")
            assert "agent/node-b: credential belongs to node-a" in bad.last_error
            assert bad.state(Workload.TYPE) == {} and not bad.connected
            assert [s.node.name for s in srv.status()] == ["node-a"]
        finally:
            await good.stop()
            await bad.stop()
            await srv.stop(0)
    run(main())


def test_ending_the_streams_returns_every_handler_and_clients_come_back():
    """The controller stopping ends its streams itself, before the server's grace runs out: a
    handler grpc has to cancel was logged as 'Exception not handled' with a traceback, one per
    connected proxy. The client sees the stream end and reconnects (to the next controller)."""
    async def main():
        srv = ConfigServer(registry=CollectorRegistry())
        srv.update(base_state(), "v1")
        port = await srv.start()
        rec = Recorder()
        c = client(port, rec)
        await c.start()
        try:
            await eventually(lambda: len(srv._streams) == 1, what="the stream")
            first = next(iter(srv._streams.values()))
            srv.end_streams()
            await eventually(lambda: first not in srv._streams.values(), timeout=2, what="the handler to return")
            await eventually(lambda: len(srv._streams) == 1, what="the client to come back")
        finally:
            await c.stop()
            await srv.stop(0)
    run(main())


def test_a_restarted_controller_never_serves_an_empty_config_before_its_first_snapshot():
    """The controller registers the config service on its grpc server, translates its first
    snapshot on the source thread, then serves (controller/__main__.py). A stream that subscribes
    before the debounce publishes that snapshot must wait for it: served the placeholder "empty", it
    told every reconnecting client to remove all it held (the agent uncaptured its pods, ztunnel
    dropped STRICT and DENY policies: plaintext reached a STRICT pod in the chaos soak)."""
    async def main():
        state = base_state()
        srv1, port = await started(state)
        rec = Recorder()
        c = client(port, rec)
        srv2 = ConfigServer(debounce=0.5, registry=CollectorRegistry())
        grpc_server = grpc.aio.server()
        try:
            await c.start()
            await c.wait_synced(10)
            await srv1.stop(0)
            await eventually(lambda: not c.connected, what="client notices the lost server")
            rec.updates.clear()
            connects = c.connects
            # As the controller starts: registered, first snapshot from another thread, then served.
            srv2.add_to_server(grpc_server)
            await asyncio.to_thread(srv2.update, state, "v1")
            assert srv2.version == "empty", "control: the client connects inside the debounce"
            grpc_server.add_insecure_port(f"127.0.0.1:{port}")
            await grpc_server.start()
            await eventually(lambda: c.connects > connects and all(t.in_sync for t in srv2.status()[0].types),
                             what="resync with the restarted server")
            assert not [(u.type_url, sorted(u.removed)) for u in rec.updates if u.removed], \
                "a restarted controller told its client to remove what it still has"
            for t in ALL_TYPES:
                assert c.state(t) == by_name(state[t]), t
        finally:
            await c.stop()
            await srv1.stop(0)
            await grpc_server.stop(0)
    run(main())
