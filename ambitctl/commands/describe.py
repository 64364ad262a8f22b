"""`ambit describe pod|service NAME [-n NS]`: mesh enrolment, identity, waypoint, the routes and
policies that apply and the certificate state (ambitctl/describe.py), against the lab or a
cluster (ambitctl/cluster.py). The certificate state needs the controller's debug API; without it
the rest is still shown and the certificate is "unknown"."""

from __future__ import annotations

import argparse
import json
import sys

from ambitctl import cluster
from ambitctl import describe as desc

KINDS = {"pod": "pod", "pods": "pod", "po": "pod", "service": "service", "services": "service", "svc": "service"}


def cmd_describe(args: argparse.Namespace) -> int:
    kind = KINDS.get(args.kind.lower())
    if kind is None:
        raise cluster.TargetError(f"describe: {args.kind!r}: only pod (po) and service (svc) can be described")
    name = args.name
    ns = args.namespace or (cluster.default_namespace(args) if cluster.in_cluster(args) else "default")
    if "/" in name:                                     # kubectl's TYPE/NAME is not this; ns/name is a habit
        ns, name = name.split("/", 1)
    from controller.translate import translate
    client = cluster.api_client(args) if cluster.in_cluster(args) else None
    objects = cluster.cluster_objects(client) if client is not None else cluster.lab_objects()
    tr = translate(objects, trust_domain=args.trust_domain, root_namespace=args.root_namespace,
                   cluster_domain=cluster.cluster_domain(args, client, args.root_namespace))
    try:
        if kind == "pod":
            certs = None
            w = next((w for w in tr.workloads if w.namespace == ns and w.name == name), None)
            if w is not None:
                try:
                    certs = node_certs(cluster.debug_target(args), w.node, args.timeout)
                except cluster.TargetError as e:
                    print(f"warning: certificate state unknown: {e}", file=sys.stderr)
            d = desc.describe_pod(tr, ns, name, args.root_namespace, certs)
        else:
            d = desc.describe_service(tr, ns, name, args.root_namespace)
    except desc.NotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(d.as_dict(), indent=2, sort_keys=True))
    elif args.output == "yaml":
        import yaml
        print(yaml.safe_dump(d.as_dict(), sort_keys=True).rstrip())
    else:
        print(desc.format_description(d))
    return 0


def node_certs(target: cluster.DebugTarget, node: str, timeout: float) -> list[dict]:
    """The certificates the ztunnel on `node` reported to the controller."""
    resp = cluster.proxy_status(target, timeout)
    for p in resp.proxies:
        if p.node.kind == "ztunnel" and p.node.name == node and p.connected and p.report_json:
            return list(json.loads(p.report_json).get("certs") or [])
    raise cluster.TargetError(f"no status report from the ztunnel on node {node!r} yet")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("describe", help="what the mesh does with a pod or Service: enrolment, identity, waypoint, "
                                        "routes, policies, certificate (as istioctl x describe)")
    p.add_argument("kind", help="pod (po) or service (svc)")
    p.add_argument("name")
    p.add_argument("-n", "--namespace", help="namespace (default: default)")
    p.add_argument("-o", "--output", choices=("json", "yaml"))
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--trust-domain", default="cluster.local")
    p.add_argument("--root-namespace", default="ambit-system")
    p.add_argument("--cluster-domain", type=cluster.domain_arg, default=None, metavar="DOMAIN",
                   help="the cluster's DNS domain (default: in a cluster, the one `ambit install` recorded; else "
                        "cluster.local)")
    cluster.add_arguments(p)
    p.set_defaults(func=cmd_describe)
