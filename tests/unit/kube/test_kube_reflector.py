"""The shared reflector (ambit/kube/reflector.py) against a real HTTP API-server emulator, through
the official kubernetes client: typed (core) and custom-object listers, selectors, paging, 410 Gone,
dropped connections, bookmarks and collections that are not served."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3

from ambit.kube.client import make_api_client
from ambit.kube.reflector import ADDED, DELETED, LISTED, MODIFIED, Change, Reflector
from ambit.kube.resource import Resource, field_selector_matches, label_selector_matches
from tests.support.kube_emulator import Fault, KubeEmulator

PODS = Resource("", ("v1",), "pods", "Pod", True)
VS = Resource("networking.istio.io", ("v1", "v1beta1"), "virtualservices", "VirtualService", True)
VS_AMBIT = Resource("networking.ambit.io", ("v1beta2", "v1"), "virtualservices", "VirtualService", True)


def pod(name: str, ip: str = "10.244.1.1", node: str = "node-1", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "demo", "labels": labels},
            "spec": {"nodeName": node}, "status": {"phase": "Running", "podIP": ip}}


def vs(name: str, group: str = "networking.istio.io") -> dict[str, Any]:
    return {"apiVersion": f"{group}/v1", "kind": "VirtualService", "metadata": {"name": name, "namespace": "demo"},
            "spec": {"hosts": [name]}}


def until(pred: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if v := pred():
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Reflecting:
    """A Reflector running on its own thread, with every Change it reported."""

    def __init__(self, url: str, resource: Resource, **kw: Any):
        kw.setdefault("backoff", (0.05, 0.3))
        self.client = make_api_client(url)
        self.changes: list[Change] = []
        self.rf = Reflector(self.client, resource, self.changes.append, **kw)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.rf.run, args=(self.stop,), daemon=True)
        self.thread.start()

    @property
    def st(self):  # noqa: ANN201 - ReflectorState
        return self.rf.state

    def names(self) -> set[str]:
        return {o["metadata"]["name"] for o in self.rf.objects()}

    def close(self) -> None:
        self.stop.set()
        self.rf.abort()
        self.thread.join(timeout=10)
        self.client.close()
        assert not self.thread.is_alive(), "Reflector.run did not return after stop + abort"


@pytest.fixture
def emu() -> Iterator[KubeEmulator]:
    with KubeEmulator(groups=["networking.istio.io"]) as e:
        yield e


@pytest.fixture
def reflect(emu: KubeEmulator) -> Iterator[Callable[..., Reflecting]]:
    running: list[Reflecting] = []

    def start(resource: Resource, url: str | None = None, **kw: Any) -> Reflecting:
        r = Reflecting(url or emu.url, resource, **kw)
        running.append(r)
        return r

    yield start
    for r in running:
        r.close()


def test_list_then_watch_reports_every_change_with_typed_objects(emu: KubeEmulator, reflect) -> None:
    emu.create(pod("a"))
    r = reflect(PODS)
    until(lambda: r.st.synced, "the first list")
    first = r.changes[0]
    assert first.type == LISTED and [(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in first.objects] \
        == [("v1", "Pod", "a")], "list items of core kinds get their type fields back"
    emu.create(pod("b"))
    emu.update(pod("a", "10.244.1.9"))
    emu.delete("v1", "Pod", "b", "demo")
    until(lambda: len(r.changes) == 4, "three events")
    assert [(c.type, c.objects[0]["metadata"]["name"]) for c in r.changes[1:]] == [
        (ADDED, "b"), (MODIFIED, "a"), (DELETED, "b")]
    assert r.names() == {"a"} and r.rf.objects()[0]["status"]["podIP"] == "10.244.1.9"
    assert (r.st.lists, r.st.relists, r.st.events, r.st.reconnects) == (1, 0, 3, 0)


def test_objects_is_a_copy(emu: KubeEmulator, reflect) -> None:
    emu.create(pod("a"))
    r = reflect(PODS)
    until(lambda: r.st.synced, "the first list")
    r.rf.objects()[0]["metadata"]["name"] = "changed by a consumer"
    assert r.names() == {"a"}


def test_selectors_go_to_the_server_and_are_applied_again_to_what_comes_back(emu: KubeEmulator, reflect) -> None:
    mine = Resource("", ("v1",), "pods", "Pod", True, field_selector="spec.nodeName=node-1",
                    label_selector="app in (web,api),!legacy")
    emu.create(pod("web", app="web"))
    emu.create(pod("elsewhere", node="node-2", app="web"))    # the emulator ignores selectors, like a
    emu.create(pod("db", app="db"))                            # proxy that drops them would
    emu.create(pod("old", app="web", legacy="yes"))
    r = reflect(mine)
    until(lambda: r.st.synced, "the first list")
    assert r.names() == {"web"}
    emu.create(pod("api", app="api"))
    until(lambda: r.names() == {"web", "api"}, "a matching pod added")
    emu.update(pod("web", app="web", legacy="yes"))           # stops matching: it leaves the cache
    until(lambda: r.names() == {"api"}, "the pod that stopped matching to go")
    assert r.changes[-1].type == DELETED and r.changes[-1].objects[0]["metadata"]["name"] == "web"
    n = len(r.changes)
    emu.update(pod("db", "10.244.1.7", app="db"))             # never matched: no change to report
    emu.create(pod("marker", app="api"))
    until(lambda: "marker" in r.names(), "a later event")
    assert [c.objects[0]["metadata"]["name"] for c in r.changes[n:]] == ["marker"]
    for q in emu.list_requests("pods") + emu.watch_requests("pods"):
        assert (q["fieldSelector"], q["labelSelector"]) == ("spec.nodeName=node-1", "app in (web,api),!legacy")


def test_custom_objects_use_the_first_served_version_and_paging(emu: KubeEmulator, reflect) -> None:
    emu.install_group("networking.ambit.io")                  # served at v1 and v1beta1, not v1beta2
    for i in range(5):
        emu.create(vs(f"vs{i}", group="networking.ambit.io"))
    r = reflect(VS_AMBIT, page_size=2)
    until(lambda: r.st.synced, "the first list")
    assert r.st.version == "v1" and not r.st.missing
    assert r.names() == {f"vs{i}" for i in range(5)}
    assert {o["apiVersion"] for o in r.rf.objects()} == {"networking.ambit.io/v1"}
    paths = [(p, q.get("continue", "") != "") for m, p, q in emu.requests if p.endswith("/virtualservices")
             and not q.get("watch")]
    assert paths == [("/apis/networking.ambit.io/v1beta2/virtualservices", False),    # 404: not served
                     ("/apis/networking.ambit.io/v1/virtualservices", False),         # three pages of two
                     ("/apis/networking.ambit.io/v1/virtualservices", True),
                     ("/apis/networking.ambit.io/v1/virtualservices", True)]
    # The watch follows the last page (synced is set in between): wait for it, then check its version.
    watches = until(lambda: {p for m, p, q in emu.requests if q.get("watch")}, "the watch after the list")
    assert watches == {"/apis/networking.ambit.io/v1/virtualservices"}
    emu.create(vs("late", group="networking.ambit.io"))
    until(lambda: "late" in r.names(), "a watched custom object")


def test_gone_relists_and_forgets_objects_deleted_in_the_gap(emu: KubeEmulator, reflect) -> None:
    emu.create(pod("a"))
    emu.create(pod("keep"))
    r = reflect(PODS)
    until(lambda: r.st.synced, "the first list")
    with emu.hold_watches():
        emu.drop_watches()
        until(lambda: emu.open_watches() == 0, "the watch to drop")
        emu.delete("v1", "Pod", "a", "demo")                  # its DELETED event is compacted away
        emu.create(pod("c"))
        emu.compact()
    until(lambda: r.names() == {"keep", "c"}, "the relist after 410 Gone")
    assert (r.st.relists, r.st.lists) == (1, 2)
    relist = [c for c in r.changes if c.type == LISTED][-1]
    assert {o["metadata"]["name"] for o in relist.objects} == {"keep", "c"}
    emu.create(pod("d"))
    until(lambda: "d" in r.names(), "an event after the relist")


def test_dropped_connection_resumes_from_the_last_resource_version(emu: KubeEmulator, reflect) -> None:
    emu.create(pod("a"))
    r = reflect(PODS)
    emu.create(pod("b"))
    until(lambda: "b" in r.names(), "pod b")
    rv_before, events_before = r.st.resource_version, r.st.events
    with emu.hold_watches():
        emu.drop_watches()
        until(lambda: emu.open_watches() == 0, "the watch to drop")
        emu.create(pod("c"))
        emu.update(pod("a", "10.244.1.7"))
        emu.delete("v1", "Pod", "b", "demo")
    until(lambda: r.names() == {"a", "c"}, "the events made while disconnected")
    assert (r.st.lists, r.st.relists) == (1, 0), "a reconnect must not relist"
    assert r.st.events == events_before + 3, "each missed event applied exactly once"
    assert emu.watch_requests("pods")[-1]["resourceVersion"] == rv_before
    assert r.st.reconnects >= 1 and r.st.last_error


def test_bookmarks_let_a_rewatch_skip_compacted_history(emu: KubeEmulator, reflect) -> None:
    emu.create(pod("a"))
    r = reflect(PODS)
    until(lambda: r.st.watches, "the watch")
    for i in range(3):                                        # other collections move the resourceVersion
        emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns{i}"}})
    current = str(emu.resource_version)
    assert r.st.resource_version != current
    n = len(r.changes)
    emu.bookmark()
    until(lambda: r.st.resource_version == current, "the bookmark's resourceVersion")
    assert r.st.bookmarks >= 1 and len(r.changes) == n, "a bookmark is not a change"
    with emu.hold_watches():
        emu.drop_watches()
        until(lambda: emu.open_watches() == 0, "the watch to drop")
        emu.compact()
    emu.create(pod("b"))
    until(lambda: "b" in r.names(), "an event after the re-watch")
    assert emu.watch_requests("pods")[-1]["resourceVersion"] == current
    assert r.st.relists == 0, "thanks to the bookmark: no 410, no relist"


def test_a_collection_not_served_is_synced_empty_and_picked_up_once_installed(emu: KubeEmulator, reflect) -> None:
    ambit = Resource("networking.ambit.io", ("v1",), "virtualservices", "VirtualService", True)
    r = reflect(ambit, missing_retry=0.1)
    until(lambda: r.st.synced, "the missing collection to count as synced")
    assert r.st.missing and r.names() == set() and r.changes[0] == Change(LISTED, ())
    emu.install_group("networking.ambit.io")
    emu.create(vs("ratings", group="networking.ambit.io"))
    until(lambda: r.names() == {"ratings"}, "the newly installed group")
    assert not r.st.missing and r.st.reconnects == 0


def test_a_collection_not_served_is_an_error_without_missing_retry(emu: KubeEmulator, reflect) -> None:
    ambit = Resource("networking.ambit.io", ("v1",), "virtualservices", "VirtualService", True)
    r = reflect(ambit)
    until(lambda: r.st.reconnects >= 2, "retries")
    assert not r.st.synced and not r.st.missing and r.changes == []
    assert r.st.last_error == "virtualservices.networking.ambit.io is not served (404)"


def test_a_server_that_is_down_is_retried(emu: KubeEmulator, reflect) -> None:
    r = reflect(VS, url="http://127.0.0.1:9")                 # the discard port: nothing listens
    until(lambda: r.st.reconnects >= 2, "retries")
    assert not r.st.synced and "Error" in r.st.last_error


def test_a_resource_version_ahead_of_the_server_relists(emu: KubeEmulator, reflect) -> None:
    """After an etcd restore the server's resourceVersion goes back; a watch from ours gets "Too
    large resource version". Watching on from it waited for ever and missed every write made since
    (a new DENY policy never applied, restored-away objects kept): it must relist."""
    emu.create(pod("a"))
    backup = emu.resource_version
    emu.create(pod("lost"))                                   # written after the backup was taken
    r = reflect(PODS)
    until(lambda: r.names() == {"a", "lost"}, "the first list")
    with emu.hold_watches():
        emu.drop_watches()
        until(lambda: emu.open_watches() == 0, "the watch to drop")
        emu._objects[("", "pods")].pop(("demo", "lost"))     # the backup does not hold it
        emu.restore(backup)
    until(lambda: r.names() == {"a"}, "the relist after the restore")
    assert r.st.relists == 1
    emu.create(pod("new"))
    until(lambda: r.names() == {"a", "new"}, "the write made after the restore")


def test_a_collection_that_was_listed_keeps_its_objects_on_a_404(emu: KubeEmulator, reflect) -> None:
    """An API server that is starting answers 404 for custom resources it has not loaded yet. Taking
    that for "not installed" emptied the collection: every AuthorizationPolicy of the group gone
    from the config (fail open) while the 404s lasted. A CRD that really goes deletes its objects
    (watch events) first, so a collection once listed keeps what it holds until it is listed again."""
    emu.create(vs("ratings"))
    r = reflect(VS, missing_retry=0.05)
    until(lambda: r.names() == {"ratings"}, "the first list")
    n = len(r.changes)
    fault = emu.inject(Fault(path="/apis/networking.istio.io", status=404, times=6))
    emu.drop_watches()
    emu.compact()
    until(lambda: fault.hits >= 6, "the 404s")
    emu.clear_faults()
    emu.create(vs("reviews"))
    until(lambda: r.names() == {"ratings", "reviews"}, "the collection listed again")
    assert all(c.objects for c in r.changes[n:] if c.type == LISTED), "the collection was never emptied"
    assert not r.st.missing


def test_a_watch_that_ends_at_once_waits_the_backoff(emu: KubeEmulator, reflect) -> None:
    """A server (or a proxy before it) that ends every watch at once with nothing in it was watched
    again at once, for ever: a request loop as fast as the server answers."""
    fault = emu.inject(Fault(path="/pods", watch=True, watch_end=True))
    r = reflect(PODS, backoff=(60.0, 60.0))
    until(lambda: r.st.last_error == "the watch ended at once with no event", "the empty watch to count as a failure")
    time.sleep(0.3)
    assert fault.hits == 1, "no second watch before the backoff"


def test_a_relist_whose_watch_expires_at_once_waits_the_backoff(emu: KubeEmulator, reflect) -> None:
    """410 Gone right after a relist, again and again, was a list-watch loop with no pause: every
    round lists the whole collection from the API server."""
    fault = emu.inject(Fault(path="/pods", watch=True, status=410))
    r = reflect(PODS, backoff=(60.0, 60.0))
    until(lambda: r.st.relists >= 1, "the first 410")
    time.sleep(0.3)
    assert (fault.hits, len(emu.list_requests("pods"))) == (1, 1), "no relist before the backoff"



def test_a_list_whose_continue_token_expires_on_every_page_waits_the_backoff(emu: KubeEmulator, reflect) -> None:
    """A continue token refused as expired (410) on every page, by a server that compacts faster
    than a page is fetched, restarted the list at once, for ever: a loop of first pages as fast as
    the server answers, with nothing in `ambit status` saying why the kind never synced."""
    for name in ("a", "b", "c"):
        emu.create(pod(name))
    fault = emu.inject(Fault(path="/pods", watch=False, continued=True, status=410))
    r = reflect(PODS, page_size=1, backoff=(60.0, 60.0))
    until(lambda: "continue token" in r.st.last_error, "the expired page to count as a failure")
    assert "expired" in r.st.last_error and r.st.failures == 1
    time.sleep(0.3)
    assert (fault.hits, len(emu.list_requests("pods"))) == (1, 2), "no new list before the backoff"
    assert not r.st.synced


# -- selectors and resources (pure) -------------------------------------------------------------------

def test_field_selector_matching() -> None:
    p = pod("a", node="n1")
    assert field_selector_matches(p, "spec.nodeName=n1,metadata.name==a")
    assert not field_selector_matches(p, "spec.nodeName!=n1")
    assert field_selector_matches(p, "spec.missing=")            # absent reads as ""
    assert field_selector_matches(p, "")


@pytest.mark.parametrize(("selector", "want"), [
    ("app=web", True), ("app==web", True), ("app!=web", False), ("app!=db", True), ("team!=x", True),
    ("app in (db, web)", True), ("app notin (db,web)", False), ("team notin (x)", True), ("team in (x)", False),
    ("app", True), ("!app", False), ("!team", True), ("app=web,tier in (front,back),!team", True),
    ("app=web,tier=db", False),
])
def test_label_selector_matching(selector: str, want: bool) -> None:
    assert label_selector_matches({"app": "web", "tier": "front"}, selector) is want


def test_a_bad_selector_or_resource_names_the_resource_and_the_field() -> None:
    with pytest.raises(ValueError, match=r"resource pods: field_selector: 'spec.nodeName' is not"):
        Resource("", ("v1",), "pods", "Pod", True, field_selector="spec.nodeName")
    with pytest.raises(ValueError, match=r"resource pods: label_selector: 'app in web' is not"):
        Resource("", ("v1",), "pods", "Pod", True, label_selector="app in web")
    with pytest.raises(ValueError, match=r"resource virtualservices.networking.istio.io: versions:"):
        Resource("networking.istio.io", (), "virtualservices", "VirtualService", True)


def test_a_kind_the_typed_api_lacks_is_refused_up_front() -> None:
    client = make_api_client("http://127.0.0.1:9")
    try:
        with pytest.raises(ValueError, match=r"resource widgets: kind Widget: CoreV1Api has no list_widget_for_all"):
            Reflector(client, Resource("", ("v1",), "widgets", "Widget", True))
    finally:
        client.close()


def test_a_failure_on_one_object_does_not_end_the_watch(emu: KubeEmulator) -> None:
    """Anything unexpected on one object (here a consumer that fails on it, as an object nested
    too deeply for json does) ended the reflector's thread: the collection was never watched again.
    It relists instead, and is whole again once the object is gone."""
    seen: list[Change] = []

    def consumer(change: Change) -> None:
        if any(o["metadata"]["name"] == "deep" for o in change.objects) and change.type != DELETED:
            raise RecursionError("maximum recursion depth exceeded")
        seen.append(change)

    emu.create(pod("a"))
    emu.create(pod("deep"))
    client = make_api_client(emu.url)
    rf = Reflector(client, PODS, consumer, backoff=(0.05, 0.3))
    stop = threading.Event()
    thread = threading.Thread(target=rf.run, args=(stop,), daemon=True)
    thread.start()
    try:
        until(lambda: rf.state.reconnects >= 1, "the failure to be retried")
        assert thread.is_alive()
        assert "RecursionError" in rf.state.last_error
        emu.delete("v1", "Pod", "deep", "demo")
        emu.create(pod("b"))
        until(lambda: any(c.type in (LISTED, ADDED) and "b" in {o["metadata"]["name"] for o in c.objects}
                          for c in seen), "the collection watched again")
        assert {o["metadata"]["name"] for o in rf.objects()} == {"a", "b"}
    finally:
        stop.set()
        rf.abort()
        thread.join(timeout=10)
        client.close()



def test_a_reflector_stopped_while_opening_its_watch_leaves_the_client_usable(emu: KubeEmulator, reflect) -> None:
    """Stopped (and aborted) while its watch request waits for the server's answer, the reflector
    returns as the answer comes, and gave the watch's connection back to the client's pool. The
    server still streams on it and reads no request there, so the next request sharing the client
    (another reflector's list, a status PATCH, the CRD check) waited for its read timeout: each of
    KubeSource's threads so stuck made its stop, and the controller's SIGTERM, wait 5 s more."""
    with emu.hold_watches():
        r = reflect(PODS)
        until(lambda: r.st.synced and emu.watch_requests("pods"), "the watch request")
        r.stop.set()
        r.rf.abort()                # no response yet: nothing to abort
    r.thread.join(timeout=10)
    assert not r.thread.is_alive()
    pool = r.client.rest_client.pool_manager      # what every request of the shared client uses
    resp = pool.request("GET", f"{emu.url}/api/v1/namespaces/demo/pods", retries=False,
                        timeout=urllib3.Timeout(connect=5, read=5))   # on the watch's connection: ReadTimeoutError
    assert resp.status == 200 and json.loads(resp.data)["items"] == []


def _page_body(items: list[dict[str, Any]], cont: str = "", rv: str = "5") -> bytes:
    return json.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv, "continue": cont},
                       "items": items}).encode()


def test_a_list_whose_continue_token_repeats_fails_instead_of_paging_for_ever(emu: KubeEmulator, reflect) -> None:
    """A server (or something posing as one) that answers every page with the same continue token
    held the reflector's thread in a loop of pages, its items growing without end. The repeat is a
    failure of that list, retried after the backoff; the cache keeps what it had."""
    fault = emu.inject(Fault(path="/pods", watch=False, body=_page_body([pod("a")], cont="again")))
    r = reflect(PODS)
    until(lambda: r.st.reconnects >= 2, "the looping list to be retried")
    assert "continue token repeats" in r.st.last_error and not r.st.synced and r.st.objects == {}
    assert fault.hits >= 4 and fault.hits <= 2 * (r.st.reconnects + 1), "each list stops at the repeat"
    emu.clear_faults()
    emu.create(pod("b"))
    until(lambda: r.st.synced and r.names() == {"b"}, "the list once the server pages properly")


@pytest.mark.parametrize("obj, why", [
    ({"metadata": {"namespace": "demo"}}, "metadata.name is missing"),
    ({"metadata": {"name": 5, "namespace": "demo"}}, "metadata.name is missing or no string"),
    ({"metadata": {"name": "x", "namespace": ["demo"]}}, "namespace or resourceVersion is no string"),
    ({"metadata": {"name": "x", "namespace": "demo", "resourceVersion": [9]}}, "resourceVersion is no string"),
    ({"metadata": [1]}, "metadata is missing or no object"),
    ({"metadata": {"name": "x", "labels": {"app": 1}}}, "metadata.labels is no object of strings"),
])
def test_a_watch_event_that_is_no_whole_object_changes_nothing(emu: KubeEmulator, reflect, obj, why) -> None:
    """A nameless object was kept under `demo/` (and the next nameless one replaced it), a name
    that is a number under `demo/5`, a resourceVersion that is a list was sent on the next watch.
    The event is refused naming the field, the cache and the resourceVersion stay, and the watch is
    opened again from that resourceVersion."""
    emu.create(pod("a"))
    r = reflect(PODS)
    until(lambda: r.st.synced and r.st.watches >= 1, "the first watch")
    rv = r.st.resource_version
    line = json.dumps({"type": "ADDED", "object": {"apiVersion": "v1", "kind": "Pod", **obj}}).encode() + b"\n"
    emu.inject(Fault(path="/pods", watch=True, body=line, times=1))
    emu.drop_watches()
    until(lambda: why in r.st.last_error, "the event refused")
    assert set(r.st.objects) == {"demo/a"} and r.st.resource_version == rv
    assert all(c.type == LISTED for c in r.changes)
    emu.create(pod("b"))
    until(lambda: r.names() == {"a", "b"}, "the watch going on from the same resourceVersion")


def test_odd_error_and_projected_bodies_are_refused_as_watch_errors() -> None:
    """An ERROR event whose `details` is no object raised AttributeError (a relist with a stack
    trace in the log); a projected ConfigMap whose `data` is a string raised TypeError, or (in
    binaryData) was read as its characters, kept as key names."""
    from ambit.kube.reflector import _Gone
    cms = Resource("", ("v1",), "configmaps", "ConfigMap", True, data_keys=("ca.crt",))
    client = make_api_client("http://127.0.0.1:9")
    try:
        rf = Reflector(client, cms)
        with pytest.raises(ValueError, match="watch error"):
            rf._line(json.dumps({"type": "ERROR", "object": {"code": 504, "details": True}}))
        with pytest.raises(_Gone):
            rf._line(json.dumps({"type": "ERROR", "object": {"code": 504, "details": {
                "causes": [{"reason": "ResourceVersionTooLarge"}]}}}))
        for field in ("data", "binaryData"):
            cm = {"metadata": {"name": "c", "namespace": "demo"}, field: "ca.crt xyz"}
            with pytest.raises(ValueError, match="data or binaryData is no object"):
                rf._line(json.dumps({"type": "ADDED", "object": cm}))
        assert rf.state.objects == {}
    finally:
        client.close()


def test_a_watch_line_that_never_ends_is_given_up_at_the_bound_not_buffered_for_ever(emu: KubeEmulator,
                                                                                    reflect) -> None:
    """A watch whose event never reaches its newline (a broken or hostile server, or a proxy in
    front of it, streaming without end) grew the reflector's line buffer for as long as it
    streamed. Past the bound the watch fails, naming the collection, and is opened again after the
    backoff; the cache keeps what it had, and a server that then streams properly is followed."""
    emu.create(pod("a"))
    fault = emu.inject(Fault(path="/pods", watch=True, endless=b'{"type": "ADDED", "object": ' + b" " * 65536))
    r = reflect(PODS, max_event_bytes=1 << 20)
    until(lambda: r.st.reconnects >= 2, "the endless watch to be given up and retried")
    assert "pods: a watch event longer than 1048576 bytes" in r.st.last_error, r.st.last_error
    assert r.names() == {"a"} and fault.hits >= 2
    emu.clear_faults()
    emu.create(pod("b"))
    until(lambda: r.names() == {"a", "b"}, "the watch once the server streams properly")
