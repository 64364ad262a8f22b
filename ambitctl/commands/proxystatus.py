"""`ambit proxy-status [PROXY]`: every proxy's config sync state, from the controller's debug API
(as `istioctl proxy-status`); with PROXY, that proxy's config as the controller sent it and the
proxy ACKed it, and what it last reported (certificates, counters, clusters).

Works against the lab and a cluster alike (ambitctl/cluster.py). With several controller replicas
the one reached answers for all of them: each proxy is listed once, with the replica it is
connected to and that replica's config version (controller/debug/replicas.py). Exits 1 when a
connected proxy is NACKing or STALE, or when a replica did not answer (the list is then partial,
and says which), so CI can gate on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ambitctl import cluster
from ambitctl.commands.mesh import ca_problem_lines

BAD_STATES = ("NACK", "STALE")


def replicas_of(resp: Any) -> list[dict[str, Any]]:
    """What each controller replica serves, and whether it answered (one, for a lone controller)."""
    return [{"name": r.name, "address": r.address, "answered": r.answered, "error": r.error,
             "config_version": r.config_version, "controller_version": r.controller_version,
             "ca_problem": r.ca_problem}
            for r in resp.replicas]


def rows_of(resp: Any) -> list[dict[str, Any]]:
    versions = {r.name: r.config_version for r in resp.replicas if r.answered}
    out = []
    for p in resp.proxies:
        report = json.loads(p.report_json) if p.report_json else {}
        certs = report.get("certs") or []
        out.append({
            "kind": p.node.kind, "name": p.node.name, "waypoint": p.node.waypoint,
            "node": report.get("node") or (p.node.name if p.node.kind != "waypoint" else ""),
            "connected": p.connected, "state": p.state, "acked_version": p.acked_version,
            "current_version": versions.get(p.replica, resp.config_version), "replica": p.replica,
            "nack": p.nack, "proxy_version": p.proxy_version,
            "report_age": round(p.report_age, 1) if p.report_age >= 0 else None,
            "certs": [{k: c.get(k) for k in ("identity", "state", "not_after")} for c in certs],
        })
    return out


def _cert_summary(certs: list[dict[str, Any]]) -> str:
    if not certs:
        return "-"
    states: dict[str, int] = {}
    for c in certs:
        states[c.get("state") or "?"] = states.get(c.get("state") or "?", 0) + 1
    return ",".join(f"{n} {s}" for s, n in sorted(states.items()))


def format_rows(rows: list[dict[str, Any]], controller_version: str, config_version: str,
                replicas: list[dict[str, Any]] | None = None) -> str:
    several = len(replicas or []) > 1
    table = [["NAME", "KIND", "NODE", "STATE", "ACKED", "CURRENT", "VERSION", "CERTS"] + (["REPLICA"] if several else [])]
    for r in rows:
        name = f"{r['waypoint']}@{r['name']}" if r["waypoint"] else r["name"]
        table.append([name, r["kind"], r["node"] or "-", r["state"], r["acked_version"] or "-",
                      r["current_version"] or "-", r["proxy_version"] or "-", _cert_summary(r["certs"])]
                     + ([r.get("replica") or "-"] if several else []))
    widths = [max(len(t[i]) for t in table) for i in range(len(table[0]))]
    if several:
        lines = [f"controller replica {x['name'] or '-'}: {x['controller_version'] or '-'}, config version "
                 f"{x['config_version'] or '-'}" for x in replicas or [] if x["answered"]]
        lines += [f"PARTIAL: controller replica {x['name'] or '-'}{' (' + x['address'] + ')' if x['address'] else ''} "
                  f"did not answer: {x['error'] or '-'}; its proxies are not listed"
                  for x in replicas or [] if not x["answered"]]
        lines.append("")
    else:
        lines = [f"controller {controller_version}, config version {config_version or '-'}", ""]
    if len(table) == 1:
        lines.append("no proxies connected")
    else:
        lines += ["   ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)).rstrip() for t in table]
    lines += ca_problem_lines([(x["name"], x.get("ca_problem", "")) for x in replicas or []], several)
    nacks = [f"  {r['kind']}/{r['name']}: {r['nack']}" for r in rows if r["state"] == "NACK"]
    if nacks:
        lines += ["", "REJECTED (the proxy keeps its last good config):", *nacks]
    return "\n".join(lines)


def cmd_proxy_status(args: argparse.Namespace) -> int:
    target = cluster.debug_target(args)
    if args.proxy:
        doc = cluster.proxy_config(target, args.proxy, args.timeout)
        if args.output == "yaml":
            import yaml
            print(yaml.safe_dump(doc, sort_keys=True).rstrip())
        else:
            print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    resp = cluster.proxy_status(target, args.timeout)
    rows = rows_of(resp)
    replicas = replicas_of(resp)
    doc = {"controller_version": resp.controller_version, "config_version": resp.config_version,
           "proxies": rows, "replicas": replicas, "partial": any(not r["answered"] for r in replicas)}
    if args.output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    elif args.output == "yaml":
        import yaml
        print(yaml.safe_dump(doc, sort_keys=True).rstrip())
    else:
        print(format_rows(rows, resp.controller_version, resp.config_version, replicas))
    if doc["partial"]:
        for r in replicas:
            if not r["answered"]:
                print(f"error: controller replica {r['name'] or '-'} did not answer ({r['error'] or '-'}): "
                      "the list is partial", file=sys.stderr)
        return 1
    if any(r["ca_problem"] for r in replicas):
        return 1
    return 1 if any(r["connected"] and r["state"] in BAD_STATES for r in rows) else 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("proxy-status", aliases=["ps"],
                       help="every proxy's config sync state (SYNCED/STALE/NACK) from the controller; "
                            "with PROXY its config dump and report")
    p.add_argument("proxy", nargs="?", help="kind/name (e.g. ztunnel/node-1), or a name: dump that proxy")
    p.add_argument("-o", "--output", choices=("json", "yaml"))
    p.add_argument("--timeout", type=float, default=5.0)
    cluster.add_arguments(p)
    p.set_defaults(func=cmd_proxy_status)
