"""The event-loop watchdog in the lab: a node's ztunnel runs with the lab's `--watchdog-kill-after`
(30 s, as `ambit install`), and one stopped (SIGSTOP, as the lab's fault tests and a debugger stop
it) for longer than that is a stopped process, not a wedged loop: after SIGCONT it is the same
process, counts no stall, and carries mesh traffic again."""

from __future__ import annotations

import os
import signal
import time

from ambit.dataplane import endpoint
from ambit.dataplane.settings import WATCHDOG_KILL_AFTER
from ambitctl.lab import components
from tests.lab.labctl import Lab


def _mega_misses(lab: Lab) -> float:
    status, body = endpoint.fetch(components.ztunnel_metrics_socket(lab.dir, "node1"), "/metrics")
    assert status == 200
    samples = [ln for ln in body.decode().splitlines()
               if ln.startswith('ambit_event_loop_stalls_total{') and 'severity="mega_miss"' in ln]
    assert samples, "ztunnel exports no ambit_event_loop_stalls_total"
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in samples)


def test_a_ztunnel_stopped_longer_than_its_kill_time_is_not_aborted(lab: Lab) -> None:
    v2 = lab.pod("demo/echo-v2")
    lab.curl("demo/client", f"http://{v2['ip']}:8080/before")
    zt = lab.proc_pid("ztunnel/node1")
    assert zt
    before = _mega_misses(lab)
    os.killpg(zt, signal.SIGSTOP)
    try:
        time.sleep(WATCHDOG_KILL_AFTER + 5)
    finally:
        os.killpg(zt, signal.SIGCONT)
    time.sleep(3)                       # the watchdog's threads and the loops run again
    assert lab.proc_pid("ztunnel/node1") == zt and os.path.exists(f"/proc/{zt}")
    assert "aborting the process" not in lab.log("ztunnel", "node1")
    assert _mega_misses(lab) == before
    assert lab.curl("demo/client", f"http://{v2['ip']}:8080/after")["path"] == "/after"
