"""`ambit status` and `ambit ztunnel-config`: what the controller serves and what each ztunnel holds.

`status` asks the controller (Status RPC): who is connected, which config version each component
has acknowledged per type, any rejection (NACK) with its message, and the configuration the
controller itself rejected. With several controller replicas the one asked asks the others and
merges their answers: each component with the replica it is connected to, each rejection once.
It exits 1 when a connected component is NACKing, configuration is rejected, a replica did not
answer (the answer is partial), or a replica's CA is in trouble (a stored CA it could not take up,
a signing chain expired or about to), so scripts and CI can gate on it.

`ztunnel-config` reads each node's ztunnel admin endpoint. In the lab that is a unix socket per
node (`<labdir>/<node>/admin.sock`), reachable from the host without entering the node's netns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from ambitctl.lab import components, paths, state

SECTIONS = ("workloads", "services", "policies", "certs", "all")


class MeshCommandError(RuntimeError):
    pass


# -- where things are ------------------------------------------------------------------------------

def _lab_nodes(base: Path) -> list[str]:
    st = state.load(base)
    if st is None:
        raise MeshCommandError(f"no lab is up (no state in {base}); set AMBIT_LAB_DIR or run `ambit lab up`")
    return [n["name"] for n in st.spec["nodes"]]


# -- ambit status ----------------------------------------------------------------------------------

def nacking(t: Any) -> bool:
    """Is this type's newest response rejected (and not superseded by an accepted one)?"""
    return t.HasField("last_nack") and t.last_nack.version == t.sent_version and not t.in_sync


def _short(type_url: str) -> str:
    return type_url.rsplit("/", 1)[-1]


def _ago(ts: Any, now: float) -> str:
    secs = max(0, int(now - ts.ToSeconds()))
    if secs >= 3600:
        return f"{secs // 3600}h{secs % 3600 // 60:02d}m"
    return f"{secs // 60}m{secs % 60:02d}s" if secs >= 60 else f"{secs}s"


def status_to_dict(resp: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict
    d = MessageToDict(resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    for sub, msg in zip(d.get("subscribers", []), resp.subscribers, strict=True):
        for t, tm in zip(sub.get("types", []), msg.types, strict=True):
            t["nacking"] = nacking(tm)
    return d


def ca_problem_lines(replicas: list[tuple[str, str]], several: bool) -> list[str]:
    """The CA PROBLEM section of `ambit status` and `ambit proxy-status`: (replica, problem) pairs,
    each replica named when there are several; nothing when no replica has one."""
    ca = [f"  {'controller replica ' + (name or '?') + ': ' if several else ''}{problem}"
          for name, problem in replicas if problem]
    return ["", "CA PROBLEM (workload certificates are at risk; docs/operations.md 'Renewing and rotating "
                "the CA'):", *ca] if ca else []


def format_status(resp: Any, target: str, now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"controller {target}: config version {resp.version or '-'}"]
    several = len(resp.replicas) > 1        # several controller replicas: each row says its own
    for r in resp.replicas if several else ():
        where = f" ({r.address})" if r.address else " (asked)"
        lines.append(f"controller replica {r.name or '?'}{where}: config version {r.version or '-'}, "
                     f"{r.subscribers} components" if r.answered else
                     f"PARTIAL: controller replica {r.name or '?'}{where} did not answer: {r.error or 'no reason given'}")
    lines.append("")
    rows = [["COMPONENT", "INSTANCE", "STATE", "TYPE", "ACKED", "SYNC", "RESOURCES", *(["REPLICA"] if several else [])]]
    nacks = []
    for s in sorted(resp.subscribers, key=lambda s: (not s.connected, s.node.kind, s.node.name, s.replica)):
        who = f"{s.node.kind}/{s.node.name}" + (f" ({s.node.waypoint})" if s.node.waypoint else "")
        st = (f"up {_ago(s.connected_since, now)}" if s.connected
              else f"gone {_ago(s.disconnected_at, now)}")
        for i, t in enumerate(s.types):
            # a component that is gone waits for nothing: "pending" would say a response is on its way
            sync = "-" if not s.connected else "NACK" if nacking(t) else "in sync" if t.in_sync else "pending"
            rows.append([who if i == 0 else "", (s.node.instance_id or "-") if i == 0 else "", st if i == 0 else "",
                         _short(t.type_url), t.acked_version or "-", sync, str(t.resources),
                         *([(s.replica or "-") if i == 0 else ""] if several else [])])
            if t.HasField("last_nack") and (s.connected and nacking(t)):
                nacks.append(f"  {who} {_short(t.type_url)} {t.last_nack.version} "
                             f"({_ago(t.last_nack.time, now)} ago): {t.last_nack.message}")
    if len(rows) == 1:
        lines.append("no components connected")
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if nacks:
        lines += ["", "REJECTED BY COMPONENTS (they keep serving their last good config):", *nacks]
    lines += ca_problem_lines([(r.name, r.ca_problem) for r in resp.replicas], several)
    if resp.config_errors:
        lines += ["", "REJECTED CONFIGURATION (the last good version of each object, if any, stays in force):"]
        for e in resp.config_errors:
            by = f" (by controller replicas {', '.join(e.replicas)} only)" if e.replicas else ""
            lines.append((f"  {e.ref}: {e.path}: {e.reason}" if e.path else f"  {e.ref}: {e.reason}") + by)
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from ambit.configclient import fetch_status
    from ambitctl import cluster
    # The controller requires the debug API's reader credential (the lab's admin token, or the
    # kubeconfig user's bearer token, checked by TokenReview in a cluster).
    try:
        dt = cluster.debug_target(args)
    except cluster.TargetError as e:
        raise MeshCommandError(str(e)) from None
    target = dt.address
    from ambit.configclient import rpc
    try:
        resp = asyncio.run(fetch_status(target, dt.trust, timeout=args.timeout, token=dt.token))
    except Exception as e:  # noqa: BLE001 - gRPC and socket errors; one line is enough
        why = rpc.describe(e) if rpc.failure(e) is not None else str(e)    # as every debug API command says it
        raise MeshCommandError(f"cannot read the controller's status at {target}: {why}") from None
    if args.output in ("json", "yaml"):
        print(_dump(status_to_dict(resp), args.output))
    else:
        print(format_status(resp, target))
    bad = any(nacking(t) for s in resp.subscribers if s.connected for t in s.types)
    silent = [r for r in resp.replicas if not r.answered]
    for r in silent:        # a partial answer: the components connected to that replica are not listed
        print(f"error: controller replica {r.name or '?'} did not answer ({r.error or 'no reason given'}); "
              "the components connected to it are missing", file=sys.stderr)
    ca_problem = any(r.ca_problem for r in resp.replicas)
    return 1 if bad or resp.config_errors or silent or ca_problem else 0


# -- ambit ztunnel-config ------------------------------------------------------------------------------

def fetch_node(base: Path, node: str, section: str) -> tuple[Any, str]:
    """One node's section and the config version its ztunnel holds, from its admin socket."""
    from ambit.dataplane import endpoint
    sock = components.ztunnel_admin_socket(base, node)
    path = {"all": "/config_dump"}.get(section, f"/{section}")
    try:
        status, body = endpoint.get_json(sock, path)
        if status != 200:
            raise MeshCommandError(f"ztunnel on {node}: {path} answered HTTP {status}: {body}")
        if section == "all":
            for extra in ("certs", "connections"):
                body[extra] = endpoint.get_json(sock, f"/{extra}")[1]
            return body, body.get("version", "")
        return body, (endpoint.get_json(sock, "/healthz/ready")[1] or {}).get("version", "")
    except (OSError, ValueError) as e:
        raise MeshCommandError(f"ztunnel on {node}: cannot reach its admin socket {sock}: {e}") from None


def _table(rows: list[list[str]]) -> list[str]:
    if len(rows) == 1:
        return ["  (none)"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _sel(d: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(d.items())) or "-"


def workloads_table(ws: list[dict[str, Any]]) -> list[str]:
    rows = [["NAMESPACE", "NAME", "IP", "NODE", "PROTOCOL", "SERVICE-ACCOUNT", "WAYPOINT"]]
    for w in ws:
        rows.append([w["namespace"], w["name"], ",".join(w["ips"]), w["node"], w["protocol"],
                     w["service_account"], w.get("waypoint") or "-"])
    return _table(rows)


def services_table(ss: list[dict[str, Any]]) -> list[str]:
    rows = [["NAMESPACE", "NAME", "VIPS", "PORTS", "ENDPOINTS", "WAYPOINT"]]
    for s in ss:
        ports = ",".join(f"{p['port']}->{p['target_port'] or p.get('target_port_name') or '?'}" for p in s["ports"])
        eps = ",".join(e["ip"] for e in s["endpoints"]) or "-"
        rows.append([s["namespace"], s["name"], ",".join(s["vips"]) or "None", ports or "-", eps,
                     s.get("waypoint") or "-"])
    return _table(rows)


def policies_table(p: dict[str, Any]) -> list[str]:
    rows = [["NAMESPACE", "NAME", "ACTION", "SCOPE", "SELECTOR", "RULES", "L7"]]
    for a in p["authorizations"]:
        rows.append([a["namespace"], a["name"], a["action"], a["scope"], _sel(a["selector"]), str(len(a["rules"])),
                     "yes" if a.get("has_l7") else "-"])
    out = ["  authorizations:", *_table(rows)]
    rows = [["NAMESPACE", "NAME", "MODE", "SELECTOR", "PORT-MODES"]]
    for pa in p["peer_authns"]:
        rows.append([pa["namespace"], pa["name"], pa["mode"], _sel(pa["selector"]),
                     ",".join(f"{k}={v}" for k, v in sorted(pa.get("port_modes", {}).items())) or "-"])
    return out + ["  peer authentication:", *_table(rows)]


def certs_table(cs: list[dict[str, Any]]) -> list[str]:
    rows = [["IDENTITY", "STATE", "SERIAL", "NOT-AFTER", "ERROR"]]
    for c in cs:
        rows.append([c.get("identity", "?"), c.get("state", "?"), (c.get("serial") or "-")[:16],
                     c.get("not_after") or "-", c.get("last_error") or "-"])
    return _table(rows)


def format_node(node: str, section: str, body: Any, version: str) -> str:
    lines = [f"ztunnel/{node}  config version {version or '-'}"]
    if section in ("workloads", "all"):
        ws = body["workloads"] if section == "all" else body
        lines += ([" WORKLOADS"] if section == "all" else []) + workloads_table(ws)
    if section in ("services", "all"):
        ss = body["services"] if section == "all" else body
        lines += ([" SERVICES"] if section == "all" else []) + services_table(ss)
    if section in ("policies", "all"):
        p = ({"authorizations": body["authorizations"], "peer_authns": body["peer_authns"]}
             if section == "all" else body)
        lines += ([" POLICIES"] if section == "all" else []) + policies_table(p)
    if section in ("certs", "all"):
        lines += ([" CERTIFICATES"] if section == "all" else []) + certs_table(body["certs"] if section == "all" else body)
    if section == "all":
        client = body.get("client") or {}
        lines.append(f" controller {client.get('controller') or '-'}: "
                     f"{'connected' if client.get('connected') else 'DISCONNECTED'}"
                     + (f" ({client['last_error']})" if client.get("last_error") else "")
                     + f"; synced={body.get('synced')}")
        for t, r in (body.get("rejections") or {}).items():
            lines.append(f" last rejection of {t} ({r['version']}): {r['message']}")
    return "\n".join(lines)


def cluster_node(target: Any, node: str, section: str) -> tuple[Any, str]:
    """(body, version) of one node's ztunnel in a cluster, in the lab admin endpoint's shape, from the
    controller's debug API: what the ztunnel ACKed (its config) and its own report (certs)."""
    from ambitctl import cluster
    doc = cluster.proxy_config(target, f"ztunnel/{node}")
    cfg = doc.get("config") or {}

    def bodies(t: str) -> list[Any]:
        return [r["body"] for r in ((cfg.get(t) or {}).get("resources") or {}).values() if r.get("body")]
    from ambit.model import Authorization, PeerAuthn, Service, Workload
    report = doc.get("report") or {}
    body = {"workloads": bodies(Workload.TYPE), "services": bodies(Service.TYPE),
            "authorizations": bodies(Authorization.TYPE), "peer_authns": bodies(PeerAuthn.TYPE),
            "certs": report.get("certs") or [], "connections": report.get("connections") or {},
            "synced": report.get("synced"), "client": {"controller": target.address, "connected": True}}
    version = report.get("config_version") or doc.get("config_version", "")
    if section == "all":
        return body, version
    if section == "policies":
        return {"authorizations": body["authorizations"], "peer_authns": body["peer_authns"]}, version
    return body[section], version


def cmd_ztunnel_config(args: argparse.Namespace) -> int:
    from ambitctl import cluster
    # A cluster, or --controller (in the lab too, as tap/stat/top): through the controller, never the nodes
    if cluster.in_cluster(args) or args.controller:
        target = cluster.debug_target(args)
        known = sorted(p.node.name for p in cluster.proxy_status(target).proxies
                       if p.node.kind == "ztunnel" and p.connected)
        if args.node and args.node not in known:
            raise MeshCommandError(f"no connected ztunnel on node {args.node!r} (have: {', '.join(known) or 'none'})")
        got = {n: cluster_node(target, n, args.section) for n in ([args.node] if args.node else known)}
        if args.output in ("json", "yaml"):
            print(_dump({n: b for n, (b, _) in got.items()}, args.output))
        else:
            print("\n\n".join(format_node(n, args.section, b, v) for n, (b, v) in got.items()))
        return 0
    base = paths.lab_dir()
    nodes = [args.node] if args.node else _lab_nodes(base)
    if args.node and args.node not in _lab_nodes(base):
        raise MeshCommandError(f"no node {args.node!r} in the lab (have: {', '.join(_lab_nodes(base))})")
    results: dict[str, Any] = {}
    versions: dict[str, str] = {}
    failed = []
    for node in nodes:      # one ztunnel that is down (restarting, rolled) must not hide the others
        try:
            results[node], versions[node] = fetch_node(base, node, args.section)
        except MeshCommandError as e:
            if args.node:
                raise
            failed.append(str(e))
    if args.output in ("json", "yaml"):
        print(_dump(results, args.output))
    elif results:
        print("\n\n".join(format_node(n, args.section, results[n], versions[n]) for n in results))
    for e in failed:
        print(f"error: {e}", file=sys.stderr)
    return 1 if failed else 0


def _dump(doc: Any, fmt: str) -> str:
    if fmt == "yaml":
        import yaml
        return yaml.safe_dump(doc, sort_keys=True).rstrip()
    return json.dumps(doc, indent=2, sort_keys=True)


# -- wiring ---------------------------------------------------------------------------------------------

def _run(fn: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except MeshCommandError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return wrapped


def _cluster_arguments(p: argparse.ArgumentParser, controller: bool = True) -> None:
    from ambitctl.cluster import add_arguments
    add_arguments(p, controller=controller)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("status", help="components connected to the controller, their config versions and NACKs")
    p.add_argument("-o", "--output", choices=("json", "yaml"))
    p.add_argument("--timeout", type=float, default=5.0)
    _cluster_arguments(p)
    p.set_defaults(func=_run(cmd_status))

    p = sub.add_parser("ztunnel-config", help="what each node's ztunnel holds: workloads, services, policies, certs")
    p.add_argument("section", choices=SECTIONS)
    p.add_argument("--node", help="only this node (default: every node of the lab)")
    p.add_argument("-o", "--output", choices=("json", "yaml"))
    _cluster_arguments(p)
    p.set_defaults(func=_run(cmd_ztunnel_config))
