"""`ambit lab ...` and `ambit label namespace ...`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from ambitctl.lab import lab, paths, state
from ambitctl.term import intermixed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="the netns lab: nodes and pods on this machine")
    ls = p.add_subparsers(dest="lab_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])     # `ambit lab`: its actions, not every command

    up = ls.add_parser("up", help="build the lab and start its processes")
    up.add_argument("--spec", help="lab spec YAML (default: the built-in demo spec)")
    up.add_argument("--nodes", type=int, help="number of nodes (default 2)")
    up.add_argument("--name", default=os.environ.get("AMBIT_LAB_NAME", "ambit"), help="lab name prefix")
    up.add_argument("--capture", choices=["ebpf", "iptables"], default="ebpf",
                    help="how pod traffic reaches ztunnel (iptables is the comparison baseline)")
    up.add_argument("--cert-ttl", type=float, metavar="SECONDS",
                    help="lifetime of workload certificates (default 24h; rotated at half-life), "
                         "e.g. 60 to watch rotation")
    up.add_argument("--ztunnel-workers", type=int, default=1, metavar="N",
                    help="worker processes per node ztunnel (default 1; 0: one per CPU, as in a cluster; "
                         "docs/performance.md)")
    up.add_argument("--waypoint-workers", type=int, default=1, metavar="N",
                    help="worker processes per waypoint and ingress gateway (default 1; 0: one per CPU; "
                         "docs/performance.md)")
    up.add_argument("--prometheus", action="store_true",
                    help="also run Prometheus (Debian's package) on 127.0.0.1, scraping the controller, every "
                         "ztunnel and every waypoint (docs/observability.md)")
    up.add_argument("--tracing", action="store_true",
                    help="also run a trace collector pod (OTLP in, Zipkin's query API out): every waypoint exports "
                         "its spans to it at 100 %% sampling and the topology view lists them (docs/observability.md)")
    up.set_defaults(func=cmd_up)

    down = ls.add_parser("down", help="remove the lab and everything it created")
    down.add_argument("--name", default=os.environ.get("AMBIT_LAB_NAME"),
                      help="lab name (default: the one in the state file, else 'ambit')")
    down.set_defaults(func=cmd_down)

    st = ls.add_parser("status", help="show nodes, pods, processes and capture state")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    ex = ls.add_parser("exec", help="run a command in a pod's netns and cgroup")
    ex.add_argument("pod", metavar="NS/POD")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    ex.set_defaults(func=cmd_exec)

    lg = ls.add_parser("logs", help="show a component's log")
    lg.add_argument("component", help="controller | supervisor | agent[/NODE] | ztunnel[/NODE] | "
                                      "waypoint[/NS/NAME] | NS/POD")
    lg.add_argument("--node", help="the node of an agent or ztunnel (or write agent/NODE)")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.set_defaults(func=cmd_logs)

    for action in ("stop", "start", "restart"):
        a = ls.add_parser(action, help=f"{action} a lab process (e.g. controller, agent --node node1)")
        a.add_argument("component", help="controller | agent[/NODE] | ztunnel[/NODE] | waypoint[/NS/NAME] | "
                                         "NS/POD, as `ambit lab status` names them")
        a.add_argument("--node", help="the node of an agent or ztunnel (or write agent/NODE)")
        a.set_defaults(func=cmd_proc, action=action)

    ro = ls.add_parser("roll", help="replace a node's agent and ztunnel as a DaemonSet update does")
    ro.add_argument("node")
    ro.add_argument("--surge", action="store_true",
                    help="start the new node pod beside the old one, then stop the old one (maxSurge 1, "
                         "maxUnavailable 0: no capture gap); default: stop, then start")
    ro.add_argument("--timeout", type=float, default=60.0, help="seconds the whole roll may take")
    ro.set_defaults(func=cmd_roll)

    dm = ls.add_parser("demo", help="bring up the lab (if needed) and walk through what Ambit does")
    dm.set_defaults(func=cmd_demo)

    lb = sub.add_parser("label", help="set or remove labels (namespaces), e.g. to enrol in the mesh")
    lb.add_argument("kind", choices=["namespace", "ns"])
    lb.add_argument("words", nargs="+", metavar="NAME KEY=VALUE|KEY-",
                    help="the namespace and the labels, in any order (as kubectl label)")
    intermixed(lb)
    lb.set_defaults(func=cmd_label)


def cmd_up(args: argparse.Namespace) -> int:
    spec = lab.load_spec(args.spec, args.nodes)
    if args.cert_ttl is not None and args.cert_ttl < 10:
        raise lab.LabError(f"--cert-ttl {args.cert_ttl:g}: must be at least 10 seconds")
    if args.ztunnel_workers < 0:
        raise lab.LabError(f"--ztunnel-workers {args.ztunnel_workers}: must be >= 0 (0: one per CPU)")
    if args.waypoint_workers < 0:
        raise lab.LabError(f"--waypoint-workers {args.waypoint_workers}: must be >= 0 (0: one per CPU)")
    lab.up(spec, name=args.name, capture=args.capture, cert_ttl=args.cert_ttl, with_prometheus=args.prometheus,
           with_tracing=args.tracing, ztunnel_workers=args.ztunnel_workers, waypoint_workers=args.waypoint_workers)
    lab.progress(f"lab is up; state and logs in {paths.lab_dir()}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    lab.down(name=args.name)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    s = lab.status()
    if args.json:
        print(lab.dump_json(s))
        return 0
    print(f"lab {s['name']}  (state: {s['labDir']}, logs: {s['logDir']}, capture: {s['capture']})")
    print("\nNODES")
    for n in s["nodes"]:
        print(f"  {n['name']:<8} netns {n['netns']:<16} underlay {n['underlayIP']:<12} pods {n['podCIDR']}")
    print("\nNAMESPACES")
    for ns in s["namespaces"]:
        labels = ",".join(f"{k}={v}" for k, v in ns["labels"].items()) or "-"
        print(f"  {ns['name']:<10} {labels}")
    print("\nPODS")
    print(f"  {'POD':<22} {'NODE':<7} {'IP':<13} {'PID':<8} {'CAPTURE':<10}")
    for p in s["pods"]:
        cap = p["capture"] if isinstance(p["capture"], str) else p["capture"].get("state", "?")
        if isinstance(p["capture"], dict) and p["capture"].get("state") in ("capture-failed", "error", "unenrol-failed"):
            cap += f": {p['capture'].get('reason', '?')}"      # never a bare "captured" that is not
        print(f"  {p['namespace'] + '/' + p['name']:<22} {p['node']:<7} {p['ip']:<13} "
              f"{p['pid'] or '-'!s:<8} {cap:<10}")
    print("\nSERVICES")
    for sv in s["services"]:
        print(f"  {sv['namespace'] + '/' + sv['name']:<22} {sv['vip']:<13} ports {sv['ports']}")
    print("\nWAYPOINTS")
    if not s["waypoints"]:
        print("  (none: apply a Gateway of class ambit-waypoint or istio-waypoint)")
    for w in s["waypoints"]:
        print(f"  {w['namespace'] + '/' + w['name']:<22} {w['node']:<7} {w['ip']:<13} VIP {w['vip']:<13} "
              f"pid {w['pid'] or '-'!s:<8} {'ready' if w['ready'] else 'not ready'}"
              f"{' (removing)' if w['state'] == 'removing' else ''}")
    if s.get("tracing"):
        print(f"\nTRACE COLLECTOR\n  {s['tracing']}")
    print("\nPROCESSES")
    for k, v in s["processes"].items():
        if not k.startswith("pod/") and not k.startswith("waypoint/"):
            print(f"  {k:<22} pid {v['pid'] or '-'!s:<8} restarts {v['restarts']}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv and args.argv[0] == "--" else args.argv
    if not argv:
        print("error: give a command after --", file=sys.stderr)
        return 2
    lab.exec_in_pod(args.pod, argv)
    return 0  # not reached


def cmd_logs(args: argparse.Namespace) -> int:
    from ambitctl.lab import logs
    f = logs.log_file(args.component, args.node)
    if not f.exists():
        print(f"error: no log at {f} (is the component running?)", file=sys.stderr)
        return 1
    if args.follow:
        os.execvp("tail", ["tail", "-n", "+1", "-F", str(f)])
    sys.stdout.write(f.read_text(errors="replace"))
    return 0


def cmd_proc(args: argparse.Namespace) -> int:
    from ambitctl.lab import logs
    with state.editing() as st:
        pid_id = logs.process_id(args.component, args.node, st)
        try:
            p = st.proc(pid_id)
        except KeyError:
            raise lab.LabError(f"no lab process {pid_id!r} (have: {', '.join(x.id for x in st.processes)})") from None
        # restart: a stopped process is started again too, as `kubectl rollout restart` would
        p.enabled = args.action != "stop"
    if args.action == "restart":
        pid = state.runtime().get(pid_id, {}).get("pid")
        if pid:
            subprocess.run(["kill", "-TERM", str(pid)], check=False)
    return 0


def cmd_roll(args: argparse.Namespace) -> int:
    from ambitctl.lab import roll
    try:
        roll.roll(args.node, args.surge, paths.lab_dir(), args.timeout, progress=lab.progress)
    except roll.RollError as e:
        raise lab.LabError(f"roll of {args.node}: {e}") from None
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ambitctl.lab import demo
    return demo.run()


def cmd_label(args: argparse.Namespace) -> int:
    # kubectl's rule: a word with "=" or a trailing "-" is a label change, anything else the name
    names = [w for w in args.words if "=" not in w and not w.endswith("-")]
    labels = [w for w in args.words if w not in names]
    if len(names) != 1 or not labels:
        raise lab.LabError("give one namespace and at least one KEY=VALUE or KEY- "
                           f"(got name(s) {names or 'none'}, labels {labels or 'none'})")
    args.name = names[0]
    rev = lab.label_namespace(args.name, labels)
    print(json.dumps({"namespace": args.name, "revision": rev}) if os.environ.get("AMBIT_JSON")
          else f"namespace/{args.name} labeled")
    _label_warnings(args.name)
    return 0


def _label_warnings(namespace: str) -> None:
    """What `ambit analyze` finds about the labelled Namespace (an enrolment value that enrols
    nothing, a use-waypoint naming no waypoint, which fails its traffic closed): a label is
    configuration too, and must not be a silent no-op."""
    from ambit.labstore import LabStore
    from ambitctl.analyze import analyze
    objs = list(LabStore(paths.store_path()).snapshot().objects.values())
    for f in analyze(objs, complete=True):
        if f.ref == f"Namespace/{namespace}":
            print(f"Warning: {f.ref}: {f.path}: {f.message}", file=sys.stderr)
