"""The controller's side of the proxies' feeds (controller/debug/feeds.py) and the proxy's
(ambit/dataplane/feed.py), without the network: which filters the proxies are told, which reader
gets which flow, a slow reader dropping (and counting) instead of slowing anyone, and scrapes."""

from __future__ import annotations

import asyncio

from ambit.api import debug_pb2
from ambit.configclient.node import NodeInfo
from ambit.dataplane.feed import TapFeed, istio_families
from ambit.dataplane.tap import TapHub
from ambit.tapfilter import Filter, to_proto
from controller.debug.feeds import FeedHub, control


def flow(ns: str, status: int) -> dict[str, object]:
    return {"type": "flow", "layer": "L7", "status": status, "src": {"namespace": ns, "workload": "c"},
            "dst": {"namespace": ns, "workload": "echo"}}


def test_readers_get_what_their_filter_matches_and_a_slow_one_drops() -> None:
    async def main() -> None:
        hub = FeedHub(queue_size=3)
        feed = hub.open_feed("ztunnel/n1")
        assert control(hub, feed) == {"filters": [], "scrape": 0, "generation": 0} and not feed.changed.is_set()
        demo = hub.add_reader(Filter(namespace="demo"))
        errors = hub.add_reader(Filter(status="5xx"))
        assert demo is not None and errors is not None
        assert feed.changed.is_set()                        # the proxy is told at once
        c = control(hub, feed)
        assert c["filters"] == [Filter(namespace="demo"), Filter(status="5xx")] and c["generation"] == 2
        # A new reader's tap starts once every proxy applies its filter (no flow after "tapping" is lost).
        assert await hub.wait_applied(2, timeout=0.05) == ["ztunnel/n1"]
        await hub.applied(feed, 2)
        assert await hub.wait_applied(2, timeout=5) == []
        hub.deliver(feed, [flow("demo", 200), flow("other", 503)], dropped=0)
        assert [e["status"] for e in demo.sub.drain()] == [200]
        assert [e["dst"]["namespace"] for e in errors.sub.drain()] == ["other"]
        # Nobody drains `demo`: its queue fills, the rest is dropped and counted, delivery goes on.
        hub.deliver(feed, [flow("demo", 200) for _ in range(10)], dropped=4)
        assert demo.sub.dropped == 7 + 1 and len(demo.sub.queue) == 3
        [status] = [e for e in errors.sub.drain() if e["type"] == "status"]
        assert status == {"type": "status", "source": "ztunnel/n1", "dropped": 4}
        hub.remove_reader(demo)
        hub.remove_reader(errors)
        assert control(hub, feed)["filters"] == []          # the proxies stop tapping
    asyncio.run(main())


def test_scrape_collects_each_feed_once_and_names_the_silent_ones() -> None:
    """A feed answers a scrape once: every upload carrying the scrape's id used to be appended, so
    one authenticated feed could grow the answer by a 4 MiB message at a time for as long as the
    scrape waited (up to 30 s), and double its samples in `ambit top`."""
    async def main() -> None:
        hub = FeedHub()
        a, b = hub.open_feed("ztunnel/n1"), hub.open_feed("ztunnel/n2")
        task = asyncio.ensure_future(hub.scrape(timeout=0.5))
        await asyncio.sleep(0)
        sid = control(hub, a)["scrape"]
        assert sid and control(hub, b)["scrape"] == sid
        for _ in range(3):
            hub.answer(a, sid, "istio_x 1\n")
        got, missing = await task
        assert got == {"ztunnel/n1": "istio_x 1\n"} and missing == ["ztunnel/n2"]
        hub.answer(b, sid, "late")                          # after the scrape: ignored
    asyncio.run(main())


def test_scrape_answers_of_one_proxys_workers_are_all_kept() -> None:
    from ambitctl.commands.top import parse

    async def main() -> None:
        hub = FeedHub()
        w0, w1 = hub.open_feed("ztunnel/n1"), hub.open_feed("ztunnel/n1")    # two workers of one node
        task = asyncio.ensure_future(hub.scrape(timeout=0.5))
        await asyncio.sleep(0)
        sid = control(hub, w0)["scrape"]
        assert control(hub, w1)["scrape"] == sid
        series = 'istio_tcp_connections_opened_total{reporter="source"}'
        hub.answer(w0, sid, f"{series} 2.0")
        hub.answer(w1, sid, f"{series} 3.0\n")
        got, missing = await task
        assert missing == [] and list(got) == ["ztunnel/n1"]
        assert parse(got["ztunnel/n1"]) == {("istio_tcp_connections_opened_total", (("reporter", "source"),)): 5.0}
    asyncio.run(main())



def test_proxy_feed_subscribes_only_while_tapped_and_uploads_only_matches() -> None:
    async def main() -> None:
        tap = TapHub("ztunnel/n1", queue_size=2)
        feed = TapFeed("unused:0", NodeInfo("ztunnel", "n1"), tap, lambda: "istio_a 1\nambit_b 2\n")
        assert feed.next_upload() is None and not tap.active
        feed.control(debug_pb2.FeedControl(filters=[to_proto(Filter(namespace="demo"))], scrape=7, generation=3))
        assert tap.active
        for ev in (flow("demo", 200), flow("other", 200), flow("demo", 500), flow("demo", 404)):
            tap.publish(lambda ev=ev: dict(ev))
        up = feed.next_upload()
        assert up is not None and up.scrape == 7 and up.metrics == "istio_a 1\n" and up.generation == 3
        assert len(up.events_json) == 1 and up.dropped == 2      # queue of 2: two flows dropped, one filtered out
        feed.control(debug_pb2.FeedControl())
        assert not tap.active and feed.next_upload() is None
    asyncio.run(main())


def test_istio_families_keeps_help_type_and_samples() -> None:
    text = "# HELP istio_x x\n# TYPE istio_x counter\nistio_x{a=\"1\"} 2\n# HELP process_y y\nprocess_y 1\n"
    assert istio_families(text) == "# HELP istio_x x\n# TYPE istio_x counter\nistio_x{a=\"1\"} 2\n"


def test_a_feed_the_server_ends_mid_wait_leaves_no_task_pending() -> None:
    """A proxy's feed cancelled while it waits for new filters (the controller stopping, the RPC
    cut) must not leave its wait behind: it was logged as 'Task was destroyed but it is pending'."""
    from prometheus_client import CollectorRegistry

    from controller.configserver import ConfigServer
    from controller.debug.service import DebugServicer

    async def main() -> list[asyncio.Task[object]]:
        svc = DebugServicer(ConfigServer(registry=CollectorRegistry()), None)
        never = asyncio.Event()

        async def uploads():  # noqa: ANN202 - an async generator of FeedUpload
            yield debug_pb2.FeedUpload(node=NodeInfo("ztunnel", "n1").to_proto())
            await never.wait()
        gen = svc.Feed(uploads(), None)
        await gen.__anext__()                   # the current filters, at once
        waiting = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0.05)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await asyncio.sleep(0)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert asyncio.run(main()) == []


def test_closing_the_hub_ends_a_proxys_feed_stream() -> None:
    """The controller stopping ends each feed RPC itself (grpc cancelling it logged a traceback)."""
    from prometheus_client import CollectorRegistry

    from controller.configserver import ConfigServer
    from controller.debug.service import DebugServicer

    async def main() -> int:
        svc = DebugServicer(ConfigServer(registry=CollectorRegistry()), None)
        never = asyncio.Event()

        async def uploads():  # noqa: ANN202 - an async generator of FeedUpload
            yield debug_pb2.FeedUpload(node=NodeInfo("ztunnel", "n1").to_proto())
            await never.wait()
        sent = [m async for m in _until_closed(svc, svc.Feed(uploads(), None))]
        return len(sent)

    async def _until_closed(svc, gen):  # noqa: ANN001, ANN202
        async for m in gen:
            yield m
            asyncio.get_running_loop().call_later(0.05, svc.close)
    assert asyncio.run(asyncio.wait_for(main(), 5)) == 1


def test_a_proxy_cannot_pass_its_flows_off_as_another_proxys() -> None:
    """A flow's `source` is the proxy's own name (its feed's key, or that key without "@<pod>", as a
    waypoint names itself); another proxy's name, or none, is replaced by the feed's key."""
    async def main() -> None:
        hub = FeedHub(queue_size=10)
        node = hub.open_feed("ztunnel/n1")
        wp = hub.open_feed("waypoint/demo/waypoint@waypoint-0")
        r = hub.add_reader(Filter())
        assert r is not None
        hub.deliver(node, [{**flow("demo", 200), "source": "ztunnel/n2"}, {**flow("demo", 200), "source": 5},
                           flow("demo", 200), {**flow("demo", 200), "source": "ztunnel/n1"}], dropped=0)
        hub.deliver(wp, [{**flow("demo", 200), "source": "waypoint/demo/waypoint"},
                         {**flow("demo", 200), "source": "waypoint/demo/other"}], dropped=0)
        assert [e["source"] for e in r.sub.drain()] == ["ztunnel/n1"] * 4 + [
            "waypoint/demo/waypoint", "waypoint/demo/waypoint@waypoint-0"]

    asyncio.run(main())
