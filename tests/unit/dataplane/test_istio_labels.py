"""Istio's label set, key by key, against the list in Istio's documentation.

The list below is the "Labels" section of "Istio Standard Metrics"
(https://istio.io/latest/docs/reference/config/metrics/, istio/istio.io
content/en/docs/reference/config/metrics/index.md), in the documentation's order, as Prometheus
label names; docs/observability.md quotes the same list. Two of them exist on HTTP metrics only
("Response Code: ... present only on HTTP metrics", "gRPC Response Status: ... present only on gRPC
metrics"), so the TCP set is the list without those two.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane.telemetry.metrics import LABELS, MUTUAL_TLS, ConnLabels, Metrics
from ambit.dataplane.telemetry.peers import canonical_revision, canonical_service, peer, workload_name
from ambit.model import Service, Workload

ISTIO_DOC_LABELS = [
    "reporter",                         # Reporter
    "source_workload",                  # Source Workload
    "source_workload_namespace",        # Source Workload Namespace
    "source_principal",                 # Source Principal
    "source_app",                       # Source App
    "source_version",                   # Source Version
    "destination_workload",             # Destination Workload
    "destination_workload_namespace",   # Destination Workload Namespace
    "destination_principal",            # Destination Principal
    "destination_app",                  # Destination App
    "destination_version",              # Destination Version
    "destination_service",              # Destination Service
    "destination_service_name",         # Destination Service Name
    "destination_service_namespace",    # Destination Service Namespace
    "request_protocol",                 # Request Protocol
    "response_code",                    # Response Code (HTTP only)
    "connection_security_policy",       # Connection Security Policy
    "response_flags",                   # Response Flags
    "source_canonical_service",         # Canonical Service
    "source_canonical_revision",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",              # Destination Cluster
    "source_cluster",                   # Source Cluster
    "grpc_response_status",             # gRPC Response Status (gRPC only)
]
HTTP_ONLY = {"response_code", "grpc_response_status"}

CLIENT_ID = "spiffe://cluster.local/ns/demo/sa/client"
ECHO_ID = "spiffe://cluster.local/ns/demo/sa/echo"


def wl(name: str, labels: dict[str, str], identity: str) -> Workload:
    return Workload(uid=f"demo/{name}", name=name, namespace="demo", ips=["10.0.0.1"], node="node1",
                    service_account=identity.rsplit("/", 1)[1], identity=identity, labels=labels)


def test_the_doc_list_has_no_duplicates_and_25_labels() -> None:
    assert len(ISTIO_DOC_LABELS) == len(set(ISTIO_DOC_LABELS)) == 25


def test_ztunnel_tcp_labels_equal_istios_list_without_the_http_only_ones() -> None:
    assert len(LABELS) == len(set(LABELS))
    assert set(LABELS) == set(ISTIO_DOC_LABELS) - HTTP_ONLY
    m = Metrics()
    m.conn_opened(ConnLabels("source"))
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            if s.name.startswith("istio_tcp_"):
                assert set(s.labels) == set(ISTIO_DOC_LABELS) - HTTP_ONLY, s.name


def test_waypoint_http_labels_equal_istios_list() -> None:
    from waypoint.telemetry.metrics import HTTP_LABELS
    assert len(HTTP_LABELS) == len(set(HTTP_LABELS))
    assert set(HTTP_LABELS) == set(ISTIO_DOC_LABELS)


def test_canonical_service_and_revision_follow_istios_precedence() -> None:
    both = {"service.istio.io/canonical-name": "cn", "app.kubernetes.io/name": "k8s", "app": "a",
            "service.istio.io/canonical-revision": "cr", "app.kubernetes.io/version": "kv", "version": "v"}
    w = wl("p", both, ECHO_ID)
    assert (canonical_service(w), canonical_revision(w)) == ("cn", "cr")
    w.labels = {k: v for k, v in both.items() if not k.startswith("service.istio.io/")}
    assert (canonical_service(w), canonical_revision(w)) == ("k8s", "kv")
    w.labels = {"app": "a", "version": "v"}
    assert (canonical_service(w), canonical_revision(w)) == ("a", "v")
    w = wl("echo-v1-7d9c8b5f4-x2x8q", {"pod-template-hash": "7d9c8b5f4"}, ECHO_ID)
    assert (workload_name(w), canonical_service(w), canonical_revision(w)) == ("echo-v1", "echo-v1", "latest")
    assert peer(w).app == "" and peer(w).version == ""


def test_ztunnel_fills_every_label_from_the_workloads_and_the_service() -> None:
    client = wl("client", {"app": "client"}, CLIENT_ID)
    echo = wl("echo-v2-5b7f9c-abcde", {"app": "echo", "version": "v2", "pod-template-hash": "5b7f9c"}, ECHO_ID)
    svc = Service(name="echo", namespace="demo", hostname="echo.demo.svc.cluster.local")
    labels = ConnLabels("destination", connection_security_policy=MUTUAL_TLS) \
        .source_from(client, CLIENT_ID).destination_from(echo, ECHO_ID).service_from(svc)
    assert labels.values() == {
        "reporter": "destination",
        "source_workload": "client", "source_workload_namespace": "demo", "source_principal": CLIENT_ID,
        "source_app": "client", "source_version": "unknown", "source_canonical_service": "client",
        "source_canonical_revision": "latest", "source_cluster": "Kubernetes",
        "destination_workload": "echo-v2", "destination_workload_namespace": "demo",
        "destination_principal": ECHO_ID, "destination_app": "echo", "destination_version": "v2",
        "destination_service": "echo.demo.svc.cluster.local", "destination_service_name": "echo",
        "destination_service_namespace": "demo", "destination_canonical_service": "echo",
        "destination_canonical_revision": "v2", "destination_cluster": "Kubernetes",
        "request_protocol": "tcp", "response_flags": "-", "connection_security_policy": "mutual_tls",
    }
    # the waypoint derives the same values for the same pods (one shared derivation)
    from waypoint.telemetry import peers as wp_peers
    assert wp_peers.peer is peer


def test_peer_labels_do_not_keep_the_workloads_of_gone_pods() -> None:
    """A node whose pods churn: every pod's Workload is labelled for its connections and then
    replaced or deleted by the config stream. The label cache must not keep it alive: before, it
    held each Workload object (with its labels and annotations) until 4,096 had been seen, about
    +4 KB of ztunnel's memory per churned pod (docs/operations.md, "Memory over time")."""
    import gc
    import weakref

    from ambit.dataplane.telemetry import peers
    live = wl("echo-v1-7d9c8b5f4-x2x8q", {"app": "echo", "version": "v1"}, ECHO_ID)
    first = peers.peer_labels(live)
    assert peers.peer_labels(live) is first         # a live workload still hits
    before = len(peers._cache)
    gone = []
    for i in range(300):
        w = wl(f"churn-{i}", {"app": f"churn{i}", "version": f"v{i}", "x": "y" * 100}, ECHO_ID)
        assert peers.peer_labels(w)[0] == f"churn-{i}"
        gone.append(weakref.ref(w))
        del w
    gc.collect()
    assert [r for r in gone if r() is not None] == [], "gone pods' Workloads are still held"
    assert len(peers._cache) <= before, f"{len(peers._cache) - before} entries of gone Workloads kept"
    assert peers.peer_labels(live) is first         # and its entry stayed


def test_peer_labels_are_cached_per_workload_object_and_follow_a_replaced_one() -> None:
    from ambit.dataplane.telemetry.peers import peer_labels
    a = wl("echo-v1-7d9c8b5f4-x2x8q", {"app": "echo", "version": "v1", "pod-template-hash": "7d9c8b5f4"}, ECHO_ID)
    assert peer_labels(a) == ("echo-v1", "demo", "echo", "v1", "echo", "v1")
    assert peer_labels(a) is peer_labels(a)
    b = wl("echo-v1-7d9c8b5f4-x2x8q", {"app": "echo", "version": "v2", "pod-template-hash": "7d9c8b5f4",
                                       "service.istio.io/canonical-name": "echo-canonical"}, ECHO_ID)
    assert peer_labels(b) == ("echo-v1", "demo", "echo", "v2", "echo-canonical", "v2")
    p = peer(b)
    assert (p.workload, p.namespace, p.app, p.version, p.canonical_service, p.canonical_revision) == peer_labels(b)
