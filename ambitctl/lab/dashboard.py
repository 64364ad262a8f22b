"""The lab's topology view: the controller serves it on a free host port (its process runs in the
host netns), scraping the lab's ztunnels and waypoints over their metrics unix sockets, reading
access logs from the lab's log files, and reading rates from the lab's Prometheus when the lab runs
one (`lab up --prometheus`), and listing traces from the lab's collector when it runs one
(`lab up --tracing`, ambitctl/lab/tracing.py). `ambit dashboard` and `ambit lab status` print the URL.

The URL is not stored apart: it is the controller's own `--dashboard-address` in the state file,
so what is printed is what the controller was told.
"""

from __future__ import annotations

from pathlib import Path

from ambitctl.lab import paths, prometheus, tracing
from ambitctl.lab.state import LabState

FLAG = "--dashboard-address"


def direct_args(base: Path) -> list[str]:
    """Where the controller scrapes the proxies itself: their metrics sockets in the lab dir."""
    return ["--dashboard-ztunnel-metrics", f"unix:{base}/{{node}}/metrics.sock",
            "--dashboard-waypoint-metrics", f"unix:{base}/waypoints/{{namespace}}.{{name}}.metrics.sock"]


def enable(st: LabState, base: Path) -> None:
    """Add the view's flags to the controller's process (after prometheus.enable, if any): the lab's
    Prometheus when it runs one, else the proxies' sockets."""
    ctl = st.proc("controller")
    ctl.argv += [FLAG, f"127.0.0.1:{prometheus.free_port()}", "--dashboard-access-logs", str(paths.log_dir(base))]
    ctl.argv += ["--prometheus-url", prometheus.url(st)] if st.prometheus else direct_args(base)
    ctl.argv += tracing.controller_args(st)


def url(st: LabState) -> str:
    """The view's URL, or "" when the lab's controller serves none (a lab from before the view)."""
    try:
        argv = st.proc("controller").argv
    except KeyError:
        return ""
    if FLAG not in argv[:-1]:
        return ""
    return f"http://{argv[argv.index(FLAG) + 1]}/"
