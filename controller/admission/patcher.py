"""Keeps the ValidatingWebhookConfiguration `ambit install` wrote in step with the controller.

`ambit install` cannot know the CA (the controller makes or reads it at start), so it writes the
configuration with no `caBundle` and `failurePolicy: Ignore`: until the controller serves, writes
of Istio and Ambit objects go through unchecked rather than all failing. The leader then, every
few seconds (istiod's webhook controller does the same, pkg/webhooks/validation/controller):

1. sets every webhook's `caBundle` to the mesh roots, which sign the webhook's certificate, and
   again whenever the roots change (a CA reload, a root rotation);
2. proves the API server reaches the webhook: a dry-run create of an AuthorizationPolicy that
   is invalid must come back refused by it;
3. only then sets `failurePolicy: Fail`, so that from then on an invalid object is never stored,
   even while the controller restarts. It never sets `Ignore` back: an unreachable webhook then
   refuses writes of these kinds (as istiod's does) until a controller serves it again.

`plan` decides (pure); `WebhookPatcher` reads, probes and writes.
"""

from __future__ import annotations

import base64
import copy
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ambit.controller.admission")

CONFIG_NAME = "ambit-validator"         # the ValidatingWebhookConfiguration (`ambit install`)
WEBHOOK_NAME = "validation.ambit.io"
PROBE_NAME = "ambit-webhook-probe"
PROBE_GROUP, PROBE_VERSION, PROBE_PLURAL = "security.ambit.io", "v1", "authorizationpolicies"
DENIED = "denied the request"           # kube-apiserver: admission webhook "<name>" denied the request: ...
NO_DRY_RUN = "does not support dry run"  # another webhook on the kind has side effects
TICK, TICK_READY = 5.0, 30.0

Obj = dict[str, Any]


def plan(current: Obj, ca_bundle: str, fail_closed: bool) -> Obj | None:
    """The configuration to write instead of `current`, or None when it is as it should be:
    every webhook's `clientConfig.caBundle` is `ca_bundle` (PEM) and, once `fail_closed`, its
    `failurePolicy` is `Fail`. Nothing else is touched."""
    want = base64.b64encode(ca_bundle.encode()).decode()
    new = copy.deepcopy(current)
    changed = False
    for wh in new.get("webhooks") or []:
        cc = wh.setdefault("clientConfig", {})
        if cc.get("caBundle") != want:
            cc["caBundle"] = want
            changed = True
        if fail_closed and wh.get("failurePolicy") != "Fail":
            wh["failurePolicy"] = "Fail"
            changed = True
    return new if changed else None


def fails_closed(current: Obj) -> bool:
    hooks = current.get("webhooks") or []
    return bool(hooks) and all(wh.get("failurePolicy") == "Fail" for wh in hooks)


def probe_object(namespace: str) -> Obj:
    """What the dry run creates: invalid (a DENY without rules, refused by validation), so an
    answer of 201 means the webhook was not called."""
    return {"apiVersion": f"{PROBE_GROUP}/{PROBE_VERSION}", "kind": "AuthorizationPolicy",
            "metadata": {"name": PROBE_NAME, "namespace": namespace,
                         "annotations": {"ambit.io/webhook-probe": "dry run; never stored"}},
            "spec": {"action": "DENY"}}


def probe_verdict(status: int, body: str) -> tuple[bool, str]:
    """(the webhook is in the API server's path, why not) from the dry run's answer."""
    if status == 400 and DENIED in body and WEBHOOK_NAME in body:
        return True, ""
    if NO_DRY_RUN in body:      # istiod assumes ready here too: the check cannot be made
        return True, ""
    if status in (200, 201):
        return False, "the API server accepted an invalid object in a dry run without calling the webhook " \
                      "(its caBundle is not in effect yet, or the call failed and failurePolicy is Ignore)"
    return False, f"the dry run was answered {status}: {body[:300]}"


class WebhookPatcher:
    """The loop above, on the leader (`leading()`), in a daemon thread."""

    def __init__(self, api_client: Any, namespace: str, ca_bundle: Callable[[], str],
                 leading: Callable[[], bool] = lambda: True, name: str = CONFIG_NAME) -> None:
        from kubernetes import client
        self.admission = client.AdmissionregistrationV1Api(api_client)
        self.objects = client.CustomObjectsApi(api_client)
        self.api_client = api_client
        self.namespace, self.ca_bundle, self.leading, self.name = namespace, ca_bundle, leading, name
        self.ready = False          # the dry run was refused by the webhook at least once
        self.complete: bool | None = None   # the last pass's verdict as leader (None: not leading)
        self._said: str | None = None
        self._poked = threading.Event()

    def poke(self) -> None:
        """Reconcile now, not at the next tick: the CA's roots changed (a reload took a rotation
        step up), and the API server must trust the new ones before the webhook serves under them."""
        self._poked.set()

    def _say(self, level: int, text: str) -> None:
        if text != self._said:      # once per reason, not every tick
            log.log(level, "%s", text)
            self._said = text

    def reconcile(self) -> bool:
        """One pass; True when the configuration is complete (caBundle set, failing closed)."""
        from kubernetes.client.exceptions import ApiException
        try:
            current = self.api_client.sanitize_for_serialization(
                self.admission.read_validating_webhook_configuration(self.name))
        except ApiException as e:
            self._say(logging.INFO if e.status == 404 else logging.WARNING,
                      f"admission webhook: ValidatingWebhookConfiguration {self.name}: {e.status} {e.reason}; "
                      "invalid objects are stored and refused only in their status until it exists")
            return False
        bundle = self.ca_bundle()
        if not fails_closed(current):
            # Not failing closed (never yet, or set back to Ignore by hand, or a re-created
            # configuration): proven again before Fail, every time.
            self.ready = False
        if not self.ready and not fails_closed(current):
            first = plan(current, bundle, fail_closed=False)
            if first is not None:       # the roots first: the dry run needs them
                if not self._write(first):
                    return False
                return False            # probe on the next pass, once the API server has it
            self.ready, why = self._probe()
            if not self.ready:
                self._say(logging.INFO, f"admission webhook: not failing closed yet: {why}")
                return False
        new = plan(current, bundle, fail_closed=True)
        if new is not None and not self._write(new):
            return False
        self._say(logging.INFO, f"admission webhook: {self.name} has the mesh roots and fails closed")
        return True

    def _write(self, new: Obj) -> bool:
        from kubernetes.client.exceptions import ApiException
        try:
            self.admission.replace_validating_webhook_configuration(self.name, new)
            return True
        except ApiException as e:   # 409: changed under us; read it again next pass
            self._say(logging.WARNING if e.status != 409 else logging.DEBUG,
                      f"admission webhook: could not update {self.name}: {e.status} {e.reason}")
            return False

    def _probe(self) -> tuple[bool, str]:
        from kubernetes.client.exceptions import ApiException
        try:
            self.objects.create_namespaced_custom_object(PROBE_GROUP, PROBE_VERSION, self.namespace, PROBE_PLURAL,
                                                         probe_object(self.namespace), dry_run="All")
        except ApiException as e:
            return probe_verdict(e.status, str(e.body or ""))
        return probe_verdict(201, "")

    def run(self, stop: threading.Event) -> threading.Thread:
        def loop() -> None:
            while not stop.is_set():
                done = False
                if self.leading():
                    try:
                        done = self.reconcile()
                    except Exception:  # noqa: BLE001 - the API server's outage must not end the loop
                        log.exception("admission webhook: reconcile failed")
                    self.complete = done
                else:
                    self.complete = None
                self._poked.wait(TICK_READY if done else TICK)
                self._poked.clear()
        t = threading.Thread(target=loop, name="webhook-patcher", daemon=True)
        t.start()
        return t


class WebhookStateCollector:
    """`ambit_controller_admission_webhook_fails_closed`: 1 when the leader's last pass found the
    configuration complete (the mesh roots, `Fail`), 0 when not (yet): invalid objects are then
    stored unchecked. Only the leader exports it (the others do not look)."""

    def __init__(self, patcher: WebhookPatcher) -> None:
        self.patcher = patcher

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily
        state = self.patcher.complete
        if state is None:
            return
        g = GaugeMetricFamily("ambit_controller_admission_webhook_fails_closed",
                              "1 when the ValidatingWebhookConfiguration has the mesh roots and failurePolicy Fail, "
                              "so the API server refuses invalid Istio and Ambit objects (the leader only)")
        g.add_metric([], 1.0 if state else 0.0)
        yield g
