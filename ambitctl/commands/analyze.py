"""`ambit analyze`: configuration that is valid but wrong (see ambitctl/analyze.py for the checks).

    ambit analyze -n demo                     # the lab's state, one namespace
    ambit analyze -A                          # every namespace
    ambit analyze -f manifests/               # files on top of the lab's state (files alone without a lab)
    ambit analyze -f manifests/ --offline     # files alone, even with a lab up (CI)
    ambit analyze -A --context prod           # a cluster: its objects through the API server, and
                                              # traffic facts through the controller's debug API

Exit codes (as istioctl analyze): 0 when nothing is at or above --failure-threshold (default
Error), 79 when something is, 1 when the analysis could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import yaml

from ambitctl import analyze as an
from ambitctl.term import paint

FOUND_ISSUES = 79          # istioctl analyze's exit code for "issues at or above the failure threshold"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("analyze", help="find configuration that is valid but wrong (like istioctl analyze)")
    p.add_argument("-f", "--filename", action="append", metavar="FILE|DIR|-",
                   help="analyse these manifests (on top of the lab's state, if a lab is up); repeatable")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-n", "--namespace", help="report on this namespace (default: default, or the files' own)")
    g.add_argument("-A", "--all-namespaces", action="store_true", help="report on every namespace")
    p.add_argument("--offline", action="store_true", help="with -f: ignore the lab, analyse the files alone")
    p.add_argument("--assume-complete", action="store_true",
                   help="with --offline: the files are the whole world, so a reference to anything they do not "
                        "contain is broken (as istioctl analyze --use-kube=false)")
    p.add_argument("--failure-threshold", choices=an.SEVERITIES, default=an.ERROR,
                   help="exit 79 when a finding is at least this severe (default Error)")
    p.add_argument("--output-threshold", choices=an.SEVERITIES, default=an.INFO,
                   help="print findings at least this severe (default Info)")
    p.add_argument("--no-traffic", action="store_true",
                   help="do not read traffic facts from the ztunnels (AMB0110 needs them): the lab's sockets, "
                        "or in a cluster the controller's debug API")
    p.add_argument("-o", "--output", choices=("log", "json", "yaml"), default="log")
    p.add_argument("--list-codes", action="store_true", help="print every finding code and exit")
    from ambitctl import cluster
    p.add_argument("--cluster-domain", type=cluster.domain_arg, default=None, metavar="DOMAIN",
                   help="the cluster's DNS domain Service host names are under (default: in a cluster, the one "
                        "`ambit install` recorded; else cluster.local)")
    cluster.add_arguments(p)
    p.set_defaults(func=cmd_analyze)


def _streams(args: argparse.Namespace) -> tuple[TextIO, TextIO]:
    return getattr(args, "stdout", None) or sys.stdout, getattr(args, "stderr", None) or sys.stderr


def _lab_objects() -> list[dict[str, Any]] | None:
    from ambit.labstore import LabStore
    from ambitctl.lab.paths import store_path
    path = store_path()
    if not path.exists():
        return None
    return list(LabStore(path).snapshot().objects.values())


def cluster_traffic(args: argparse.Namespace) -> tuple[list[an.PlaintextTraffic], str]:
    """Plaintext-inbound facts from every ztunnel of a cluster, through the controller's debug API
    `Metrics` (it asks each proxy over the feed the proxy keeps open; nothing dials the nodes)."""
    from ambit.api import debug_pb2
    from ambitctl import cluster
    try:
        target = cluster.debug_target(args)       # a cluster's, or the lab's with --controller
        resp = cluster.call(target, "Metrics", debug_pb2.MetricsRequest(timeout=3.0), 8.0)
    except Exception as e:  # noqa: BLE001 - TargetError or the gRPC error: the note names it
        details = e.details() if callable(getattr(e, "details", None)) else str(e)
        return [], f"the controller's debug API: {details}"
    out: list[an.PlaintextTraffic] = []
    for name, text in sorted(resp.metrics.items()):
        if name.startswith("ztunnel/"):
            out += an.plaintext_from_metrics(text)
    return out, "; ".join(f"{m}: no metrics" for m in resp.missing)


def lab_traffic() -> tuple[list[an.PlaintextTraffic], str]:
    """Plaintext-inbound facts from every lab node's ztunnel metrics socket ("" or why none)."""
    from ambit.dataplane.telemetry.metrics import scrape
    from ambitctl.lab import components, paths, state
    base = paths.lab_dir()
    st = state.load(base)
    if st is None:
        return [], "no lab state"
    out: list[an.PlaintextTraffic] = []
    problems = []
    for n in st.spec["nodes"]:
        sock = components.ztunnel_metrics_socket(base, n["name"])
        try:
            out += an.plaintext_from_metrics(scrape(sock))
        except OSError as e:
            problems.append(f"{n['name']}: {e}")
    return out, "; ".join(problems)


def cmd_analyze(args: argparse.Namespace) -> int:
    out, err = _streams(args)
    if args.list_codes:
        for c in an.CODES.values():
            print(f"{c.code}  {c.severity:<7}  {c.name:<28}  {c.what}", file=out)
        return 0
    from ambitctl.commands.config import InputError, load_manifests, set_namespace
    files: list[dict[str, Any]] = []
    try:
        if args.filename:
            files = load_manifests(args.filename, getattr(args, "stdin", None))
            set_namespace(files, args.namespace)
    except InputError as e:
        print(f"error: {e}", file=err)
        return 1
    from ambitctl import cluster
    in_cluster = not (args.offline and args.filename) and cluster.in_cluster(args)
    try:
        client = cluster.api_client(args) if in_cluster else None
        lab = (None if (args.offline and args.filename)
               else cluster.cluster_objects(client) if client is not None else _lab_objects())
        domain = cluster.cluster_domain(args, client)
    except cluster.TargetError as e:
        print(f"error: {e}", file=err)
        return 1
    if lab is None and not args.filename:
        print("error: no lab is up (no store); pass -f FILES to analyse manifests, or --context for a cluster",
              file=err)
        return 1
    objects: dict[Any, dict[str, Any]] = {}
    from controller.validation import object_key
    for o in (lab or []) + files:
        try:
            objects[object_key(o)] = o
        except (AttributeError, TypeError):
            objects[id(o)] = o
    traffic: list[an.PlaintextTraffic] = []
    if lab is not None and not args.no_traffic:
        # --controller in the lab: through its debug API too, as tap/stat/top (it was ignored)
        traffic, why = cluster_traffic(args) if in_cluster or args.controller else lab_traffic()
        if why:
            print(f"note: traffic facts incomplete ({why}); AMB0110 may miss problems", file=err)
    from ambitctl.commands.config import _lab_mesh_providers
    found = an.analyze(list(objects.values()), complete=lab is not None or args.assume_complete, traffic=traffic,
                       mesh=_lab_mesh_providers if lab is not None and not in_cluster else None,
                       cluster_domain=domain)

    if args.all_namespaces:
        scope = "all namespaces"
    elif args.namespace or not args.filename:
        ns = args.namespace or (cluster.default_namespace(args) if in_cluster else "default")
        found = [f for f in found if f.namespace in (ns, "")]
        scope = f"namespace: {ns}"
    else:       # files: what they are about
        from controller.validation import object_ref
        refs = {object_ref(o) for o in files}
        found = [f for f in found if f.ref in refs]
        scope = "the given files"
    shown = an.at_or_above(found, args.output_threshold)
    if args.output == "json":
        print(json.dumps([f.as_dict() for f in shown], indent=2), file=out)
    elif args.output == "yaml":
        print(yaml.safe_dump([f.as_dict() for f in shown], sort_keys=False).rstrip(), file=out)
    elif not shown:
        print(f"{paint('✔', 'green', out)} No validation issues found when analyzing {scope}.", file=out)
    else:
        style = {an.ERROR: "red", an.WARNING: "yellow", an.INFO: "dim"}
        for f in shown:
            print(paint(str(f), style[f.severity], out), file=out)
    return FOUND_ISSUES if an.at_or_above(found, args.failure_threshold) else 0
