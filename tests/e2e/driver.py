"""What e2e scenarios do to a mesh, independent of where it runs.

`LabDriver` drives the netns lab through the `ambit` CLI (tests/lab/labctl.py's `Lab`); `KubeDriver`
drives a real cluster through kubectl (vagrant/, or any cluster with Ambit installed and
vagrant/manifests/demo-apps.yaml applied). Pods are named `NAMESPACE/NAME` on both: the cluster
runs bare pods with the lab's names, so a scenario never needs to know where it runs.

Scenarios read "went through ztunnel" from ztunnel's access log: one `access {json}` line per
connection on its stdout, which is the lab's log file and the ztunnel container's `kubectl logs`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from tests.lab.labctl import Lab


class Driver(Protocol):
    def exec(self, pod: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run argv in the pod (its netns; in a cluster, its first container)."""

    def apply(self, yaml_text: str) -> None: ...

    def delete(self, yaml_text: str) -> None: ...

    def label_namespace(self, namespace: str, label: str) -> None:
        """`KEY=VALUE` sets a label, `KEY-` removes it."""

    def annotate_namespace(self, namespace: str, key: str, value: str | None) -> None:
        """Set annotation `key` to `value`, or remove it (None)."""

    def pod_ip(self, pod: str) -> str: ...

    def node_of(self, pod: str) -> str: ...

    def logs(self, component: str, node: str) -> str:
        """Everything `component` (ztunnel, agent) on `node` has logged so far."""

    def wait_mesh_ready(self, timeout: float = 60) -> None:
        """Until every pod runs and every pod that must be captured is (scenarios start from there)."""


def _split(pod: str) -> tuple[str, str]:
    ns, _, name = pod.partition("/")
    if not name:
        raise ValueError(f"pod {pod!r}: expected NAMESPACE/NAME")
    return ns, name


class LabDriver:
    def __init__(self, lab: Lab):
        self.lab = lab

    def exec(self, pod: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return self.lab.exec(pod, *argv, timeout=timeout)

    def apply(self, yaml_text: str) -> None:
        self.lab.ambit("apply", "-f", "-", "--wait", input=yaml_text)      # in force at every proxy

    def delete(self, yaml_text: str) -> None:
        self.lab.ambit("delete", "-f", "-", "--ignore-not-found", "--wait", input=yaml_text)

    def label_namespace(self, namespace: str, label: str) -> None:
        self.lab.ambit("label", "namespace", namespace, label)

    def annotate_namespace(self, namespace: str, key: str, value: str | None) -> None:
        # the lab store's object, re-applied with the annotation (its labels kept)
        obj = json.loads(self.lab.ambit("get", "namespace", namespace, "-o", "json").stdout)
        md = obj.setdefault("metadata", {})
        annotations = {k: v for k, v in (md.get("annotations") or {}).items() if k != key}
        md["annotations"] = annotations if value is None else {**annotations, key: value}
        self.lab.ambit("apply", "-f", "-", input=json.dumps(obj))

    def pod_ip(self, pod: str) -> str:
        return self.lab.pod(pod)["ip"]

    def node_of(self, pod: str) -> str:
        return self.lab.pod(pod)["node"]

    def logs(self, component: str, node: str) -> str:
        return self.lab.log(component, node)

    def wait_mesh_ready(self, timeout: float = 60) -> None:
        # `lab up` returns once processes are ready, not once the agents have enrolled every pod.
        def pending() -> list[str]:
            st = self.lab.status()
            ambient = {n["name"] for n in st.get("namespaces", [])
                       if n.get("labels", {}).get("ambit.io/dataplane-mode") == "ambient"}
            out = []
            for p in st["pods"]:
                if p["namespace"] not in ambient:
                    continue
                state = p["capture"]["state"] if isinstance(p["capture"], dict) else p["capture"]
                if state not in ("captured", "opted-out"):
                    out.append(f"{p['namespace']}/{p['name']}: {state}")
            return out
        eventually(lambda: not pending(), "every ambient pod captured", timeout=timeout)


class KubeDriver:
    """kubectl against $KUBECONFIG; Ambit's node pods are found in `ambit_namespace` by node."""

    def __init__(self, kubeconfig: str | None = None, ambit_namespace: str = "ambit-system"):
        self.env = {**os.environ, **({"KUBECONFIG": kubeconfig} if kubeconfig else {})}
        self.ambit_namespace = ambit_namespace

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(["kubectl", *args], env=self.env, capture_output=True, text=True, input=input,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def exec(self, pod: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        ns, name = _split(pod)
        return self.kubectl("exec", "-n", ns, name, "--", *argv, check=False, timeout=timeout)

    def apply(self, yaml_text: str) -> None:
        self.kubectl("apply", "-f", "-", input=yaml_text)
        self.wait(yaml_text)

    def delete(self, yaml_text: str) -> None:
        self.kubectl("delete", "--ignore-not-found", "-f", "-", input=yaml_text)
        self.wait(yaml_text)

    def wait(self, yaml_text: str) -> None:
        """`ambit wait` after the write, when the controller's debug API is reachable
        ($AMBIT_CONTROLLER, e.g. through `kubectl port-forward`): the change is in force at every
        proxy when the scenario goes on. Without it, scenarios poll for the effect as before."""
        if not os.environ.get("AMBIT_CONTROLLER"):
            return
        p = subprocess.run([sys.executable, "-m", "ambitctl.cli", "wait", "-f", "-"], env=self.env, input=yaml_text,
                           capture_output=True, text=True, timeout=90)
        if p.returncode != 0:
            raise AssertionError(f"ambit wait failed ({p.returncode}): {p.stderr.strip()}")

    def label_namespace(self, namespace: str, label: str) -> None:
        self.kubectl("label", "namespace", namespace, label, "--overwrite")

    def annotate_namespace(self, namespace: str, key: str, value: str | None) -> None:
        self.kubectl("annotate", "namespace", namespace, f"{key}={value}" if value is not None else f"{key}-",
                     "--overwrite")

    def _pod(self, pod: str) -> dict[str, Any]:
        ns, name = _split(pod)
        return json.loads(self.kubectl("get", "pod", "-n", ns, name, "-o", "json").stdout)

    def pod_ip(self, pod: str) -> str:
        return self._pod(pod)["status"]["podIP"]

    def node_of(self, pod: str) -> str:
        return self._pod(pod)["spec"]["nodeName"]

    def logs(self, component: str, node: str) -> str:
        pods = self.kubectl("get", "pods", "-n", self.ambit_namespace, "-l", "app=ambit-node",
                            "--field-selector", f"spec.nodeName={node}", "-o", "name").stdout.split()
        if len(pods) != 1:
            raise AssertionError(f"expected one ambit-node pod on {node}, found {pods}")
        return self.kubectl("logs", "-n", self.ambit_namespace, pods[0], "-c", component).stdout

    def wait_mesh_ready(self, timeout: float = 300) -> None:
        t = f"{int(timeout)}s"
        self.kubectl("rollout", "status", "-n", self.ambit_namespace, "daemonset/ambit-node", f"--timeout={t}",
                     timeout=timeout + 30)
        self.kubectl("rollout", "status", "-n", self.ambit_namespace, "deployment/ambit-controller",
                     f"--timeout={t}", timeout=timeout + 30)
        for ns in ("demo", "legacy"):
            self.kubectl("wait", "-n", ns, "--for=condition=Ready", "pods", "--all", f"--timeout={t}",
                         timeout=timeout + 30)


# -- what scenarios read ----------------------------------------------------------------------------

def access_log(d: Driver, node: str) -> list[dict[str, Any]]:
    """ztunnel's access-log records on `node`, oldest first."""
    out = []
    for line in d.logs("ztunnel", node).splitlines():
        _, sep, rest = line.partition("access {")
        if sep:
            out.append(json.loads("{" + rest))
    return out


def outbound_from(d: Driver, pod: str, since: int = 0) -> list[dict[str, Any]]:
    ns, name = _split(pod)
    return [r for r in access_log(d, d.node_of(pod))[since:]
            if r.get("direction") == "outbound" and r.get("src.namespace") == ns and r.get("src.workload") == name]


def http_get(d: Driver, pod: str, url: str, timeout: float = 5, curl_opts: tuple[str, ...] = ()) -> dict[str, Any]:
    """GET `url` from `pod` with curl (and `curl_opts`); the echo app's JSON reply."""
    p = d.exec(pod, ["curl", "-sS", "--fail", "-m", str(timeout), *curl_opts, url], timeout=timeout + 30)
    if p.returncode != 0:
        raise AssertionError(f"curl from {pod} to {url} failed ({p.returncode}): {p.stderr.strip()}")
    return json.loads(p.stdout.splitlines()[0])


def http_get_many(d: Driver, pod: str, url: str, n: int, *curl_opts: str) -> list[dict[str, Any]]:
    """`n` GETs of `url` from `pod` in one curl (URL globbing: one process, one keep-alive
    connection; a waypoint still routes each request on its own); the echo app's replies."""
    p = d.exec(pod, ["curl", "-sS", "--fail", "-m", "60", "-w", "\n", *curl_opts, f"{url}?n=[1-{n}]"], timeout=90)
    if p.returncode != 0:
        raise AssertionError(f"curl from {pod} to {url} failed ({p.returncode}): {p.stderr.strip()}")
    out = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    assert len(out) == n, p.stdout[-500:]
    return out


def captured(d: Driver, pod: str, url: str, settle: float = 1.0) -> bool:
    """Does a fresh request from `pod` show up in its node's ztunnel access log?

    The record is written when ztunnel closes the connection, just after curl exits: wait `settle`.
    """
    before = len(access_log(d, d.node_of(pod)))
    http_get(d, pod, url)
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        if outbound_from(d, pod, before):
            return True
        time.sleep(0.05)
    return False


def eventually(fn: Callable[[], Any], what: str, timeout: float = 10.0, interval: float = 0.1) -> Any:
    """`fn()`'s first truthy value; an AssertionError it raises (a failed request) counts as "not
    yet" and is reported if time runs out, as tests/support/wait.py's `wait_for` does."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except AssertionError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
