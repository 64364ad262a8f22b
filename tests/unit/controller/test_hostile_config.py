"""Regressions found by fuzzing the configuration kinds: objects that crashed validation or the
whole translation, values that slipped past a check, and messages that echoed hostile values raw.

The rule under test: bad input gets a clear error naming the object, the field and the reason, and
the rest of the snapshot still translates.
"""

from __future__ import annotations

import copy
import gc
from typing import Any

import pytest

from controller.translate import translate
from controller.validation import FieldError, validate_object
from tests.unit.controller.test_config_translate import ns, pod, service


def world() -> list[dict[str, Any]]:
    """A namespace with one Service and its pod: what must still translate beside a bad object."""
    return [ns("demo", **{"ambit.io/dataplane-mode": "ambient"}),
            service("reviews", {"app": "reviews"}, [{"name": "http", "port": 9080, "targetPort": 9080}]),
            pod("reviews-1", "10.244.1.10", labels={"app": "reviews"})]


def route(**path: Any) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "demo"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
                     "rules": [{"matches": [{"path": path}], "backendRefs": [{"name": "reviews", "port": 9080}]}]}}


def errors(obj: Any) -> list[str]:
    return [str(e) for e in validate_object(obj)]


# -- `field: null` is unset, for the translation as for validation ---------------------------------

@pytest.mark.parametrize("path", [{"type": "PathPrefix", "value": None}, {"type": None, "value": "/api"}],
                         ids=["value-null", "type-null"])
def test_a_null_path_field_is_unset_and_the_route_translates(path: dict[str, Any]) -> None:
    obj = route(**path)
    assert validate_object(obj) == []          # raised AttributeError ('NoneType'.startswith) before
    t = translate([*world(), obj])             # raised KeyError: None before
    assert t.errors == []
    (http,) = [r for r in t.waypoint_routes if r.service == "demo/reviews"][0].http
    (m,) = http.matches
    assert (m.path.kind, m.path.value) == ("path_prefix", path["value"] or "/")


def test_a_null_service_target_port_means_the_port_itself() -> None:
    svc = service("ratings", {"app": "reviews"}, [{"name": "http", "port": 9080, "targetPort": None}],
                  cluster_ip="10.96.0.11")
    t = translate([*world(), svc])             # raised TypeError: int(None) before
    assert t.errors == []
    ratings = [s for s in t.services if s.name == "ratings"][0]
    assert [(p.port, p.target_port) for p in ratings.ports] == [(9080, 9080)]


def test_an_istio_gateway_without_spec_is_refused_naming_the_missing_fields() -> None:
    gw = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": "demo"}}
    want = ["Gateway/demo/gw: spec.selector: required field is missing",
            "Gateway/demo/gw: spec.servers: required field is missing"]
    assert errors(gw) == want
    assert errors({**gw, "spec": None}) == want
    t = translate([*world(), gw])              # raised KeyError: 'servers' before
    assert [str(e) for e in t.errors] == want
    assert any(s.name == "reviews" for s in t.services)


# -- checks that a trailing newline slipped past (`$` matches before a final "\n") ----------------

@pytest.mark.parametrize("mutate, path", [
    (lambda o: o["metadata"].__setitem__("name", "r\n"), "metadata.name"),
    (lambda o: o["metadata"].__setitem__("namespace", "demo\n"), "metadata.namespace"),
    (lambda o: o["metadata"].__setitem__("labels", {"app": "x\n"}), "metadata.labels[app]"),
    (lambda o: o["spec"]["rules"][0].__setitem__("timeouts", {"request": "1s\n"}), "spec.rules[0].timeouts.request"),
], ids=["name", "namespace", "label", "gateway-api-duration"])
def test_a_trailing_newline_is_refused(mutate: Any, path: str) -> None:
    obj = route(type="PathPrefix", value="/")
    mutate(obj)
    found = validate_object(obj)
    assert [e.path for e in found] == [path]
    translate([*world(), obj])                 # the duration raised ValueError here before


# -- metadata the translation reads -------------------------------------------------------------

@pytest.mark.parametrize("field, value, reason", [
    ("uid", ["x"], 'must be a string, got ["x"]'),
    ("creationTimestamp", 7, "must be a string, got 7"),
    ("creationTimestamp", "yesterday", 'must be an RFC 3339 time such as "2024-01-31T12:00:00Z", got "yesterday"'),
    ("generation", -1, "must be an integer >= 0, got -1"),
])
def test_metadata_the_translation_reads_is_checked(field: str, value: Any, reason: str) -> None:
    p = pod("reviews-2", "10.244.1.11", labels={"app": "reviews"})
    p["metadata"][field] = value
    assert errors(p) == [f"Pod/demo/reviews-2: metadata.{field}: {reason}"]
    t = translate([*world(), p])               # TypeError (unhashable uid, int < str) before
    assert [w.name for w in t.workloads] == ["reviews-1"]


def test_valid_metadata_is_accepted() -> None:
    p = pod("reviews-2", "10.244.1.11", labels={"app": "reviews"})
    p["metadata"].update(creationTimestamp="2026-01-02T03:04:05.123456+02:00", generation=3, resourceVersion="12")
    assert errors(p) == []


# -- messages quote hostile values safely ---------------------------------------------------------

def test_messages_escape_control_characters_and_stay_bounded() -> None:
    obj = route(type="PathPrefix", value="/")
    obj["metadata"]["labels"] = {"app": "x\nPod/demo/other: spec: forged\u202e" + "y" * 100_000}
    (e,) = validate_object(obj)
    text = str(e)
    assert "\n" not in text and "\u202e" not in text
    assert "x\\nPod/demo/other: spec: forged\\u202e" in text
    assert len(text) < 3000
    assert e.ref == "HTTPRoute/demo/r" and e.path == "metadata.labels[app]"


def test_a_field_error_keeps_what_is_printable() -> None:
    e = FieldError("VirtualService/demo/vs", "spec.hosts[0]", 'must not be "é☃😀"')
    assert str(e) == 'VirtualService/demo/vs: spec.hosts[0]: must not be "é☃😀"'


def test_dropping_nulls_leaves_the_callers_object_as_it_was() -> None:
    obj = route(type="PathPrefix", value=None)
    before = copy.deepcopy(obj)
    assert translate([*world(), obj]).errors == []
    assert obj == before                       # the source's cache keeps what the API server sent


# -- regexes and path templates the waypoint must be able to run ------------------------------------

def authz(*paths: str) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "ap", "namespace": "demo"},
            "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": list(paths)}}]}]}}


@pytest.mark.parametrize("path, reason", [
    ("/docs—/{*}", 'segment "docs—" must be RFC 3986 path characters'),
    ("/a{*}", 'contains "{" or "}" beyond a {*} or {**} segment'),
    ("/{**}/{*}", "{**} must be the last operator"),
])
def test_a_path_template_the_waypoint_cannot_compile_is_refused(path: str, reason: str) -> None:
    """The waypoint turns `{*}`/`{**}` templates into RE2 at the first request: "/docs—/{*}" was
    accepted, and every request the DENY rule saw then raised RegexError in the waypoint."""
    (e,) = validate_object(authz("/ok/{*}", path))
    assert (e.ref, e.path) == ("AuthorizationPolicy/demo/ap", "spec.rules[0].to[0].operation.paths[1]")
    assert reason in e.reason


@pytest.mark.parametrize("path", ["/users/{*}/profile", "/files/{**}", "/{**}/x", "/a-b_c.~%20!$&'()+,;:@=/{*}",
                                  "/docs—", "/literal{braces}"])
def test_istio_path_templates_and_plain_paths_are_accepted(path: str) -> None:
    assert validate_object(authz(path)) == []


def test_a_regex_whose_program_is_too_large_is_refused() -> None:
    """`.{1000}` twenty times compiled to 320,000 RE2 instructions (~40 ms and ~5 MB each, in the
    controller and every waypoint); Istio caps Envoy's programs at 32768."""
    obj = route(type="RegularExpression", value="/" + ".{1000}" * 20)
    (e,) = validate_object(obj)
    assert e.path == "spec.rules[0].matches[0].path.value"
    assert "pattern too large: its RE2 program size is" in e.reason and "the limit is 32768" in e.reason
    assert validate_object(route(type="RegularExpression", value="/[a-z]{1,1000}")) == []


def test_the_last_good_cache_hands_out_objects_without_nulls() -> None:
    """Every consumer of a source's snapshot (translation, waypoint reconciler, advisories) reads
    the object as validation did."""
    from controller.sources.cache import LastGoodCache

    cache = LastGoodCache()
    obj = route(type="PathPrefix", value=None)
    assert cache.upsert(obj) == []
    (held,) = cache.objects()
    assert held["spec"]["rules"][0]["matches"][0]["path"] == {"type": "PathPrefix"}
    assert obj["spec"]["rules"][0]["matches"][0]["path"] == {"type": "PathPrefix", "value": None}
    version = cache.version
    cache.upsert(copy.deepcopy(obj))
    assert cache.version == version          # the same object again is no change



def test_a_value_nested_too_deeply_to_quote_is_still_refused_by_name() -> None:
    """Quoting the bad value (json.dumps) raised RecursionError out of validation.

    The collector is emptied first and held off meanwhile: a finalizer of an earlier test's
    garbage that ran at this depth would itself hit the recursion limit, which pytest reports
    as an unraisable exception of this test (seen once under xdist)."""
    deep: Any = "x"
    for _ in range(3000):
        deep = {"a": deep}
    obj = route(type="PathPrefix", value="/")
    obj["metadata"]["creationTimestamp"] = deep
    gc.collect()
    gc.disable()
    try:
        (e,) = validate_object(obj)
    finally:
        gc.enable()
    assert (e.path, e.reason) == ("metadata.creationTimestamp", "must be a string, got <a dict nested too deeply to show>")


# -- CIDRs as Istio (Go's net/netip) reads them --------------------------------------------------------

def ip_blocks(*blocks: str) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "ap", "namespace": "demo"},
            "spec": {"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": list(blocks)}}]}]}}


@pytest.mark.parametrize("block, why", [
    ("10.0.0.0/0.255.255.255", "prefix length in decimal"),    # Python read this hostmask as a /8
    ("10.0.0.0/255.0.0.0", "prefix length in decimal"),
    ("10.0.0.0/08", "prefix length in decimal"),
    ("fe80::1%eth0/64", "IPv6 zone"),
])
def test_a_cidr_istio_refuses_is_refused(block: str, why: str) -> None:
    (e,) = validate_object(ip_blocks("192.0.2.0/24", block))
    assert e.path == "spec.rules[0].from[0].source.ipBlocks[1]" and why in e.reason
    assert validate_object(ip_blocks("10.0.0.0/8", "10.0.0.1/8", "10.0.0.5", "::/0", "0.0.0.0/0", "2001:db8::/32")) == []


@pytest.mark.parametrize("field, value, reason", [
    ("apiVersion", ["v1"], 'must be a string, got ["v1"]'),
    ("kind", 7, "must be a string, got 7"),
    ("metadata", "r", 'must be a map, got "r"'),
])
def test_a_header_field_of_the_wrong_type_is_not_called_missing(field: str, value: Any, reason: str) -> None:
    obj = route(type="PathPrefix", value="/")
    obj[field] = value
    assert (field, reason) in [(e.path, e.reason) for e in validate_object(obj)]
    del obj[field]
    assert (field, "required field is missing") in [(e.path, e.reason) for e in validate_object(obj)]


@pytest.mark.parametrize("kind", [[], ["Service"], {"k": "v"}], ids=["empty-list", "list", "map"])
def test_an_object_whose_kind_is_a_list_or_map_is_ignored_and_the_rest_translates(kind: Any) -> None:
    """Found by tests/unit/controller/test_config_fuzz.py: `kind in BY_KIND` raised TypeError
    (unhashable) out of translate, for the whole snapshot. A kind that is no string is no kind of
    Ambit's: ignored as an unknown kind is, while validation names the field."""
    obj = {**route(type="PathPrefix", value="/"), "kind": kind}
    assert [e.path for e in validate_object(obj)] == ["kind"]
    t = translate([*world(), obj])
    assert t.errors == []
    assert any(s.name == "reviews" for s in t.services)


def test_a_service_port_listed_twice_is_refused_as_the_api_server_refuses_it() -> None:
    """Found by test_config_fuzz.py: two entries for TCP port 9080 passed validation, and ztunnel
    NACKed the translated Service ("ports[1].port: 9080 appears twice"), keeping every Service's
    previous state. The API server refuses a duplicate port (and protocol) or port name."""
    svc = service("ratings", {"app": "reviews"}, [{"name": "http", "port": 9080}, {"name": "http2", "port": 9080},
                                                  {"name": "http", "port": 9081}], cluster_ip="10.96.0.11")
    assert [(e.path, e.reason) for e in validate_object(svc)] == [
        ("spec.ports[1].port", "duplicate port 9080/TCP (also ports[0])"),
        ("spec.ports[2].name", 'duplicate port name "http" (also ports[0])')]
    t = translate([*world(), svc])
    assert [e.ref for e in t.errors] == ["Service/demo/ratings", "Service/demo/ratings"]
    # one port for TCP and one for UDP (kube-dns) is two ports
    dns = service("dns", {"app": "reviews"}, [{"name": "dns", "port": 53, "protocol": "UDP"},
                                              {"name": "dns-tcp", "port": 53}], cluster_ip="10.96.0.12")
    assert validate_object(dns) == []


def test_a_pod_listing_one_address_twice_is_refused_as_the_api_server_refuses_it() -> None:
    """Found by test_config_fuzz.py: `podIPs` naming one address twice (also written two ways, as
    IPv6 can be) passed, and ztunnel refused every Workload update, the pod claiming its own
    address twice."""
    p = pod("reviews-2", "10.244.1.11")
    p["status"]["podIPs"] = [{"ip": "fd00::1"}, {"ip": "fd00:0::1"}]
    assert [(e.path, e.reason) for e in validate_object(p)] == [
        ("status.podIPs[1].ip", "duplicate address fd00:0::1 (also podIPs[0])")]
    p["status"]["podIPs"] = [{"ip": "10.244.1.11"}, {"ip": "fd00::1"}]     # dual stack
    assert validate_object(p) == []


def test_a_cluster_scoped_objects_namespace_must_still_be_a_string() -> None:
    """Found by test_config_fuzz.py: a Namespace's `metadata.namespace` was not looked at (a
    cluster-scoped kind has none), and a map there failed the whole translation (TypeError sorting
    the Namespaces by namespace and name). A string is accepted, as the API server clears it."""
    n = ns("team")
    n["metadata"]["namespace"] = {"a": 1}
    assert errors(n) == ['Namespace/team: metadata.namespace: must be a string, got {"a": 1}']
    t = translate([*world(), n])
    assert [e.ref for e in t.errors] == ["Namespace/team"] and any(s.name == "reviews" for s in t.services)
    n["metadata"]["namespace"] = "ignored"
    assert errors(n) == []


def test_a_field_named_by_the_empty_string_is_named_in_the_path() -> None:
    """Found by test_config_fuzz.py: an unknown field "" printed as `HTTPRoute/demo/r: unknown
    field`, with no path at all (at the top) or a dangling `spec.` inside."""
    obj = route(type="PathPrefix", value="/")
    obj[""] = 1
    obj["spec"][""] = 2
    assert errors(obj) == ['HTTPRoute/demo/r: spec[""]: unknown field', 'HTTPRoute/demo/r: [""]: unknown field']


@pytest.mark.parametrize("field", ["serviceAccountName", "serviceAccount"])
def test_a_pod_service_account_that_is_no_name_is_refused(field: str) -> None:
    """Found by test_config_fuzz.py: `serviceAccountName: "*.*"` passed, made the identity
    spiffe://cluster.local/ns/demo/sa/*.*, and ztunnel refused every Workload update with it."""
    p = pod("reviews-2", "10.244.1.11")
    p["spec"][field] = "*.*"
    (e,) = validate_object(p)
    assert e.path == f"spec.{field}" and "RFC 1123" in e.reason
    p["spec"][field] = "reviews.v2"
    assert validate_object(p) == []
