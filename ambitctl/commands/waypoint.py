"""`ambit waypoint apply|generate|list|status|delete`: waypoints as `istioctl waypoint` manages them.

    ambit waypoint apply  [-n NS] [--name waypoint] [--for service|workload|all|none] [--enroll-namespace]
                          [--overwrite] [--wait [--timeout S]]
    ambit waypoint generate [-n NS] [--name waypoint] [--for ...]        # print the Gateway, write nothing
    ambit waypoint list   [-n NS | -A]
    ambit waypoint status [-n NS] [--name N]
    ambit waypoint delete [-n NS] [NAME ...] [--all]

A waypoint is a Gateway API `Gateway` of class `ambit-waypoint` with one listener `mesh` on port
15008, protocol HBONE, and the label `ambit.io/waypoint-for` (what istioctl writes, with Ambit's
class and label prefix; `istio-waypoint` Gateways and `istio.io/*` labels are honoured too).
`--enroll-namespace` labels the namespace `ambit.io/use-waypoint: <name>`, so every Service in it
(and workload, per `--for`) uses the waypoint; a namespace already bound to another waypoint is
only relabelled with `--overwrite`, as istioctl does. The controller fills in the Gateway's
status (`Accepted`, `Programmed`, its address); `list` and `status` show it.

These commands act on the lab store (the lab's API server), or with `--kube` on a cluster
(kubeconfig, `--kubeconfig FILE`, or `--kube-host URL` for a plain-HTTP API such as `kubectl
proxy`'s), where the controller deploys the waypoint and writes its status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TextIO

import yaml

from ambitctl.commands.waypoint_backends import Backend, BackendError, KubeBackend, LabBackend
from controller.validation import ValidationError, validate_all
from controller.waypoints.gateways import (
    HBONE_PORT,
    WAYPOINT_CLASSES,
    WAYPOINT_FOR_VALUES,
    is_waypoint,
    waypoint_for,
)

Obj = dict[str, Any]
WAYPOINT_CLASS = "ambit-waypoint"
FOR_LABEL = "ambit.io/waypoint-for"
USE_LABELS = ("ambit.io/use-waypoint", "istio.io/use-waypoint")


def gateway(name: str, namespace: str, for_: str | None) -> Obj:
    """The Gateway istioctl's `waypoint generate` writes, in Ambit's class."""
    md: Obj = {"name": name, "namespace": namespace}
    if for_:
        md["labels"] = {FOR_LABEL: for_}
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": md,
            "spec": {"gatewayClassName": WAYPOINT_CLASS,
                     "listeners": [{"name": "mesh", "port": HBONE_PORT, "protocol": "HBONE"}]}}


def _streams(args: argparse.Namespace) -> tuple[TextIO, TextIO]:
    return getattr(args, "stdout", None) or sys.stdout, getattr(args, "stderr", None) or sys.stderr


def _backend(args: argparse.Namespace) -> Backend:
    if _is_kube(args):
        return KubeBackend(args.kube_host, args.kubeconfig, args.context)
    from ambitctl import cluster
    return LabBackend(cluster.lab_store())    # no lab: say so, never "No waypoints found" nor a new lab directory


def _conditions(gw: Obj) -> dict[str, Obj]:
    return {c.get("type"): c for c in (gw.get("status") or {}).get("conditions") or []}


def _programmed(gw: Obj) -> str:
    return (_conditions(gw).get("Programmed") or {}).get("status", "Unknown")


# -- apply / generate ----------------------------------------------------------------------------

def cmd_generate(args: argparse.Namespace) -> int:
    out, _ = _streams(args)
    print(yaml.safe_dump(gateway(args.name, args.namespace, args.for_), sort_keys=False).rstrip(), file=out)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    out, err = _streams(args)
    gw = gateway(args.name, args.namespace, args.for_)
    try:
        validate_all([gw])
    except ValidationError as e:
        for fe in e.errors:
            print(f"error: {fe}", file=err)
        return 1
    try:
        be = _backend(args)
        # In the lab too (a cluster's API server refuses the Gateway itself): a typo in -n would
        # otherwise run a waypoint pod in a namespace that does not exist
        labels = be.namespace_labels(args.namespace) if args.enroll_namespace or not _is_kube(args) else {}
        if labels is None:
            print(f'error: namespace "{args.namespace}" not found; create it first', file=err)
            return 1
        if args.enroll_namespace:
            bound = next((labels[k] for k in USE_LABELS if labels.get(k)), None)
            if bound not in (None, args.name) and not args.overwrite:
                print(f'error: namespace "{args.namespace}" already uses waypoint "{bound}"; pass --overwrite to use '
                      f'"{args.name}" instead', file=err)
                return 1
        be.apply_gateway(gw)
        print(f"waypoint {args.namespace}/{args.name} applied", file=out)
        if args.enroll_namespace:
            be.set_namespace_labels(args.namespace, {USE_LABELS[0]: args.name}, list(USE_LABELS[1:]))
            print(f'namespace {args.namespace} labeled with "{USE_LABELS[0]}: {args.name}"', file=out)
        if args.wait:
            return _wait_programmed(be, args.namespace, args.name, args.timeout, out, err)
    except BackendError as e:
        print(f"error: {e}", file=err)
        return 1
    return 0


def _wait_programmed(be: Backend, ns: str, name: str, timeout: float, out: TextIO, err: TextIO) -> int:
    deadline = time.monotonic() + timeout
    while True:
        gw = be.get_gateway(ns, name)
        if gw is not None and _programmed(gw) == "True":
            addrs = ", ".join(a.get("value", "") for a in (gw.get("status") or {}).get("addresses") or [])
            print(f"waypoint {ns}/{name} programmed ({addrs})", file=out)
            return 0
        if time.monotonic() >= deadline:
            why = (_conditions(gw or {}).get("Programmed") or {}).get("message") or "no status yet (is the controller up?)"
            print(f"error: waypoint {ns}/{name} not programmed after {timeout:.0f}s: {why}", file=err)
            return 1
        time.sleep(0.1)


# -- list / status / delete ------------------------------------------------------------------------

def _waypoints(be: Backend, namespace: str | None) -> list[Obj]:
    return [g for g in be.gateways(namespace) if is_waypoint(g)]


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def cmd_list(args: argparse.Namespace) -> int:
    out, err = _streams(args)
    ns = None if args.all_namespaces else args.namespace
    try:
        gws = _waypoints(_backend(args), ns)
    except BackendError as e:
        print(f"error: {e}", file=err)
        return 1
    if not gws:
        print("No waypoints found." if ns is None else f"No waypoints found in namespace {ns}.", file=err)
        return 0
    head = (["NAMESPACE"] if ns is None else []) + ["NAME", "CLASS", "FOR", "PROGRAMMED", "ADDRESS"]
    rows = [head]
    for g in gws:
        md = g["metadata"]
        addrs = ",".join(a.get("value", "") for a in (g.get("status") or {}).get("addresses") or []) or "<none>"
        rows.append(([md.get("namespace", "")] if ns is None else [])
                    + [md["name"], g["spec"]["gatewayClassName"], waypoint_for(g), _programmed(g), addrs])
    print(_table(rows), file=out)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    out, err = _streams(args)
    try:
        gws = [g for g in _waypoints(_backend(args), args.namespace) if not args.name or g["metadata"]["name"] == args.name]
    except BackendError as e:
        print(f"error: {e}", file=err)
        return 1
    if not gws:
        print(f"error: no waypoint{' ' + args.name if args.name else ''} in namespace {args.namespace}", file=err)
        return 1
    rows = [["NAMESPACE", "NAME", "STATUS", "TYPE", "REASON", "MESSAGE"]]
    for g in gws:
        md = g["metadata"]
        conds = list(_conditions(g).values())
        if not conds:
            rows.append([md["namespace"], md["name"], "Unknown", "Programmed", "Pending",
                         "no status yet: the controller has not seen this waypoint"])
        for c in conds:
            rows.append([md["namespace"], md["name"], c.get("status", ""), c.get("type", ""), c.get("reason", ""),
                         c.get("message", "")])
    print(_table(rows), file=out)
    if not _is_kube(args):
        for g in gws:
            _print_clusters(g["metadata"]["namespace"], g["metadata"]["name"], out)
    elif args.controller:
        _print_reported_clusters(args, gws, out, err)
    return 0 if all(_programmed(g) == "True" for g in gws) else 1


def _in_namespace(fn: Any) -> Any:
    """kubectl's default namespace: the kubeconfig context's on a cluster, `default` in the lab."""
    def run(args: argparse.Namespace) -> int:
        if not args.namespace:
            from ambitctl import cluster
            args.namespace = cluster.default_namespace(args) if _is_kube(args) and not args.kube_host else "default"
        return int(fn(args))
    return run


def _is_kube(args: argparse.Namespace) -> bool:
    """A cluster when asked for in any of kubectl's ways (`--context` and `--kubeconfig` too, as
    the other read commands take them), else the lab store."""
    return bool(getattr(args, "kube", False) or getattr(args, "kubeconfig", None) or getattr(args, "kube_host", None)
                or getattr(args, "context", None))


def cluster_rows(clusters: list[Obj]) -> list[list[str]]:
    """One row per cluster the waypoint has sent to (its admin `/clusters`): load balancer,
    endpoints in service / known, active requests, and the ejected endpoints with the seconds
    left and how often each was ejected."""
    rows = [["CLUSTER", "LB", "HEALTHY", "ACTIVE", "EJECTIONS", "EJECTED"]]
    for c in clusters:
        eps = c.get("endpoints") or []
        st = c.get("stats") or {}
        ejected = [f"{e['address']} ({e.get('ejected_for', 0):g}s, x{e.get('ejections', 0)})"
                   for e in eps if e.get("ejected")]
        rows.append([c.get("name", ""), c.get("lb", ""),
                     f"{int(st.get('membership_healthy', 0))}/{int(st.get('membership_total', 0))}",
                     str(sum(int(e.get("active", 0)) for e in eps)),
                     str(int(st.get("outlier_detection_ejections_enforced_total", 0)))
                     if c.get("outlier_detection") else "-",
                     ", ".join(ejected) or "-"])
    return rows


def _print_reported_clusters(args: argparse.Namespace, gws: list[Obj], out: TextIO, err: TextIO) -> None:
    """In a cluster: each waypoint pod's clusters as it reported them to the controller's debug API
    (endpoints, ejected, active requests), never from the pods themselves."""
    from ambitctl import cluster
    try:
        resp = cluster.proxy_status(cluster.debug_target(args, cluster=True))
    except cluster.TargetError as e:
        print(f"warning: clusters unknown: {e}", file=err)
        return
    wanted = {f"{g['metadata']['namespace']}/{g['metadata']['name']}" for g in gws}
    for p in resp.proxies:
        if p.node.kind != "waypoint" or p.node.waypoint not in wanted or not p.connected or not p.report_json:
            continue
        clusters = json.loads(p.report_json).get("clusters") or []
        rows = [["CLUSTER", "ENDPOINTS", "EJECTED", "ACTIVE"]] + [
            [c["name"], str(c["endpoints"]), str(c["ejected"]), str(c["active"])] for c in clusters]
        print(f"\nclusters of waypoint {p.node.waypoint} (pod {p.node.name}, {p.state}, reported "
              f"{p.report_age:.0f}s ago):", file=out)
        print(_table(rows), file=out)


def _print_clusters(ns: str, name: str, out: TextIO) -> None:
    """The lab's waypoint pod answers on its admin socket; show its clusters when it runs."""
    from ambit.dataplane import endpoint
    from ambitctl.lab.paths import lab_dir
    from ambitctl.lab.waypoints import admin_socket

    sock = admin_socket(lab_dir(), ns, name)
    if not sock.exists():
        return
    try:
        code, clusters = endpoint.get_json(sock, "/clusters", timeout=2.0)
    except (OSError, ValueError):
        return
    if code != 200 or not clusters:
        return
    print(f"\nclusters of waypoint {ns}/{name}:", file=out)
    print(_table(cluster_rows(clusters)), file=out)


def cmd_delete(args: argparse.Namespace) -> int:
    out, err = _streams(args)
    try:
        be = _backend(args)
        present = {g["metadata"]["name"]: g for g in _waypoints(be, args.namespace)}
        names = sorted(present) if args.all else (list(args.names) or ["waypoint"])
        rc = 0
        for n in names:
            if n not in present:
                other = be.get_gateway(args.namespace, n)
                why = (f'Gateway "{n}" is of class {other["spec"]["gatewayClassName"]}, not a waypoint'
                       if other else f'waypoint "{n}" not found in namespace {args.namespace}')
                print(f"error: {why}", file=err)
                rc = 1
        be.delete_gateways(args.namespace, [n for n in names if n in present])
    except BackendError as e:
        print(f"error: {e}", file=err)
        return 1
    for n in names:
        if n in present:
            print(f"waypoint {args.namespace}/{n} deleted", file=out)
    _still_used(be, args.namespace, [n for n in names if n in present], err)
    return rc


def _still_used(be: Backend, namespace: str, deleted: list[str], err: TextIO) -> None:
    """Warn when the namespace still names a deleted waypoint: ztunnel then refuses the traffic
    that should go through it (fails closed), so a delete alone silently cuts the namespace off."""
    try:
        labels = be.namespace_labels(namespace) or {}
    except BackendError:
        return
    for key in USE_LABELS:
        if labels.get(key) in deleted:
            print(f"Warning: namespace {namespace} still has {key}={labels[key]}: ztunnel refuses the traffic "
                  f"of its Services that should go through that waypoint (it fails closed, never bypasses it) "
                  f"until the label is removed (`ambit label ns {namespace} {key}-`) or the waypoint is applied "
                  "again", file=err)


# -- wiring ----------------------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("waypoint", help="manage waypoints (L7 proxies), like `istioctl waypoint`")
    sub = p.add_subparsers(dest="waypoint_command", metavar="COMMAND", required=True)

    def common(sp: argparse.ArgumentParser, name: bool = True) -> None:
        sp.add_argument("-n", "--namespace", default=None,
                        help="the waypoint's namespace (default: the kubeconfig context's with --kube, else default)")
        sp.add_argument("--kube", action="store_true",
                        help="act on a cluster (kubeconfig / in-cluster credentials) instead of the lab store")
        sp.add_argument("--kubeconfig", help="this kubeconfig file (implies --kube)")
        sp.add_argument("--context", help="this kubeconfig context (implies --kube)")
        sp.add_argument("--kube-host", help="with --kube: a plain-HTTP API server URL (e.g. `kubectl proxy`)")
        if name:
            sp.add_argument("--name", default="waypoint", help="the waypoint's name (default: waypoint)")

    for cmd, fn, help_ in (("apply", cmd_apply, "create or update a waypoint"),
                           ("generate", cmd_generate, "print a waypoint's Gateway as YAML")):
        sp = sub.add_parser(cmd, help=help_)
        common(sp)
        sp.add_argument("--for", dest="for_", choices=WAYPOINT_FOR_VALUES, default="service",
                        help="what traffic the waypoint serves (default: service)")
        if cmd == "apply":
            sp.add_argument("--enroll-namespace", action="store_true",
                            help="label the namespace ambit.io/use-waypoint=<name>: its traffic uses this waypoint")
            sp.add_argument("--overwrite", action="store_true",
                            help="with --enroll-namespace: replace the namespace's current waypoint")
            sp.add_argument("--wait", action="store_true", help="wait until the waypoint is programmed")
            sp.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits (default 60)")
        sp.set_defaults(func=_in_namespace(fn))

    sp = sub.add_parser("list", help="list waypoints")
    common(sp, name=False)
    sp.add_argument("-A", "--all-namespaces", action="store_true")
    sp.set_defaults(func=_in_namespace(cmd_list))

    sp = sub.add_parser("status", help="show waypoints' status conditions (exit 1 unless all are programmed)")
    common(sp, name=False)
    sp.add_argument("--name", default=None, help="one waypoint (default: every waypoint in the namespace)")
    sp.add_argument("--controller", default=os.environ.get("AMBIT_CONTROLLER"),
                    help="with --kube: the controller's debug API HOST:PORT, to show the clusters each waypoint "
                         "pod reported (default $AMBIT_CONTROLLER)")
    sp.add_argument("--token", help="with --controller: the debug API bearer token (default: the kubeconfig user's)")
    sp.set_defaults(func=_in_namespace(cmd_status))

    sp = sub.add_parser("delete", help="delete waypoints (default: the one named waypoint)")
    common(sp, name=False)
    sp.add_argument("names", nargs="*", metavar="NAME")
    sp.add_argument("--all", action="store_true", help="every waypoint in the namespace")
    sp.set_defaults(func=_in_namespace(cmd_delete))


__all__ = ["WAYPOINT_CLASSES", "gateway", "register"]
