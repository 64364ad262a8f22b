"""The admission webhook's answers (controller/admission/review.py, patcher.py's decisions), without
sockets: what `kubectl apply` of an Istio or Ambit object gets back from the API server."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from controller.admission.patcher import fails_closed, plan, probe_object, probe_verdict
from controller.admission.review import MAX_ERRORS, BadReview, answer, judge
from controller.validation import validate_object

Obj = dict[str, Any]


def ap(name: str = "deny-admin", **spec: Any) -> Obj:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "demo"}, "spec": spec}


def review(op: str, obj: Obj | None, old: Obj | None = None, uid: str = "5d1c") -> bytes:
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": uid, "operation": op, "object": obj, "oldObject": old}}).encode()


def test_an_invalid_object_is_refused_naming_the_object_the_field_and_the_reason() -> None:
    out, verdict = answer(review("CREATE", ap(action="DENY")))
    r = out["response"]
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    assert r["uid"] == "5d1c" and r["allowed"] is False
    assert r["status"]["code"] == 400
    assert r["status"]["message"].startswith("AuthorizationPolicy/demo/deny-admin: spec.rules: DENY action without")
    assert verdict.ref == "AuthorizationPolicy/demo/deny-admin" and verdict.operation == "CREATE"


def test_the_refusal_is_the_controllers_own_validation_every_error_of_it() -> None:
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "reviews", "namespace": "demo"},
          "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}, "weight": "ten"}],
                                                   "timeout": "soon"}]}}
    errors = validate_object(vs)
    assert len(errors) >= 2
    out, _ = answer(review("CREATE", vs))
    assert out["response"]["status"]["message"].split("\n") == [str(e) for e in errors]


def test_a_valid_object_is_allowed_and_a_kind_ambit_refuses_is_refused() -> None:
    assert answer(review("CREATE", ap(action="DENY", rules=[{}])))[0]["response"] == {"uid": "5d1c", "allowed": True}
    ef = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
          "metadata": {"name": "x", "namespace": "demo"}, "spec": {}}
    r = answer(review("CREATE", ef))[0]["response"]
    assert r["allowed"] is False and "EnvoyFilter is not supported by Ambit" in r["status"]["message"]


def test_an_update_that_leaves_the_stored_problems_as_they_were_is_allowed_with_them_as_warnings() -> None:
    """Ratcheting: an object stored before the webhook (or by an older Ambit) can still get a label
    or lose a finalizer; a problem the update adds refuses it."""
    stored = ap(action="DENY")
    labelled = {**stored, "metadata": {**stored["metadata"], "labels": {"team": "web"}}}
    r = answer(review("UPDATE", labelled, stored))[0]["response"]
    assert r["allowed"] is True
    assert len(r["warnings"]) == 1 and "DENY action without" in r["warnings"][0]
    assert "as before this update" in r["warnings"][0]
    worse = {**labelled, "spec": {"action": "DENY", "provider": {"name": "x"}}}
    r = answer(review("UPDATE", worse, stored))[0]["response"]
    assert r["allowed"] is False
    assert "spec.provider" in r["status"]["message"] and "DENY action without" not in r["status"]["message"]
    # an update of a valid object to an invalid one is refused, as a create would be
    r = answer(review("UPDATE", stored, ap(action="DENY", rules=[{}])))[0]["response"]
    assert r["allowed"] is False and "DENY action without" in r["status"]["message"]


def test_what_ambit_apply_warns_about_in_the_object_alone_comes_back_as_warnings() -> None:
    """A DENY of `delete` denies nothing (methods are case-sensitive): stored, but kubectl prints why."""
    r = answer(review("CREATE", ap(action="DENY", rules=[{"to": [{"operation": {"methods": ["delete"]}}]}])))[0]
    assert r["response"]["allowed"] is True
    # istiod's own warning (a DENY of HTTP attributes only), as istiod's webhook gives it, then Ambit's
    istiod, w = r["response"]["warnings"]
    assert istiod.startswith("AuthorizationPolicy/demo/deny-admin: spec.rules[0]: configured AuthorizationPolicy "
                             "will deny all traffic to TCP ports under its scope"), istiod
    assert w.startswith("AuthorizationPolicy/demo/deny-admin: spec.rules[0].to[0].operation.methods[0]: ")
    assert '"DELETE"' in w
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "r", "namespace": "demo"},
          "spec": {"hosts": ["r"], "http": [{"route": [{"destination": {"host": "r"}}]},
                                            {"match": [{"uri": {"prefix": "/admin"}}], "fault": {"abort": {
                                                "httpStatus": 403, "percentage": {"value": 100}}},
                                             "route": [{"destination": {"host": "r"}}]}]}}
    r = answer(review("CREATE", vs))[0]["response"]
    assert r["allowed"] is True and any("spec.http[1]" in w for w in r["warnings"])
    assert "warnings" not in answer(review("CREATE", ap(action="DENY", rules=[{}])))[0]["response"]


def test_an_object_being_deleted_is_never_refused_and_delete_is_not_validated() -> None:
    going = ap(action="DENY")
    going["metadata"]["deletionTimestamp"] = "2026-12-07T12:00:00Z"
    going["metadata"]["finalizers"] = []
    r = answer(review("UPDATE", going, None))[0]["response"]
    assert r["allowed"] is True and "being deleted" in r["warnings"][0]
    assert answer(review("DELETE", None, ap(action="DENY")))[0]["response"]["allowed"] is True
    assert judge({"operation": "CONNECT", "object": {}}).allowed


def test_a_create_by_generate_name_is_validated_under_the_name_it_will_get() -> None:
    obj = ap(action="ALLOW")
    obj["metadata"] = {"generateName": "allow-", "namespace": "demo"}
    assert answer(review("CREATE", obj))[0]["response"]["allowed"] is True
    obj["metadata"]["generateName"] = "Not_A_Name-"
    assert answer(review("CREATE", obj))[0]["response"]["allowed"] is False


def test_a_long_list_of_errors_is_cut_and_says_how_many_more() -> None:
    rules = [{"to": [{"operation": {"methods": [""]}}]} for _ in range(MAX_ERRORS + 5)]
    msg = answer(review("CREATE", ap(action="ALLOW", rules=rules)))[0]["response"]["status"]["message"]
    lines = msg.split("\n")
    assert len(lines) == MAX_ERRORS + 1 and lines[-1] == "... and 5 more"


@pytest.mark.parametrize(("body", "why"), [
    (b"{", "not JSON"),
    (b"[]", "not an AdmissionReview"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview",
                 "request": {"uid": "u", "operation": "CREATE"}}).encode(), "admissionReviewVersions: [v1]"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}).encode(),
     "request.uid"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                 "request": {"uid": "u"}}).encode(), "request.operation"),
    (b"[" * 100_000, "not JSON"),
])
def test_a_body_that_is_not_a_v1_admission_review_is_refused_with_why(body: bytes, why: str) -> None:
    with pytest.raises(BadReview, match=None) as e:
        answer(body)
    assert why in str(e.value)


# -- the patcher's decisions ------------------------------------------------------------------------

CONFIG = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
          "metadata": {"name": "ambit-validator", "resourceVersion": "7"},
          "webhooks": [{"name": "validation.ambit.io", "failurePolicy": "Ignore", "sideEffects": "None",
                        "clientConfig": {"service": {"name": "ambit-controller", "namespace": "ambit-system"}}}]}
ROOTS = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_the_roots_go_in_first_and_fail_closed_only_when_proven() -> None:
    first = plan(CONFIG, ROOTS, fail_closed=False)
    assert first is not None
    wh = first["webhooks"][0]
    assert base64.b64decode(wh["clientConfig"]["caBundle"]).decode() == ROOTS
    assert wh["failurePolicy"] == "Ignore" and wh["clientConfig"]["service"]["name"] == "ambit-controller"
    assert first["metadata"]["resourceVersion"] == "7"          # written back conditionally
    assert CONFIG["webhooks"][0]["clientConfig"].get("caBundle") is None     # not edited in place
    assert plan(first, ROOTS, fail_closed=False) is None
    closed = plan(first, ROOTS, fail_closed=True)
    assert closed is not None and closed["webhooks"][0]["failurePolicy"] == "Fail" and fails_closed(closed)
    assert plan(closed, ROOTS, fail_closed=True) is None
    # new roots (a rotation) are written again; failing closed stays
    rotated = plan(closed, ROOTS + ROOTS, fail_closed=True)
    assert rotated is not None and rotated["webhooks"][0]["failurePolicy"] == "Fail"
    assert not fails_closed(CONFIG) and not fails_closed({"webhooks": []})


def test_the_dry_run_counts_only_a_refusal_by_this_webhook() -> None:
    refused = ('{"kind":"Status","message":"admission webhook \\"validation.ambit.io\\" denied the request: '
               'AuthorizationPolicy/ambit-system/ambit-webhook-probe: spec.rules: DENY action without ..."}')
    assert probe_verdict(400, refused) == (True, "")
    assert probe_verdict(201, "")[0] is False and "without calling the webhook" in probe_verdict(201, "")[1]
    other = '{"message":"admission webhook \\"other.example.com\\" denied the request: no"}'
    assert probe_verdict(400, other)[0] is False
    assert probe_verdict(500, 'Internal error occurred: failed calling webhook "validation.ambit.io"')[0] is False
    assert probe_verdict(400, "the webhook does not support dry run") == (True, "")
    # and the probe object is refused by the validation the webhook runs
    assert any("DENY action without" in e.reason for e in validate_object(probe_object("ambit-system")))
