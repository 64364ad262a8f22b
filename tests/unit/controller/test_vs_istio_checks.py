"""VirtualService values Istio refuses are refused by name, and values Istio accepts that the
waypoint does not apply are warned about: retryOn, retries without attempts, fault.abort
grpcStatus/http2Error, hosts, directResponse.body.bytes, match.statPrefix, redirect.prefixRewrite."""

from __future__ import annotations

from typing import Any

import pytest

from controller.validation import validate_object
from controller.waypoints.advisories import NOT_ENFORCED, advisories

ROUTE = [{"destination": {"host": "web"}}]


def vs(http: dict[str, Any], **spec: Any) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r", "namespace": "demo"},
            "spec": {"hosts": ["web"], "http": [{"route": ROUTE, **http}], **spec}}


def errors(obj: dict) -> list[tuple[str, str]]:
    return [(e.path, e.reason) for e in validate_object(obj)]


SERVED = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo", "labels": {"ambit.io/use-waypoint": "wp"}}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "demo"},
     "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}},
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "wp", "namespace": "demo"},
     "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}},
]


def warnings(obj: dict) -> list[tuple[str, str]]:
    return [(a.path, a.reason) for a in advisories([*SERVED, obj]) if a.condition == NOT_ENFORCED]


# -- retries ------------------------------------------------------------------------------------

def test_a_retry_on_typo_is_refused_with_istios_message() -> None:
    got = errors(vs({"retries": {"attempts": 3, "retryOn": "5xxx,gateway-eror"}}))
    [(path, reason)] = got
    assert path == "spec.http[0].retries.retryOn"
    assert reason.startswith('"5xxx" is not a valid retryOn policy; "gateway-eror" is not a valid retryOn policy')


@pytest.mark.parametrize("retry_on", ["5xx,gateway-error", "503, 409", "reset-before-request,envoy-ratelimited",
                                      "retriable-headers", "http3-post-connect-failure", "cancelled,unavailable"])
def test_every_istio_retry_on_value_and_status_code_is_accepted(retry_on: str) -> None:
    assert errors(vs({"retries": {"attempts": 2, "retryOn": retry_on}})) == []


def test_a_number_that_is_no_http_status_is_refused() -> None:
    [(path, reason)] = errors(vs({"retries": {"attempts": 2, "retryOn": "5xx,999"}}))
    assert path == "spec.http[0].retries.retryOn" and reason.startswith('"999" is not a valid retryOn policy')
    [(_, reason)] = errors(vs({"retries": {"attempts": 2, "retryOn": "5\u00b23"}}))     # isdigit() is True; int() raises
    assert reason.startswith('"5\u00b23" is not a valid retryOn policy')


@pytest.mark.parametrize("retries", [{"retryOn": "5xx"}, {"attempts": 0, "perTryTimeout": "1s"},
                                     {"retryRemoteLocalities": False}])
def test_a_retry_policy_without_attempts_is_refused_not_silently_disabled(retries: dict) -> None:
    assert errors(vs({"retries": retries})) == [(
        "spec.http[0].retries.attempts", "http retry policy configured when attempts are set to 0 (disabled): set "
        "attempts to the number of retries (Istio refuses this too)")]
    assert errors(vs({"retries": {"attempts": 0}})) == []      # disabling retries on purpose stays fine


def test_retry_on_values_the_waypoint_does_not_apply_are_warned_about() -> None:
    found = warnings(vs({"retries": {"attempts": 2, "retryOn": "5xx,retriable-headers"}}))
    assert found == [("spec.http[0].retries.retryOn", '"retriable-headers" is accepted, not applied: a VirtualService '
                      "cannot list the retriable response headers (Istio sets none either) and the waypoint does not "
                      "read x-envoy-retriable-header-names")]


def test_a_retry_on_of_only_unapplied_values_says_the_route_retries_nothing() -> None:
    found = warnings(vs({"retries": {"attempts": 2, "retryOn": "http3-post-connect-failure"}}))
    assert [p for p, _ in found] == ["spec.http[0].retries.retryOn"] * 2
    assert "never over HTTP/3" in found[0][1] and "this route retries nothing" in found[1][1]


def test_applied_retry_on_values_give_no_warning() -> None:
    assert warnings(vs({"retries": {"attempts": 2, "retryOn": "reset-before-request,envoy-ratelimited,503"}})) == []


# -- fault.abort ----------------------------------------------------------------------------------

def test_an_unknown_grpc_status_is_refused_with_istios_message() -> None:
    assert errors(vs({"fault": {"abort": {"grpcStatus": "UNAVAILBLE", "percentage": {"value": 100}}}})) == [(
        "spec.http[0].fault.abort.grpcStatus", 'gRPC status "UNAVAILBLE" is not supported. See '
        "https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example "
        "'NOT_FOUND'")]
    for ok in ("UNAVAILABLE", "NOT_FOUND", "14"):
        assert errors(vs({"fault": {"abort": {"grpcStatus": ok, "percentage": {"value": 100}}}})) == []


def test_http2_error_is_refused_as_istio_does() -> None:
    [(path, reason)] = errors(vs({"fault": {"abort": {"http2Error": "REFUSED_STREAM", "percentage": {"value": 1}}}}))
    assert path == "spec.http[0].fault.abort.http2Error"
    assert reason.startswith("HTTP/2 abort fault injection not supported yet")


# -- hosts, directResponse, statPrefix --------------------------------------------------------------

@pytest.mark.parametrize("spec", [{}, {"hosts": []}])
def test_a_virtual_service_without_hosts_is_a_delegate(spec: dict) -> None:
    """Istio's validateVirtualService: without hosts it is a delegate (applied through a root's
    http[].delegate), so it may not bind gateways, carry tls/tcp routes or delegate again."""
    obj = vs({})
    obj["spec"].pop("hosts")
    obj["spec"].update(spec)
    assert errors(obj) == []
    tls = [{"match": [{"sniHosts": ["web"]}], "route": ROUTE}]
    bad = {**obj, "spec": {**obj["spec"], "gateways": ["gw"], "tcp": [{"route": ROUTE}], "tls": tls,
                           "http": [{"route": ROUTE}, {"delegate": {"name": "deeper"}}]}}
    assert errors(bad) == [
        *[(f"spec.{f}", f"a delegate VirtualService (one without hosts) must have no {f}: its root VirtualService "
           "binds hosts and gateways, and delegates http routes only (Istio refuses this too)")
          for f in ("gateways", "tls", "tcp")],
        ("spec.http[1].delegate", "a delegate VirtualService (one without hosts) cannot delegate again: only one "
         "level of delegation (Istio refuses this too)")]


def test_a_delegate_must_be_named_and_is_the_routes_only_action() -> None:
    root = vs({"delegate": {"namespace": "team"}})
    root["spec"]["http"][0].pop("route")
    assert errors(root) == [("spec.http[0].delegate.name", "required field is missing")]
    assert errors(vs({"delegate": {"name": "d"}})) == [
        ("spec.http[0]", "only one of route, redirect, directResponse, delegate may be set, got route, delegate")]


@pytest.mark.parametrize("text", ["this is not base64!", "iVBORw0KGgr", "aGk=\n!"])
def test_direct_response_bytes_must_be_base64(text: str) -> None:
    obj = vs({"directResponse": {"status": 200, "body": {"bytes": text}}})
    obj["spec"]["http"][0].pop("route")
    [(path, reason)] = errors(obj)
    assert path == "spec.http[0].directResponse.body.bytes" and reason.startswith("must be base64")
    obj["spec"]["http"][0]["directResponse"]["body"]["bytes"] = "iVBORw0KGgr/"
    assert errors(obj) == []


def test_stat_prefix_is_warned_about_by_its_path() -> None:
    found = warnings(vs({"match": [{"uri": {"prefix": "/a"}}, {"uri": {"prefix": "/"}, "statPrefix": "root"}]}))
    assert [p for p, _ in found] == ["spec.http[0].match[1].statPrefix"]
    assert found[0][1].startswith("accepted, not applied: the waypoint keeps no per-route statistics")


# -- redirect.prefixRewrite -----------------------------------------------------------------------

def redirect(redirect: dict, match: list | None = None) -> dict:
    obj = vs({"redirect": redirect, **({"match": match} if match is not None else {})})
    obj["spec"]["http"][0].pop("route")
    return obj


@pytest.mark.parametrize("rd,match", [
    ({"prefixRewrite": "/v2/"}, [{"uri": {"prefix": "/v1/"}}]),
    ({"prefixRewrite": "/", "authority": "new.example", "redirectCode": 308}, [{"uri": {"prefix": "/old"}}]),
    ({"prefixRewrite": "/v2"}, None),                                       # no match: the implicit prefix "/"
    ({"prefixRewrite": "/v2"}, [{"uri": {"prefix": "/a"}}, {"headers": {"x-v": {"exact": "1"}}}]),
    ({"prefixRewrite": "", "uri": "/moved"}, [{"uri": {"exact": "/old"}}]),  # empty counts as unset, as in Istio
])
def test_prefix_rewrite_is_accepted(rd: dict, match: list | None) -> None:
    assert errors(redirect(rd, match)) == []


def test_prefix_rewrite_and_uri_are_exclusive_as_in_istio() -> None:
    assert errors(redirect({"uri": "/new", "prefixRewrite": "/v2"})) == [(
        "spec.http[0].redirect", "only one of uri, prefixRewrite may be set (uri replaces the whole path, "
        "prefixRewrite the matched prefix; Istio refuses both too)")]


@pytest.mark.parametrize("uri,kind", [({"exact": "/old"}, "exact"), ({"regex": "/v[0-9]+"}, "regex")])
def test_prefix_rewrite_needs_every_uri_match_to_be_a_prefix(uri: dict, kind: str) -> None:
    """Istio's validateHTTPRedirect: with an exact or regex uri there is no matched prefix to swap."""
    got = errors(redirect({"prefixRewrite": "/v2"}, [{"uri": {"prefix": "/a"}}, {"uri": uri}]))
    assert got == [("spec.http[0].redirect.prefixRewrite",
                    f"needs every match's uri to be a prefix match, but match[1].uri is {kind} (Istio refuses this "
                    "too): use a uri prefix match, or redirect with uri")]


def test_prefix_rewrite_must_be_a_string() -> None:
    assert errors(redirect({"prefixRewrite": 2})) == [("spec.http[0].redirect.prefixRewrite", "must be a string, got 2")]


@pytest.mark.parametrize("rd", [{"redirectCode": 302}, {"prefixRewrite": ""}, {"uri": "", "authority": ""}])
def test_a_redirect_that_changes_nothing_is_refused_as_in_istio(rd: dict) -> None:
    """Istio: "redirect must specify URI, authority, scheme, or port"; Ambit answered it with a
    Location naming the very URL asked for, which a client follows in a loop."""
    assert errors(redirect(rd)) == [(
        "spec.http[0].redirect", "redirect must specify uri, prefixRewrite, authority, scheme, port or derivePort "
        "(Istio refuses this too): without one it sends the client back to the same URL")]
    for ok in ({"port": 8443}, {"derivePort": "FROM_REQUEST_PORT"}, {"scheme": "https"}):
        assert errors(redirect({**rd, **ok})) == []
