"""`ambit authz check SRC DST[:PORT] [--method M --path P --header K=V | --tcp]`: would this request be
allowed, and which policy and rule decide? The data plane's own evaluators decide (see
ambitctl/authzcheck.py). Exit 0 when allowed, 3 when denied, 1 when the check cannot run."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from ambitctl import authzcheck as ac
from ambitctl.term import intermixed, paint

DENIED = 3


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("authz", help="authorization: would a request be allowed (like istioctl x authz check)")
    asub = p.add_subparsers(dest="authz_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    c = asub.add_parser("check", help="decide one request from SRC to DST with the data plane's evaluators")
    c.add_argument("src", metavar="SRC", help="the client pod: NAMESPACE/POD")
    c.add_argument("dst", metavar="DST[:PORT]",
                   help="a Service (NAMESPACE/SERVICE, SERVICE.NAMESPACE[.svc.cluster.local], its VIP) or a pod "
                        "(NAMESPACE/POD:PORT); the port defaults to the Service's first")
    c.add_argument("-X", "--method", default="GET")
    c.add_argument("--path", default="/")
    c.add_argument("-H", "--header", action="append", default=[], metavar="K=V", help="a request header (repeatable)")
    c.add_argument("--tcp", action="store_true",
                   help="a non-HTTP client: a waypoint judges it by its policies' L4 view (HTTP rules cannot match it)")
    c.add_argument("-f", "--filename", action="append", metavar="FILE|DIR|-",
                   help="decide against these manifests on top of the lab's state (e.g. a policy not applied yet)")
    c.add_argument("--root-namespace", default="ambit-system")
    c.add_argument("-o", "--output", choices=("text", "json"), default="text")
    intermixed(c)
    c.set_defaults(func=cmd_check)


def _streams(args: argparse.Namespace) -> tuple[TextIO, TextIO]:
    return getattr(args, "stdout", None) or sys.stdout, getattr(args, "stderr", None) or sys.stderr


def _objects(args: argparse.Namespace) -> list[dict[str, Any]]:
    from ambit.labstore import LabStore
    from ambitctl.commands.config import load_manifests, set_namespace
    from ambitctl.lab.paths import store_path
    from controller.validation import ValidationError, object_key, validate_all
    objs: dict[Any, dict[str, Any]] = {}
    if store_path().exists():
        objs.update(LabStore(store_path()).snapshot().objects)
    if args.filename:
        files = load_manifests(args.filename, getattr(args, "stdin", None))
        set_namespace(files, None)
        try:   # a policy `ambit apply` would refuse must not be left out of the answer without a word
            validate_all(files)
        except ValidationError as e:
            raise ac.CheckError(f"-f: {len(e.errors)} problem(s), `ambit apply` would refuse these files: "
                                + "; ".join(str(fe) for fe in e.errors)) from None
        for o in files:
            objs[object_key(o)] = o
    if not objs:
        raise ac.CheckError("no lab is up (no store) and no -f FILES given")
    return list(objs.values())


def format_result(r: ac.Result, out: TextIO) -> str:
    verdict = paint("ALLOWED", "green", out) if r.allowed else paint("DENIED", "red", out)
    lines = [f"{verdict}  {r.source} -> {r.target}  ({r.request})"]
    for p in r.paths:
        if len(r.paths) > 1:
            lines.append(f"  via {p.destination or '-'}: {'allowed' if p.allowed else 'denied'}")
        for h in p.hops:
            decided = ""
            if h.policy:
                decided = f"  [{h.policy}{', ' + h.rule if h.rule else ''}]"
            lines.append(f"    {h.where}: {'allow' if h.allowed else 'DENY'}: {h.reason}{decided}")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    out, err = _streams(args)
    headers = []
    for h in args.header:
        k, sep, v = h.partition("=")
        if not sep or not k:
            print(f"error: --header {h!r}: use NAME=VALUE", file=err)
            return 1
        headers.append((k, v))
    try:
        result = ac.check(_objects(args), args.src, args.dst,
                          ac.Request(args.method.upper(), args.path, tuple(headers), tcp=args.tcp),
                          root_namespace=args.root_namespace)
    except ac.CheckError as e:
        print(f"error: {e}", file=err)
        return 1
    if args.output == "json":
        print(json.dumps(result.as_dict(), indent=2), file=out)
    else:
        print(format_result(result, out), file=out)
    return 0 if result.allowed else DENIED
