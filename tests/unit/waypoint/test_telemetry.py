"""The waypoint's Istio HTTP metrics and access-log lines, read back with Prometheus's text parser."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ambit.model import Workload
from ambit.telemetry import SERVER
from ambit.telemetrymetrics import resolve
from waypoint.http.record import RequestRecord
from waypoint.request import Downstream
from waypoint.telemetry import (
    DURATION_BUCKETS,
    HTTP_LABELS,
    HttpMetrics,
    RequestLog,
    canonical_revision,
    canonical_service,
    workload_name,
)

CLIENT_ID = "spiffe://cluster.local/ns/demo/sa/client"
ECHO_ID = "spiffe://cluster.local/ns/demo/sa/echo"


def wl(name: str, labels: dict[str, str], identity: str = ECHO_ID, ns: str = "demo") -> Workload:
    return Workload(uid=f"{ns}/{name}", name=name, namespace=ns, ips=["10.0.0.1"], node="node1",
                    service_account=identity.rsplit("/", 1)[1], identity=identity, labels=labels)


CLIENT = wl("client", {"app": "client"}, CLIENT_ID)
ECHO_V2 = wl("echo-v2-5b7f9c-abcde", {"app": "echo", "version": "v2", "pod-template-hash": "5b7f9c"})


def record(**kw: object) -> RequestRecord:
    down = Downstream(source_identity=CLIENT_ID, source_ip="10.210.1.12", destination_ip="10.96.0.10",
                      destination_port=8080, service="demo/echo", hostname="echo.demo.svc.cluster.local")
    base: dict[str, object] = dict(method="GET", path="/", authority="echo.demo.svc.cluster.local:8080",
                                   protocol="HTTP/1.1", downstream=down, status=200, bytes_received=3,
                                   bytes_sent=700, duration_ms=7.5, service="demo/echo", route="VirtualService/demo/echo#0",
                                   upstream="10.210.2.11:8080")
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


def families(m: HttpMetrics) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(m.exposition().decode())}


def test_names_labels_and_values_follow_istio() -> None:
    m = HttpMetrics()
    m.observe(record(), CLIENT, ECHO_V2)
    m.observe(record(duration_ms=40.0, bytes_sent=20000), CLIENT, ECHO_V2)
    fams = families(m)
    # prometheus_client names the counter family without `_total`; the sample is istio_requests_total.
    assert {"istio_requests", "istio_request_duration_milliseconds", "istio_request_bytes",
            "istio_response_bytes"} <= set(fams)
    (total,) = [s for s in fams["istio_requests"] if s.name == "istio_requests_total"]
    assert total.value == 2
    assert set(total.labels) == set(HTTP_LABELS) and len(HTTP_LABELS) == 25
    assert total.labels == {
        "reporter": "waypoint",
        "source_workload": "client", "source_workload_namespace": "demo", "source_principal": CLIENT_ID,
        "source_app": "client", "source_version": "unknown", "source_canonical_service": "client",
        "source_canonical_revision": "latest", "source_cluster": "Kubernetes",
        "destination_workload": "echo-v2", "destination_workload_namespace": "demo",
        "destination_principal": ECHO_ID, "destination_app": "echo", "destination_version": "v2",
        "destination_service": "echo.demo.svc.cluster.local", "destination_service_name": "echo",
        "destination_service_namespace": "demo", "destination_canonical_service": "echo",
        "destination_canonical_revision": "v2", "destination_cluster": "Kubernetes",
        "request_protocol": "http", "response_code": "200", "grpc_response_status": "",
        "response_flags": "-", "connection_security_policy": "mutual_tls",
    }


def test_histograms_use_envoys_default_buckets_and_sum_the_observations() -> None:
    m = HttpMetrics()
    m.observe(record(duration_ms=7.5, bytes_received=3, bytes_sent=700), CLIENT, ECHO_V2)
    m.observe(record(duration_ms=40.0, bytes_received=0, bytes_sent=20000), CLIENT, ECHO_V2)
    fams = families(m)
    for fam in ("istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"):
        les = [s.labels["le"] for s in fams[fam] if s.name == fam + "_bucket"]
        assert [float(x) for x in les[:-1]] == [float(b) for b in DURATION_BUCKETS] and les[-1] == "+Inf"
    dur = {s.labels["le"]: s.value for s in fams["istio_request_duration_milliseconds"]
           if s.name.endswith("_bucket")}
    assert dur["5.0"] == 0 and dur["10.0"] == 1 and dur["50.0"] == 2 and dur["+Inf"] == 2
    sums = {s.name: s.value for f in fams.values() for s in f if s.name.endswith(("_sum", "_count"))}
    assert sums["istio_request_duration_milliseconds_sum"] == pytest.approx(47.5)
    assert sums["istio_request_bytes_sum"] == 3 and sums["istio_response_bytes_sum"] == 20700
    assert sums["istio_response_bytes_count"] == 2
    resp = {s.labels["le"]: s.value for s in fams["istio_response_bytes"] if s.name.endswith("_bucket")}
    assert resp["1000.0"] == 1 and resp["10000.0"] == 1 and resp["30000.0"] == 2


def test_grpc_local_replies_and_unknown_peers() -> None:
    m = HttpMetrics(cluster="lab")
    m.observe(record(grpc=True, protocol="HTTP/2", grpc_status="7"), CLIENT, ECHO_V2)
    # no route: a local 404 NR with no destination workload; no source workload known either
    m.observe(record(status=404, response_flags="NR", service="", upstream="",
                     downstream=Downstream(source_identity=CLIENT_ID), authority="nowhere.demo:8080"), None, None)
    total = {(s.labels["response_code"], s.labels["request_protocol"]): s.labels
             for s in families(m)["istio_requests"] if s.name == "istio_requests_total"}
    g = total[("200", "grpc")]
    assert g["grpc_response_status"] == "7" and g["source_cluster"] == "lab" and g["destination_cluster"] == "lab"
    nr = total[("404", "http")]
    assert nr["response_flags"] == "NR" and nr["destination_service"] == "unknown"
    assert nr["destination_service_name"] == "unknown" and nr["destination_workload"] == "unknown"
    assert nr["source_workload"] == "unknown" and nr["source_principal"] == CLIENT_ID
    assert nr["destination_cluster"] == "unknown" and nr["destination_canonical_revision"] == "unknown"


def test_grpc_message_counters_have_istios_labels_and_only_grpc_requests_count() -> None:
    m = HttpMetrics(cluster="lab")
    m.observe(record(grpc=True, protocol="HTTP/2", grpc_status="0", request_messages=3, response_messages=5),
              CLIENT, ECHO_V2)
    m.observe(record(grpc=True, protocol="HTTP/2", grpc_status="0", request_messages=1, response_messages=1),
              CLIENT, ECHO_V2)
    m.observe(record(), CLIENT, ECHO_V2)        # plain HTTP: no message series
    fams = families(m)
    for fam, want in (("istio_request_messages", 4.0), ("istio_response_messages", 6.0)):
        [s] = [s for s in fams[fam] if s.name == f"{fam}_total"]
        assert set(s.labels) == set(HTTP_LABELS) and s.value == want
        assert (s.labels["request_protocol"], s.labels["grpc_response_status"], s.labels["reporter"]) == \
            ("grpc", "0", "waypoint")


def test_plaintext_downstream_and_response_code_zero() -> None:
    m = HttpMetrics()
    m.observe(record(status=0, response_flags="DC", downstream=Downstream(source_ip="10.0.0.9")), None, ECHO_V2)
    (s,) = [s for s in families(m)["istio_requests"] if s.name == "istio_requests_total"]
    assert s.labels["connection_security_policy"] == "none" and s.labels["response_code"] == "0"
    assert s.labels["response_flags"] == "DC" and s.labels["source_principal"] == "unknown"
    # the service FQDN comes from the routed service when the downstream named none
    assert s.labels["destination_service"] == "echo.demo.svc.cluster.local"


def test_label_children_stay_bounded_and_keep_counting_after_eviction() -> None:
    m = HttpMetrics(cache_size=2)
    codes = (200, 503, 404, 200)            # 404 evicts 200; 200 comes back through a fresh lookup
    for c in codes:
        m.observe(record(status=c), CLIENT, ECHO_V2)
    assert len(m._children) == 2
    counts = {s.labels["response_code"]: s.value for s in families(m)["istio_requests"]
              if s.name == "istio_requests_total"}
    assert counts == {"200": 2, "503": 1, "404": 1}


@pytest.mark.parametrize("labels,svc,rev", [
    ({"service.istio.io/canonical-name": "c", "app.kubernetes.io/name": "k", "app": "a",
      "service.istio.io/canonical-revision": "r1", "app.kubernetes.io/version": "k1", "version": "v1"}, "c", "r1"),
    ({"app.kubernetes.io/name": "k", "app": "a", "app.kubernetes.io/version": "k1", "version": "v1"}, "k", "k1"),
    ({"app": "a", "version": "v1"}, "a", "v1"),
    ({}, "web", "latest"),
])
def test_canonical_service_and_revision_precedence(labels: dict[str, str], svc: str, rev: str) -> None:
    w = wl("web", labels)
    assert canonical_service(w) == svc and canonical_revision(w) == rev


def test_workload_name_strips_a_replicaset_hash_only_when_labelled() -> None:
    assert workload_name(wl("reviews-v1-7d9c8b5f4-x2x8q", {"pod-template-hash": "7d9c8b5f4"})) == "reviews-v1"
    assert workload_name(wl("echo-v1", {})) == "echo-v1"
    assert workload_name(wl("a-b-c", {"pod-template-hash": "zzz"})) == "a-b-c"


def test_one_access_log_line_per_request_through_the_sink() -> None:
    lines: list[str] = []
    log = RequestLog(lines.append)
    log.emit(record(request_id="abc-123", user_agent="curl/8.1"), CLIENT, ECHO_V2)
    log.emit(record(status=404, response_flags="NR", service="", upstream=""), CLIENT, None)
    assert len(lines) == 2
    d = json.loads(lines[0])
    assert d["request_id"] == "abc-123" and d["user_agent"] == "curl/8.1" and d["response_code"] == 200
    assert d["upstream_host"] == "10.210.2.11:8080" and d["route_name"] == "VirtualService/demo/echo#0"
    assert d["authority"] == "echo.demo.svc.cluster.local:8080" and d["response_flags"] == "-"
    assert d["source_workload"] == "client" and d["destination_workload"] == "echo-v2"
    assert d["upstream_peer"] == ECHO_ID and d["downstream_peer_principal"] == CLIENT_ID
    e = json.loads(lines[1])
    assert e["response_flags"] == "NR" and "upstream_host" not in e and "destination_workload" not in e


def test_the_engine_hook_resolves_both_peers_by_ip_and_feeds_metrics_and_log() -> None:
    from waypoint.telemetry import Telemetry, address_ip
    by_ip = {"10.210.1.12": CLIENT, "10.210.2.11": ECHO_V2}
    lines: list[str] = []
    m = HttpMetrics()
    t = Telemetry(m, RequestLog(lines.append), by_ip.get)
    rec = record()
    t.access_log(rec)
    t.stats(rec)
    (s,) = [s for s in families(m)["istio_requests"] if s.name == "istio_requests_total"]
    assert s.labels["source_workload"] == "client" and s.labels["destination_version"] == "v2"
    assert json.loads(lines[0])["destination_workload"] == "echo-v2"
    assert address_ip("[fd00::1]:15008") == "fd00::1" and address_ip("10.0.0.1:80") == "10.0.0.1"
    assert address_ip("") == "" and address_ip("10.0.0.1") == "10.0.0.1"
    Telemetry(None, None, by_ip.get).stats(rec)     # telemetry off: nothing to do, nothing raised


def test_a_records_workloads_are_looked_up_once_but_follow_its_upstream() -> None:
    from waypoint.telemetry import Telemetry
    by_ip = {"10.210.1.12": CLIENT, "10.210.2.11": ECHO_V2, "10.210.2.12": CLIENT}
    asked: list[str] = []

    def lookup(ip: str) -> Workload | None:
        asked.append(ip)
        return by_ip.get(ip)
    t = Telemetry(HttpMetrics(), RequestLog(lambda _line: None), lookup)
    rec = record()
    t.access_log(rec)
    t.stats(rec)
    assert t.peers(rec) == (CLIENT, ECHO_V2)
    assert asked == ["10.210.1.12", "10.210.2.11"]           # log, metrics and tap share one lookup
    rec.upstream = "10.210.2.12:8080"                        # e.g. an opaque tunnel's upstream chosen late
    assert t.peers(rec) == (CLIENT, CLIENT)
    other = record()                                         # an equal but different record: its own lookup
    t.peers(other)
    assert len(asked) == 6


def test_a_records_telemetry_config_is_resolved_once_for_log_and_metrics_and_follows_updates() -> None:
    from ambit.telemetryconfig import AccessLogConfig, TelemetryConfig
    from ambit.telemetrymetrics import MetricsConfig
    from waypoint.telemetry import Telemetry
    asked: list[str] = []
    current = [TelemetryConfig()]

    def telemetry_for(service: str) -> TelemetryConfig:
        asked.append(service)
        return current[0]
    lines: list[str] = []
    m = HttpMetrics()
    t = Telemetry(m, RequestLog(lines.append), {}.get, telemetry_for=telemetry_for)
    rec = record()
    t.access_log(rec)
    t.stats(rec)
    assert asked == ["demo/echo"] and len(lines) == 1
    # an update (a new View) applies from the next record: access log off, request count disabled
    current[0] = TelemetryConfig(access_log=AccessLogConfig(disabled=True),
                                 metrics=MetricsConfig(disabled=frozenset({"REQUEST_COUNT"})))
    nxt = record()
    t.access_log(nxt)
    t.stats(nxt)
    assert asked == ["demo/echo", "demo/echo"] and len(lines) == 1
    assert [s.value for s in families(m)["istio_requests"] if s.name == "istio_requests_total"] == [1.0]
    assert t.metrics_for("demo/echo").disabled == {"REQUEST_COUNT"}    # opaque tunnels' TCP metrics too


@pytest.mark.parametrize("src,dst", [(CLIENT, ECHO_V2), (None, ECHO_V2), (CLIENT, None), (None, None),
                                     (CLIENT, Workload(uid="bare", name="bare", namespace="", ips=["10.0.0.2"], node="n1",
                                                       service_account="", identity=""))])
def test_the_access_line_is_the_records_fields_then_the_workloads_in_one_json_object(
        src: Workload | None, dst: Workload | None) -> None:
    from waypoint.telemetry.accesslog import request_line
    want = record(request_id="r1", start=1.7e9).fields()
    for side, w in (("source", src), ("destination", dst)):
        if w is not None:
            want[f"{side}_workload"] = workload_name(w)
            if w.namespace:
                want[f"{side}_namespace"] = w.namespace
    if dst is not None and dst.identity:
        want["upstream_peer"] = dst.identity
    for _ in range(2):      # the workloads' part is encoded once per pair, then reused
        assert request_line(record(request_id="r1", start=1.7e9), src, dst) == json.dumps(want)


def test_cached_label_values_equal_fresh_ones_as_status_flags_route_and_peers_change() -> None:
    """The label cache (per peers, downstream, service, status, flags) gives exactly the values a
    fresh computation gives, for every record in a sequence that varies what the labels read,
    including a replaced Workload object (a new config View) and a record with no Service."""
    m = HttpMetrics()
    echo_v3 = wl("echo-v3-1", {"app": "echo", "version": "v3"})        # the pod as a later View has it
    plain = Downstream(source_ip="10.210.1.13", destination_ip="10.96.0.11", destination_port=80)
    records = [
        (record(), CLIENT, ECHO_V2),
        (record(status=503, response_flags="UF"), CLIENT, ECHO_V2),
        (record(status=503, response_flags="UF,URX"), CLIENT, ECHO_V2),
        (record(route="VirtualService/demo/echo#1", service="demo/other"), CLIENT, ECHO_V2),
        (record(), CLIENT, echo_v3),
        (record(), None, ECHO_V2),
        (record(), CLIENT, None),
        (record(grpc=True, grpc_status="14"), CLIENT, ECHO_V2),
        (record(grpc=True, grpc_status="0"), CLIENT, ECHO_V2),
        (record(downstream=plain, service="", authority="a.example:8080"), None, None),
        (record(downstream=plain, service="", authority="b.example"), None, None),
        (record(), CLIENT, ECHO_V2),
    ]
    for _ in range(2):      # the second pass is served from the cache
        for rec, src, dst in records:
            assert m.label_values(rec, src, dst) == m.compute_label_values(rec, src, dst)
    assert m.label_values(records[1][0], CLIENT, ECHO_V2)[21:24] == ("503", "", "UF")
    assert m.label_values(records[4][0], CLIENT, echo_v3)[9] == "echo-v3-1"
    assert m.label_values(records[10][0], None, None)[14] == "unknown"


def test_random_host_headers_without_a_service_add_no_series() -> None:
    """A tunnel addressed to a pod (no Service) carries whatever Host the client sent. Istio's
    waypoint reports the endpoint's canonical service there (host-header fallback off), so a
    client sending a fresh Host per request must not mint a series per request."""
    m = HttpMetrics()
    pod = Downstream(source_identity=CLIENT_ID, source_ip="10.210.1.12", destination_ip="10.210.2.11",
                     destination_port=8080)
    for i in range(50):
        m.observe(record(downstream=pod, service="", authority=f"r{i}.attacker.example"), CLIENT, ECHO_V2)
        m.observe(record(downstream=pod, service="", authority=f"n{i}.attacker.example", status=404,
                         response_flags="NR", upstream=""), CLIENT, None)
    series = [s for s in families(m)["istio_requests"] if s.name == "istio_requests_total"]
    assert len(series) == 2
    by_code = {s.labels["response_code"]: s for s in series}
    assert by_code["200"].value == 50 and by_code["404"].value == 50
    routed = by_code["200"].labels
    assert (routed["destination_service"], routed["destination_service_name"],
            routed["destination_service_namespace"]) == ("echo", "echo", "demo")
    nr = by_code["404"].labels
    assert (nr["destination_service"], nr["destination_service_name"], nr["destination_service_namespace"]) == \
        ("unknown", "unknown", "unknown")


@pytest.mark.parametrize("grpc_status,status,want", [
    ("0", 200, "0"), ("16", 200, "16"), ("007", 200, "7"),
    ("17", 200, "-1"), ("99999", 200, "-1"), ("banana", 200, "-1"), ("-3", 200, "-1"), ("\u0663", 200, "-1"),
    ("", 503, "14"), ("", 404, "12"), ("", 200, "2"),     # no grpc-status: Envoy maps the HTTP status
    ("", 0, ""),                                         # reset before any response: no status at all
])
def test_grpc_response_status_is_envoys_normalised_code(grpc_status: str, status: int, want: str) -> None:
    """The label takes Envoy's value (`Grpc::Common::getGrpcStatus`): a well-known code, "-1" for
    anything else an upstream sends (so it cannot create series without bound), and the HTTP
    status mapped when the response carried no grpc-status."""
    m = HttpMetrics()
    m.observe(record(grpc=True, protocol="HTTP/2", grpc_status=grpc_status, status=status), CLIENT, ECHO_V2)
    (s,) = [s for s in families(m)["istio_requests"] if s.name == "istio_requests_total"]
    assert s.labels["grpc_response_status"] == want


def test_arbitrary_grpc_status_values_share_one_series() -> None:
    m = HttpMetrics()
    for i in range(40):
        m.observe(record(grpc=True, protocol="HTTP/2", grpc_status=f"{1000 + i}"), CLIENT, ECHO_V2)
        m.observe(record(grpc=True, protocol="HTTP/2", grpc_status=f"x{i}"), CLIENT, ECHO_V2)
    (s,) = [s for s in families(m)["istio_requests"] if s.name == "istio_requests_total"]
    assert s.value == 80 and s.labels["grpc_response_status"] == "-1"


def test_an_unknown_source_keeps_its_spiffe_namespace_and_istios_default_revision() -> None:
    """A peer the config does not know (its IP is no workload's) but that presented a SPIFFE id:
    Istio's stats filter takes source_workload_namespace from the id, and reports the source's
    canonical revision as "latest" (unknown as a default only where Istio has one)."""
    m = HttpMetrics()
    down = Downstream(source_identity=CLIENT_ID, source_ip="10.9.9.9", source_namespace="demo",
                      service="demo/echo", hostname="echo.demo.svc.cluster.local")
    m.observe(record(downstream=down), None, ECHO_V2)
    (s,) = [s for s in families(m)["istio_requests"] if s.name == "istio_requests_total"]
    assert (s.labels["source_workload"], s.labels["source_workload_namespace"], s.labels["source_principal"],
            s.labels["source_canonical_revision"], s.labels["source_canonical_service"]) == \
        ("unknown", "demo", CLIENT_ID, "latest", "unknown")


def test_a_method_label_from_a_metrics_override_stays_bounded_under_random_methods() -> None:
    """Telemetry `tagOverrides: {method: {value: request.method}}`: an HTTP/2 client picks any
    `:method` token, so each random one would be a new series. Known methods keep their name,
    every other token is "unknown"."""
    cfg = resolve([{"match": {"metric": "REQUEST_COUNT"}, "tagOverrides": {"method": {"value": "request.method"}}}],
                  SERVER)
    m = HttpMetrics(config_for=lambda service: cfg)
    for i in range(30):
        m.observe(record(method=f"M{i:04X}", protocol="HTTP/2"), CLIENT, ECHO_V2)
    for method in ("GET", "PROPFIND", "GET"):
        m.observe(record(method=method), CLIENT, ECHO_V2)
    counts = {s.labels["method"]: s.value for s in families(m)["istio_requests"] if s.name == "istio_requests_total"}
    assert counts == {"unknown": 30, "GET": 2, "PROPFIND": 1}
