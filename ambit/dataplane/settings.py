"""Settings every proxy built on the data-plane library shares (ztunnel now, the waypoint next).

Each binary nests these in its own settings dataclass (see ambit/settings.py), so the flags read
the same everywhere: `--tunnel-connect-timeout`, `--tunnel-cert-wait`, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ambit.dataplane.gctune import check_threshold
from ambit.dataplane.hbone.liveness import Liveness
from ambit.settings import non_negative, option, positive


@dataclass(frozen=True)
class TunnelSettings:
    connect_timeout: float = option(10.0, "seconds to connect to an app or an HBONE peer before giving up",
                                    check=positive)
    cert_wait: float = option(5.0, "seconds a connection waits for its workload's first certificate",
                              check=non_negative)
    drain: float = option(5.0, "seconds a pod's HBONE connections get to finish after it leaves (GOAWAY first)",
                          check=non_negative)
    # istio/ztunnel's HBONE PING (ambit/dataplane/hbone/liveness.py): a silent peer's tunnels are reset
    ping_interval: float = option(10.0, "seconds an HBONE connection may receive nothing before it is sent a PING; "
                                  "0 disables the check", check=non_negative)
    ping_timeout: float = option(20.0, "seconds an HBONE PING may go unanswered before the connection is closed and "
                                 "its tunnels reset (the peer crashed or the network partitioned)", check=positive)

    @property
    def liveness(self) -> Liveness:
        return Liveness(self.ping_interval, self.ping_timeout)


# The memory and collector flags every proxy binary takes (ztunnel's and the waypoint's settings);
# what they do and why: ambit/dataplane/memory.py, ambit/dataplane/gctune.py.

def memory_trim_interval_option() -> Any:
    return option(10.0, "seconds between returning freed heap memory to the OS (malloc_trim); 0 disables",
                  check=non_negative)


# Istio's series of a workload live in its proxy until the proxy restarts, unless stats eviction is on
# (`sidecar.istio.io/statsEvictionInterval`); a node's ztunnel and a namespace's waypoint see every pod
# that ever talked through them, so Ambit evicts by default (docs/operations.md, "Memory over time").
METRICS_EXPIRY = 3600.0


def metrics_expiry_option() -> Any:
    return option(METRICS_EXPIRY, "seconds a Prometheus series (istio_*) may go without an update before it is "
                  "dropped (its pod or route is likely gone); 0 keeps every series for the process's life",
                  check=non_negative)


def gc_freeze_option() -> Any:
    return option(True, "after start-up, move every object to the collector's permanent generation "
                  "(gc.freeze), so full collections no longer walk the start-up objects")


def gc_threshold_option() -> Any:
    return option("", "the collector's thresholds 'gen0[,gen1[,gen2]]' ('' keeps Python's 700,10,10)",
                  check=check_threshold)


# `ambit install` and the lab pass --watchdog-kill-after WATCHDOG_KILL_AFTER (docs/operations.md,
# "The event-loop watchdog"); a bare process keeps Envoy's default, off, so one stopped in a
# debugger or a profiler is not aborted under its developer.
WATCHDOG_KILL_AFTER = 30.0


def watchdog_kill_after_option() -> Any:
    return option(0.0, "seconds the event loop may stall (not run a callback: a blocking call, an endless "
                  "callback) before the watchdog logs the loop's stack and aborts the process (SIGABRT) so it "
                  "is restarted; a stopped process (SIGSTOP) is not a stall; 0 never aborts (stalls are still "
                  "counted in ambit_event_loop_stalls_total and a mega-miss's stack is logged)",
                  check=non_negative)
