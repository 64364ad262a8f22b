"""`ambit-cni`: the chained CNI plugin. The container runtime runs it for every pod sandbox.

ADD    for a pod that must be captured (ambient namespace or pod, not opted out, not host network):
       ask the node agent to capture it, and return the previous result only once the agent says
       capture is in place. If the agent cannot be reached or cannot capture it, fail: the runtime
       then tears the sandbox down and retries, so no container of the pod ever runs uncaptured.
       Any other pod: the previous result, untouched, without asking the agent.
DEL    tell the agent the sandbox is gone (best effort: DEL must succeed for the runtime to clean
       up, and the agent's watch reconciler unenrols pods that are gone anyway).
CHECK  for a pod that must be captured, fail unless the agent has it captured.
VERSION the spec versions this plugin speaks.

Configuration (the conflist entry install.py writes):
    {"type": "ambit-cni", "agentSocket": "/var/run/ambit/cni.sock", "timeoutSeconds": 30,
     "kubernetes": {"server": ..., "tokenFile": ..., "caFile": ...}   or, in the lab, "labStore": path}
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from agent.cni import podlookup, spec, wire
from agent.cni.spec import CniError, Invocation
from ambit.enrolment import is_enrolled
from ambit.probes import probe_ports

DEFAULT_SOCKET = "/var/run/ambit/cni.sock"
CAPTURE_FAILED = 100        # plugin-specific code (>= 100): the agent could not capture the pod
KNOWN_FIELDS = {"cniVersion", "name", "type", "args", "runtimeConfig", "prevResult", "capabilities",
                "dns", "ipam", "agentSocket", "timeoutSeconds", "kubernetes", "labStore"}


def _check_config(inv: Invocation) -> None:
    unknown = sorted(set(inv.config) - KNOWN_FIELDS)
    if unknown:
        raise CniError(spec.UNSUPPORTED_FIELD, f"ambit-cni: unsupported field {unknown[0]!r} = "
                                               f"{json.dumps(inv.config[unknown[0]])}")
    t = inv.config.get("timeoutSeconds", 30)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
        raise CniError(spec.INVALID_CONFIG, f"ambit-cni: timeoutSeconds must be a positive number, got {t!r}")


def _facts(inv: Invocation, k8s: spec.K8sArgs) -> podlookup.PodFacts:
    try:
        facts = podlookup.lookup(inv.config, k8s.namespace, k8s.name)
    except podlookup.LookupError_ as e:
        raise CniError(spec.TRY_AGAIN_LATER, f"cannot tell whether pod {k8s.namespace}/{k8s.name} must be "
                                             f"captured: {e}") from None
    if facts.pod is None:
        raise CniError(spec.TRY_AGAIN_LATER, f"pod {k8s.namespace}/{k8s.name} is not known (yet)")
    return facts


# agent/capture/dns.py's ANN_DNS_CAPTURE and ambit/podannotations.py's ANN_BYPASS_INBOUND (the
# plugin ships standard-library modules only; unit tests keep them equal).
DNS_CAPTURE_ANNOTATION = "ambient.istio.io/dns-capture"
BYPASS_INBOUND_ANNOTATION = "ambient.istio.io/bypass-inbound-capture"


def must_capture(facts: podlookup.PodFacts) -> bool:
    pod = facts.pod or {}
    md, pspec = pod.get("metadata") or {}, pod.get("spec") or {}
    return is_enrolled(md.get("labels") or {}, facts.namespace_labels, bool(pspec.get("hostNetwork")))


def pod_message(inv: Invocation, k8s: spec.K8sArgs, facts: podlookup.PodFacts, ip: str) -> dict[str, Any]:
    """What the agent needs to capture the pod. The netns is the runtime's (CNI_NETNS); the cgroup
    is the agent's to find on the host, except in the lab, whose store names it."""
    pod = facts.pod or {}
    md, pspec = pod.get("metadata") or {}, pod.get("spec") or {}
    ann = md.get("annotations") or {}
    return {"uid": k8s.uid or md.get("uid", ""), "name": k8s.name, "namespace": k8s.namespace, "ip": ip,
            "serviceAccount": pspec.get("serviceAccountName") or "default",
            "labels": md.get("labels") or {},
            "annotations": {k: v for k, v in ann.items()
                            if k.startswith("ambit.io/") or k in (DNS_CAPTURE_ANNOTATION, BYPASS_INBOUND_ANNOTATION)},
            "probePorts": probe_ports(pod), "netns": inv.netns, "containerId": inv.container_id,
            "cgroup": ann.get("lab.ambit.io/cgroup", "") if facts.lab else ""}


def _ask(inv: Invocation, msg: dict[str, Any], what: str) -> dict[str, Any]:
    sock = str(inv.config.get("agentSocket") or DEFAULT_SOCKET)
    try:
        return wire.call(sock, msg, float(inv.config.get("timeoutSeconds", 30)))
    except (OSError, ValueError) as e:
        raise CniError(spec.TRY_AGAIN_LATER, f"{what} must be captured (it is in the ambient mesh) but the Ambit "
                                             f"node agent at {sock} cannot be asked: {e}") from None


def add(inv: Invocation) -> dict[str, Any]:
    result = spec.pass_through(inv)
    k8s = inv.k8s()
    if k8s is None:                 # not a Kubernetes pod: nothing of ours
        return result
    facts = _facts(inv, k8s)
    if not must_capture(facts):
        return result
    key = f"pod {k8s.namespace}/{k8s.name}"
    ips = spec.sandbox_ips(inv.prev_result or {}, inv.ifname)
    if not ips:
        raise CniError(spec.INVALID_CONFIG, f"{key}: prevResult has no address on {inv.ifname}: nothing to capture")
    reply = _ask(inv, {"cmd": "add", "pod": pod_message(inv, k8s, facts, ips[0])}, key)
    if not reply.get("ok"):
        raise CniError(CAPTURE_FAILED, f"{key}: the Ambit node agent cannot capture it", str(reply.get("error", "")))
    return result


def delete(inv: Invocation) -> None:
    k8s = inv.k8s()
    if k8s is None:
        return
    msg = {"cmd": "del", "uid": k8s.uid, "namespace": k8s.namespace, "name": k8s.name,
           "containerId": inv.container_id}
    try:
        reply = wire.call(str(inv.config.get("agentSocket") or DEFAULT_SOCKET), msg,
                          float(inv.config.get("timeoutSeconds", 30)))
    except (OSError, ValueError) as e:
        print(f"ambit-cni: DEL {k8s.namespace}/{k8s.name}: agent not reachable ({e}); its watch unenrols "
              f"the pod once it is gone", file=sys.stderr)
        return
    if not reply.get("ok"):
        print(f"ambit-cni: DEL {k8s.namespace}/{k8s.name}: {reply.get('error')}", file=sys.stderr)


def check(inv: Invocation) -> None:
    spec.pass_through(inv)          # CHECK requires prevResult (SPEC.md)
    k8s = inv.k8s()
    if k8s is None:
        return
    facts = _facts(inv, k8s)
    if not must_capture(facts):
        return
    key = f"pod {k8s.namespace}/{k8s.name}"
    uid = k8s.uid or (facts.pod or {}).get("metadata", {}).get("uid", "")
    reply = _ask(inv, {"cmd": "check", "uid": uid, "namespace": k8s.namespace, "name": k8s.name}, key)
    if not reply.get("ok"):
        raise CniError(CAPTURE_FAILED, f"{key} must be captured and is not", str(reply.get("error", "")))


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    """(exit code, JSON to print or None): the whole plugin, without touching the process."""
    version = spec.SUPPORTED_VERSIONS[-1]
    try:
        inv = spec.parse(environ, stdin)
        version = inv.cni_version if inv.command != "VERSION" else version
        if inv.command == "VERSION":
            return 0, spec.version_result()
        _check_config(inv)
        if inv.command == "ADD":
            return 0, add(inv)
        if inv.command == "DEL":
            delete(inv)
        else:
            check(inv)
        return 0, None
    except CniError as e:
        return 1, e.to_json(version)


def main() -> None:
    try:
        stdin = sys.stdin.buffer.read()
    except OSError as e:
        out: dict[str, Any] | None = CniError(spec.IO_FAILURE, "cannot read stdin", str(e)).to_json(
            spec.SUPPORTED_VERSIONS[-1])
        code = 1
    else:
        code, out = run(os.environ, stdin)
    if out is not None:
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
