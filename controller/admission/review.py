"""One AdmissionReview (admission.k8s.io/v1) in, its answer out: a pure function, no sockets.

The API server sends the object as it would store it; the answer allows it, or refuses it with the
controller's own validation errors (`controller.validation.validate_object`, the same rules the
controller applies to what it watches and `ambit apply` applies in the lab), so `kubectl apply`
reports what would otherwise appear only later, in the object's `Accepted=False` condition.

Updates ratchet, as Kubernetes' own CRD validation does (KEP-4008): a problem the stored object
already had is not a reason to refuse an update that leaves it as it was. An object stored before
the webhook was installed, or accepted by an older Ambit, can still have its labels or finalizers
edited, and be deleted (an object being deleted is never refused); each problem it still has
comes back as a warning. Only a problem the update introduces refuses it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from controller.validation import FieldError, object_ref, validate_object, without_nulls

Obj = dict[str, Any]
log = logging.getLogger("ambit.controller.admission")

API_VERSION = "admission.k8s.io/v1"
# Most errors one answer lists, and the longest warning: kube-apiserver truncates warnings past
# 256 characters each and 4 KiB in all, and a refusal naming the first twenty problems says enough.
MAX_ERRORS = 20
MAX_WARNING = 256
MAX_WARNINGS = 12
DENIED_CODE = 400       # the API server's own answer for a refusal without a code (ToStatusErr)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    message: str = ""
    warnings: tuple[str, ...] = ()
    ref: str = ""               # Kind/namespace/name, for the log and the counter
    operation: str = ""


class BadReview(ValueError):
    """The body is not an AdmissionReview this webhook can answer (answered 400, not allowed)."""


def _errors_text(errors: list[FieldError]) -> str:
    shown = [str(e) for e in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        shown.append(f"... and {len(errors) - MAX_ERRORS} more")
    return "\n".join(shown)


def _warning(text: str) -> str:
    return text if len(text) <= MAX_WARNING else text[:MAX_WARNING - 1] + "…"


def _named(obj: Any) -> Any:
    """A create by `generateName` reaches admission before the API server picks the name: validate
    it under a name of the form it will get (the prefix and five characters)."""
    md = obj.get("metadata") if isinstance(obj, dict) else None
    if isinstance(md, dict) and not md.get("name") and isinstance(md.get("generateName"), str) and md["generateName"]:
        return {**obj, "metadata": {**md, "name": md["generateName"] + "x0000"}}
    return obj


def advice(obj: Obj, autoallocate: bool = True) -> tuple[str, ...]:
    """What `ambit apply` warns about in this object alone, for `kubectl apply` to print as
    `Warning:` lines: istiod's own webhook warnings (where istiod's webhook would print them;
    `autoallocate`: the controller's --ip-autoallocate, which one of them depends on), a match no
    request satisfies (AMB0133), a rule no request reaches (AMB0134). Advisories that need other
    objects (a host no waypoint serves, a port the Service lacks) come later, in the object's
    `Enforced` condition, when the controller has the cluster's objects."""
    from controller.waypoints.istio_warnings import istio_warnings
    from controller.waypoints.never_match import never_matching
    from controller.waypoints.unreachable import unreachable_rules
    good = [without_nulls(obj)]
    try:
        ref = object_ref(good[0])
        found = [(ref, p, why) for p, why in istio_warnings(good[0], autoallocate)]
        found += never_matching(good) + unreachable_rules(good)
    except Exception:  # noqa: BLE001 - advice is a courtesy: never the reason a valid write fails
        log.exception("admission webhook: advisories of %s failed", object_ref(obj))
        return ()
    return tuple(_warning(f"{ref}: {path}: {why}" if path else f"{ref}: {why}") for ref, path, why in found[:MAX_WARNINGS])


def judge(request: Obj, autoallocate: bool = True) -> Verdict:
    """The verdict on one `request` of an AdmissionReview."""
    op = request.get("operation")
    if not isinstance(op, str):
        raise BadReview("request.operation is missing")
    obj = request.get("object")
    if op not in ("CREATE", "UPDATE") or obj is None:
        return Verdict(True, operation=op)      # DELETE and CONNECT carry nothing to validate
    errors = validate_object(_named(obj))
    ref = errors[0].ref if errors else object_ref(obj)
    if not errors:
        return Verdict(True, ref=ref, operation=op, warnings=advice(obj, autoallocate))
    md = obj.get("metadata") if isinstance(obj, dict) else None
    if op == "UPDATE" and isinstance(md, dict) and md.get("deletionTimestamp"):
        # An object on its way out: its finalizers' removal must never be refused.
        return Verdict(True, ref=ref, operation=op,
                       warnings=tuple(_warning(f"{e} (being deleted; not validated)") for e in errors[:MAX_WARNINGS]))
    old = request.get("oldObject")
    if op == "UPDATE" and old is not None:
        before = {(e.path, e.reason) for e in validate_object(old)}
        new = [e for e in errors if (e.path, e.reason) not in before]
        if not new:
            kept = [_warning(f"{e} (as before this update: the last valid version, if any, stays in force)")
                    for e in errors[:MAX_WARNINGS]]
            return Verdict(True, ref=ref, operation=op, warnings=tuple(kept))
        errors = new
    return Verdict(False, _errors_text(errors), ref=ref, operation=op)


def answer(body: bytes, autoallocate: bool = True) -> tuple[Obj, Verdict]:
    """The AdmissionReview to send back for `body`, and the verdict. Raises BadReview for a body
    that is not an AdmissionReview v1 (the server answers it 400). `autoallocate`: `advice`."""
    try:
        review = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise BadReview(f"the body is not JSON: {e}") from None
    if not isinstance(review, dict) or review.get("kind") != "AdmissionReview":
        raise BadReview("the body is not an AdmissionReview")
    if review.get("apiVersion") != API_VERSION:
        raise BadReview(f"AdmissionReview {review.get('apiVersion')!r} is not served: use {API_VERSION} "
                        "(admissionReviewVersions: [v1])")
    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise BadReview("request.uid is missing")
    verdict = judge(request, autoallocate)
    response: Obj = {"uid": request["uid"], "allowed": verdict.allowed}
    if not verdict.allowed:
        response["status"] = {"code": DENIED_CODE, "message": verdict.message}    # no reason, as istiod
    if verdict.warnings:
        response["warnings"] = list(verdict.warnings)
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}, verdict
