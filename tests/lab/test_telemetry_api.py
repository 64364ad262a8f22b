"""The Telemetry API's access logging end to end: Telemetry resources applied through the
controller, MeshConfig extensionProviders from the controller's watched mesh config file, real
traffic (curl in lab pods) through real ztunnels (HBONE across the underlay) and the real waypoint,
and the access-log lines those processes actually wrote.

- ztunnel (namespace `quiet`): a namespace-wide Telemetry turns logs off; one with a selector turns
  them back on for `web` in Istio's default text format. The SERVER side (node2's ztunnel, inbound
  to web) logs web's connections and not api's; the CLIENT side (node1's, the client is in `quiet`)
  logs nothing.
- waypoint (namespace `default`): namespace-wide off, on for Service myapp (targetRefs) with the
  filter `response.code >= 400` and a JSON provider (logFormat.labels); then the same with Istio's
  default text format (`envoy`).
- metrics: `overrides` (disabled, tagOverrides REMOVE and UPSERT) for Service myapp at the waypoint
  and for `web`'s SERVER side at node2's ztunnel, read from the proxies' own metrics endpoints;
  the CLIENT side (node1's ztunnel, reporter="source") keeps Istio's labels.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane.telemetry.metrics import scrape
from tests.lab.labctl import Lab, running_lab
from tests.lab.test_waypoint import GATEWAY, apply, status_of, waypoint_log, waypoints
from tests.unit.controller.ctl_examples import EXAMPLES

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

SPEC = Path(__file__).parent / "specs" / "telemetry.yaml"
SEED = EXAMPLES / "istio" / "telemetry.yaml"
MESH = {"extensionProviders": [
    {"name": "json-log", "envoyFileAccessLog": {"path": "/dev/stdout", "logFormat": {"labels": {
        "code": "%RESPONSE_CODE%", "method": "%REQ(:METHOD)%", "path": "%REQ(:PATH)%",
        "src": "%SOURCE_WORKLOAD%", "peer": "%DOWNSTREAM_PEER_URI_SAN%"}}}}]}
TEXT_LINE = re.compile(r'^\[\d{4}-\d\d-\d\dT[\d:.]+Z\] "(\S+) (\S+) (\S+)" (\S+) (\S+) ')


def telemetry(name: str, ns: str, spec: dict) -> dict:
    return {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


@pytest.fixture(scope="module")
def tlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("tlab"), "ta", SPEC, "telemetry-lab") as lab:
        lab.tmp = tmp_path_factory.mktemp("tcfg")  # type: ignore[attr-defined]
        (lab.dir / "mesh-config.yaml").write_text(yaml.safe_dump(MESH))
        apply(lab, [GATEWAY], lab.tmp, "gateway")  # type: ignore[attr-defined]
        lab.wait_for(lambda: [w for w in waypoints(lab) if w["ready"]], timeout=30, what="waypoint ready")
        lab.wait_for(lambda: status_of(lab, "default/frontend", "http://myapp/")[0] == 200, timeout=30,
                     interval=0.5, what="myapp through the waypoint")
        yield lab


def ztunnel_lines(lab: Lab, node: str) -> list[str]:
    return lab.log("ztunnel", node).splitlines()


def pod_ip(lab: Lab, key: str) -> str:
    p = lab.pod(key)
    return p.get("ip") or p["ips"][0]


def test_ztunnel_namespace_off_workload_on_in_text_format(tlab: Lab) -> None:
    web_ip, api_ip, client_ip = pod_ip(tlab, "quiet/web"), pod_ip(tlab, "quiet/api"), pod_ip(tlab, "quiet/client")
    apply(tlab, [telemetry("quiet-off", "quiet", {"accessLogging": [{"disabled": True}]}),
                 telemetry("web-on", "quiet", {"selector": {"matchLabels": {"app": "web"}},
                                               "accessLogging": [{"disabled": False, "providers": [{"name": "envoy"}]}]})],
          tlab.tmp, "quiet")  # type: ignore[attr-defined]

    def web_text_lines() -> list[str]:
        return [x for x in ztunnel_lines(tlab, "node2") if TEXT_LINE.match(x) and f"{web_ip}:8080" in x]

    # the config reaches both ztunnels: web's inbound connections get text lines
    def probe() -> list[str]:
        assert tlab.curl_rc("quiet/client", "http://web/") == 0
        return web_text_lines()
    tlab.wait_for(probe, timeout=30, interval=0.5, what="web's connections logged in text format")
    n1_before, n2_before = len(ztunnel_lines(tlab, "node1")), len(ztunnel_lines(tlab, "node2"))
    web_before = len(web_text_lines())
    for _ in range(3):
        assert tlab.curl_rc("quiet/client", "http://web/") == 0
        assert tlab.curl_rc("quiet/client", "http://api/") == 0
    tlab.wait_for(lambda: len(web_text_lines()) >= web_before + 3, timeout=10, what="3 more web lines")
    n2_new = ztunnel_lines(tlab, "node2")[n2_before:]
    n1_new = ztunnel_lines(tlab, "node1")[n1_before:]
    web_new = [x for x in n2_new if f"{web_ip}:8080" in x]
    assert len(web_new) == 3, n2_new
    for line in web_new:
        assert TEXT_LINE.match(line), line
        assert not line.startswith(("{", "access "))          # the text format, not JSON
        assert line.endswith("inbound-hbone"), line          # %ROUTE_NAME% last, as Istio's format ends
    assert not [x for x in n2_new if api_ip in x and ("access " in x or TEXT_LINE.match(x))], \
        "api is in the namespace whose logs are off"
    assert not [x for x in n1_new if client_ip in x and ("access " in x or TEXT_LINE.match(x))], \
        "the client side (node1) is in the namespace whose logs are off"


def access(lab: Lab) -> list[str]:
    return [x.split("access: ", 1)[1] for x in waypoint_log(lab).splitlines()
            if "ambit.waypoint.access" in x and "access: " in x]


def test_waypoint_off_by_namespace_on_for_a_service_with_a_filter_json_then_text(tlab: Lab) -> None:
    def on_for_myapp(provider: str) -> dict:
        return telemetry("myapp-errors", "default", {
            "targetRefs": [{"group": "", "kind": "Service", "name": "myapp"}],
            "accessLogging": [{"disabled": False, "providers": [{"name": provider}],
                               "filter": {"expression": "response.code >= 400"}}]})
    apply(tlab, [telemetry("default-off", "default", {"accessLogging": [{"disabled": True}]}),
                 on_for_myapp("json-log")], tlab.tmp, "waypoint-json")  # type: ignore[attr-defined]

    def json_lines() -> list[dict]:
        return [json.loads(x) for x in access(tlab) if x.startswith("{") and '"src"' in x]

    def probe() -> list[dict]:
        status_of(tlab, "default/frontend", "http://myapp/probe-json", "-H", "x-echo-status: 418")
        return json_lines()
    tlab.wait_for(probe, timeout=30, interval=0.5, what="the waypoint logs myapp's errors in JSON")
    before = len(access(tlab))
    for code in (200, 503, 200, 404, 200):
        got = status_of(tlab, "default/frontend", f"http://myapp/j{code}", "-H", f"x-echo-status: {code}")[0]
        assert got == code
    tlab.wait_for(lambda: len(access(tlab)) >= before + 2, timeout=10, what="two more lines")
    new = access(tlab)[before:]
    assert [json.loads(x) for x in new] == [
        {"code": 503, "method": "GET", "path": "/j503", "src": "frontend",
         "peer": json.loads(new[0])["peer"]},
        {"code": 404, "method": "GET", "path": "/j404", "src": "frontend",
         "peer": json.loads(new[1])["peer"]}], new
    assert json.loads(new[0])["peer"] == "spiffe://cluster.local/ns/default/sa/frontend"

    apply(tlab, [on_for_myapp("envoy")], tlab.tmp, "waypoint-text")  # type: ignore[attr-defined]

    def text_probe() -> list[str]:
        status_of(tlab, "default/frontend", "http://myapp/probe-text", "-H", "x-echo-status: 418")
        return [x for x in access(tlab) if TEXT_LINE.match(x)]
    tlab.wait_for(text_probe, timeout=30, interval=0.5, what="the waypoint logs in Istio's text format")
    before = len(access(tlab))
    for code in (200, 500, 201):
        status_of(tlab, "default/frontend", f"http://myapp/t{code}", "-H", f"x-echo-status: {code}")
    tlab.wait_for(lambda: len(access(tlab)) >= before + 1, timeout=10, what="one more line")
    new = access(tlab)[before:]
    assert len(new) == 1, new
    m = TEXT_LINE.match(new[0])
    assert m is not None and m.groups() == ("GET", "/t500", "HTTP/1.1", "500", "-"), new[0]
    assert '"myapp"' in new[0], "%REQ(:AUTHORITY)% is quoted as in Istio's format"


def test_apply_warns_about_providers_the_lab_mesh_config_does_not_define(tlab: Lab) -> None:
    """The seed's telemetry.yaml: accepted; `prometheus` is built in; `jaeger` and `fluentd` are not in
    this lab's mesh config (it defines json-log), so `ambit apply` names them. Then the lab's mesh config
    defines them (as docs/observability.md shows) and the warnings go."""
    seed = SEED.read_text()
    p = tlab.ambit("apply", "--dry-run", "-f", "-", input=seed)
    assert "telemetry.istio.io/mesh-default created (dry run)" in p.stdout, p.stdout
    assert 'spec.tracing[0].providers[0].name: provider "jaeger" is not defined' in p.stderr, p.stderr
    assert 'spec.accessLogging[0].providers[0].name: provider "fluentd" is not defined' in p.stderr, p.stderr
    assert '"prometheus"' not in p.stderr and "json-log" in p.stderr      # the defined ones are listed
    mesh = yaml.safe_load((tlab.dir / "mesh-config.yaml").read_text())
    mesh["extensionProviders"] += [
        {"name": "jaeger", "opentelemetry": {"service": "jaeger-collector.observability.svc.cluster.local", "port": 4317}},
        {"name": "fluentd", "envoyFileAccessLog": {"path": "/dev/stdout"}}]
    (tlab.dir / "mesh-config.yaml").write_text(yaml.safe_dump(mesh))
    p = tlab.ambit("apply", "--dry-run", "-f", "-", input=seed)
    assert "not defined" not in p.stderr, p.stderr
    bad = seed.replace("randomSamplingPercentage", "randomSamplingSample")
    p = tlab.ambit("apply", "--dry-run", "-f", "-", input=bad, check=False)
    assert p.returncode == 1
    assert "spec.tracing[0].randomSamplingSample: unknown field; did you mean 'randomSamplingPercentage'?" in p.stderr


def series(text: str, name: str, **match: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of the samples named `name` whose labels include `match`."""
    return [(dict(x.labels), x.value) for fam in text_string_to_metric_families(text) for x in fam.samples
            if x.name == name and all(x.labels.get(k) == v for k, v in match.items())]


def total(text: str, name: str, **match: str) -> float:
    return sum(v for _, v in series(text, name, **match))


def test_waypoint_metrics_overrides_for_a_service(tlab: Lab) -> None:
    sock = tlab.dir / "waypoints" / "default.waypoint.metrics.sock"
    apply(tlab, [telemetry("myapp-metrics", "default", {
        "targetRefs": [{"group": "", "kind": "Service", "name": "myapp"}],
        "metrics": [{"providers": [{"name": "prometheus"}], "overrides": [
            {"match": {"metric": "REQUEST_SIZE"}, "disabled": True},
            {"match": {"metric": "REQUEST_COUNT", "mode": "SERVER"}, "tagOverrides": {
                "request_protocol": {"operation": "REMOVE"},
                "method": {"operation": "UPSERT", "value": "request.method"},
                "failed": {"value": "response.code >= 500"}}}]}]})],
          tlab.tmp, "waypoint-metrics")  # type: ignore[attr-defined]
    svc = {"destination_service_name": "myapp"}

    def probe() -> bool:
        status_of(tlab, "default/frontend", "http://myapp/metrics-probe")
        return bool(series(scrape(sock), "istio_requests_total", method="GET", **svc))
    tlab.wait_for(probe, timeout=30, interval=0.5, what="the waypoint applies myapp's metrics overrides")
    before = scrape(sock)
    for code in (200, 503, 200):
        assert status_of(tlab, "default/frontend", f"http://myapp/m{code}", "-H", f"x-echo-status: {code}")[0] == code
    after = scrape(sock)
    new = series(after, "istio_requests_total", method="GET", **svc)
    assert all("request_protocol" not in labels for labels, _ in new), new        # REMOVE
    assert {(labels["response_code"], labels["failed"]) for labels, _ in new} >= {("200", "false"), ("503", "true")}
    assert total(after, "istio_requests_total", method="GET", **svc) - \
        total(before, "istio_requests_total", method="GET", **svc) == 3
    # REQUEST_SIZE disabled: its series stop counting; the others (no overrides) keep Istio's labels
    assert total(after, "istio_request_bytes_count", **svc) == total(before, "istio_request_bytes_count", **svc)
    assert total(after, "istio_response_bytes_count", **svc) - total(before, "istio_response_bytes_count", **svc) == 3
    dur = series(after, "istio_request_duration_milliseconds_count", response_code="503", **svc)
    assert dur and all(labels["request_protocol"] == "http" and "method" not in labels for labels, _ in dur)


def test_ztunnel_metrics_overrides_apply_to_the_selected_workloads_server_side(tlab: Lab) -> None:
    n1, n2 = tlab.dir / "node1" / "metrics.sock", tlab.dir / "node2" / "metrics.sock"
    apply(tlab, [telemetry("web-metrics", "quiet", {
        "selector": {"matchLabels": {"app": "web"}},
        "metrics": [{"overrides": [
            {"match": {"metric": "TCP_OPENED_CONNECTIONS", "mode": "SERVER"}, "disabled": True},
            {"match": {"mode": "SERVER"}, "tagOverrides": {
                "source_principal": {"operation": "REMOVE"}, "mtls": {"value": "connection.mtls"}}}]}]})],
          tlab.tmp, "ztunnel-metrics")  # type: ignore[attr-defined]
    dst = {"reporter": "destination", "destination_workload": "web"}

    def probe() -> bool:
        assert tlab.curl_rc("quiet/client", "http://web/") == 0
        return bool(series(scrape(n2), "istio_tcp_connections_closed_total", mtls="true", **dst))
    tlab.wait_for(probe, timeout=30, interval=0.5, what="node2's ztunnel applies web's metrics overrides")
    b1, b2 = scrape(n1), scrape(n2)
    for _ in range(3):
        assert tlab.curl_rc("quiet/client", "http://web/") == 0
    src = {"reporter": "source", "source_workload": "client", "destination_workload": "web"}

    def counted() -> bool:
        return total(scrape(n2), "istio_tcp_connections_closed_total", **dst) - \
            total(b2, "istio_tcp_connections_closed_total", **dst) >= 3 and \
            total(scrape(n1), "istio_tcp_connections_closed_total", **src) - \
            total(b1, "istio_tcp_connections_closed_total", **src) >= 3
    tlab.wait_for(counted, timeout=10, interval=0.3, what="3 more closed connections on both sides")
    a1, a2 = scrape(n1), scrape(n2)
    closed = series(a2, "istio_tcp_connections_closed_total", mtls="true", **dst)
    assert closed and all("source_principal" not in labels for labels, _ in closed), closed
    assert total(a2, "istio_tcp_received_bytes_total", mtls="true", **dst) > \
        total(b2, "istio_tcp_received_bytes_total", mtls="true", **dst)
    # TCP_OPENED_CONNECTIONS disabled for web's SERVER side: no new opened connections there
    assert total(a2, "istio_tcp_connections_opened_total", **dst) == total(b2, "istio_tcp_connections_opened_total", **dst)
    # the CLIENT side (reporter="source", the client's workload) is not selected: Istio's labels, counted
    opened = series(a1, "istio_tcp_connections_opened_total", **src)
    assert total(a1, "istio_tcp_connections_opened_total", **src) - total(b1, "istio_tcp_connections_opened_total", **src) == 3
    assert all(labels["source_principal"] == "spiffe://cluster.local/ns/quiet/sa/client" and "mtls" not in labels
               for labels, _ in opened), opened
