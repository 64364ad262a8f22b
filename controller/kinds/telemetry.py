"""telemetry.istio.io (and telemetry.ambit.io): the Telemetry schema."""

from __future__ import annotations

from typing import Any

from ambit.telemetryfilter import check_filter, check_value
from ambit.telemetrymetrics import LABEL_NAME
from controller.kinds.common import (
    Duration,
    Percentage,
    PolicyTargetReference,
    PolicyTargetReferences,
    WorkloadSelector,
    header_name_reason,
)
from controller.kinds.schema import Arr, Bool, Errors, Map, Obj, Str, join


def _check_filter(value: Any, path: str, errs: Errors) -> None:
    """The access-log filter must be in the CEL subset Ambit evaluates (ambit.telemetryfilter):
    refused here, at apply time, rather than logging everything or nothing at request time."""
    expr = value.get("expression") if isinstance(value, dict) else None
    if isinstance(expr, str) and expr.strip():
        why = check_filter(expr)
        if why:
            errs.append((join(path, "expression"), f"{expr!r}: {why}"))

ProviderRef = Obj({"name": Str(min_len=1)}, required=("name",))
WorkloadMode = Str(enum=("CLIENT_AND_SERVER", "CLIENT", "SERVER"))

CustomTag = Obj({
    # Istio's CRD: minLength 1 (a tag with no value says nothing; an empty one was sent as written)
    "literal": Obj({"value": Str(min_len=1)}, required=("value",)),
    "environment": Obj({"name": Str(min_len=1), "defaultValue": Str()}, required=("name",)),
    "header": Obj({"name": Str(min_len=1, valid=header_name_reason), "defaultValue": Str()}, required=("name",)),
}, one_of=(("literal", "environment", "header"),), exactly_one=True, unsupported={
    "formatter": "formatter custom tags are not supported by Ambit; use literal, environment or header",
})

Tracing = Obj({
    "match": Obj({"mode": WorkloadMode}),
    "providers": Arr(ProviderRef),
    "randomSamplingPercentage": Percentage,
    "disableSpanReporting": Bool(),
    # istiod's validateTelemetryTracing: "tag name may not be empty" (a span tag needs a key)
    "customTags": Map(CustomTag, key=lambda k: None if isinstance(k, str) and k else
                      "tag name may not be empty (Istio refuses it too)"),
    "useRequestIdForTraceSampling": Bool(),
    "enableIstioTags": Bool(),
}, unsupported={
    "disableContextPropagation": "disableContextPropagation is not supported by Ambit: the waypoint forwards "
                                 "request headers, trace context included, as it receives them",
})

METRICS = ("ALL_METRICS", "REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE",
           "TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS", "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES",
           "GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES")

def _check_tag(value: Any, path: str, errs: Errors) -> None:
    """An UPSERT's value must be an expression Ambit evaluates (ambit.telemetryfilter.compile_value):
    refused at apply time rather than reported as "unknown" on every series. A REMOVE takes no value
    (Istio's CRD rule): one written there was ignored without a word."""
    if isinstance(value, dict) and value.get("operation") == "REMOVE" and value.get("value") is not None:
        errs.append((join(path, "value"), "value must not be set when operation is REMOVE"))
    if not isinstance(value, dict) or (value.get("operation") or "UPSERT") != "UPSERT":
        return
    expr = value.get("value")
    if not isinstance(expr, str) or not expr.strip():
        errs.append((join(path, "value"), "an UPSERT tag override needs a value expression (e.g. \"'v1'\" or "
                                          "request.method)"))
        return
    why = check_value(expr)
    if why:
        errs.append((join(path, "value"), f"{expr!r}: {why}"))


def _label_name(name: Any) -> str | None:
    if isinstance(name, str) and LABEL_NAME.fullmatch(name) and not name.startswith("__"):
        return None
    return f"{name!r} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)"


MetricsOverrides = Obj({
    "match": Obj({"metric": Str(enum=METRICS), "mode": WorkloadMode}, unsupported={
        "customMetric": "customMetric is not supported by Ambit: its proxies export Istio's standard metrics "
                        "only; match one of them with `metric`",
    }),
    "disabled": Bool(),
    "tagOverrides": Map(Obj({"operation": Str(enum=("UPSERT", "REMOVE")), "value": Str()}, checks=(_check_tag,)),
                        key=_label_name),
})

Metrics = Obj({"providers": Arr(ProviderRef), "overrides": Arr(MetricsOverrides), "reportingInterval": Duration()})

AccessLogging = Obj({
    "match": Obj({"mode": WorkloadMode}),
    "providers": Arr(ProviderRef),
    "disabled": Bool(),
    "filter": Obj({"expression": Str()}, checks=(_check_filter,)),
})

TelemetrySpec = Obj({
    "selector": WorkloadSelector,
    "targetRef": PolicyTargetReference,
    "targetRefs": PolicyTargetReferences,
    "tracing": Arr(Tracing),
    "metrics": Arr(Metrics),
    "accessLogging": Arr(AccessLogging),
}, one_of=(("selector", "targetRef", "targetRefs"),))
