"""Carrying out a pod repair (agent/repair.py) against the Kubernetes API server.

Each repair reads the pod first (`check_pod` re-decides on what the API server has now), then
labels it through `pods/status` or deletes it with its uid as a precondition, and records an Event
on it naming the reason, as Istio's CNI repair controller does (`LabelBrokenPod`,
`DeleteBrokenPod`). The calls are the table `CALLS`; the RBAC each mode needs is derived from it
(`rbac_rules`), and tests/unit/agent/test_repair_kube.py checks the table against the requests the
code really makes.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from agent.repair import EVENT_REASON, LABEL, LABEL_VALUE, Repair, check_pod

log = logging.getLogger("ambit.agent.repair")

COMPONENT = "ambit-agent"


@dataclass(frozen=True)
class Call:
    method: str
    path: str           # {ns} and {name} filled in
    resource: str       # what RBAC calls it
    verb: str


CALLS = {
    "read": Call("GET", "/api/v1/namespaces/{ns}/pods/{name}", "pods", "get"),
    "label": Call("PATCH", "/api/v1/namespaces/{ns}/pods/{name}/status", "pods/status", "patch"),
    "delete": Call("DELETE", "/api/v1/namespaces/{ns}/pods/{name}", "pods", "delete"),
    "event": Call("POST", "/api/v1/namespaces/{ns}/events", "events", "create"),
}
# The calls each --repair-pods mode makes (delete labels a bare pod instead, and either mode takes
# its label off a pod once captured).
MODE_CALLS = {"off": (), "label": ("read", "label", "event"), "delete": ("read", "label", "delete", "event")}


def rbac_rules(mode: str) -> list[dict[str, Any]]:
    """The ClusterRole rules `mode` needs (core group), one per resource, verbs sorted."""
    by_resource: dict[str, set[str]] = {}
    for name in MODE_CALLS[mode]:
        c = CALLS[name]
        by_resource.setdefault(c.resource, set()).add(c.verb)
    return [{"apiGroups": [""], "resources": [r], "verbs": sorted(v)} for r, v in sorted(by_resource.items())]


class RepairError(RuntimeError):
    pass


class KubeRepairer:
    """Carries out repairs through an `ApiClient` (kubernetes.client) as this node's agent."""

    def __init__(self, api: Any, node: str, clock: Any = time.time):
        self.api = api
        self.node = node
        self.clock = clock

    def _call(self, name: str, ns: str, pod: str, body: Any = None, content_type: str = "application/json",
              ok_missing: bool = False) -> Any:
        c = CALLS[name]
        req = self.api.param_serialize(method=c.method, resource_path=c.path.format(ns=ns, name=pod),
                                       header_params={"Content-Type": content_type} if body is not None else {},
                                       body=body, auth_settings=["BearerToken"])
        from kubernetes.client import ApiException
        try:
            resp = self.api.call_api(*req, _request_timeout=(5.0, 10.0))
            data, status = resp.read(), resp.status
        except ApiException as e:
            data, status = e.body, e.status
        if status == 404 and ok_missing:
            return None
        if status >= 300:
            raise RepairError(f"{c.method} {c.resource} {ns}/{pod}: HTTP {status} {_message(data)}")
        return json.loads(data) if data else {}

    def carry_out(self, r: Repair) -> tuple[str, str]:
        """Do `r`; (what was done: "label", "delete", "unlabel" or "" when skipped, why).
        Raises RepairError when the API server refuses."""
        pod = self._call("read", r.namespace, r.name, ok_missing=True)
        action, why = check_pod(r, pod, self.node)
        if not action:
            return "", why
        if action == "delete":
            uid = pod["metadata"]["uid"]
            body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid}}
            self._call("delete", r.namespace, r.name, body)
        else:
            value = LABEL_VALUE if action == "label" else None
            body = {"metadata": {"labels": {LABEL: value}, "uid": pod["metadata"]["uid"]}}
            self._call("label", r.namespace, r.name, body, "application/merge-patch+json")
        self._event(pod, action, why)
        return action, why

    def _event(self, pod: dict[str, Any], action: str, why: str) -> None:
        """A Kubernetes Event on the pod (kubectl describe pod shows it). Best effort: the repair
        is done; a refused Event is logged, not retried."""
        md = pod["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        what = {"label": f"labelled {LABEL}={LABEL_VALUE}", "delete": "deleted, to be re-created through the CNI "
                "plugin (which refuses to start it uncaptured)", "unlabel": f"label {LABEL} removed"}[action]
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{md['name']}.{secrets.token_hex(8)}", "namespace": md["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": md["name"], "namespace": md["namespace"],
                               "uid": md["uid"], "resourceVersion": md.get("resourceVersion", "")},
            "reason": EVENT_REASON[action], "type": "Normal" if action == "unlabel" else "Warning",
            "message": f"ambit agent on node {self.node}: {what}: {why}"[:1024],
            "source": {"component": COMPONENT, "host": self.node},
            "reportingComponent": COMPONENT, "reportingInstance": self.node,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self._call("event", md["namespace"], md["name"], event)
        except (RepairError, OSError) as e:
            log.warning("cannot record an Event on %s/%s: %s", md["namespace"], md["name"], e)


def _message(data: Any) -> str:
    try:
        return str(json.loads(data).get("message") or "")
    except (TypeError, ValueError, AttributeError):
        return ""
