"""`ambit dashboard`: where the topology view is, and (with --open) open it in a browser.

The controller serves the view (controller/dashboard). In the lab it listens on a host port the lab
chose; this prints that URL. In a cluster it listens on the controller pod's loopback
(--dashboard-address, default 127.0.0.1:15015): a port-forward reaches it, nothing else does, and
this prints the command for that rather than pretending to know a URL.
"""

from __future__ import annotations

import argparse
import urllib.request

from ambitctl.lab import paths, state
from ambitctl.lab.lab import LabError

CLUSTER_PORT = 15015


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="print (or open) the topology view's URL",
                       description="Print the URL of the topology view the controller serves: the lab's, "
                                   "or with --kube the port-forward that reaches it in a cluster.")
    p.add_argument("--kube", action="store_true", help="the view of a cluster's controller (port-forward instructions)")
    p.add_argument("--namespace", "-n", default="ambit-system", help="with --kube: the controller's namespace")
    p.add_argument("--port", type=int, default=CLUSTER_PORT,
                   help="with --kube: the controller's --dashboard-address port (and the local port)")
    p.add_argument("--open", action="store_true", help="open the URL in a browser (the lab's view)")
    p.set_defaults(func=run)


def lab_url() -> str:
    from ambitctl.lab import dashboard
    st = state.load(paths.lab_dir())
    if st is None:
        raise LabError(f"no lab is up (no state in {paths.lab_dir()}); for a cluster use `ambit dashboard --kube`")
    url = dashboard.url(st)
    if not url:
        raise LabError("this lab's controller serves no topology view (a lab brought up before it existed): "
                       "`ambit lab down && ambit lab up`")
    return url


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "api/graph", timeout=3) as r:   # noqa: S310 - the lab's own URL
            return bool(r.status == 200)
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    if args.kube:
        print(f"The controller serves the topology view on its pod's loopback, port {args.port}. Reach it with:\n"
              f"  kubectl -n {args.namespace} port-forward deploy/ambit-controller {args.port}:{args.port}\n"
              f"then open http://127.0.0.1:{args.port}/ . Its rates come from --prometheus-url when the "
              f"controller has one; without it, set --dashboard-ztunnel-metrics/--dashboard-waypoint-metrics, "
              f"or the view shows workloads and services without traffic (docs/observability.md).")
        return 0
    url = lab_url()
    print(url)
    if not answers(url):
        print(f"warning: nothing answers on {url} yet (is the controller running? `ambit lab logs controller`)")
        return 1
    if args.open:
        import webbrowser
        if not webbrowser.open(url):
            print("no browser to open here: open the URL above")
    return 0
