"""`ambit version`: the CLI's version, the controller's and each proxy's (from the controller's
debug API), and the compatibility verdict of each against the CLI (policy: ambit/version.py —
same minor compatible, one minor apart warns, else incompatible). `--client` asks nobody.
With several controller replicas (a rollout mixes versions), each replica is listed and each proxy
is judged against the replica it is connected to. Exits 1 when a part is incompatible, or when a
replica did not answer (its proxies' versions are unknown)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ambit.version import INCOMPATIBLE, VERSION, compatibility
from ambitctl import cluster


def collect(resp: Any | None, error: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"client": {"version": VERSION}}
    if resp is None:
        if error:
            out["server"] = {"error": error}
        return out
    verdict, why = compatibility(VERSION, resp.controller_version)
    out["server"] = {"controller": {"version": resp.controller_version, "compatibility": verdict, "why": why}}
    several = len(resp.replicas) > 1
    controllers = {r.name: r.controller_version for r in resp.replicas if r.answered}
    if several:
        replicas = {}
        for r in resp.replicas:
            if r.answered:
                verdict, why = compatibility(VERSION, r.controller_version)
                replicas[r.name] = {"version": r.controller_version, "compatibility": verdict, "why": why}
            else:
                replicas[r.name] = {"version": "", "compatibility": "unknown", "why": f"did not answer: {r.error}"}
        out["server"]["replicas"] = replicas
    proxies: dict[str, dict[str, str]] = {}
    for p in resp.proxies:
        if not p.connected:
            continue
        key = f"{p.node.kind}/{p.node.waypoint + '@' if p.node.waypoint else ''}{p.node.name}"
        if not p.proxy_version:
            proxies[key] = {"version": "", "compatibility": "unknown", "why": "no status report yet"}
            continue
        controller = controllers.get(p.replica, resp.controller_version)
        verdict, why = compatibility(controller, p.proxy_version)
        against = f"controller replica {p.replica}" if several and p.replica else "the controller"
        proxies[key] = {"version": p.proxy_version, "compatibility": verdict, "why": f"vs {against}: {why}"}
    out["server"]["proxies"] = proxies
    return out


def format_versions(doc: dict[str, Any]) -> str:
    lines = [f"client version: {doc['client']['version']}"]
    server = doc.get("server")
    if server is None:
        return lines[0]
    if "error" in server:           # the reason goes to stderr (cmd_version): stdout has what is known
        return lines[0]
    c = server["controller"]
    if "replicas" in server:
        lines += [f"controller replica {name} version: {r['version'] or '-'} ({r['compatibility']}: {r['why']})"
                  for name, r in sorted(server["replicas"].items())]
    else:
        lines.append(f"controller version: {c['version']} ({c['compatibility']}: {c['why']})")
    by_version: dict[tuple[str, str], list[str]] = {}
    for key, p in sorted(server["proxies"].items()):
        by_version.setdefault((p["version"] or "unknown", p["compatibility"]), []).append(key)
    for (v, verdict), keys in sorted(by_version.items()):
        lines.append(f"data plane version: {v} ({len(keys)} proxies, {verdict}): {', '.join(keys)}")
    return "\n".join(lines)


def cmd_version(args: argparse.Namespace) -> int:
    resp, error = None, ""
    if not args.client:
        try:
            resp = cluster.proxy_status(cluster.debug_target(args), args.timeout)
        except cluster.TargetError as e:
            error = str(e)
    doc = collect(resp, error)
    if args.output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif args.output == "yaml":
        import yaml
        print(yaml.safe_dump(doc, sort_keys=True).rstrip())
    elif args.short:
        print(VERSION)
    else:
        print(format_versions(doc))
    if error:
        print(f"error: cannot reach the controller: {error}", file=sys.stderr)
    server = doc.get("server") or {}
    verdicts = [server.get("controller", {}).get("compatibility")] + [
        p["compatibility"] for p in (server.get("proxies") or {}).values()] + [
        r["compatibility"] for r in (server.get("replicas") or {}).values()]
    silent = [f"controller replica {r.name} did not answer ({r.error}): its proxies are not listed"
              for r in (resp.replicas if resp is not None else []) if not r.answered]
    for m in silent:
        print(f"error: {m}", file=sys.stderr)
    if error or silent:
        return 1
    return 1 if INCOMPATIBLE in verdicts else 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("version", help="client, controller and proxy versions with a compatibility verdict")
    p.add_argument("--client", action="store_true", help="the CLI's version only (contacts nothing)")
    p.add_argument("--short", action="store_true", help="print the bare client version")
    p.add_argument("-o", "--output", choices=("json", "yaml"))
    p.add_argument("--timeout", type=float, default=5.0)
    cluster.add_arguments(p)
    p.set_defaults(func=cmd_version)
