"""`ambit tap`: live flows from every ztunnel and waypoint, as `linkerd viz tap` / `hubble observe`.

    ambit tap                                   # everything, as it happens
    ambit tap -n demo --to echo --status 5xx    # failing requests to demo's echo
    ambit tap --verdict denied -o json          # policy denials, one JSON object per line

Each component serves its finished flows at `GET /tap` on its admin endpoint (NDJSON; see
ambit/dataplane/tap.py): ztunnels report connections (L4: workloads, identities, bytes, duration,
verdict and deciding policy), waypoints report requests (L7: method, path, status, latency, bytes,
verdict and deciding policy). A request through a waypoint is seen up to three times (the client's
ztunnel, the waypoint, the destination's ztunnel), as Hubble shows each observation point; the
SOURCE column says which.

Where the flows come from: in the lab the CLI reads every node's ztunnel and every waypoint through
their admin sockets, and filters here. In a cluster (or with `--controller`) it reads the
controller's debug API `Tap` stream (authenticated like proxy-status): the controller passes the
filter to every proxy over the feed each proxy keeps open to it (ambit/dataplane/feed.py), the
proxies send only matching flows, and the controller fans them out with a bounded, drop-and-count
queue per reader (controller/debug/feeds.py). The filter (`ambit/tapfilter.py`) is the same
pure function at every step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from ambit.tapfilter import Filter, event_matches, validate_status
from ambitctl import cluster
from ambitctl.term import at_least_zero, intermixed, paint

Event = dict[str, Any]


# -- rendering (pure) ------------------------------------------------------------------------------

def _who(side: Event) -> str:
    name = side.get("workload") or side.get("pod") or side.get("addr") or "?"
    ns = side.get("namespace")
    return f"{ns}/{name}" if ns and side.get("workload") else name


def _size(n: int) -> str:
    return f"{n}B" if n < 10240 else f"{n / 1024:.0f}KiB"


def line(ev: Event, wide: bool = False) -> str:
    """One human line per flow, hubble-like: time, source component, who → whom, what, verdict."""
    t = ev.get("time", "")[11:23]
    src, dst = ev.get("src") or {}, ev.get("dst") or {}
    to = _who(dst)
    if dst.get("service"):
        to += f" ({dst['service']})"
    if ev.get("layer") == "L7":
        what = f"{ev.get('method', '')} {ev.get('path', '')} {ev.get('status', 0)}"
    else:
        what = f"{ev.get('direction', '')} {ev.get('route', '')}".strip()
    verdict = ev.get("verdict", "")
    if ev.get("policy"):
        verdict += f" by {ev['policy']}"
    out = (f"{t} {ev.get('source', ''):<24} {ev.get('layer', ''):<2} {_who(src)} -> {to}  {what}  "
           f"{verdict}  {ev.get('latency_ms', 0):.1f}ms {_size(ev.get('bytes_sent', 0))}/"
           f"{_size(ev.get('bytes_recv', 0))}")
    if wide:
        out += f"  src.id={src.get('identity', '')} dst.id={dst.get('identity', '')}"
        if ev.get("error") or ev.get("detail"):
            out += f"  ({ev.get('error') or ev.get('detail')})"
    return out


# -- where the taps are ----------------------------------------------------------------------------

def lab_sockets(base: Path) -> dict[str, Path]:
    """"ztunnel/<node>" and "waypoint/<ns>/<name>" → admin socket, for every component of the lab."""
    from ambitctl.lab import components, state, waypoints
    st = state.load(base)
    if st is None:
        raise TapError(f"no lab is up (no state in {base}); in a cluster pass --context/--kubeconfig "
                       "(the tap goes through the controller's debug API)")
    out = {f"ztunnel/{n['name']}": components.ztunnel_admin_socket(base, n["name"]) for n in st.spec["nodes"]}
    for w in st.waypoints:
        if not w.get("removing"):
            out[f"waypoint/{w['namespace']}/{w['name']}"] = waypoints.admin_socket(base, w["namespace"], w["name"])
    return out


class TapError(RuntimeError):
    pass


# -- streaming -------------------------------------------------------------------------------------

async def _read_one(name: str, sock: Path, out: asyncio.Queue[tuple[str, Event]]) -> None:
    try:
        reader, writer = await asyncio.open_unix_connection(str(sock))
    except OSError as e:
        await out.put((name, {"type": "error", "error": f"cannot connect to {sock}: {e}"}))
        return
    try:
        writer.write(b"GET /tap HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            body = await reader.read(4096)
            status_line = head.split(b"\r\n", 1)[0].decode()
            await out.put((name, {"type": "error", "error": f"{status_line} {body.decode(errors='replace').strip()}"}))
            return
        while True:
            raw = await reader.readline()
            if not raw:
                await out.put((name, {"type": "error", "error": "stream closed (component stopped?)"}))
                return
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            await out.put((name, ev))
    except (OSError, asyncio.IncompleteReadError) as e:
        await out.put((name, {"type": "error", "error": str(e)}))
    except ValueError:          # asyncio's line limit: an answer that is no tap stream (it died silently)
        await out.put((name, {"type": "error", "error": "not a tap stream: a line over 64 KiB"}))
    finally:
        writer.close()


Producer = Callable[["asyncio.Queue[tuple[str, Event]]"], Awaitable[None]]


def socket_producers(sockets: dict[str, Path]) -> dict[str, Producer]:
    """The lab: one reader per component's admin socket."""
    return {n: (lambda q, n=n, s=s: _read_one(n, s, q)) for n, s in sockets.items()}


def _producer(ev: Event, replica: str) -> str:
    """Who an event of the controller's stream speaks for: the controller (its status lines; its
    error ends the tap), another controller replica (its error says it stopped: the tap goes on
    from the others), or a proxy. A flow is labelled with its controller replica."""
    if replica and ev.get("type") == "flow":
        ev.setdefault("replica", replica)
    if ev.get("type") == "error" and "replica" in ev:
        return f"controller replica {ev['replica']}" if ev["replica"] else "controller replicas"
    return "controller" if ev.get("source") == "controller" else ev.get("source", "?")


async def _read_controller(target: Any, f: Filter, out: asyncio.Queue[tuple[str, Event]]) -> None:
    """A cluster: the controller's Tap stream, which merges every proxy's feed (filtered at the
    proxies). Its first status line lists the feeds; later lines name their proxy in `source`."""
    from ambit.api import debug_grpc, debug_pb2
    from ambit.configclient import rpc, tls
    from ambit.tapfilter import to_proto
    try:
        async with tls.channel(target.address, target.trust) as ch, \
                debug_grpc.DebugServiceStub(ch).Tap.open(
                    metadata=(("authorization", f"Bearer {target.token}"),)) as call:   # the pinned root
            await call.send_message(debug_pb2.TapRequest(filter=to_proto(f)), end=True)
            async for m in call:
                ev = json.loads(m.json)
                await out.put((_producer(ev, m.replica), ev))
        await out.put(("controller", {"type": "error", "error": "the controller closed the tap"}))
    except Exception as e:
        if rpc.failure(e) is None:
            raise
        await out.put(("controller", {"type": "error", "fatal": True,
                                      "error": f"debug API at {target.address}: {rpc.describe(e)}"}))


READY_TIMEOUT = 10.0     # seconds for a component's first line: the controller's waits up to 5 s for the proxies


async def stream(producers: dict[str, Producer], f: Filter, emit: Any, warn: Any, max_events: int = 0,
                 duration: float = 0.0, on_ready: Any = None, ready_timeout: float = READY_TIMEOUT) -> int:
    """Run every producer (a lab admin socket, or the controller) until `max_events` matched (0: no
    limit) or `duration` seconds passed (0: until interrupted); hand each matching event to `emit`,
    problems and drops to `warn`. Returns the number of events emitted (-1 after a fatal error).

    Each producer's stream starts with a status line at once. One that sends none within
    `ready_timeout` (it accepted the connection and hangs) is given up with a warning; when no
    producer is left (each failed or hung) the tap ends as a failure rather than wait, silent,
    for flows that cannot come."""
    q: asyncio.Queue[tuple[str, Event]] = asyncio.Queue()
    tasks = {name: asyncio.ensure_future(p(q)) for name, p in producers.items()}
    deadline = time.monotonic() + duration if duration else None
    ready_by = time.monotonic() + ready_timeout if ready_timeout > 0 else None
    emitted, ready, dropped = 0, set(), {}
    gone: set[str] = set()
    try:
        while not (max_events and emitted >= max_events):
            if len(gone) == len(producers):
                return -1
            waiting = [n for n in producers if n not in ready and n not in gone]
            ends = [t for t in (deadline, ready_by if waiting else None) if t is not None]  # 0: no bound
            timeout = min(ends) - time.monotonic() if ends else None
            if timeout is not None and timeout <= 0:
                if deadline is not None and deadline <= time.monotonic():
                    for n in waiting:       # a --duration shorter than the bound: still say who never answered
                        warn(f"{n}: no answer within the {duration:g} s tapped")
                    if waiting and not ready:
                        return -1
                    break
                for n in waiting:
                    warn(f"{n}: no answer within {ready_timeout:g} s (it accepted the connection and hangs); "
                         "not tapping it")
                    tasks[n].cancel()
                    gone.add(n)
                continue
            try:
                name, ev = await asyncio.wait_for(q.get(), timeout)
            except TimeoutError:
                continue
            kind = ev.get("type")
            if kind == "status":
                if name in producers and name not in ready:
                    ready.add(name)
                    if on_ready is not None and len(ready) == len(producers):
                        on_ready(ev)
                if ev.get("dropped", 0) > dropped.get(name, 0):
                    warn(f"{name}: {ev['dropped'] - dropped.get(name, 0)} events dropped (this reader is too "
                         "slow; the proxy never waits for it)")
                    dropped[name] = ev["dropped"]
            elif kind == "error":
                warn(f"{name}: {ev['error']}")
                if ev.get("fatal"):
                    return -1
                if name in producers:       # a producer's own error ends it (its stream is over)
                    gone.add(name)
            elif event_matches(ev, f):
                emit(ev)
                emitted += 1
    finally:
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
    return emitted


# -- the command -----------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("tap", help="stream live flows from ztunnels and waypoints (like linkerd viz tap, "
                                   "hubble observe)")
    p.add_argument("-n", "--namespace", default="", help="flows with either side in this namespace (default: all)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace (the default)")
    p.add_argument("--to", default="", metavar="WORKLOAD|NS/WORKLOAD|pod/POD|svc/SERVICE",
                   help="only flows to this destination")
    p.add_argument("--from", dest="from_", default="", metavar="WORKLOAD|NS/WORKLOAD|pod/POD",
                   help="only flows from this source")
    p.add_argument("--pod", default="", help="only flows from or to this pod")
    p.add_argument("--status", default="", type=validate_status, metavar="5xx|4xx|403|...",
                   help="only L7 requests with this response status (comma: any of)")
    p.add_argument("--verdict", default="", choices=("allowed", "denied", "error"))
    p.add_argument("--layer", default="", choices=("L4", "L7", "l4", "l7"))
    p.add_argument("--max-events", type=at_least_zero(int), default=0,
                   help="stop after this many flows (default 0: never)")
    p.add_argument("--duration", type=at_least_zero(float), default=0.0,
                   help="stop after this many seconds (default 0: never)")
    p.add_argument("-o", "--output", choices=("text", "wide", "json"), default="text")
    p.add_argument("--timeout", type=at_least_zero(float), default=READY_TIMEOUT,
                   help="seconds to wait for each component's (or the controller's) first answer "
                        f"(default {READY_TIMEOUT:g}; 0: no bound)")
    cluster.add_arguments(p)
    intermixed(p)
    p.set_defaults(func=cmd_tap)


def cmd_tap(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    from ambitctl.lab.paths import lab_dir
    out, err = stdout or sys.stdout, stderr or sys.stderr
    if args.namespace and args.all_namespaces:
        print("error: -n and -A exclude each other", file=err)
        return 2
    f = Filter(namespace="" if args.all_namespaces else args.namespace, to=args.to, from_=args.from_,
               pod=args.pod, status=args.status, verdict=args.verdict, layer=args.layer)
    try:
        if cluster.in_cluster(args) or args.controller:
            target = cluster.debug_target(args)
            producers: dict[str, Producer] = {"controller": lambda q: _read_controller(target, f, q)}
        else:
            producers = socket_producers(lab_sockets(lab_dir()))
    except (TapError, cluster.TargetError) as e:
        print(f"error: {e}", file=err)
        return 1

    def emit(ev: Event) -> None:
        if args.output == "json":
            out.write(json.dumps(ev, sort_keys=True) + "\n")
        else:
            text = line(ev, wide=args.output == "wide")
            style = {"denied": "red", "error": "yellow"}.get(ev.get("verdict", ""))
            out.write((paint(text, style, out) if style else text) + "\n")
        out.flush()

    def warn(msg: str) -> None:
        print(f"warning: {msg}", file=err, flush=True)

    def ready(status: Event) -> None:
        names = status.get("feeds", sorted(producers)) if "controller" in producers else sorted(producers)
        via = " through the controller" if "controller" in producers else ""
        replicas = status.get("replicas") or {}
        if len(replicas) > 1:
            via = f" through {len(replicas)} controller replicas ({', '.join(replicas)})"
        print(f"tapping {len(names)} components{via}: {', '.join(names) or 'none connected'}", file=err, flush=True)

    n = asyncio.run(stream(producers, f, emit, warn, args.max_events, args.duration, ready, args.timeout))
    if n < 0:
        print("error: nothing to tap: " + ("the controller's debug API failed (above)" if "controller" in producers
                                          else "no component answered (above)"), file=err)
        return 1
    return 0
