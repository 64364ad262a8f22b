"""The Telemetry kind: the seed's telemetry.yaml, the misspelt field, filters refused at apply, the
translation into TelemetryPolicy, and the advisory for providers the mesh config does not define."""

from __future__ import annotations

import copy

import yaml

from ambit.model import AccessLogEntry, MeshSettings, TracingEntry
from ambit.telemetry import CLIENT, SERVER, for_waypoint, for_workload
from controller.translate import translate
from controller.translate.policy import translate_telemetry
from controller.validation import validate_object
from controller.waypoints.advisories import advisories, telemetry_advisories
from waypoint.telemetry.tracing import custom_tags

from .ctl_examples import EXAMPLES
from .test_waypoint_advisories import ns, svc, waypoint

SEED = yaml.safe_load((EXAMPLES / "istio" / "telemetry.yaml").read_text())


def seed(ns: str = "ambit-system") -> dict:
    o = copy.deepcopy(SEED)
    o["metadata"]["namespace"] = ns
    return o


def test_the_seed_is_accepted_and_its_sampling_and_providers_are_kept() -> None:
    assert validate_object(seed()) == []
    t = translate([seed()]).telemetry[0]
    assert (t.scope, t.tracing, t.metrics_providers, t.access_logging) == \
        ("global", [TracingEntry(providers=["jaeger"], sampling_percent=10.0)], ["prometheus"],
         [AccessLogEntry(providers=["fluentd"])])


def test_the_misspelt_sampling_field_is_named_with_a_suggestion() -> None:
    bad = seed()
    bad["spec"]["tracing"][0]["randomSamplingSample"] = bad["spec"]["tracing"][0].pop("randomSamplingPercentage")
    errs = validate_object(bad)
    assert [(e.path, e.reason) for e in errs] == [
        ("spec.tracing[0].randomSamplingSample", "unknown field; did you mean 'randomSamplingPercentage'?")]


def test_filters_outside_the_supported_subset_are_refused_at_apply() -> None:
    o = seed("app")
    o["spec"]["accessLogging"] = [{"filter": {"expression": "response.duration > 10"}}]
    errs = validate_object(o)
    assert len(errs) == 1 and errs[0].path == "spec.accessLogging[0].filter.expression"
    assert "attribute 'response.duration' is not supported" in errs[0].reason
    o["spec"]["accessLogging"] = [{"filter": {"expression": "response.code >= 400 && request.method == 'GET'"}}]
    assert validate_object(o) == []


def test_sections_translate_with_unset_fields_left_to_inherit() -> None:
    o = {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {"name": "t", "namespace": "app"},
         "spec": {"selector": {"matchLabels": {"app": "web"}},
                  "accessLogging": [{"providers": [{"name": "envoy"}], "match": {"mode": "SERVER"},
                                     "filter": {"expression": "response.code >= 400"}},
                                    {"disabled": False}]}}
    t = translate_telemetry(o, "ambit-system")
    assert (t.scope, t.selector, t.tracing) == ("workload", {"app": "web"}, [])
    assert t.access_logging == [AccessLogEntry(mode="SERVER", providers=["envoy"], filter="response.code >= 400"),
                                AccessLogEntry(disabled=False)]
    t2 = translate_telemetry({**o, "spec": {"accessLogging": [{"providers": []}]}}, "ambit-system")
    assert t2.access_logging == [AccessLogEntry()] and t2.scope == "namespace"


def test_undefined_providers_are_warned_by_name_and_defined_ones_are_not() -> None:
    found = [str(a) for a in advisories([seed()])]
    assert any('spec.tracing[0].providers[0].name: provider "jaeger" is not defined' in f for f in found)
    assert any('spec.accessLogging[0].providers[0].name: provider "fluentd" is not defined' in f for f in found)
    assert not any('"prometheus"' in f for f in found), "prometheus is built in"
    mesh = MeshSettings("cluster.local", extension_providers=[
        {"name": "jaeger", "kind": "opentelemetry", "service": "j", "port": 4317},
        {"name": "fluentd", "kind": "envoyFileAccessLog", "path": "/dev/stdout"}])
    assert telemetry_advisories(seed(), mesh) == []


def test_two_namespace_wide_telemetries_and_a_root_selector_are_warned() -> None:
    a, b = seed("app"), seed("app")
    b["metadata"]["name"] = "zz-second"
    root_sel = seed()
    root_sel["metadata"]["name"] = "root-sel"
    root_sel["spec"]["selector"] = {"matchLabels": {"app": "web"}}
    found = [str(x) for x in advisories([a, b, root_sel]) if "not defined" not in str(x)
             and "applied by no proxy" not in str(x)]      # root-sel traces a selected workload: warned too
    assert found == [
        "Telemetry/ambit-system/root-sel: spec.selector: a selector in the root namespace (ambit-system) is not "
        "mesh-wide, as in Istio: it selects workloads of ambit-system only",
        "Telemetry/app/zz-second: namespace app already has a Telemetry without a selector (mesh-default); Istio "
        "treats two as invalid, Ambit applies them in name order (this one's fields override)"], found


def test_metrics_fields_ambit_cannot_honour_are_refused_or_warned_by_name() -> None:
    o = seed("app")
    o["spec"]["metrics"] = [{"overrides": [
        {"match": {"customMetric": "my_metric"}},
        {"tagOverrides": {"host": {"value": "request.host"}, "bad-name": {"value": "'x'"},
                          "empty": {"operation": "UPSERT"}, "ok": {"value": "request.method"},
                          "gone": {"operation": "REMOVE"}}}]}]
    errs = {e.path: e.reason for e in validate_object(o)}
    assert set(errs) == {"spec.metrics[0].overrides[0].match.customMetric",
                         "spec.metrics[0].overrides[1].tagOverrides[host].value",
                         "spec.metrics[0].overrides[1].tagOverrides[bad-name]",
                         "spec.metrics[0].overrides[1].tagOverrides[empty].value"}
    assert "customMetric is not supported" in errs["spec.metrics[0].overrides[0].match.customMetric"]
    assert "'request.host'" in errs["spec.metrics[0].overrides[1].tagOverrides[host].value"]
    o["spec"]["metrics"] = [{"providers": [{"name": "sd"}], "reportingInterval": "30s"}]
    mesh = MeshSettings("cluster.local", extension_providers=[{"name": "sd", "kind": "stackdriver"}])
    found = [str(a) for a in telemetry_advisories(o, mesh)]
    assert any('spec.metrics[0].providers[0].name: metrics provider "sd" is of kind stackdriver' in f for f in found)
    assert any("spec.metrics[0].reportingInterval: reportingInterval is not supported" in f for f in found)


def test_tracing_request_id_sampling_and_istio_tags_translate() -> None:
    o = seed("app")
    o["spec"]["tracing"][0].update(useRequestIdForTraceSampling=False, enableIstioTags=False)
    assert validate_object(o) == []
    t = translate_telemetry(o, "ambit-system")
    assert (t.tracing[0].use_request_id_sampling, t.tracing[0].enable_istio_tags) == (False, False)
    assert translate_telemetry(seed("app"), "ambit-system").tracing[0].enable_istio_tags is None


def telemetry(name: str, spec: dict, ns: str = "app") -> dict:
    return {"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def test_entries_with_different_modes_each_apply_to_their_own_side_only() -> None:
    """The audit's case: a CLIENT-only `disabled: true` next to a SERVER entry naming a provider.
    Istio's mergeLogs/mergeTracing apply each entry to its own mode: the client side is off, the
    server side logs with its provider; CLIENT sampling does not land on the SERVER side."""
    o = telemetry("modes", {
        "accessLogging": [{"match": {"mode": "CLIENT"}, "disabled": True},
                          {"match": {"mode": "SERVER"}, "providers": [{"name": "envoy"}]}],
        "tracing": [{"match": {"mode": "CLIENT"}, "randomSamplingPercentage": 0},
                    {"match": {"mode": "SERVER"}, "randomSamplingPercentage": 100}]})
    assert validate_object(o) == []
    pols = translate([o]).telemetry
    client = for_workload(pols, None, "app", {"app": "web"}, CLIENT)
    server = for_workload(pols, None, "app", {"app": "web"}, SERVER)
    assert client.access_log.disabled and client.access_log.providers == ()
    assert not server.access_log.disabled and [p.name for p in server.access_log.providers] == ["envoy"]
    assert (client.tracing.sampling_percent, server.tracing.sampling_percent) == (0.0, 100.0)
    waypoint = for_waypoint(pols, None, "app", "waypoint")        # the SERVER side of its requests
    assert not waypoint.access_log.disabled and waypoint.tracing.sampling_percent == 100.0


def test_custom_tag_default_values_reach_the_span() -> None:
    """customTags header/environment `defaultValue`: the tag gets it when the header or variable is absent."""
    o = telemetry("tags", {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
                           "tracing": [{"customTags": {
                               "tenant": {"header": {"name": "x-tenant", "defaultValue": "unknown-tenant"}},
                               "zone": {"environment": {"name": "NO_SUCH_VAR", "defaultValue": "zone-default"}},
                               "team": {"header": {"name": "x-team"}}}}]})
    assert validate_object(o) == []
    tags = for_waypoint(translate([o]).telemetry, None, "app", "waypoint").tracing.custom_tags
    assert custom_tags(tags, [], environ={}) == {"tenant": "unknown-tenant", "zone": "zone-default"}
    assert custom_tags(tags, [("x-tenant", "acme"), ("x-team", "blue")], environ={"NO_SUCH_VAR": "eu-1"}) == \
        {"tenant": "acme", "zone": "eu-1", "team": "blue"}


def _waypoint_scene() -> list[dict]:
    """Namespace app, its waypoint, Service web (using it) and Service batch (using none)."""
    return [ns("app"), waypoint(namespace="app"), svc("web", "app", **{"istio.io/use-waypoint": "waypoint"}),
            svc("batch", "app")]


def test_telemetry_targets_nothing_serves_are_warned_as_authorization_policies_are() -> None:
    """The audit's case: targetRefs [GatewayClass ambit-waypoint, Gateway waypiont] was accepted in silence
    and bound nothing."""
    o = telemetry("bad-target", {"targetRefs": [{"kind": "GatewayClass", "name": "ambit-waypoint"},
                                                {"kind": "Gateway", "name": "waypiont"},
                                                {"kind": "Service", "name": "batch"},
                                                {"kind": "Service", "name": "web"},
                                                {"kind": "Gateway", "name": "waypoint"}],
                                 "accessLogging": [{"disabled": True}]})
    found = {a.path: a for a in advisories([*_waypoint_scene(), o]) if a.ref == "Telemetry/app/bad-target"}
    assert sorted(found) == ["spec.targetRefs[0]", "spec.targetRefs[1]", "spec.targetRefs[2]"], found
    assert "GatewayClass target is accepted but not applied to a Telemetry" in found["spec.targetRefs[0]"].reason
    assert (found["spec.targetRefs[1]"].cause, found["spec.targetRefs[2]"].cause) == ("TargetNotFound",
                                                                                      "AncestorNotBound")
    assert 'no waypoint Gateway "app/waypiont"' in found["spec.targetRefs[1]"].reason
    assert 'Service "app/batch" uses no waypoint' in found["spec.targetRefs[2]"].reason


def test_a_telemetry_targeting_a_service_entry_applies_at_its_waypoint_for_its_hosts() -> None:
    entry = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
             "metadata": {"name": "ext", "namespace": "app", "labels": {"istio.io/use-waypoint": "waypoint"}},
             "spec": {"hosts": ["api.example.com"], "ports": [{"number": 80, "name": "http"}],
                      "resolution": "DNS"}}
    o = telemetry("egress-logs", {"targetRefs": [{"kind": "ServiceEntry", "group": "networking.istio.io",
                                                  "name": "ext"}], "accessLogging": [{"disabled": True}]})
    objs = [*_waypoint_scene(), entry, o]
    assert [a for a in advisories(objs) if a.ref == "Telemetry/app/egress-logs"] == []
    pols = translate(objs).telemetry
    assert for_waypoint(pols, None, "app", "waypoint", "app/api.example.com").access_log.disabled
    assert not for_waypoint(pols, None, "app", "waypoint", "app/web").access_log.disabled


def test_tracing_no_proxy_applies_is_warned_and_points_to_target_refs() -> None:
    """ztunnel does not trace and a waypoint traces as the SERVER side: tracing for a selected
    workload, CLIENT-side tracing, and CLIENT entries of a targetRefs Telemetry change nothing."""
    sel = telemetry("trace-reviews", {"selector": {"matchLabels": {"app": "web"}},
                                      "tracing": [{"randomSamplingPercentage": 100}]})
    at_waypoint = telemetry("trace-waypoint", {"selector": {"matchLabels": {
        "gateway.networking.k8s.io/gateway-name": "waypoint"}}, "tracing": [{"randomSamplingPercentage": 100}]})
    clients = telemetry("trace-clients", {"tracing": [{"match": {"mode": "CLIENT"}, "randomSamplingPercentage": 100}],
                                          "accessLogging": [{"match": {"mode": "CLIENT"}, "disabled": True}]})
    bound = telemetry("bound", {"targetRefs": [{"kind": "Gateway", "name": "waypoint"}],
                                "accessLogging": [{"match": {"mode": "CLIENT"}, "disabled": True}],
                                "metrics": [{"overrides": [{"match": {"mode": "SERVER"}, "disabled": True},
                                                           {"match": {"mode": "CLIENT"}, "disabled": True}]}]})
    found = {(a.ref, a.path): a.reason for a in advisories([*_waypoint_scene(), sel, at_waypoint, clients, bound])
             if a.ref.startswith("Telemetry/")}
    assert sorted(found) == [("Telemetry/app/bound", "spec.accessLogging[0].match.mode"),
                             ("Telemetry/app/bound", "spec.metrics[0].overrides[1].match.mode"),
                             ("Telemetry/app/trace-clients", "spec.tracing[0].match.mode"),
                             ("Telemetry/app/trace-reviews", "spec.selector")], found
    assert "ztunnel does not trace" in found[("Telemetry/app/trace-reviews", "spec.selector")]
    assert "targetRefs" in found[("Telemetry/app/trace-reviews", "spec.selector")]
    assert "CLIENT is applied by no proxy for tracing" in found[("Telemetry/app/trace-clients", "spec.tracing[0].match.mode")]
    assert "binds waypoints only" in found[("Telemetry/app/bound", "spec.accessLogging[0].match.mode")]


def test_providers_of_the_wrong_kind_for_tracing_or_access_logging_are_warned_as_for_metrics() -> None:
    o = telemetry("wrong-kinds", {"tracing": [{"providers": [{"name": "envoy"}]}],
                                  "accessLogging": [{"providers": [{"name": "prometheus"}]}]})
    found = [str(a) for a in telemetry_advisories(o, None)]
    assert found == [
        'Telemetry/app/wrong-kinds: spec.tracing[0].providers[0].name: tracing provider "envoy" is of kind '
        "envoyFileAccessLog: spans go to opentelemetry and zipkin providers only, so it gets nothing (as in Istio); "
        "name a tracing provider",
        'Telemetry/app/wrong-kinds: spec.accessLogging[0].providers[0].name: access-log provider "prometheus" is of '
        "kind prometheus: access logs go to envoyFileAccessLog providers only, so it gets nothing (as in Istio); "
        "without an access-log provider in force the proxy writes its built-in line"]
