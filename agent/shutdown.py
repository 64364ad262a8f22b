"""What the agent does with capture when it stops: keep it (a restart, an upgrade) or remove it
(uninstall: its DaemonSet is gone or being deleted).

A stopping agent cannot tell from SIGTERM alone why it stops. Pods must stay captured while the
agent restarts (a rolling update, an eviction), or their traffic would leave the mesh unprotected;
but `ambit uninstall` (or `kubectl delete ds`) must leave no eBPF program, pin or netns rule behind.
Istio's CNI node agent answers this by asking the API server whether its DaemonSet still exists;
so does this one: with `--cleanup-on-delete NS/NAME`, on stop it reads that DaemonSet, and removes
everything (CaptureEngine.uninstall) when it is gone (404) or has a deletionTimestamp. If the API
server cannot be asked, capture is kept: failing open would unprotect pods on a mere restart.
`decide` is pure (tests/unit/agent/test_shutdown.py); the lab test (tests/lab/test_cli_ops.py)
SIGTERMs a real agent and diffs the host state.
"""

from __future__ import annotations

import json
from typing import Any

Obj = dict[str, Any]
RBAC = {"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get"]}


def decide(daemonset: Obj | None, error: str | None = None) -> tuple[bool, str]:
    """(clean up?, why) from the DaemonSet as read (None: not found) or the error reading it."""
    if error is not None:
        return False, f"cannot read the DaemonSet ({error}): keeping capture (pods stay protected)"
    if daemonset is None:
        return True, "the DaemonSet is gone: uninstalling capture"
    if (daemonset.get("metadata") or {}).get("deletionTimestamp"):
        return True, "the DaemonSet is being deleted: uninstalling capture"
    return False, "the DaemonSet still exists (a restart or an upgrade): keeping capture"


def read_daemonset(ref: str, host: str | None = None) -> tuple[Obj | None, str | None]:
    """(the DaemonSet or None if not found, None) or (None, error)."""
    from kubernetes import client as kclient

    from ambit.kube.client import make_api_client
    ns, _, name = ref.partition("/")
    try:
        api = kclient.AppsV1Api(make_api_client(host))
        resp = api.read_namespaced_daemon_set(name, ns, _preload_content=False, _request_timeout=5)
        return json.loads(resp.data), None
    except kclient.ApiException as e:
        if e.status == 404:
            return None, None
        return None, f"{e.status} {e.reason}"
    except Exception as e:  # noqa: BLE001 - no API server: keep capture, say why
        return None, f"{type(e).__name__}: {e}"


def prepare() -> None:
    """Import the Kubernetes client now, not when SIGTERM comes: on a busy node its import takes
    seconds of the pod's grace period, and a decision cut short by SIGKILL keeps capture."""
    from kubernetes import client  # noqa: F401

    from ambit.kube import client as _kube  # noqa: F401


def should_clean_up(ref: str, host: str | None = None) -> tuple[bool, str]:
    return decide(*read_daemonset(ref, host))
