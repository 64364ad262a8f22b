"""Which of an ingress gateway's ports are bound, and why the others are not (sans-IO: the clock
is injected).

A Gateway listener whose port cannot be bound (in use, privileged without the capability, an
address not on the host) serves nothing. Before this record it was only logged while the
controller's Gateway status, computed from configuration alone, said the listener was
`Programmed`. Now each port's outcome is kept here and reported to the controller with the
proxy's status reports (ambit.configclient.report, `status_report()["ingress"]`), which writes
the listener's `Accepted=False PortUnavailable` / `Programmed=False` from it
(controller.waypoints.ingress_status); the ingress retries the bind with backoff
(waypoint/ingress_listen.py), and the next report after a success clears it.

`failures_total` counts failed bind attempts per port for `ambit_listener_bind_failures_total`;
`unbound()` is `ambit_listeners_unbound`.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def describe(address: str, port: int, e: OSError) -> str:
    """The OS error of a bind, as an operator reads it: `bind 0.0.0.0:80: [Errno 13] Permission
    denied (EACCES)`."""
    name = errno.errorcode.get(e.errno or 0, "")
    return f"bind {address}:{port}: [Errno {e.errno}] {e.strerror or e}" + (f" ({name})" if name else "")


@dataclass
class BindFailure:
    port: int
    protocol: str
    listeners: tuple[str, ...]      # the Gateway listeners on the port (all unserved)
    error: str                      # `describe()` of the last attempt
    since: float                    # first failure of this run (unix time)
    attempts: int = 1


class BindState:
    """The bound ports and the failing ones of one ingress process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.bound: dict[int, tuple[str, tuple[str, ...]]] = {}    # port -> (protocol, listeners)
        self.failed: dict[int, BindFailure] = {}
        self.failures_total: dict[int, int] = {}
        # Set once the ports of the Gateway as the controller sent it have been tried (an update
        # after the IngressGateway type arrived): before that an empty record would say "every
        # port is bound" of a pod that has tried none, and the pod's condition would read
        # ListenersBound=True for the moment until the first real outcome replaced it.
        self.settled = False

    def ok(self, port: int, protocol: str, listeners: Sequence[str]) -> bool:
        """A bind succeeded; True when the port had failed before (the state changed)."""
        self.bound[port] = (protocol, tuple(listeners))
        return self.failed.pop(port, None) is not None

    def failed_bind(self, port: int, protocol: str, listeners: Sequence[str], error: str) -> bool:
        """A bind failed; True when the report changes (a new failure, or another error)."""
        self.failures_total[port] = self.failures_total.get(port, 0) + 1
        self.bound.pop(port, None)
        old = self.failed.get(port)
        if old is not None:
            changed = old.error != error or old.listeners != tuple(listeners)
            old.error, old.listeners, old.protocol = error, tuple(listeners), protocol
            old.attempts += 1
            return changed
        self.failed[port] = BindFailure(port, protocol, tuple(listeners), error, self.clock())
        return True

    def forget(self, port: int) -> bool:
        """The port left the Gateway (or the process closes it); True when it was failing."""
        self.bound.pop(port, None)
        return self.failed.pop(port, None) is not None

    def unbound(self) -> int:
        return len(self.failed)

    def report(self) -> list[dict[str, Any]]:
        """Every port, bound or not, for the controller (sorted by port)."""
        out: list[dict[str, Any]] = [{"port": p, "protocol": proto, "listeners": list(names), "bound": True}
                                     for p, (proto, names) in self.bound.items()]
        out += [{"port": f.port, "protocol": f.protocol, "listeners": list(f.listeners), "bound": False,
                 "error": f.error, "since": f.since, "attempts": f.attempts} for f in self.failed.values()]
        return sorted(out, key=lambda x: x["port"])
