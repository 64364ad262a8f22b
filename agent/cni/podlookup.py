"""The pod and its namespace, as the plugin needs them to decide whether a sandbox must be captured.

The plugin decides before it asks the agent, so that it can fail a sandbox that must be captured
when the agent cannot be reached (Istio's istio-cni does the same). Two sources, chosen by the
plugin's configuration, both standard library only:

* `kubernetes`: the API server, with the token and CA file the agent's installer wrote next to the
  configuration (the pod and its namespace, listed by name);
* `labStore`: the lab's store file (ambit/labstore.py), the lab's stand-in for the API server. Only
  there may the pod's `lab.ambit.io/cgroup` annotation name its cgroup (the lab writes it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

Obj = dict[str, Any]
# urllib and ssl are imported only when the API server is asked: the plugin runs once per sandbox and
# its start-up is on the pod's start path.


class LookupError_(Exception):  # noqa: N801 - not the builtin LookupError
    """The pod could not be looked up (API server unreachable, store unreadable)."""


@dataclass(frozen=True)
class PodFacts:
    pod: Obj | None                 # None: no such pod
    namespace_labels: dict[str, str]
    lab: bool = False               # from the lab store: its lab.ambit.io/* annotations are trusted


def from_lab_store(path: str, namespace: str, name: str) -> PodFacts:
    try:
        data = json.loads(Path(path).read_text())     # written by rename: never seen half-written
    except (OSError, ValueError) as e:
        raise LookupError_(f"lab store {path}: {e}") from None
    pod, ns_labels = None, {}
    for o in data.get("objects", []):
        md = o.get("metadata") or {}
        if o.get("kind") == "Pod" and md.get("name") == name and (md.get("namespace") or "default") == namespace:
            pod = o
        elif o.get("kind") == "Namespace" and md.get("name") == namespace:
            ns_labels = dict(md.get("labels") or {})
    return PodFacts(pod, ns_labels, lab=True)


def _get(server: str, path: str, token: str, ctx: ssl.SSLContext | None, timeout: float) -> Obj | None:
    import urllib.error
    import urllib.request
    req = urllib.request.Request(server.rstrip("/") + path, headers={"Accept": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise LookupError_(f"GET {path}: {e.code} {e.reason}") from None
    except (OSError, ValueError) as e:
        raise LookupError_(f"GET {path}: {e}") from None


def _named(items: list[Obj] | None, name: str) -> Obj | None:
    """The item called `name` (the field selector asked for it; checked again here)."""
    return next((i for i in items or [] if (i.get("metadata") or {}).get("name") == name), None)


def from_kubernetes(cfg: Obj, namespace: str, name: str, timeout: float = 5.0) -> PodFacts:
    """`cfg`: {"server": URL, "tokenFile": path, "caFile": path}, as install.py writes it."""
    server = str(cfg.get("server") or "")
    if not server:
        raise LookupError_("kubernetes.server is not set in the plugin configuration")
    token = Path(cfg["tokenFile"]).read_text().strip() if cfg.get("tokenFile") else ""
    import ssl
    import urllib.parse
    ctx = None
    if server.startswith("https:"):
        ctx = ssl.create_default_context(cafile=cfg.get("caFile") or None)
    # A list by name, not a GET: the agent's ClusterRole (which the plugin's token is) lists and watches.
    q = urllib.parse.quote
    pods = _get(server, f"/api/v1/namespaces/{q(namespace)}/pods?fieldSelector=metadata.name%3D{q(name)}",
                token, ctx, timeout)
    nss = _get(server, f"/api/v1/namespaces?fieldSelector=metadata.name%3D{q(namespace)}", token, ctx, timeout)
    pod = _named((pods or {}).get("items"), name)
    ns = _named((nss or {}).get("items"), namespace)
    return PodFacts(pod, dict(((ns or {}).get("metadata") or {}).get("labels") or {}))


def lookup(config: Obj, namespace: str, name: str) -> PodFacts:
    if config.get("labStore"):
        return from_lab_store(str(config["labStore"]), namespace, name)
    if isinstance(config.get("kubernetes"), dict):
        return from_kubernetes(config["kubernetes"], namespace, name)
    raise LookupError_("the plugin configuration names no pod source (kubernetes or labStore)")
