"""Validation of every configuration kind: the examples verbatim, broken copies, and cross-field rules."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from controller.kinds.common import check_regex, parse_duration
from controller.validation import FieldError, ValidationError, validate_all, validate_object
from tests.unit.controller.ctl_examples import example_docs, example_files

DOCS = example_docs()


def errors_of(obj: dict) -> list[str]:
    return [str(e) for e in validate_object(obj)]


def test_examples_are_present() -> None:
    names = {f.name for f in example_files()}
    assert {"virtual-service.yaml", "destination-rule.yaml", "authorization-policy.yaml",
            "httproute-split.yaml", "waypoint.yaml"} <= names


@pytest.mark.parametrize("doc", [d for _, d in DOCS], ids=[i for i, _ in DOCS])
def test_every_example_validates_verbatim(doc: dict) -> None:
    assert validate_object(doc) == []


@pytest.mark.parametrize("doc", [d for _, d in DOCS if ".istio.io/" in d["apiVersion"]],
                         ids=[i for i, d in DOCS if ".istio.io/" in d["apiVersion"]])
def test_every_istio_example_validates_under_the_ambit_group(doc: dict) -> None:
    group, version = doc["apiVersion"].split("/")
    ambit = copy.deepcopy(doc)
    ambit["apiVersion"] = f"{group.replace('istio.io', 'ambit.io')}/{version if version in ('v1', 'v1beta1') else 'v1'}"
    assert validate_object(ambit) == []


# -- broken copies: every leaf of every example is type-checked ----------------------------------

def leaves(value: Any, path: str = "spec") -> Iterator[tuple[str, list[Any]]]:
    """(display path, key path) of every scalar under spec."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _with(leaves(v, f"{path}.{k}"), k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _with(leaves(v, f"{path}[{i}]"), i)
    else:
        yield path, []


def _with(it: Iterator[tuple[str, list[Any]]], key: Any) -> Iterator[tuple[str, list[Any]]]:
    for p, keys in it:
        yield p, [key, *keys]


def _wrong(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int | float):
        return "ten"
    return 12345


def _normal(path: str) -> str:
    return re.sub(r"\[([^\]0-9][^\]]*)\]", r".\1", path)


LEAF_CASES = [(i, d, p, keys) for i, d in DOCS for p, keys in leaves(d.get("spec") or {})]


@pytest.mark.parametrize("doc,path,keys", [(d, p, k) for _, d, p, k in LEAF_CASES],
                         ids=[f"{i}:{p}" for i, _, p, _ in LEAF_CASES])
def test_a_wrong_type_anywhere_is_rejected_with_its_path(doc: dict, path: str, keys: list[Any]) -> None:
    bad = copy.deepcopy(doc)
    target = bad["spec"]
    for k in keys[:-1]:
        target = target[k]
    target[keys[-1]] = _wrong(target[keys[-1]])
    errors = validate_object(bad)
    assert len(errors) == 1, errors
    assert _normal(errors[0].path) == _normal(path)
    assert "must be" in errors[0].reason


def _set(path: list[Any], value: Any) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        t = doc
        for k in path[:-1]:
            t = t.setdefault(k, {}) if isinstance(k, str) else t[k]
        t[path[-1]] = value
    return mutate


# (example, mutation, expected path, expected reason fragment): an unknown enum value per file,
# and a regex that does not compile wherever the kind has regex fields.
BROKEN = [
    ("authorization-policy.yaml", _set(["spec", "action"], "PERMIT"), "spec.action", "must be one of ALLOW, DENY"),
    ("peer-authentication.yaml", _set(["spec", "mtls", "mode"], "STRICTEST"), "spec.mtls.mode", "must be one of"),
    ("destination-rule.yaml", _set(["spec", "trafficPolicy", "loadBalancer", "simple"], "FASTEST"),
     "spec.trafficPolicy.loadBalancer.simple", "must be one of"),
    ("destination-rule-tls.yaml", _set(["spec", "trafficPolicy", "tls", "mode"], "MUTUALISH"),
     "spec.trafficPolicy.tls.mode", "must be one of DISABLE, SIMPLE, MUTUAL, ISTIO_MUTUAL"),
    ("circuit-breaker.yaml", _set(["spec", "trafficPolicy", "connectionPool", "http", "h2UpgradePolicy"], "MAYBE"),
     "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy", "must be one of"),
    ("circuit-breaker.yaml", _set(["spec", "trafficPolicy", "outlierDetection", "interval"], "10 seconds"),
     "spec.trafficPolicy.outlierDetection.interval", "must be a duration"),
    ("telemetry.yaml", _set(["spec", "tracing", 0, "match"], {"mode": "BOTH"}), "spec.tracing[0].match.mode",
     "must be one of CLIENT_AND_SERVER"),
    ("telemetry.yaml", _set(["spec", "tracing", 0, "randomSamplingPercentage"], 150),
     "spec.tracing[0].randomSamplingPercentage", "must be a number 0..100"),
    ("virtual-service.yaml", _set(["spec", "http", 0, "corsPolicy"], {"unmatchedPreflights": "SOMETIMES"}),
     "spec.http[0].corsPolicy.unmatchedPreflights", "must be one of"),
    ("virtual-service.yaml", _set(["spec", "http", 0, "match", 0, "headers", "x-canary"], {"regex": "(unclosed"}),
     "spec.http[0].match[0].headers[x-canary].regex", "must be a valid RE2 regular expression"),
    ("canary-deployment.yaml", _set(["spec", "http", 0, "match", 0, "headers", "Cookie", "regex"], "^(user=[a-z"),
     "spec.http[0].match[0].headers[Cookie].regex", "must be a valid RE2 regular expression"),
    ("canary-deployment.yaml", _set(["spec", "http", 1, "route", 0, "weight"], -1),
     "spec.http[1].route[0].weight", "must be an integer 0..2147483647, got -1"),
    ("httproute-split.yaml", _set(["spec", "rules", 0, "matches", 0, "path"], {"type": "Glob", "value": "/"}),
     "spec.rules[0].matches[0].path.type", "must be one of Exact, PathPrefix, RegularExpression"),
    ("httproute-split.yaml", _set(["spec", "rules", 0, "matches", 0, "headers", 0, "type"], "RegularExpression"),
     None, None),   # "true" is a fine regex: still valid
    ("httproute-split.yaml", _set(["spec", "rules", 0, "matches", 0, "headers", 0],
                                  {"type": "RegularExpression", "name": "x-canary", "value": "*yes"}),
     "spec.rules[0].matches[0].headers[0].value", "must be a valid RE2 regular expression"),
    ("waypoint.yaml", _set(["spec", "listeners", 0, "protocol"], "UDP"), "spec.listeners[0].protocol",
     "a waypoint listener must use protocol HBONE or HTTP"),
]


def _example(name: str) -> dict:
    for f in example_files():
        if f.name == name:
            return yaml.safe_load(f.read_text())
    raise AssertionError(f"no example {name}")


@pytest.mark.parametrize("name,mutate,path,reason", BROKEN, ids=[f"{b[0]}:{b[2]}" for b in BROKEN])
def test_broken_copies_of_examples_are_rejected(name: str, mutate: Callable[[dict], None], path: str | None,
                                                reason: str | None) -> None:
    doc = _example(name)
    mutate(doc)
    errors = validate_object(doc)
    if path is None:
        assert errors == []
        return
    assert [(e.path, reason in e.reason) for e in errors] == [(path, True)], errors


def test_every_example_file_has_a_broken_copy() -> None:
    assert {f.name for f in example_files()} <= {b[0] for b in BROKEN} | {"destination-rule.yaml"}


# -- messages, paths and object references -------------------------------------------------------

def vs(http: list[dict], **spec: Any) -> dict:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "demo"}, "spec": {"hosts": ["reviews"], "http": http, **spec}}


def test_error_message_names_object_path_and_reason() -> None:
    obj = vs([{"route": [{"destination": {"host": "reviews"}, "weight": "ten"}]}])
    assert errors_of(obj) == [
        'VirtualService/demo/reviews: spec.http[0].route[0].weight: must be an integer 0..2147483647, got "ten"']


def test_unknown_fields_are_rejected_with_their_path() -> None:
    obj = vs([{"route": [{"destination": {"host": "reviews", "subnet": "v1"}}]}], hostz=["x"])
    assert sorted(e.path for e in validate_object(obj)) == ["spec.hostz", "spec.http[0].route[0].destination.subnet"]
    reasons = {e.path: e.reason for e in validate_object(obj)}
    assert reasons == {"spec.hostz": "unknown field; did you mean 'hosts'?",
                       "spec.http[0].route[0].destination.subnet": "unknown field; did you mean 'subset'?"}


def test_api_version_must_be_served_for_the_kind() -> None:
    obj = vs([{"route": [{"destination": {"host": "reviews"}}]}])
    obj["apiVersion"] = "security.istio.io/v1"
    [e] = validate_object(obj)
    assert e.path == "apiVersion" and "networking.istio.io/v1alpha3" in e.reason
    for ok in ("networking.istio.io/v1alpha3", "networking.istio.io/v1beta1", "networking.ambit.io/v1"):
        obj["apiVersion"] = ok
        assert validate_object(obj) == []
    obj["apiVersion"] = "networking.ambit.io/v1alpha3"      # Ambit's groups serve v1 and v1beta1 only
    assert [e.path for e in validate_object(obj)] == ["apiVersion"]


def test_metadata_is_checked() -> None:
    obj = vs([{"route": [{"destination": {"host": "reviews"}}]}])
    obj["metadata"] = {"name": "Reviews_1", "labels": {"version": 2}}
    assert {e.path for e in validate_object(obj)} == {"metadata.name", "metadata.labels[version]"}
    assert errors_of({"kind": "VirtualService"})[0].startswith("VirtualService/default/<no name>: ")


@pytest.mark.parametrize("value,seconds", [("1.5s", 1.5), ("300ms", 0.3), ("2m", 120), ("1h30m", 5400),
                                           ("10us", 1e-5), ("0", 0.0), ("0.5s", 0.5)])
def test_durations_parse(value: str, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["10", "1.5", "-1s", "1 s", "s", "1d", "", "1.5.2s"])
def test_bad_durations_are_rejected(value: str) -> None:
    obj = vs([{"route": [{"destination": {"host": "reviews"}}], "timeout": value}])
    [e] = validate_object(obj)
    assert e.path == "spec.http[0].timeout" and "must be a duration" in e.reason


def test_per_try_timeout_must_be_at_least_a_millisecond() -> None:
    obj = vs([{"route": [{"destination": {"host": "reviews"}}], "retries": {"attempts": 3, "perTryTimeout": "0s"}}])
    assert [e.path for e in validate_object(obj)] == ["spec.http[0].retries.perTryTimeout"]


@pytest.mark.parametrize("pattern,fragment", [
    ("(?=admin)", "invalid perl operator"), ("(?<!x)y", "invalid perl operator"),
    (r"(a)\1", "invalid escape sequence"), ("(?>ab)", "invalid perl operator"),
    ("a++", "bad repetition operator"), ("(", "missing )"), ("*", "no argument for repetition"),
])
def test_regexes_outside_re2_are_rejected_with_re2s_reason(pattern: str, fragment: str) -> None:
    reason = check_regex(pattern)
    assert reason is not None and reason.startswith("must be a valid RE2 regular expression") and fragment in reason


@pytest.mark.parametrize("pattern", [r"^/api/v[0-9]+/.*$", "^(.*?;)?(user=premium)(;.*)?$", r"(?i)chrome", r"\d{3}",
                                     "[[:alpha:]]+", r"\pL+", r"\p{Greek}"])
def test_re2_regexes_are_accepted(pattern: str) -> None:
    """RE2 syntax Python's `re` lacks (POSIX classes, Unicode classes) is valid for Envoy, so it is
    valid here: the validator and the waypoint compile with the same RE2."""
    assert check_regex(pattern) is None


def test_a_bad_regex_is_refused_naming_the_field() -> None:
    obj = vs([{"match": [{"headers": {"x-user": {"regex": "(?=admin)"}}}], "route": [{"destination": {"host": "a"}}]}])
    [e] = validate_object(obj)
    assert e.path == "spec.http[0].match[0].headers[x-user].regex"
    assert "RE2" in e.reason and "invalid perl operator" in e.reason


# -- cross-field rules ----------------------------------------------------------------------------

@pytest.mark.parametrize("weights", [(1, 1, 2), (60, 30), (200, 800), (0, 5), (1,), (0,), (None,)])
def test_weights_are_relative_and_need_not_add_up_to_100(weights: tuple[int | None, ...]) -> None:
    """Istio: a destination gets weight/(sum of weights); only negative weights and a total of 0
    over several destinations are invalid (istio pkg/config/validation `validateHTTPRouteDestinations`,
    `validateWeight`). A single destination takes everything, whatever its weight."""
    route = [{"destination": {"host": f"h{i}"}, **({} if w is None else {"weight": w})} for i, w in enumerate(weights)]
    assert errors_of(vs([{"route": route}])) == []


def test_several_destinations_with_a_total_weight_of_0_are_refused() -> None:
    obj = vs([{"route": [{"destination": {"host": "a"}, "weight": 0}, {"destination": {"host": "b"}}]}])
    assert errors_of(obj) == ["VirtualService/demo/reviews: spec.http[0].route: the total weight of several "
                              "destinations must be above 0, got 0"]


def test_a_negative_weight_is_refused() -> None:
    obj = vs([{"route": [{"destination": {"host": "a"}, "weight": -1}, {"destination": {"host": "b"}, "weight": 2}]}])
    assert [e.path for e in validate_object(obj)] == ["spec.http[0].route[0].weight"]


def test_http_route_needs_an_action_and_one_only() -> None:
    assert [e.path for e in validate_object(vs([{"match": [{"uri": {"prefix": "/"}}]}]))] == ["spec.http[0]"]
    both = vs([{"route": [{"destination": {"host": "a"}}], "redirect": {"uri": "/x"}}])
    assert "only one of route, redirect" in validate_object(both)[0].reason


def test_string_match_takes_exactly_one_kind() -> None:
    obj = vs([{"match": [{"uri": {"exact": "/a", "prefix": "/b"}}], "route": [{"destination": {"host": "a"}}]}])
    [e] = validate_object(obj)
    assert e.path == "spec.http[0].match[0].uri" and "only one of exact, prefix, regex" in e.reason
    presence = vs([{"match": [{"headers": {"x-user": {}}}], "route": [{"destination": {"host": "a"}}]}])
    assert validate_object(presence) == []


def dr(**spec: Any) -> dict:
    return {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "demo"}, "spec": {"host": "reviews", **spec}}


def test_duplicate_subset_names_are_rejected() -> None:
    obj = dr(subsets=[{"name": "v1", "labels": {"version": "v1"}}, {"name": "v1", "labels": {"version": "v2"}}])
    assert errors_of(obj) == ['DestinationRule/demo/reviews: spec.subsets[1].name: duplicate subset name "v1" '
                              '(also subsets[0])']


def test_consistent_hash_and_simple_are_exclusive() -> None:
    obj = dr(trafficPolicy={"loadBalancer": {"simple": "RANDOM", "consistentHash": {"useSourceIp": True}}})
    [e] = validate_object(obj)
    assert e.path == "spec.trafficPolicy.loadBalancer" and "only one of simple, consistentHash" in e.reason


@pytest.mark.parametrize("ch, path, why", [
    ({"maglev": {"tableSize": 64}}, "maglev.tableSize", "tableSize must be a prime number for maglev"),
    ({"maglev": {}}, "maglev.tableSize", "tableSize must be set for maglev"),
    ({"maglev": {"tableSize": 1000003}}, "maglev.tableSize", "1000003 is not supported by Ambit: at most 131071"),
    ({"ringHash": {"minimumRingSize": 1 << 20}}, "ringHash.minimumRingSize", "not supported by Ambit: at most 131072"),
    ({"minimumRingSize": 1 << 20}, "minimumRingSize", "not supported by Ambit: at most 131072"),
    ({"minimumRingSize": 1024, "maglev": {"tableSize": 65537}}, "minimumRingSize",
     "only one of MinimumRingSize or Maglev/Ringhash"),
])
def test_consistent_hash_tables_follow_istios_rules_and_ambits_bounds(ch: dict, path: str, why: str) -> None:
    """A Maglev table whose size is not prime never finished filling: the waypoint spun on its event
    loop at its first request for the host (a DestinationRule with `tableSize: 64` took the L7 path
    of the namespace down). Istio refuses it; so does Ambit now, and tables too large to build
    without stopping the waypoint for seconds."""
    obj = dr(trafficPolicy={"loadBalancer": {"consistentHash": {"useSourceIp": True, **ch}}})
    [e] = validate_object(obj)
    assert e.path == f"spec.trafficPolicy.loadBalancer.consistentHash.{path}" and why in e.reason, (e.path, e.reason)
    ok = dr(trafficPolicy={"loadBalancer": {"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 131071}}}})
    assert validate_object(ok) == []


def test_destination_rule_accepts_the_documented_fields() -> None:
    obj = dr(trafficPolicy={
        "connectionPool": {"tcp": {"maxConnections": 10, "connectTimeout": "300ms"},
                           "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 2, "maxRequestsPerConnection": 3,
                                    "maxRetries": 4, "idleTimeout": "1m"}},
        "outlierDetection": {"consecutive5xxErrors": 5, "consecutiveGatewayErrors": 2, "interval": "1.5s",
                             "baseEjectionTime": "30s", "maxEjectionPercent": 50, "minHealthPercent": 10},
        "loadBalancer": {"consistentHash": {"httpCookie": {"name": "user", "ttl": "0s"}}},
        "tls": {"mode": "SIMPLE", "sni": "reviews.example.com"},
        "portLevelSettings": [{"port": {"number": 9080}, "loadBalancer": {"simple": "LEAST_REQUEST"}}],
    }, subsets=[{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"loadBalancer": {"simple": "PASSTHROUGH"}}}])
    assert validate_object(obj) == []


@pytest.mark.parametrize("where", [
    lambda od: {"trafficPolicy": {"outlierDetection": od}},
    lambda od: {"trafficPolicy": {"portLevelSettings": [{"port": {"number": 9080}, "outlierDetection": od}]}},
    lambda od: {"subsets": [{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": {"outlierDetection": od}}]},
])
def test_outlier_detection_http_error_codes_are_accepted_and_range_checked(where: Any) -> None:
    """Istio's CRD: a list of statuses 100..599 (the API server refuses anything else)."""
    assert validate_object(dr(**where({"outlierDetectionHttpErrorCodes": [429, 503], "consecutive5xxErrors": 3}))) == []
    assert validate_object(dr(**where({"outlierDetectionHttpErrorCodes": []}))) == []
    errs = validate_object(dr(**where({"outlierDetectionHttpErrorCodes": [99, 429, 600, "503", True]})))
    assert [(e.path.rsplit(".", 1)[1], e.reason) for e in errs] == [
        ("outlierDetectionHttpErrorCodes[0]", "must be an integer 100..599, got 99"),
        ("outlierDetectionHttpErrorCodes[2]", "must be an integer 100..599, got 600"),
        ("outlierDetectionHttpErrorCodes[3]", 'must be an integer 100..599, got "503"'),
        ("outlierDetectionHttpErrorCodes[4]", "must be an integer 100..599, got true")]
    [e] = validate_object(dr(**where({"outlierDetectionHttpErrorCodes": 429})))
    assert e.reason == "must be a list, got 429"


def ap(spec: dict, ns: str = "demo") -> dict:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "policy", "namespace": ns}, "spec": spec}


def test_authorization_policy_fields_and_rules() -> None:
    full = ap({"action": "DENY", "rules": [{
        "from": [{"source": {"principals": ["cluster.local/ns/a/sa/b"], "notNamespaces": ["x"],
                             "ipBlocks": ["10.0.0.0/8"], "notIpBlocks": ["10.1.0.0/16"], "remoteIpBlocks": ["1.2.3.4"],
                             "requestPrincipals": ["*"], "notPrincipals": ["*/sa/bad"], "namespaces": ["a"]}}],
        "to": [{"operation": {"ports": ["8080"], "notPorts": ["9090"], "methods": ["GET"], "notPaths": ["/admin*"],
                              "hosts": ["a.example.com"]}}],
        "when": [{"key": "request.headers[x-user]", "values": ["alice"]},
                 {"key": "source.ip", "notValues": ["10.2.0.0/16"]}],
    }]})
    assert validate_object(full) == []


@pytest.mark.parametrize("spec,path,fragment", [
    ({"action": "CUSTOM", "provider": {"name": "ext"}, "rules": [{}]}, "spec.action",
     "CUSTOM (external authorization) is enforced by waypoints and ingress gateways only, so it needs targetRefs"),
    ({"action": "CUSTOM", "targetRefs": [{"kind": "Service", "group": "", "name": "a"}], "rules": [{}]},
     "spec.provider.name", "required with action CUSTOM"),
    # Istio's refusals of policies and values that match nothing: they were accepted, and a DENY (a
    # CUSTOM check) written so denied (checked) nothing
    ({"action": "DENY"}, "spec.rules", "DENY action without `rules` is meaningless"),
    ({"action": "DENY", "rules": []}, "spec.rules", "add an empty rule `{}`"),
    ({"action": "CUSTOM", "provider": {"name": "ext"}, "targetRefs": [{"kind": "Service", "group": "", "name": "a"}]},
     "spec.rules", "CUSTOM action without `rules` is meaningless"),
    ({"rules": [{"from": [{"source": {"principals": [""]}}]}]}, "spec.rules[0].from[0].source.principals[0]",
     "must not be empty"),
    ({"rules": [{"from": [{"source": {"notNamespaces": ["a", ""]}}]}]},
     "spec.rules[0].from[0].source.notNamespaces[1]", "must not be empty"),
    ({"rules": [{"to": [{"operation": {"paths": [""]}}]}]}, "spec.rules[0].to[0].operation.paths[0]",
     "must not be empty"),
    ({"rules": [{"to": [{"operation": {"methods": [""]}}]}]}, "spec.rules[0].to[0].operation.methods[0]",
     "must not be empty"),
    ({"rules": [{"from": [{"source": {"serviceAccounts": ["a/b/c"]}}]}]},
     "spec.rules[0].from[0].source.serviceAccounts[0]", "'namespace/serviceAccount'"),
    ({"rules": [{"from": [{"source": {"notServiceAccounts": ["ns/*"]}}]}]},
     "spec.rules[0].from[0].source.notServiceAccounts[0]", "wildcards are not allowed"),
    ({"rules": [{"from": [{"source": {"serviceAccounts": ["/sa"]}}]}]},
     "spec.rules[0].from[0].source.serviceAccounts[0]", "'namespace/serviceAccount'"),
    ({"action": "ALLOW", "provider": {"name": "ext"}}, "spec.provider", "provider is only valid with action CUSTOM"),
    ({"selector": {"matchLabels": {"app": "a"}}, "targetRefs": [{"kind": "Service", "name": "a"}]}, "spec",
     "only one of selector, targetRef, targetRefs"),
    ({"rules": [{"from": []}]}, "spec.rules[0].from", "at least 1"),
    ({"rules": [{"from": [{"source": {}}]}]}, "spec.rules[0].from[0].source", "must set at least one of"),
    ({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}, "spec.rules[0].to[0].operation.ports[0]",
     "must be a port number"),
    ({"rules": [{"when": [{"key": "source.ip", "values": ["not-an-ip"]}]}]}, "spec.rules[0].when[0].values[0]",
     "must be an IP address or CIDR"),
    ({"rules": [{"when": [{"key": "request.colour", "values": ["red"]}]}]}, "spec.rules[0].when[0].key",
     "unknown condition key"),
    ({"rules": [{"when": [{"key": "source.namespace"}]}]}, "spec.rules[0].when[0]", "one of values or notValues"),
    ({"rules": [{"from": [{"source": {"principals": ["a"], "serviceAccounts": ["ns/sa"]}}]}]},
     "spec.rules[0].from[0].source", "cannot set serviceAccounts with namespaces or principals"),
    ({"rules": [{"from": [{"source": {"notNamespaces": ["a"], "serviceAccounts": ["ns/sa"]}}]}]},
     "spec.rules[0].from[0].source", "cannot set serviceAccounts with namespaces or principals"),
    ({"rules": [{"from": [{"source": {"namespaces": ["a"], "notServiceAccounts": ["ns/sa"]}}]}]},
     "spec.rules[0].from[0].source", "cannot set serviceAccounts with namespaces or principals"),
    ({"targetRef": {"kind": "Pod", "name": "a"}}, "spec.targetRef.kind", "must be one of Gateway, Service"),
])
def test_authorization_policy_rejections(spec: dict, path: str, fragment: str) -> None:
    errors = validate_object(ap(spec))
    assert [(e.path, fragment in e.reason) for e in errors] == [(path, True)], errors


def test_trust_domain_values_istio_accepts_are_accepted() -> None:
    """Exact, `*` (any), `prefix*`, `*suffix`: in `trustDomains`, `notTrustDomains` and the
    `source.trustDomain` condition; a source with only trust domains is a source."""
    values = ["cluster.local", "*", "td-*", "*.example.org"]
    assert validate_object(ap({"rules": [{"from": [{"source": {"trustDomains": values}},
                                                   {"source": {"notTrustDomains": values}}],
                                          "when": [{"key": "source.trustDomain", "values": values,
                                                    "notValues": values}]}]})) == []


@pytest.mark.parametrize("value,reason", [
    ("", "must not be empty"),
    ("a*b", 'a "*" is allowed only at the start or the end of a trust domain, got "a*b"'),
    ("*td*", 'at most one "*" is allowed in a trust domain, got "*td*"'),
    ("**", 'at most one "*" is allowed in a trust domain, got "**"'),
    ("cluster.local/ns/demo", 'a trust domain must not contain "/", got "cluster.local/ns/demo" (to match a whole '
                              "identity, use principals or the source.principal condition)"),
])
@pytest.mark.parametrize("where,path", [
    (lambda v: {"from": [{"source": {"trustDomains": ["ok", v]}}]}, "spec.rules[0].from[0].source.trustDomains[1]"),
    (lambda v: {"from": [{"source": {"notTrustDomains": ["ok", v]}}]},
     "spec.rules[0].from[0].source.notTrustDomains[1]"),
    (lambda v: {"when": [{"key": "source.trustDomain", "values": ["ok", v]}]}, "spec.rules[0].when[0].values[1]"),
    (lambda v: {"when": [{"key": "source.trustDomain", "notValues": ["ok", v]}]},
     "spec.rules[0].when[0].notValues[1]"),
])
def test_bad_trust_domain_values_are_refused_naming_the_field(value: str, reason: str, where, path: str) -> None:
    """Istio's CheckTrustDomainValues: non-empty, one `*` at most, only at an end, no "/"."""
    errors = validate_object(ap({"rules": [where(value)]}))
    assert [(e.path, e.reason) for e in errors] == [(path, reason)]


@pytest.mark.parametrize("api_version,kind", [("security.istio.io/v1", "AuthorizationPolicy"),
                                              ("security.istio.io/v1", "RequestAuthentication"),
                                              ("telemetry.istio.io/v1", "Telemetry")])
def test_policy_targets_in_another_namespace_or_group_are_refused(api_version: str, kind: str) -> None:
    """As Istio's CRDs (`targetRef(s).namespace`: "cross namespace referencing is not currently
    supported") and validation (group and kind must be a supported target's): a policy in tenant-b
    cannot bind demo's waypoint, and a ref whose group is not its kind's binds nothing."""
    obj = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "p", "namespace": "tenant-b"},
           "spec": {"targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint",
                                    "namespace": "demo"},
                                   {"kind": "Service", "group": "apps", "name": "reviews"},
                                   {"kind": "Gateway", "group": "networking.istio.io", "name": "waypoint"},
                                   {"kind": "Service", "group": "core", "name": "ok", "namespace": "tenant-b"},
                                   {"kind": "ServiceEntry", "group": "networking.istio.io", "name": "ok"},
                                   {"kind": "Gateway", "name": "ok", "namespace": ""}]}}
    got = [str(e) for e in validate_object(obj)]
    assert got == [
        f'{kind}/tenant-b/p: spec.targetRefs[0].namespace: cross namespace referencing is not currently supported '
        '(got "demo"): a policy binds targets in its own namespace only; leave namespace empty',
        f'{kind}/tenant-b/p: spec.targetRefs[1].group: a Service is in group "core", got "apps": a targetRef with '
        "another group binds nothing (leave group empty for the kind's own)",
        f'{kind}/tenant-b/p: spec.targetRefs[2].group: a Gateway is in group "gateway.networking.k8s.io", got '
        '"networking.istio.io": a targetRef with another group binds nothing (leave group empty for the kind\'s own)',
        f'{kind}/tenant-b/p: spec.targetRefs[3].namespace: cross namespace referencing is not currently supported '
        '(got "tenant-b"): a policy binds targets in its own namespace only; leave namespace empty',
    ], got
    obj["spec"] = {"targetRef": {"kind": "HTTPRoute", "name": "r"}}
    assert [str(e) for e in validate_object(obj)] == [
        f'{kind}/tenant-b/p: spec.targetRef.kind: must be one of Gateway, Service, GatewayClass, ServiceEntry, '
        'got "HTTPRoute"']


def test_peer_authentication_port_level_needs_a_selector() -> None:
    pa = {"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
          "metadata": {"name": "p", "namespace": "demo"},
          "spec": {"mtls": {"mode": "STRICT"}, "portLevelMtls": {8080: {"mode": "DISABLE"}}}}
    assert [e.path for e in validate_object(pa)] == ["spec.portLevelMtls"]
    pa["spec"]["selector"] = {"matchLabels": {"app": "a"}}
    assert validate_object(pa) == []
    pa["spec"]["portLevelMtls"] = {"http": {"mode": "DISABLE"}}
    [e] = validate_object(pa)
    assert e.path == "spec.portLevelMtls[http]" and "port number" in e.reason


def test_httproute_parent_must_be_a_service_or_gateway() -> None:
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "r", "namespace": "demo"},
             "spec": {"parentRefs": [{"group": "apps", "kind": "Deployment", "name": "echo"}],
                      "rules": [{"backendRefs": [{"name": "echo", "port": 8080}]}]}}
    [e] = validate_object(route)
    assert e.path == "spec.parentRefs[0]" and 'must name a Service (group "") or a Gateway' in e.reason
    route["spec"]["parentRefs"] = [{"group": "", "kind": "Service", "name": "echo"}]
    route["spec"]["rules"][0]["backendRefs"][0].pop("port")
    assert [e.path for e in validate_object(route)] == ["spec.rules[0].backendRefs[0].port"]


def test_grpcroute_and_core_kinds() -> None:
    grpc = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute", "metadata": {"name": "g"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "echo", "port": 9000}],
                     "rules": [{"matches": [{"method": {"service": "echo.Echo", "method": "Say"}}],
                                "backendRefs": [{"name": "echo-v2", "port": 9000}]}]}}
    assert validate_object(grpc) == []
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 70000}]}]},
           "status": {"podIP": "10.0.0.300"}}
    assert {e.path for e in validate_object(pod)} == {"spec.containers[0].ports[0].containerPort", "status.podIP"}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
           "spec": {"clusterIP": "None", "ports": [{"port": 80, "targetPort": "http"}], "sessionAffinity": "None"}}
    assert validate_object(svc) == []


def test_validate_all_reports_every_error_and_duplicates() -> None:
    good = vs([{"route": [{"destination": {"host": "a"}}]}])
    bad = dr(subsets=[{"name": 7}])
    with pytest.raises(ValidationError) as ei:
        validate_all([good, bad, copy.deepcopy(good)])
    errs = ei.value.errors
    assert all(isinstance(e, FieldError) for e in errs)
    assert [str(e) for e in errs] == [
        "DestinationRule/demo/reviews: spec.subsets[0].name: must be a string, got 7",
        "VirtualService/demo/reviews: appears more than once in this batch (documents 1 and 3)",
    ]
    assert str(ei.value).count("\n") == 1
    assert validate_all([good]) is None


def _httproute(rule: dict) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "demo"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 80}], "rules": [rule]}}


INJECTED = "x.example\r\nset-cookie: stolen=1"


@pytest.mark.parametrize("obj, path, line", [
    (vs([{"rewrite": {"authority": INJECTED}, "route": [{"destination": {"host": "reviews"}}]}]),
     "spec.http[0].rewrite.authority", "header"),
    (vs([{"rewrite": {"uri": "/a HTTP/1.1\r\nx: 1"}, "route": [{"destination": {"host": "reviews"}}]}]),
     "spec.http[0].rewrite.uri", "request"),
    (vs([{"rewrite": {"uriRegexRewrite": {"match": "/(.*)", "rewrite": "/\\1\nx: 1"}},
          "route": [{"destination": {"host": "reviews"}}]}]), "spec.http[0].rewrite.uriRegexRewrite.rewrite", "request"),
    (vs([{"redirect": {"authority": INJECTED}}]), "spec.http[0].redirect.authority", "header"),
    (vs([{"redirect": {"uri": "/x\r\nx: 1"}}]), "spec.http[0].redirect.uri", "header"),
    (vs([{"match": [{"uri": {"prefix": "/a"}}], "redirect": {"prefixRewrite": "/b\nx: 1"}}]),
     "spec.http[0].redirect.prefixRewrite", "header"),
    (vs([{"redirect": {"scheme": "https\r\nx: 1"}}]), "spec.http[0].redirect.scheme", "header"),
    (_httproute({"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": INJECTED}}],
                 "backendRefs": [{"name": "reviews", "port": 80}]}), "spec.rules[0].filters[0].urlRewrite.hostname",
     "header"),
    (_httproute({"filters": [{"type": "URLRewrite", "urlRewrite": {
        "path": {"type": "ReplaceFullPath", "replaceFullPath": "/a\r\nx: 1"}}}],
                 "backendRefs": [{"name": "reviews", "port": 80}]}),
     "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath", "request"),
    (_httproute({"filters": [{"type": "RequestRedirect", "requestRedirect": {"hostname": INJECTED}}]}),
     "spec.rules[0].filters[0].requestRedirect.hostname", "header"),
])
def test_a_rewrite_or_redirect_with_a_control_character_is_refused_naming_the_field(obj: dict, path: str,
                                                                                    line: str) -> None:
    """What a route writes into a request's Host header or request line, or into a redirect's
    Location, was not checked: with CR/LF in a VirtualService `rewrite.authority`, the waypoint sent
    the upstream headers of the route's making (found by test_request_config_fuzz), and a
    `redirect.authority` split the redirect's own headers. Refused now, as Envoy refuses control
    characters in these fields (its HTTP_HEADER_VALUE check)."""
    errs = validate_object(obj)
    assert [e.path for e in errs] == [path], [str(e) for e in errs]
    assert errs[0].reason.startswith("must not contain control characters (found '\\")
    assert errs[0].reason.endswith(f"it would end the {line} line"), errs[0].reason
