"""`ambit bug-report` in a cluster: the same archive as in the lab (bugreport.py: every member
redacted, a MANIFEST and ERRORS), from the Kubernetes API and the controller's debug API only,
never from the nodes:

- `versions.json`: the CLI's, Python's, and `ambit version`'s view (controller and every proxy,
  with their compatibility verdicts);
- `status/proxy-status.json` (every proxy's sync state and last report) and
  `status/controller-status.json` (subscribers and rejected configuration: `ambit status`);
- `config/objects.json`: every object the controller reads, as it reads them (Secrets cut down to their
  certificate keys, whose values are removed too; ConfigMaps cut down to their name and ca.crt), and
  `config/<proxy>.json`: each connected proxy's config as the controller sent and it ACKed;
- `logs/<namespace>/<pod>/<container>.log`: the last `--log-tail` bytes of every container of the
  control plane's namespace (controller, node agents, ztunnels) and of every waypoint pod, read
  through the API server's pod log endpoint (as `kubectl logs`);
- `analyze.json` (`ambit analyze` over config/objects.json, which is the whole cluster's config) and `check.txt` (the preflight of the
  machine the CLI runs on: the nodes' own preflight is in the node agents' logs).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ambitctl import cluster
from ambitctl.commands.bugreport import Archive, scrub_store

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
LOG_LINES = 20_000              # lines asked of the API server per container, then cut to the byte tail


def log_pods(objects: list[dict[str, Any]], system_namespace: str) -> list[tuple[str, str, list[str]]]:
    """(namespace, pod, containers) of the control plane's pods and every waypoint pod (pure)."""
    out = []
    for o in objects:
        md = o.get("metadata") or {}
        if o.get("kind") != "Pod":
            continue
        if md.get("namespace") == system_namespace or GATEWAY_NAME_LABEL in (md.get("labels") or {}):
            names = [c.get("name", "") for c in (o.get("spec") or {}).get("containers") or []]
            out.append((md.get("namespace", ""), md.get("name", ""), names))
    return sorted(out)


def pod_log(client: Any, namespace: str, pod: str, container: str, limit: int) -> str:
    from kubernetes import client as k8s
    text = k8s.CoreV1Api(client).read_namespaced_pod_log(pod, namespace, container=container or None,
                                                         tail_lines=LOG_LINES)
    data = text.encode() if isinstance(text, str) else bytes(text)
    head = f"[... earlier bytes left out (--log-tail {limit}) ...]\n" if len(data) > limit else ""
    return head + data[-limit:].decode(errors="replace")


def _safe(name: str) -> str:
    return name.replace("/", "_").replace("@", "_")


def build(args: argparse.Namespace, out: Path, log_tail: int, run_cli: Callable[[list[str]], str]) -> Archive:
    from ambit.configclient import fetch_status
    from ambit.version import VERSION
    from ambitctl.commands import proxystatus, version
    from ambitctl.commands.mesh import status_to_dict
    root = out.name.removesuffix(".tar.gz").removesuffix(".tgz")
    target = cluster.debug_target(args, cluster=True)
    client = cluster.api_client(args)
    a = Archive(out, root, (target.token,))
    resp, error = None, ""
    try:
        resp = cluster.proxy_status(target)
    except cluster.TargetError as e:
        error = str(e)
        a.errors.append(f"proxy-status: {e}")
    a.add_json("versions.json", {"cli": VERSION, "python": sys.version, "platform": platform.platform(),
                                 **version.collect(resp, error)})
    if resp is not None:
        a.add_json("status/proxy-status.json", {"controller_version": resp.controller_version,
                                                "config_version": resp.config_version,
                                                "proxies": proxystatus.rows_of(resp),
                                                "replicas": proxystatus.replicas_of(resp)})
        a.errors.extend(f"proxy-status: controller replica {r['name']} did not answer: {r['error']} (partial)"
                        for r in proxystatus.replicas_of(resp) if not r["answered"])
        for p in resp.proxies:
            if p.connected:
                key = f"{p.node.kind}/{p.node.name}"
                a.collect(f"config/{_safe(key)}.json",
                          lambda key=key: json.dumps(cluster.proxy_config(target, key), indent=1, sort_keys=True))  # type: ignore[misc]

    def controller_status() -> str:
        import asyncio
        return json.dumps(status_to_dict(asyncio.run(fetch_status(target.address, target.trust, token=target.token))), indent=1)
    a.collect("status/controller-status.json", controller_status)
    objects: list[dict[str, Any]] = []
    try:
        objects = cluster.cluster_objects(client)
        a.add_json("config/objects.json", scrub_store(objects))
    except cluster.TargetError as e:
        a.errors.append(f"config/objects.json: {e}")
    for ns, pod, containers in log_pods(objects, args.system_namespace):
        for c in containers or [""]:
            a.collect(f"logs/{ns}/{pod}/{c or 'log'}.log",
                      lambda ns=ns, pod=pod, c=c: pod_log(client, ns, pod, c, log_tail))  # type: ignore[misc]
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "objects.json"
        f.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        a.collect("analyze.json", lambda: run_cli(["analyze", "-A", "--offline", "--assume-complete", "-f", str(f),
                                                    "-o", "json"]))
    a.collect("check.txt", lambda: run_cli(["check"]))
    a.close()
    return a
