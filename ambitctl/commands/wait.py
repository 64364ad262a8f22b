"""`ambit wait -f FILE | KIND NAME…`: wait until objects, as they are now in the lab's store or the
cluster's API server, are in force at every connected proxy (`istioctl x wait`).

`ambit apply --wait` covers the lab. In a cluster the write is `kubectl apply` (or a GitOps tool),
so this is the step after it: `kubectl apply -f routes.yaml && ambit wait -f routes.yaml`. Each
object is looked up where it lives now: one that exists is waited for at its current
resourceVersion, one that does not (after `kubectl delete`) until the config no longer holds it.
The judgement and the polling are ambitctl/applywait.py's, against the controller's debug API.

Objects the controller does not read are skipped with a note: kinds outside its registry (an
app's Deployment), and Secrets other than `kubernetes.io/tls` ones (it never sees the others).
A ConfigMap is waited for by presence only: the controller keeps no resourceVersion of one
(controller/sources/kube.py cuts ConfigMaps down to `ca.crt`). A waypoint or ingress Gateway in a
file is also waited for until one of its proxies is connected (it exists) or none is (it does not).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ambitctl import applywait, cluster
from ambitctl.commands.config import InputError, _kind_slash_name, _timeout, load_manifests, set_namespace
from ambitctl.term import intermixed
from controller.kinds import all_names, by_name, spec_of
from controller.validation import object_key

Obj = dict[str, Any]
Key = tuple[str, str, str]
NO_RESOURCE_VERSION = ("ConfigMap",)


def _refs(args: argparse.Namespace, default_ns: str) -> tuple[list[Obj], list[str]]:
    """The objects named (as stubs: kind, apiVersion, metadata), and notes on those skipped."""
    notes: list[str] = []
    if args.filename:
        objs = load_manifests(args.filename)
        set_namespace(objs, args.namespace or None)
    else:
        _kind_slash_name(args)
        if not args.kind or not args.names:
            raise InputError("pass -f FILE, or KIND and NAME")
        spec = by_name(args.kind)
        if spec is None:
            raise InputError(f"unknown kind {args.kind!r} (one of: {', '.join(sorted(all_names()))})")
        ns = (args.namespace or default_ns) if spec.namespaced else ""
        objs = [{"kind": spec.kind, "apiVersion": "", "metadata": {"name": n, "namespace": ns}} for n in args.names]
    out = []
    for o in objs:
        spec = spec_of(o)
        md = o.get("metadata") or {}
        if spec is None:
            notes.append(f"{o.get('kind')} {md.get('name')}: not read by the controller: not waited for")
            continue
        if spec.namespaced and not md.get("namespace"):
            md["namespace"] = default_ns
        if o["kind"] == "Secret" and o.get("type", "kubernetes.io/tls") != "kubernetes.io/tls":
            notes.append(f"Secret {md.get('name')}: only kubernetes.io/tls Secrets reach the controller: not waited for")
            continue
        out.append(o)
    return out, notes


def _lab_state(objs: list[Obj]) -> dict[Key, str | None]:
    now = cluster.lab_store().snapshot().objects
    out: dict[Key, str | None] = {}
    for o in objs:
        key = object_key(o)
        live = now.get(key)
        out[key] = None if live is None else str((live.get("metadata") or {}).get("resourceVersion") or "")
    return out


def _cluster_state(args: argparse.Namespace, objs: list[Obj]) -> dict[Key, str | None]:
    """Each object's resourceVersion as the API server has it now (None: it does not exist), read
    through the same REST edge `ambit install` uses (ambitctl/kubeapply.py `Kube`)."""
    from ambitctl.kubeapply import Kube, KubeError
    from controller.sources.kube import default_types
    kube = Kube(cluster.api_client(args))
    types: dict[str, list[Any]] = {}
    for t in default_types():
        types.setdefault(t.kind, []).append(t)
    out: dict[Key, str | None] = {}
    for o in objs:
        key = object_key(o)
        kind, ns, name = key
        api_version = str(o.get("apiVersion") or "")
        group = api_version.rpartition("/")[0]
        candidates = [t for t in types.get(kind, []) if not api_version or t.group == group] or types.get(kind, [])
        # the first group and version that serves it (a group the cluster does not serve: 404, the next)
        paths = [t.path(version, ns or None, name) for t in candidates for version in t.versions]
        live = None
        try:
            for path in paths:
                if (live := kube.get_path(path)) is not None:
                    break
        except KubeError as e:
            raise cluster.TargetError(str(e)) from None
        out[key] = None if live is None else str((live.get("metadata") or {}).get("resourceVersion") or "")
    return out


def cmd_wait(args: argparse.Namespace) -> int:
    out, err = sys.stdout, sys.stderr
    in_cluster = cluster.in_cluster(args)
    try:
        default_ns = cluster.default_namespace(args) if in_cluster else "default"
        objs, notes = _refs(args, default_ns)
        for n in notes:
            print(f"note: {n}", file=err)
        want = _cluster_state(args, objs) if in_cluster else _lab_state(objs)
        for key in want:
            if key[0] in NO_RESOURCE_VERSION and want[key] is not None:
                want[key] = ""          # presence only (see the module docstring)
        # Ambit's Gateways named in a file: up (it exists now) or down (it does not)
        gateways = {gw: want.get(("Gateway", *gw.split("/", 1))) is not None  # type: ignore[arg-type]
                    for gw in applywait.gateways_of(objs)}
        return applywait.wait_and_report(cluster.debug_target(args), want, args.timeout, out, err, gateways)
    except (InputError, cluster.TargetError) as e:
        print(f"error: {e}", file=err)
        return 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("wait", help="wait until objects, as they are now, are in force at every connected proxy "
                                    "(after kubectl apply or delete)")
    p.add_argument("kind", nargs="?", help="kind (vs, dr, ap, httproute, ...), with NAME")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("-f", "--filename", action="append", metavar="FILE|DIR|-",
                   help="the manifests applied or deleted (repeatable)")
    p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's, else default)")
    p.add_argument("--timeout", type=_timeout, default=30.0, metavar="DURATION", help="how long to wait (default 30s)")
    cluster.add_arguments(p)
    intermixed(p)
    p.set_defaults(func=cmd_wait)
