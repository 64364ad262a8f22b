"""`ambit stat` and `ambit top`: per-workload and per-edge golden signals, as `linkerd viz stat`
and `linkerd viz top`/`edges` give them.

    ambit stat -n demo                 # per destination workload: RPS, success, p50/p95/p99, TCP
    ambit top -n demo --window 10      # per edge (source -> destination workload), busiest first

Where the numbers come from: the components' Istio metrics. The CLI scrapes every ztunnel and
waypoint twice, `--window` seconds apart (in the lab through their metrics sockets; in a cluster, or
with `--controller`, through the controller's debug API `Metrics`, which asks every proxy over the
feed the proxy keeps open to it: ambit/dataplane/feed.py), and works on the difference (rates are per second over
the window; latency percentiles are interpolated from the histogram buckets' increase, as
Prometheus' `histogram_quantile` does). HTTP numbers come from the waypoints (`istio_requests_total`,
`istio_request_duration_milliseconds`, reporter="waypoint"): only traffic through a waypoint has
L7. TCP numbers come from the destination ztunnels (reporter="destination", so one connection
counts once). Everything below `scrape_all` is pure and unit-tested.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ambit.quantile import histogram_quantile
from ambitctl import cluster
from ambitctl.term import intermixed

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels]            # (metric sample name, sorted labels)
Samples = dict[Sample, float]

REQUESTS = "istio_requests_total"
DURATION = "istio_request_duration_milliseconds"
TCP_OPENED = "istio_tcp_connections_opened_total"
TCP_RECV = "istio_tcp_received_bytes_total"
TCP_SENT = "istio_tcp_sent_bytes_total"
WANTED = (REQUESTS, DURATION + "_bucket", TCP_OPENED, TCP_RECV, TCP_SENT)


# -- parsing and diffing (pure) ---------------------------------------------------------------------

def parse(text: str) -> Samples:
    """The samples of one exposition that `stat`/`top` use."""
    from prometheus_client.parser import text_string_to_metric_families
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in WANTED:
                key = (s.name, tuple(sorted(s.labels.items())))
                out[key] = out.get(key, 0.0) + s.value
    return out


def diff(before: Samples, after: Samples) -> Samples:
    """Counter increases between two scrapes. A series that went down was reset (the component
    restarted): its new value is the increase, as Prometheus' `increase()` treats resets."""
    out: Samples = {}
    for k, v in after.items():
        d = v - before.get(k, 0.0)
        out[k] = v if d < 0 else d
    return out


# -- aggregation (pure) -----------------------------------------------------------------------------

@dataclass
class Row:
    """One workload's (or one edge's) numbers over the window."""

    key: tuple[str, ...]
    requests: float = 0.0
    failures: float = 0.0           # 5xx and no response (status 0)
    buckets: dict[float, float] = field(default_factory=lambda: defaultdict(float))
    tcp_opened: float = 0.0
    tcp_bytes: float = 0.0

    def result(self, window: float) -> dict[str, Any]:
        b = list(self.buckets.items())
        q = {f"p{int(p * 100)}_ms": histogram_quantile(p, b) for p in (0.5, 0.95, 0.99)}
        return {"requests": self.requests, "rps": self.requests / window,
                "success_rate": None if not self.requests else (self.requests - self.failures) / self.requests,
                **{k: None if v is None else round(v, 3) for k, v in q.items()},
                "tcp_connections_per_s": self.tcp_opened / window, "tcp_bytes_per_s": self.tcp_bytes / window}


def _failed(code: str) -> bool:
    return code == "0" or code.startswith("5")


def aggregate(delta: Samples, by: tuple[str, ...]) -> dict[tuple[str, ...], Row]:
    """Sum the window's increases per `by` labels (e.g. the destination workload and namespace, or
    the (source, destination) edge). HTTP from reporter="waypoint", TCP from reporter="destination"."""
    rows: dict[tuple[str, ...], Row] = {}
    for (name, labels), v in delta.items():
        lab = dict(labels)
        key = tuple(lab.get(k, "") for k in by)
        if name in (REQUESTS, DURATION + "_bucket"):
            if lab.get("reporter") != "waypoint":
                continue
            row = rows.setdefault(key, Row(key))
            if name == REQUESTS:
                row.requests += v
                if _failed(lab.get("response_code", "")):
                    row.failures += v
            else:
                row.buckets[float(lab["le"])] += v
        elif lab.get("reporter") == "destination":
            row = rows.setdefault(key, Row(key))
            if name == TCP_OPENED:
                row.tcp_opened += v
            else:
                row.tcp_bytes += v
    return rows


STAT_BY = ("destination_workload_namespace", "destination_workload")
TOP_BY = ("source_workload_namespace", "source_workload", "destination_workload_namespace", "destination_workload")


def table(delta: Samples, window: float, by: tuple[str, ...], namespace: str = "") -> list[dict[str, Any]]:
    """Rows for `stat` (by=STAT_BY) or `top` (by=TOP_BY), in the namespace if given (either side
    for an edge), busiest first."""
    out = []
    for key, row in aggregate(delta, by).items():
        named = dict(zip(by, key, strict=True))
        if namespace and namespace not in (named.get("destination_workload_namespace"),
                                           named.get("source_workload_namespace")):
            continue
        out.append({**named, **row.result(window)})
    return sorted(out, key=lambda r: (-r["rps"], -r["tcp_connections_per_s"], [r[k] for k in by]))


# -- scraping (the edge) ----------------------------------------------------------------------------

def lab_metrics_sockets(base: Path) -> dict[str, Path]:
    from ambitctl.lab import components, state, waypoints
    st = state.load(base)
    if st is None:
        raise RuntimeError(f"no lab is up (no state in {base}); in a cluster pass --context/--kubeconfig "
                           "(stat/top read the proxies' metrics through the controller's debug API)")
    out = {f"ztunnel/{n['name']}": components.ztunnel_metrics_socket(base, n["name"]) for n in st.spec["nodes"]}
    for w in st.waypoints:
        if not w.get("removing"):
            out[f"waypoint/{w['namespace']}/{w['name']}"] = waypoints.metrics_socket(base, w["namespace"], w["name"])
    return out


def merge(texts: dict[str, str]) -> Samples:
    """The samples of several components' expositions. The same series from two components (two
    waypoints for one workload) stay apart until aggregation: the component becomes a label."""
    out: Samples = {}
    for name, text in sorted(texts.items()):
        for k, v in parse(text).items():
            out[(k[0], (*k[1], ("_component", name)))] = v
    return out


def scrape_all(sockets: dict[str, Path], warn: Any) -> Samples:
    """The lab: every component's metrics socket."""
    from ambit.dataplane.telemetry.metrics import scrape
    texts = {}
    for name, sock in sorted(sockets.items()):
        try:
            texts[name] = scrape(sock)
        except OSError as e:
            warn(f"{name}: {e}")
    if sockets and not texts:       # an empty table would read as "no traffic", and exit 0
        raise RuntimeError(f"no component's metrics could be read ({len(sockets)} tried: see the warnings above)")
    return merge(texts)


def controller_scrape(target: Any, warn: Any, timeout: float = 3.0) -> Samples:
    """A cluster: the controller's debug API `Metrics`, which asks every proxy over the feed it
    keeps open to the controller (nothing dials the nodes); with several controller replicas, the
    one asked asks the others too, and a replica that did not answer is warned about (its proxies
    are missing from the figures)."""
    from ambit.api import debug_pb2
    resp = cluster.call(target, "Metrics", debug_pb2.MetricsRequest(timeout=timeout), timeout + 5.0)
    for r in resp.replicas:
        if not r.answered:
            where = f" ({r.address})" if r.address else ""
            warn(f"controller replica {r.name or '?'}{where} did not answer: {r.error or 'no reason given'}; "
                 "the proxies connected to it are missing from these figures")
    for name in resp.missing:
        warn(f"{name}: no metrics within {timeout:.0f}s")
    if resp.missing and not resp.metrics:
        raise RuntimeError(f"no proxy answered the controller within {timeout:.0f}s ({len(resp.missing)} asked)")
    if not resp.metrics and not resp.missing:
        warn("no proxy has a feed open to the controller")
    return merge(dict(resp.metrics))


# -- output ----------------------------------------------------------------------------------------

def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.0f}ms" if v >= 10 else f"{v:.1f}ms")


def render(rows: Iterable[dict[str, Any]], by: tuple[str, ...]) -> str:
    heads = {"destination_workload_namespace": "NAMESPACE", "destination_workload": "WORKLOAD",
             "source_workload_namespace": "SRC NS", "source_workload": "SRC"}
    if by == TOP_BY:
        heads = {**heads, "destination_workload_namespace": "DST NS", "destination_workload": "DST"}
    cols = [heads[k] for k in by] + ["SUCCESS", "RPS", "P50", "P95", "P99", "TCP CONN/S", "TCP B/S"]
    data = [[r[k] or "unknown" for k in by]
            + [_pct(r["success_rate"]), f"{r['rps']:.2f}", _ms(r["p50_ms"]), _ms(r["p95_ms"]), _ms(r["p99_ms"]),
               f"{r['tcp_connections_per_s']:.2f}", f"{r['tcp_bytes_per_s']:.0f}"] for r in rows]
    widths = [max(len(c), *(len(d[i]) for d in data)) if data else len(c) for i, c in enumerate(cols)]
    lines = ["   ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["   ".join(c.ljust(w) for c, w in zip(d, widths, strict=True)).rstrip() for d in data]
    return "\n".join(lines) + "\n"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, by, help_ in (("stat", STAT_BY, "per-workload success rate, rates and latency (like linkerd viz stat)"),
                            ("top", TOP_BY, "per-edge (source -> destination) traffic, busiest first "
                                            "(like linkerd viz top/edges)")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("workload", nargs="?", default="", help="only this (destination) workload")
        p.add_argument("-n", "--namespace", default="", help="only this namespace (default: all)")
        p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace (the default)")
        p.add_argument("--window", type=float, default=5.0, help="seconds between the two scrapes (default 5)")
        p.add_argument("-o", "--output", choices=("text", "json"), default="text")
        cluster.add_arguments(p)
        intermixed(p)
        p.set_defaults(func=cmd_stat, by=by)


def cmd_stat(args: argparse.Namespace, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    from ambitctl.lab.paths import lab_dir
    out, err = stdout or sys.stdout, stderr or sys.stderr
    if args.window <= 0:
        print("error: --window must be > 0 seconds", file=err)
        return 2

    def warn(msg: str) -> None:
        print(f"warning: {msg}", file=err)

    try:
        if cluster.in_cluster(args) or args.controller:
            target = cluster.debug_target(args)

            def scrape(warn: Any) -> Samples:
                return controller_scrape(target, warn)
        else:
            sockets = lab_metrics_sockets(lab_dir())

            def scrape(warn: Any) -> Samples:
                return scrape_all(sockets, warn)
        t0 = time.monotonic()
        before = scrape(warn)
        time.sleep(args.window)
        # the second scrape's missing proxies were said by the first; a replica lost since, not
        after = scrape(lambda m: warn(m) if m.startswith("controller replica ") else None)
    except (RuntimeError, cluster.TargetError) as e:
        print(f"error: {e}", file=err)
        return 1
    window = time.monotonic() - t0
    rows = table(diff(before, after), window, args.by, "" if args.all_namespaces else args.namespace)
    if args.workload:
        rows = [r for r in rows if r["destination_workload"] == args.workload]
    if args.output == "json":
        out.write(json.dumps({"window_s": round(window, 3), "rows": rows}, indent=1) + "\n")
    else:
        out.write(render(rows, args.by))
    return 0
