"""`ambit apply`, `ambit delete` and `ambit get`: kubectl-like configuration commands for the lab store.

apply validates the whole batch first and writes nothing unless every object is valid; then it
writes the batch in one store transaction (all-or-nothing) and reports each object as kubectl does:
`virtualservice.networking.istio.io/reviews created|configured|unchanged`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from calendar import timegm
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from ambit.labstore import LabStore, StoreError
from ambitctl import manifestyaml, selectors
from ambitctl.applywait import gateways_of
from ambitctl.lab.paths import store_path
from ambitctl.term import intermixed
from controller.kinds import KindSpec, all_names, by_name, spec_of
from controller.validation import ValidationError, object_key, object_ref, validate_all

Obj = dict[str, Any]


class InputError(Exception):
    pass


# -- reading manifests -----------------------------------------------------------------------------

def _files(target: str) -> list[Path]:
    p = Path(target)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml", ".json") and f.is_file())
    if not p.exists():
        raise InputError(f'the path "{target}" does not exist')
    return [p]


def _documents(text: str, origin: str) -> list[Obj]:
    try:
        docs = list(manifestyaml.load_all(text))
    except (yaml.YAMLError, manifestyaml.ManifestYAMLError) as e:
        raise InputError(f"{origin}: not valid YAML: {e}") from None
    out: list[Obj] = []
    for i, d in enumerate(docs):
        if d is None:
            continue
        if not isinstance(d, dict):
            raise InputError(f"{origin}: document {i + 1} is not an object")
        if d.get("kind") == "List" and isinstance(d.get("items"), list):
            out.extend(d["items"])
        else:
            out.append(d)
    return out


def load_manifests(targets: Iterable[str], stdin: TextIO | None = None) -> list[Obj]:
    """Objects from files, directories (their *.yaml, *.yml, *.json) and "-" (stdin), in order."""
    out: list[Obj] = []
    for t in targets:
        if t == "-":
            src = stdin or sys.stdin
            raw = src.buffer.read() if hasattr(src, "buffer") else src.read()
            out += _documents(_text(raw, "<stdin>"), "<stdin>")
        else:
            for f in _files(t):
                out += _documents(_text(f.read_bytes(), str(f)), str(f))
    return out


def _text(raw: bytes | str, origin: str) -> str:
    """A manifest's text: UTF-8, as kubectl reads it (a binary or UTF-16 file is refused by name,
    not a traceback)."""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{origin}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None


def set_namespace(objs: list[Obj], namespace: str | None) -> None:
    """kubectl -n: fill in the namespace of namespaced objects; refuse a conflicting one."""
    for o in objs:
        spec = spec_of(o)
        md = o.get("metadata") if isinstance(o, dict) else None
        if spec is None or not spec.namespaced or not isinstance(md, dict):
            continue
        if namespace:
            if md.get("namespace") and md["namespace"] != namespace:
                raise InputError(f'the namespace from the provided object "{md["namespace"]}" does not match '
                                 f'the namespace "{namespace}". You must pass \'--namespace={md["namespace"]}\'')
            md["namespace"] = namespace
        else:
            md.setdefault("namespace", "default")


def _display(obj: Obj) -> str:
    spec = spec_of(obj)
    assert spec is not None
    return f"{spec.qualified(obj.get('apiVersion', ''))}/{obj['metadata']['name']}"


def _resource(spec: KindSpec, api_version: str) -> str:
    """kubectl's resource name in errors: `virtualservices.networking.istio.io`, `pods`."""
    group = spec.group_of(api_version) or spec.groups[0][0]
    return f"{spec.plural}.{group}" if group else spec.plural


def _store() -> LabStore:
    return LabStore(store_path())


# -- apply / delete --------------------------------------------------------------------------------

@dataclass
class ApplyPlan:
    """What applying a batch on top of `current` would do: one code path for `apply` and
    `apply --dry-run`, so a dry run refuses exactly what a real apply refuses."""

    objs: list[Obj]
    errors: list[str] = field(default_factory=list)       # the batch is refused when any
    warnings: list[str] = field(default_factory=list)     # applied, but said out loud
    verdicts: list[str] = field(default_factory=list)     # created | configured | unchanged, per object


def _comparable(o: Obj, keep_status: bool = True) -> Obj:
    """What the store compares to decide `unchanged`: without server-set metadata, and without
    `status` when the incoming object has none (the store keeps the status the controller wrote)."""
    md = {k: v for k, v in (o.get("metadata") or {}).items()
          if k not in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields")}
    out = {**o, "metadata": md}
    if not keep_status:
        out.pop("status", None)
    return out


def plan_apply(objs: list[Obj], current: dict[tuple[str, str, str], Obj]) -> ApplyPlan:
    """Validate the batch, then translate the state it would produce (the current objects with the
    batch on top) exactly as the controller will, and collect the advisories for the batch."""
    plan = ApplyPlan(objs)
    try:
        validate_all(objs)
    except ValidationError as e:
        plan.errors = [str(fe) for fe in e.errors]
        return plan
    merged = dict(current)
    for o in objs:
        merged[object_key(o)] = o
    from controller.translate import translate
    from controller.validation import object_ref
    everything = list(merged.values())
    tr = translate(everything)
    _lab_mesh_providers(tr)
    refs = {object_ref(o) for o in objs}
    plan.errors = [str(fe) for fe in tr.errors if fe.ref in refs]
    plan.warnings = _missing_namespaces(objs, current) + not_enforced(objs, everything, tr) + \
        lab_parameters(objs, everything)
    for o in objs:
        before = current.get(object_key(o))
        plan.verdicts.append("created" if before is None else
                             "unchanged" if _comparable(before, "status" in o) == _comparable(o) else "configured")
    return plan


# The mesh's root namespace (the controller's --root-namespace): mesh-wide policy lives there, and
# the lab has no Namespace object for it.
ROOT_NAMESPACE = "ambit-system"


def _missing_namespaces(objs: list[Obj], current: dict[tuple[str, str, str], Obj]) -> list[str]:
    """A namespaced object in a namespace the lab does not have (a typo in -n or metadata.namespace)
    would be refused by a cluster's API server; the lab store keeps it, so say that it applies to
    nothing there. Nothing to say without a lab (a dry run of files alone knows no namespaces)."""
    have = {key[2] for key in current if key[0] == "Namespace"}
    if not have:
        return []
    have |= {o["metadata"]["name"] for o in objs if o.get("kind") == "Namespace"}
    out = []
    for o in objs:
        spec, ns = spec_of(o), o["metadata"].get("namespace", "")
        if spec is not None and spec.namespaced and ns not in have and ns != ROOT_NAMESPACE:
            out.append(f'{object_ref(o)}: metadata.namespace: namespace "{ns}" does not exist in the lab (it has '
                       f"{', '.join(sorted(have))}): stored, but a cluster's API server would refuse it")
    return out


def lab_parameters(batch: list[Obj], everything: list[Obj]) -> list[str]:
    """A Gateway's infrastructure.parametersRef, and its class's defaults ConfigMap, overlay the
    Deployment a cluster runs it in; the lab runs gateways as processes, so they apply to nothing
    here: say so, with what a cluster's controller would find wrong with them (Accepted=False,
    InvalidParameters). For the Gateways of the batch, those whose parameters ConfigMap is in it,
    and the class defaults ConfigMaps of the batch."""
    from ambit.gatewayclasses import INGRESS_CLASSES, WAYPOINT_CLASSES
    from controller.validation import object_ref
    from controller.waypoints import class_defaults
    from controller.waypoints.class_check import problems
    from controller.waypoints.params import Parameters, check, class_defaults_layer, parameters_ref
    configmaps = {(o["metadata"].get("namespace") or "default", o["metadata"].get("name", "")): o
                  for o in everything if o.get("kind") == "ConfigMap"}
    touched = {(o["metadata"].get("namespace") or "default", o["metadata"].get("name", ""))
               for o in batch if o.get("kind") == "ConfigMap"}
    batch_refs = {object_ref(o) for o in batch}
    lab_only = "not applied in the lab, which runs gateways as processes, not Deployments: its overlays apply in " \
               "a cluster only"
    out = []
    for gw in everything:
        cls = (gw.get("spec") or {}).get("gatewayClassName") if gw.get("kind") == "Gateway" else None
        if cls not in WAYPOINT_CLASSES + INGRESS_CLASSES:
            continue
        ref = parameters_ref(gw)
        if ref is None:
            defaults = class_defaults_layer(cls, configmaps, ROOT_NAMESPACE) if object_ref(gw) in batch_refs else None
            if defaults is not None:        # what is wrong with them is said of the ConfigMap
                out.append(f"{object_ref(gw)}: {defaults.what} {defaults.ref}: {lab_only}")
            continue
        ns = gw["metadata"].get("namespace") or "default"
        if object_ref(gw) not in batch_refs and (ns, ref.get("name", "")) not in touched:
            continue
        params = check(gw, configmaps, root_namespace=ROOT_NAMESPACE)
        own = Parameters(layers=[params.layers[-1]]) if params is not None else None
        why = (f"; in a cluster the Gateway would be Accepted=False (InvalidParameters): {own.message()}"
               if own is not None and own.errors else "")
        out.append(f"{object_ref(gw)}: spec.infrastructure.parametersRef: {lab_only}{why}")
    found = {object_ref(p.configmap): p for p in problems(configmaps, [o for o in everything if o.get("kind") == "Gateway"],
                                                          ROOT_NAMESPACE)}
    for cm in batch:
        cls = class_defaults.class_of(cm) if cm.get("kind") == "ConfigMap" else None
        if cls is None:
            continue
        p = found.get(object_ref(cm))
        where = f"metadata.labels.{class_defaults.DEFAULTS_FOR_CLASS_LABEL}"
        if p is not None and not p.invalid:
            out.append(f"{object_ref(cm)}: {where}: {p.message}")
            continue
        why = f"; in a cluster: {p.message}" if p is not None else ""
        out.append(f"{object_ref(cm)}: {where}: the defaults of the Gateways of class {cls}, {lab_only}{why}")
    return out


def _lab_mesh_providers(tr: Any) -> None:
    """The lab controller's mesh config extensionProviders/defaultProviders and external
    authorizers, so the Telemetry and CUSTOM policy advisories know the providers it defines (none
    without a lab or a mesh config)."""
    from ambitctl.lab.components import mesh_config_file
    from controller import meshconfig
    try:
        mf = meshconfig.load(mesh_config_file(store_path().parent), tr.mesh_settings[0].trust_domain)
    except (ValueError, OSError):
        return      # the controller reports a bad mesh config itself
    tr.mesh_settings[0].extension_providers = list(mf.extension_providers)
    tr.mesh_settings[0].default_providers = dict(mf.default_providers)
    tr.mesh_settings[0].ext_authz = list(mf.ext_authz)


def cmd_apply(args: argparse.Namespace) -> int:
    out, err = _streams(args)
    dry_run = getattr(args, "dry_run", "none") not in (None, "none")
    try:
        objs = load_manifests(args.filename, getattr(args, "stdin", None))
        set_namespace(objs, args.namespace)
        if not objs:
            raise InputError("no objects passed to apply")
    except InputError as e:
        print(f"error: {e}", file=err)
        return 1
    path = store_path()
    store = _store() if not dry_run or path.exists() else None     # a dry run needs no lab
    before = store.snapshot() if store is not None else None
    plan = plan_apply(objs, dict(before.objects) if before is not None else {})
    if plan.errors:
        for e in plan.errors:
            print(f"error: {e}", file=err)
        print(f"error: {len(plan.errors)} problem(s) found; nothing was applied", file=err)
        return 1
    if dry_run and getattr(args, "wait", False):
        print("error: --wait has nothing to wait for with --dry-run", file=err)
        return 1
    want: dict[tuple[str, str, str], str | None] = {}
    if dry_run:
        for o, verdict in zip(objs, plan.verdicts, strict=True):
            print(f"{_display(o)} {verdict} (dry run)", file=out)
    else:
        assert store is not None and before is not None
        written: set[tuple[str, str, str]] = set()
        try:
            store.apply(objs, written)
        except StoreError as e:
            print(f"error: {e}", file=err)
            return 1
        after = store.snapshot().objects
        for o in objs:
            key = object_key(o)
            # from the write itself: the controller may have written a status (a newer
            # resourceVersion) before the snapshot, which read back as "unchanged" for a new object
            verdict = ("configured" if key in before.objects else "created") if key in written else "unchanged"
            print(f"{_display(o)} {verdict}", file=out)
            want[key] = str((after.get(key, {}).get("metadata") or {}).get("resourceVersion") or "")
    for w in plan.warnings:
        print(f"Warning: {w}", file=err)
    if plan.warnings and getattr(args, "warnings_as_errors", False):
        print(f"error: {len(plan.warnings)} warning(s), and --warnings-as-errors is set", file=err)
        return 1
    return _wait(args, want, out, err, gateways_of(objs, True)) if getattr(args, "wait", False) else 0


def _wait(args: argparse.Namespace, want: dict[tuple[str, str, str], str | None], out: TextIO, err: TextIO,
          gateways: dict[str, bool]) -> int:
    """--wait: until the change is in force at every connected proxy (ambitctl/applywait.py)."""
    from ambitctl import applywait, cluster
    try:
        return applywait.wait_and_report(cluster.debug_target(args, cluster=False), want, args.timeout, out, err,
                                         gateways)
    except cluster.TargetError as e:
        print(f"error: written, but cannot wait for it to be in force: {e}", file=err)
        return 1


def _timeout(text: str) -> float:
    from ambit.duration import parse_go_duration
    try:
        return parse_go_duration(text) if not text.replace(".", "", 1).isdigit() else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 30s, 2m)") from None


def _wait_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true",
                   help="return once the change is in force: the controller's config holds it and every connected "
                        "proxy ACKed that config (exit 1 if a proxy rejects it or on --timeout)")
    p.add_argument("--timeout", type=_timeout, default=30.0, metavar="DURATION",
                   help="how long --wait waits (default 30s)")


def not_enforced(batch: list[Obj], everything: list[Obj], translation: Any = None) -> list[str]:
    """kubectl-style warnings for what this batch configures but nothing enforces yet: L7
    policy rules no waypoint serves, routes for hosts with no waypoint, fields not applied yet
    (controller.waypoints.advisories). The objects are applied; the warning says what they do."""
    from controller.validation import object_ref
    from controller.waypoints.advisories import advisories
    refs = {object_ref(o) for o in batch}
    return [str(a) for a in advisories(everything, translation=translation) if a.ref in refs]


def cmd_delete(args: argparse.Namespace) -> int:
    from ambitctl import cluster
    out, err = _streams(args)
    store = cluster.lab_store()     # no lab: say so (it said "NotFound" and left a lab directory behind)
    try:
        if args.filename:
            objs = load_manifests(args.filename, getattr(args, "stdin", None))
            set_namespace(objs, args.namespace)
            targets = []
            for o in objs:
                spec = spec_of(o)
                md = o.get("metadata") if isinstance(o.get("metadata"), dict) else {}
                if spec is None or not isinstance(md.get("name"), str) or not md["name"]:
                    raise InputError(f"cannot delete {object_ref(o)}: a known kind and metadata.name are required")
                targets.append((spec, o.get("apiVersion", ""), object_key(o)))
        else:
            _kind_slash_name(args)
            if not args.kind or not (args.names or args.selector):
                raise InputError("pass -f FILE, or KIND and NAME, or KIND and -l SELECTOR")
            spec = _resolve(args.kind)
            ns = "" if not spec.namespaced else (args.namespace or "default")
            targets = [(spec, "", (spec.kind, ns, n)) for n in args.names]
            if args.selector:
                sel = selectors.parse(args.selector)
                targets += [(spec, "", object_key(o)) for o in store.snapshot().list(spec.kind, ns)
                            if sel((o.get("metadata") or {}).get("labels") or {})
                            and o["metadata"]["name"] not in args.names]
                if not targets:
                    print("No resources found", file=err)
                    return 0
    except (InputError, selectors.SelectorError) as e:
        print(f"error: {e}", file=err)
        return 1
    snap = store.snapshot().objects
    store.delete([k for _, _, k in targets if k in snap])
    want: dict[tuple[str, str, str], str | None] = {k: None for _, _, k in targets if k in snap}
    rc = 0
    for spec, api_version, key in targets:
        api_version = api_version or (snap.get(key) or {}).get("apiVersion", "")
        qualified = spec.qualified(api_version)
        if key in snap:
            print(f'{qualified} "{key[2]}" deleted', file=out)
        elif not args.ignore_not_found:
            print(f'Error from server (NotFound): {_resource(spec, api_version)} "{key[2]}" not found', file=err)
            rc = 1
    if getattr(args, "wait", False):
        rc = max(rc, _wait(args, want, out, err, gateways_of([snap[k] for k in want], False)))
    return rc


# -- get --------------------------------------------------------------------------------------------

def _resolve(name: str) -> KindSpec:
    spec = by_name(name)
    if spec is None:
        raise InputError(f'the server doesn\'t have a resource type "{name}" (known: {", ".join(all_names())})')
    return spec


def _age(obj: Obj, now: float) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    try:
        secs = max(0, int(now - timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ"))))
    except ValueError:
        return "<unknown>"
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{secs // n}{unit}"
    return f"{secs}s"


def _join(values: Iterable[Any]) -> str:
    s = ",".join(str(v) for v in values)
    return s or "<none>"


def _labels(obj: Obj) -> str:
    return _join(f"{k}={v}" for k, v in sorted(((obj.get("metadata") or {}).get("labels") or {}).items()))


def _spec(o: Obj) -> Obj:
    return o.get("spec") or {}


Column = tuple[str, Callable[[Obj], str]]
_COLUMNS: dict[str, list[Column]] = {
    "Pod": [("STATUS", lambda o: (o.get("status") or {}).get("phase", "Unknown")),
            ("IP", lambda o: (o.get("status") or {}).get("podIP") or "<none>"),
            ("NODE", lambda o: _spec(o).get("nodeName") or "<none>")],
    "Service": [("CLUSTER-IP", lambda o: _spec(o).get("clusterIP") or "<none>"),
                ("PORT(S)", lambda o: _join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in _spec(o).get("ports") or []))],
    "Namespace": [("STATUS", lambda o: "Active")],
    "Node": [("INTERNAL-IP", lambda o: _join(a.get("address") for a in (o.get("status") or {}).get("addresses") or []
                                             if a.get("type") == "InternalIP"))],
    "EndpointSlice": [("ADDRESSTYPE", lambda o: o.get("addressType", "")),
                      ("PORTS", lambda o: _join(p.get("port") for p in o.get("ports") or [])),
                      ("ENDPOINTS", lambda o: _join(a for e in o.get("endpoints") or [] for a in e.get("addresses") or []))],
    "VirtualService": [("GATEWAYS", lambda o: _join(_spec(o).get("gateways") or [])),
                       ("HOSTS", lambda o: _join(_spec(o).get("hosts") or []))],
    "DestinationRule": [("HOST", lambda o: _spec(o).get("host", ""))],
    "AuthorizationPolicy": [("ACTION", lambda o: _spec(o).get("action") or "ALLOW")],
    "PeerAuthentication": [("MODE", lambda o: (_spec(o).get("mtls") or {}).get("mode") or "UNSET")],
    "HTTPRoute": [("HOSTNAMES", lambda o: _join(_spec(o).get("hostnames") or []))],
    "GRPCRoute": [("HOSTNAMES", lambda o: _join(_spec(o).get("hostnames") or []))],
    "TLSRoute": [("HOSTNAMES", lambda o: _join(_spec(o).get("hostnames") or []))],
    "Gateway": [("CLASS", lambda o: _spec(o).get("gatewayClassName", ""))],
}
_WIDE: dict[str, list[Column]] = {
    "Pod": [("SERVICE-ACCOUNT", lambda o: _spec(o).get("serviceAccountName") or "default"), ("LABELS", _labels)],
    "Service": [("SELECTOR", lambda o: _join(f"{k}={v}" for k, v in sorted((_spec(o).get("selector") or {}).items())))],
    "HTTPRoute": [("PARENTS", lambda o: _join(f"{p.get('kind', 'Gateway')}/{p['name']}" for p in _spec(o).get("parentRefs") or []))],
    "GRPCRoute": [("PARENTS", lambda o: _join(f"{p.get('kind', 'Gateway')}/{p['name']}" for p in _spec(o).get("parentRefs") or []))],
    "TLSRoute": [("PARENTS", lambda o: _join(f"{p.get('kind', 'Gateway')}/{p['name']}" for p in _spec(o).get("parentRefs") or []))],
    "TCPRoute": [("PARENTS", lambda o: _join(f"{p.get('kind', 'Gateway')}/{p['name']}" for p in _spec(o).get("parentRefs") or []))],
}


def _columns(spec: KindSpec, all_namespaces: bool, wide: bool, now: float) -> list[Column]:
    cols: list[Column] = []
    if all_namespaces and spec.namespaced:
        cols.append(("NAMESPACE", lambda o: (o.get("metadata") or {}).get("namespace", "")))
    cols.append(("NAME", lambda o: (o.get("metadata") or {}).get("name", "")))
    cols += _COLUMNS.get(spec.kind, [])
    cols.append(("AGE", lambda o: _age(o, now)))
    if wide:
        cols += _WIDE.get(spec.kind, [("LABELS", _labels)])
    return cols


def format_table(spec: KindSpec, objs: list[Obj], all_namespaces: bool, wide: bool, now: float | None = None) -> str:
    cols = _columns(spec, all_namespaces, wide, time.time() if now is None else now)
    rows = [[h for h, _ in cols]] + [[f(o) for _, f in cols] for o in objs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _object_name(spec: KindSpec, o: Obj) -> str:
    """`-o name`: `pod/echo-v1`, `virtualservice.networking.istio.io/reviews`."""
    return f"{spec.qualified(o.get('apiVersion', ''))}/{(o.get('metadata') or {}).get('name', '')}"


def _select(spec: KindSpec, snap: Any, ns: str | None, names: list[str],
            selector: Callable[[dict[str, str]], bool] | None) -> list[Obj]:
    objs = [o for o in snap.list(spec.kind, "" if not spec.namespaced else ns) if spec_of(o) is spec]
    if selector is not None:
        objs = [o for o in objs if selector((o.get("metadata") or {}).get("labels") or {})]
    if names:
        by_name = {o["metadata"]["name"]: o for o in objs}
        objs = [by_name[n] for n in dict.fromkeys(names) if n in by_name]
    return objs


def _print_objects(spec: KindSpec, objs: list[Obj], args: argparse.Namespace, out: TextIO, *, single: bool,
                   revision: int | None, header: bool = True) -> None:
    if args.output in ("yaml", "json"):
        doc: Any = objs[0] if single else {"apiVersion": "v1", "kind": "List", "items": objs,
                                           "metadata": {"resourceVersion": str(revision)}}
        if args.output == "json":
            print(json.dumps(doc, indent=2, sort_keys=True), file=out)
        else:
            print(yaml.safe_dump(doc, sort_keys=False).rstrip(), file=out)
    elif args.output == "name":
        for o in objs:
            print(_object_name(spec, o), file=out)
    else:
        text = format_table(spec, objs, bool(args.all_namespaces), args.output == "wide")
        print(text if header else "\n".join(text.splitlines()[1:]), file=out)


def _kind_slash_name(args: argparse.Namespace) -> None:
    """kubectl's TYPE/NAME form: `ambit get po/echo-v1 po/echo-v2` is `ambit get po echo-v1 echo-v2`."""
    words = [w for w in [args.kind, *args.names] if w]
    if not words or "/" not in words[0]:
        return
    kinds = {w.split("/", 1)[0] for w in words if "/" in w}
    if len(kinds) != 1 or not all("/" in w and w.split("/", 1)[1] for w in words):
        raise InputError(f"use one TYPE/NAME form for every argument, of one type (got {' '.join(words)})")
    args.kind = kinds.pop()
    args.names = [w.split("/", 1)[1] for w in words]


def cmd_get(args: argparse.Namespace) -> int:
    out, err = _streams(args)
    try:
        _kind_slash_name(args)
        spec = _resolve(args.kind)
        selector = selectors.parse(args.selector) if args.selector else None
    except (InputError, selectors.SelectorError) as e:
        print(f"error: {e}", file=err)
        return 1
    from ambitctl import cluster
    in_cluster = cluster.in_cluster(args)
    default_ns = cluster.default_namespace(args) if in_cluster else "default"
    ns = None if (args.all_namespaces or not spec.namespaced) else (args.namespace or default_ns)
    names: list[str] = args.names
    if in_cluster:              # a cluster: list once through the kubernetes client
        if args.watch or args.watch_only:
            print("error: --watch is lab-only; in a cluster use kubectl get --watch", file=err)
            return 1
        snap: Any = cluster.ClusterSnapshot(cluster.cluster_objects(cluster.api_client(args), ns))
    else:
        store = cluster.lab_store()
        snap = store.snapshot()
    objs = _select(spec, snap, ns, names, selector)
    rc = 0
    found = {o["metadata"]["name"] for o in objs}
    for n in dict.fromkeys(names):
        if n not in found:
            print(f'Error from server (NotFound): {_resource(spec, "")} "{n}" not found', file=err)
            rc = 1
    if not args.watch_only:
        if objs:
            _print_objects(spec, objs, args, out, single=len(names) == 1, revision=snap.revision)
        elif not names and args.output not in ("yaml", "json"):
            where = "" if not spec.namespaced or args.all_namespaces else f" in {ns} namespace"
            print(f"No resources found{where}.", file=err)
        elif not names:
            _print_objects(spec, [], args, out, single=False, revision=snap.revision)
    if not (args.watch or args.watch_only):
        return rc
    return _watch(spec, store, snap, ns, names, selector, args, out)


def _watch(spec: KindSpec, store: LabStore, snap: Any, ns: str | None, names: list[str],
           selector: Callable[[dict[str, str]], bool] | None, args: argparse.Namespace, out: TextIO) -> int:
    """kubectl get -w: after the list, one row (or document) per object that changes, appears or goes."""
    seen = {object_key(o): o for o in _select(spec, snap, ns, names, selector)}
    header = args.watch_only or not seen
    stop = getattr(args, "watch_stop", None) or (lambda: False)
    for snap in store.watch(interval=getattr(args, "watch_interval", 0.2), stop=stop):
        now = {object_key(o): o for o in _select(spec, snap, ns, names, selector)}
        changed = [o for k, o in now.items() if (seen.get(k) or {}).get("metadata", {}).get("resourceVersion")
                   != o.get("metadata", {}).get("resourceVersion") or k not in seen]
        changed += [o for k, o in seen.items() if k not in now]      # deleted: its last state, as kubectl
        seen = now
        for o in changed:
            if args.output == "yaml":
                print("---", file=out)
            _print_objects(spec, [o], args, out, single=True, revision=snap.revision, header=header)
            header = False
        out.flush()
    return 0


# -- wiring --------------------------------------------------------------------------------------

def _streams(args: argparse.Namespace) -> tuple[TextIO, TextIO]:
    return getattr(args, "stdout", None) or sys.stdout, getattr(args, "stderr", None) or sys.stderr


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `apply`, `delete` and `get` to the `ambit` command line. Each sets `func(args) -> int`."""
    p = subparsers.add_parser("apply", help="validate and apply configuration (all-or-nothing)")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-",
                   help="a manifest file, a directory of them, or - for stdin (repeatable)")
    p.add_argument("-n", "--namespace", help="namespace for objects that do not name one")
    p.add_argument("--dry-run", nargs="?", const="client", default="none", choices=("none", "client", "server"),
                   help="validate and translate as a real apply does, print what would change, apply nothing; "
                        "needs no lab (client and server mean the same here)")
    p.add_argument("--warnings-as-errors", action="store_true",
                   help="exit 1 when the batch draws warnings (for CI)")
    _wait_arguments(p)
    p.set_defaults(func=cmd_apply)

    p = subparsers.add_parser("delete", help="delete configuration by file or by kind and name")
    p.add_argument("kind", nargs="?", help="kind (vs, dr, ap, pa, po, svc, ns, ...)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("-f", "--filename", action="append", metavar="FILE|DIR|-")
    p.add_argument("-n", "--namespace")
    p.add_argument("-l", "--selector", metavar="SELECTOR", help="delete the objects of KIND whose labels match")
    p.add_argument("--ignore-not-found", action="store_true")
    _wait_arguments(p)
    intermixed(p)
    p.set_defaults(func=cmd_delete)

    p = subparsers.add_parser("get", help="list or show objects in the lab store")
    p.add_argument("kind", help="kind: name, plural or short name (vs, dr, ap, pa, po, svc, ns, ...)")
    p.add_argument("names", nargs="*", metavar="NAME")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-n", "--namespace")
    g.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=("yaml", "json", "wide", "name"))
    p.add_argument("-l", "--selector", metavar="SELECTOR",
                   help="label selector: app=echo, tier!=db, 'env in (a,b)', 'env notin (a,b)', app, !app")
    p.add_argument("-w", "--watch", action="store_true", help="after listing, print each change as it happens")
    p.add_argument("--watch-only", action="store_true", help="print changes only, without the initial list")
    from ambitctl.cluster import add_arguments as cluster_arguments
    cluster_arguments(p, controller=False)
    intermixed(p)
    p.set_defaults(func=cmd_get)
