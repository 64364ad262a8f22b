"""The Telemetry kind: the seed's telemetry.yaml, the misspelt field, filters refused at apply, the
translation into TelemetryPolicy, and the advisory for providers the mesh config does not define."""

from __future__ import annotations

import copy

import yaml

from ambit.model import MeshSettings
from controller.translate import translate
from controller.translate.policy import translate_telemetry
from controller.validation import validate_object
from controller.waypoints.advisories import advisories, telemetry_advisories

from .ctl_examples import EXAMPLES

SEED = yaml.safe_load((EXAMPLES / "istio" / "telemetry.yaml").read_text())


def seed(ns: str = "ambit-system") -> dict:
    o = copy.deepcopy(SEED)
    o["metadata"]["namespace"] = ns
    return o


def test_the_seed_is_accepted_and_its_sampling_and_providers_are_kept() -> None:
    assert validate_object(seed()) == []
    t = translate([seed()]).telemetry[0]
    assert (t.scope, t.sampling_percent, t.tracing_providers, t.metrics_providers, t.access_log_providers) == \
        ("global", 10.0, ["jaeger"], ["prometheus"], ["fluentd"])


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
    assert (t.scope, t.selector, t.has_access_logging, t.has_tracing) == ("workload", {"app": "web"}, True, False)
    assert (t.access_log_providers, t.access_log_mode, t.access_log_filter, t.access_log_disabled) == \
        (["envoy"], "SERVER", "response.code >= 400", False)
    assert t.disable_span_reporting is None and t.sampling_percent is None
    t2 = translate_telemetry({**o, "spec": {"accessLogging": [{"providers": []}]}}, "ambit-system")
    assert t2.access_log_disabled is None and t2.scope == "namespace"


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
    found = [str(x) for x in advisories([a, b, root_sel]) if "not defined" not in str(x)]
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
    assert (t.use_request_id_sampling, t.enable_istio_tags) == (False, False)
    assert (translate_telemetry(seed("app"), "ambit-system").enable_istio_tags is None)
