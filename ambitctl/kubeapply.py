"""Idempotent apply, prune and delete of rendered objects against an API server (`ambit install`,
`upgrade`, `uninstall`), and the pure decisions behind them.

Why not shell out to `kubectl apply`: the CLI must say per object what it did (created, updated,
unchanged, deleted, not found), record what it installed (an inventory ConfigMap) so `uninstall`
removes exactly that, even objects a later version no longer renders, and refuse incompatible
upgrades. The API is reached through the official client's ApiClient (kubeconfig, --context,
in-cluster, auth), by plain REST paths from a table of the kinds Ambit renders.

"Unchanged" means every field Ambit renders already has that value on the server (`covers`): the
server adds defaults and status, which are not drift.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

Obj = dict[str, Any]
Ref = tuple[str, str, str, str]           # (apiVersion, kind, namespace, name)

# kind -> (plural, namespaced): every kind `ambit install` renders.
KINDS: dict[str, tuple[str, bool]] = {
    "Namespace": ("namespaces", False),
    "CustomResourceDefinition": ("customresourcedefinitions", False),
    "ServiceAccount": ("serviceaccounts", True),
    "ClusterRole": ("clusterroles", False),
    "ClusterRoleBinding": ("clusterrolebindings", False),
    "Role": ("roles", True),
    "RoleBinding": ("rolebindings", True),
    "ConfigMap": ("configmaps", True),
    "Service": ("services", True),
    "Deployment": ("deployments", True),
    "DaemonSet": ("daemonsets", True),
    "ValidatingWebhookConfiguration": ("validatingwebhookconfigurations", False),
}
INVENTORY = "ambit-install"             # ConfigMap in the install namespace: what was installed
SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink")


class KubeError(RuntimeError):
    pass


def ref(o: Obj) -> Ref:
    md = o.get("metadata") or {}
    namespaced = KINDS.get(o["kind"], ("", True))[1]
    return (o["apiVersion"], o["kind"], md.get("namespace", "") if namespaced else "", md["name"])


def path(r: Ref, collection: bool = False) -> str:
    api_version, kind, ns, name = r
    if kind not in KINDS:
        raise KubeError(f"{kind}: not a kind `ambit install` knows how to apply")
    plural, namespaced = KINDS[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespaced:
        base += f"/namespaces/{ns}"
    return f"{base}/{plural}" if collection else f"{base}/{plural}/{name}"


def show(r: Ref) -> str:
    _, kind, ns, name = r
    return f"{kind.lower()}/{name}" + (f" -n {ns}" if ns else "")


# -- pure decisions --------------------------------------------------------------------------------

def covers(live: Any, want: Any) -> bool:
    """Does `live` hold every field of `want` with the same value (lists element by element)?"""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(covers(live.get(k), v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(
            covers(a, b) for a, b in zip(live, want, strict=True))
    return live == want or (isinstance(want, int | float) and str(live) == str(want))


def projection(live: Any, want: Any) -> Any:
    """`live` restricted to the fields `want` has: what a diff compares (server defaults left out)."""
    if isinstance(want, dict) and isinstance(live, dict):
        return {k: projection(live[k], v) for k, v in want.items() if k in live}
    if isinstance(want, list) and isinstance(live, list) and len(live) == len(want):
        return [projection(a, b) for a, b in zip(live, want, strict=True)]
    return live


class _NoAliases(yaml.SafeDumper):
    """A dict the rendering shares between two places (one volume mount in two containers) is
    written out in both: yaml's `&id004`/`*id004` anchors made a diff line say `- *id004` where
    the fields were."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def diff(r: Ref, live: Obj | None, want: Obj | None) -> str:
    """A unified diff of one object, live (as far as Ambit renders it) -> wanted."""
    def dump(o: Obj | None) -> list[str]:
        return [] if o is None else yaml.dump(o, Dumper=_NoAliases, sort_keys=True, width=120).splitlines(keepends=True)
    before = None if live is None else projection(strip(live), want) if want is not None else strip(live)
    name = show(r)
    return "".join(difflib.unified_diff(dump(before), dump(want), f"live {name}", f"wanted {name}"))


def strip(o: Obj) -> Obj:
    o = copy.deepcopy(o)
    o.pop("status", None)
    md = o.get("metadata") or {}
    for f in SERVER_FIELDS:
        md.pop(f, None)
    return o


_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:[-+].*)?$")


def parse_version(v: str) -> tuple[int, int, int] | None:
    m = _VERSION.match(v.strip())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def upgrade_verdict(installed: str, target: str, force: bool = False) -> tuple[bool, str]:
    """May `installed` be upgraded to `target`? The rules (docs/operations.md):
    - a different major version is refused, even with --force (its config and state are not
      compatible: uninstall, then install);
    - more than one minor version forward, or any downgrade, is refused unless --force (each
      minor release migrates from the one before it only, as Istio supports n-1 -> n);
    - the same version, a patch release or the next minor is allowed."""
    a, b = parse_version(installed), parse_version(target)
    if a is None or b is None:
        bad = installed if a is None else target
        return (force, f"version {bad!r} is not MAJOR.MINOR.PATCH: cannot tell compatibility"
                + ("; --force given, going ahead" if force else "; --force to go ahead"))
    if a[0] != b[0]:
        return False, (f"{installed} -> {target} changes the major version: not an upgrade path "
                       "(uninstall, then install)")
    if b[:2] < a[:2] or (b[:2] == a[:2] and b[2] < a[2]):
        return (force, f"{installed} -> {target} is a downgrade" + ("; --force given" if force else "; --force to do it"))
    if b[1] - a[1] > 1:
        return (force, f"{installed} -> {target} skips {b[1] - a[1] - 1} minor version(s); upgrade one minor at "
                       "a time" + ("; --force given" if force else ", or --force"))
    return True, f"{installed} -> {target}: compatible"


# -- the API edge ----------------------------------------------------------------------------------

@dataclass
class Kube:
    """Plain REST on the official client's ApiClient (auth and TLS from kubeconfig or in-cluster)."""

    api: Any

    def _call(self, method: str, p: str, body: Obj | None = None) -> Obj | None:
        """One request; None on 404, KubeError on any other failure, the decoded body else."""
        try:
            m, url, headers, data, _ = self.api.param_serialize(
                method=method, resource_path=p, body=body, auth_settings=["BearerToken"],
                header_params={"Accept": "application/json", "Content-Type": "application/json"})
            resp = self.api.call_api(m, url, header_params=headers, body=data)
            resp.read()
        except Exception as e:  # urllib3's connection errors; anything else is a bug
            if type(e).__module__.startswith(("urllib3", "kubernetes")):
                from ambitctl.kubeclient import describe
                raise KubeError(f"cannot reach the API server ({self.api.configuration.host}): {describe(e)}") from None
            raise
        if resp.status == 404:
            return None
        text = resp.data.decode(errors="replace") if resp.data else ""
        if resp.status >= 400:
            try:
                text = json.loads(text).get("message", text)
            except (TypeError, ValueError, AttributeError):
                pass
            raise KubeError(f"{method} {p}: {resp.status} {text}")
        try:
            out = json.loads(text) if text else {}
        except ValueError as e:     # a proxy's HTML page, a truncated body: not the API server's JSON
            raise KubeError(f"{method} {p}: the answer is not JSON ({e}): {text[:80]!r}") from None
        if not isinstance(out, dict):
            raise KubeError(f"{method} {p}: the answer is not a JSON object: {text[:80]!r}")
        return out

    def get(self, r: Ref) -> Obj | None:
        return self._call("GET", path(r))

    def get_path(self, p: str) -> Obj | None:
        """GET any object by its API path (`ambit wait` reads every kind the controller watches)."""
        return self._call("GET", p)

    def create(self, o: Obj) -> Obj:
        out = self._call("POST", path(ref(o), collection=True), o)
        if out is None:
            raise KubeError(f"{show(ref(o))}: the API server does not serve {o['apiVersion']} {o['kind']}")
        return out

    def replace(self, o: Obj) -> Obj:
        out = self._call("PUT", path(ref(o)), o)
        if out is None:
            raise KubeError(f"{show(ref(o))} disappeared while being updated")
        return out

    def delete(self, r: Ref) -> bool:
        return self._call("DELETE", path(r)) is not None


def with_controller_fields(o: Obj, live: Obj) -> Obj:
    """`o` with what the controller writes on it kept from `live`: a webhook configuration's
    `caBundle` and `failurePolicy` (controller/admission/patcher.py). Re-applying the rendering
    must not take them back to "no CA, Ignore" until the controller sets them again."""
    if o["kind"] != "ValidatingWebhookConfiguration":
        return o
    had = {wh.get("name"): wh for wh in live.get("webhooks") or []}
    new = copy.deepcopy(o)
    for wh in new.get("webhooks") or []:
        old = had.get(wh.get("name"))
        if old is None:
            continue
        if (old.get("clientConfig") or {}).get("caBundle"):
            wh.setdefault("clientConfig", {})["caBundle"] = old["clientConfig"]["caBundle"]
        if old.get("failurePolicy"):
            wh["failurePolicy"] = old["failurePolicy"]
    return new


def apply(kube: Kube, o: Obj, dry_run: bool = False) -> tuple[str, Obj | None]:
    """Create or update one object: ("created" | "updated" | "unchanged", the live object before)."""
    live = kube.get(ref(o))
    if live is None:
        if not dry_run:
            kube.create(o)
        return "created", None
    o = with_controller_fields(o, live)
    if covers(live, o):
        return "unchanged", live
    if not dry_run:
        new = copy.deepcopy(o)
        new["metadata"]["resourceVersion"] = live["metadata"].get("resourceVersion")
        if o["kind"] == "Service":      # immutable, allocated by the server
            for f in ("clusterIP", "clusterIPs"):
                if f in (live.get("spec") or {}):
                    new.setdefault("spec", {})[f] = live["spec"][f]
        kube.replace(new)
    return "updated", live


def read_inventory(kube: Kube, namespace: str) -> Obj | None:
    """The inventory ConfigMap's data decoded: {"version", "image", "settings", "objects": [Ref]}."""
    cm = kube.get(("v1", "ConfigMap", namespace, INVENTORY))
    if cm is None:
        return None
    d = cm.get("data") or {}
    return {"version": d.get("version", ""), "image": d.get("image", ""),
            "settings": json.loads(d.get("settings") or "{}"),
            "objects": [tuple(x) for x in json.loads(d.get("objects") or "[]")]}


def inventory_object(namespace: str, version: str, image: str, settings: Obj, refs: list[Ref],
                     labels: dict[str, str]) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": INVENTORY, "namespace": namespace, "labels": dict(labels)},
            "data": {"version": version, "image": image, "settings": json.dumps(settings, sort_keys=True),
                     "objects": json.dumps([list(r) for r in refs])}}


Report = Callable[[str], None]
