"""Leader election over a Kubernetes Lease (coordination.k8s.io/v1), as client-go's leaderelection.

Several controller replicas run at once: every one serves the config stream and signs
certificates (reads and signing need no coordination: the CA key comes from the same Secret), but
only the leader *writes* (status conditions, waypoint Deployments, the ambit-root-cert
ConfigMap), so two replicas never fight over an object.

The rules (`decide`, pure, with the clock injected):
* no Lease: create it, holding it;
* held by us: renew (`renewTime` = now);
* held by another whose record has not changed for `leaseDurationSeconds` *by our own clock*
  (or never renewed): take it over, counting a transition;
* otherwise follow.
As client-go, a follower counts expiry from when *it* last saw the Lease record change, never from
the `renewTime` another replica's clock wrote: with clocks 20 s apart, a leader's fresh renewal
looked 5 s expired to a follower ahead of it, and two replicas led at once. The price, also
client-go's: a replica that starts next to an abandoned Lease waits one lease duration before it
takes it (a stopping leader releases it, so that wait is only after a crash).
Every write goes through the API server's optimistic concurrency (the Lease's resourceVersion):
of two replicas that both see an expired Lease only one write succeeds, the other gets 409
Conflict and follows. A leader that cannot renew steps down once `renew_deadline` has passed
since its last successful renewal, which is shorter than the lease duration: it stops writing
before anyone else may take over. Its term is counted from the `renewTime` it wrote (the clock
read before the write), not from when the API server answered: a renewal the server took 12 s to
accept would otherwise have let it lead until 22 s after the `renewTime` the others see, while
they take the Lease over at 15 s. Every request has a timeout, so a hung API server cannot hold
the elector's thread, and no failure ends it (an API server that refused connections for a moment
ended it for good: the replica never led again).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3

log = logging.getLogger("ambit.controller.leader")

CREATE, RENEW, TAKEOVER, FOLLOW = "create", "renew", "takeover", "follow"
LEASE_NAME = "ambit-controller"     # in the root namespace; the manifests grant get/update on it by name


@dataclass(frozen=True)
class LeaseView:
    """What `decide` needs of a Lease's spec (None for a field the Lease does not set)."""

    holder: str | None
    renew_time: dt.datetime | None
    duration: int | None


def decide(lease: LeaseView | None, me: str, now: dt.datetime, default_duration: int) -> str:
    """What this replica should do with the Lease it just read (None: there is none)."""
    if lease is None:
        return CREATE
    if lease.holder == me:
        return RENEW
    if not lease.holder or lease.renew_time is None:
        return TAKEOVER
    expires = lease.renew_time + dt.timedelta(seconds=lease.duration or default_duration)
    return TAKEOVER if now >= expires else FOLLOW


class LeaseElector:
    """Hold `namespace/name` as `identity` (the pod name). `is_leader()` is safe from any thread;
    `on_change(leading)` runs on the elector's thread when leadership is gained or lost."""

    def __init__(self, api_client: Any, namespace: str, name: str, identity: str, *,
                 lease_duration: int = 15, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 on_change: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if not renew_deadline < lease_duration:
            raise ValueError(f"leader election: renew deadline {renew_deadline}s must be shorter than the lease "
                             f"duration {lease_duration}s, or two replicas could lead at once")
        from kubernetes import client as k8s
        self._api = k8s.CoordinationV1Api(api_client)
        self._k8s = k8s
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self.on_change = on_change
        self.clock = clock
        self._renewed_at: float | None = None       # the renewTime of our last successful create/renew/takeover
        self._observed: tuple[Any, ...] | None = None   # the Lease record as last read
        self._observed_at = 0.0                      # our clock when that record last changed
        self._timeout = (min(5.0, renew_deadline / 2), renew_deadline / 2)   # connect, read: per request
        self._leading = False

    def is_leader(self) -> bool:
        return self._renewed_at is not None and self.clock() - self._renewed_at < self.renew_deadline

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    def try_once(self) -> bool:
        """Read the Lease and act on it once; True while we lead."""
        from kubernetes.client.exceptions import ApiException
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self._timeout)
        except ApiException as e:
            if e.status != 404:
                log.warning("lease %s/%s: read failed: %s %s", self.namespace, self.name, e.status, e.reason)
                return self._settle()
            lease = None
        except (urllib3.exceptions.HTTPError, OSError) as e:      # refused, reset, timed out
            log.warning("lease %s/%s: read failed: %s", self.namespace, self.name, e)
            return self._settle()
        action = decide(self._observe(lease), self.identity, self._now(), self.lease_duration)
        if action == FOLLOW:
            self._renewed_at = None
            return self._settle()
        started = self.clock()
        try:
            self._write(action, lease, started)
            self._renewed_at = started          # the renewTime the others see, however slow the write was
        except ApiException as e:
            if e.status not in (409, 404):      # 409: another replica wrote first; 404: deleted meanwhile
                log.warning("lease %s/%s: %s failed: %s %s", self.namespace, self.name, action, e.status, e.reason)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            log.warning("lease %s/%s: %s failed: %s", self.namespace, self.name, action, e)
        return self._settle()

    def _observe(self, lease: Any) -> LeaseView | None:
        """The Lease as `decide` reads it, its renewal timed by our clock: the moment we first saw
        its current record (client-go's observedTime), not the `renewTime` the holder's clock wrote."""
        spec = lease.spec if lease is not None else None
        if spec is None:
            return None if lease is None else LeaseView(None, None, None)
        record = (spec.holder_identity, spec.renew_time, spec.lease_duration_seconds, spec.acquire_time,
                  spec.lease_transitions)
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        seen = dt.datetime.fromtimestamp(self._observed_at, dt.UTC) if spec.renew_time is not None else None
        return LeaseView(spec.holder_identity, seen, spec.lease_duration_seconds)

    def _write(self, action: str, lease: Any, at: float | None = None) -> None:
        """Write the Lease as `action` says, with renewTime `at` (the clock's now by default)."""
        now = dt.datetime.fromtimestamp(self.clock() if at is None else at, dt.UTC)
        k8s = self._k8s
        if action == CREATE:
            self._api.create_namespaced_lease(self.namespace, k8s.V1Lease(
                metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=k8s.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=self.lease_duration,
                                     acquire_time=now, renew_time=now, lease_transitions=0)),
                _request_timeout=self._timeout)
            return
        spec = lease.spec or k8s.V1LeaseSpec()
        spec.renew_time = now
        spec.lease_duration_seconds = self.lease_duration
        if action == TAKEOVER:
            spec.holder_identity = self.identity
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        lease.spec = spec          # metadata.resourceVersion stays: a stale read gets 409 Conflict
        self._api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=self._timeout)

    def _settle(self) -> bool:
        leading = self.is_leader()
        if leading != self._leading:
            self._leading = leading
            log.info("lease %s/%s: %s", self.namespace, self.name,
                     f"leading as {self.identity}" if leading else f"{self.identity} is not the leader")
            if self.on_change is not None:
                try:
                    self.on_change(leading)
                except Exception:  # noqa: BLE001 - a hook must not stop the election
                    log.exception("leadership change hook failed")
        return leading

    def run(self, stop: threading.Event) -> None:
        """Try every `retry_period` until `stop`; then give the Lease up if we hold it, so the next
        replica need not wait for it to expire (client-go's ReleaseOnCancel)."""
        while not stop.is_set():
            try:
                self.try_once()
            except Exception:  # noqa: BLE001 - the election must outlive any one failure: a dead
                # thread would never lead again, and the replicas' writes (status, waypoints) stop
                log.exception("lease %s/%s: election attempt failed", self.namespace, self.name)
                self._settle()
            stop.wait(self.retry_period)
        if self.is_leader():
            self.release()

    def release(self) -> None:
        from kubernetes.client.exceptions import ApiException
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace, _request_timeout=self._timeout)
            if lease.spec is not None and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                self._api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=self._timeout)
        except ApiException as e:
            log.warning("lease %s/%s: release failed: %s %s", self.namespace, self.name, e.status, e.reason)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            log.warning("lease %s/%s: release failed: %s", self.namespace, self.name, e)
        self._renewed_at = None
        self._settle()

    def start(self, stop: threading.Event) -> threading.Thread:
        t = threading.Thread(target=self.run, args=(stop,), name="leader-election", daemon=True)
        t.start()
        return t
