"""The node agent: enrols this node's ambient pods and keeps their capture in place.

For each pod that must be captured, in this order (so capture never points at a missing listener):
  1. hand the pod to ztunnel (netns fd over the zds socket); ztunnel opens 15001/15006/15008 in it;
  2. attach the eBPF programs (or install iptables rules in --capture=iptables) and fill the maps.
To unenrol, the reverse: detach first (new connections are no longer captured), then tell ztunnel
to drain. On start the engine adopts the links a previous agent pinned, so a restart has no gap.

Pods reach the agent two ways. The CNI plugin (agent/cni) asks, while the runtime creates a pod's
sandbox and before any container runs, so even an app's first connection is captured; the pod
source (watch or config stream) is the reconciler for every pod, including those that existed
before the agent. A pod enrolled by the plugin is kept until its DEL, or until the source shows it
(then the source's record takes over), for as long as the source has not caught up: however slow
the API server is to show the pod's IP, its app never runs uncaptured. It is let go only when its
sandbox (netns) is gone, the source says it is not to be captured, or the source showed it and no
longer does (deleted) (`_kept_by_sandbox`). A restarted agent keeps, the same way, the pods it
finds captured that no view shows yet (`_adopted_kept`): the previous agent's record of its plugin
pods died with it.

A pod the source enrolled while it was already running, whose capture keeps failing, runs
uncaptured (a STRICT gap) while it is retried; `--repair-pods` labels or deletes it once a bound
has passed (agent/repair.py), on a thread of its own (`repair_worker`).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent import enrolment
from agent.enrolment import PodRef
from agent.handoff import HandoffRetry, reason_of
from agent.metrics import AgentMetrics
from agent.podsource import LabPodSource, PodSource, PodView
from agent.repair import LABEL, Failing, Repair, RepairPlanner, RepairSettings
from agent.settings import load as load_settings
from agent.ztunnel_link import ZtunnelError, ZtunnelLink, ZtunnelRefused
from ambit import readymark
from ambit.podannotations import ANN_BYPASS_INBOUND, inbound_bypass
from ambit.zds import PodInfo

log = logging.getLogger("ambit.agent")

# The pod's status and log when it is in ingress mode: what it gives up, said where it is looked for.
BYPASS_NOTE = (f"inbound bypassed ({ANN_BYPASS_INBOUND}=true): plaintext inbound goes to the app without ztunnel, "
               "so STRICT mTLS and ztunnel's AuthorizationPolicies do not apply to it; HBONE (port 15008) from "
               "mesh clients, outbound and DNS still go through ztunnel")

REQUIRED_CHECKS = ("kernel", "bpf-syscall", "cgroup-v2", "bcc-sched-cls", "bcc-cgroup-sock-addr", "capabilities")


class Agent:
    def __init__(self, node: str, source: PodSource, engine: Any, link: ZtunnelLink,
                 node_ip: str, status_file: Path | None = None, drain: float = 5.0,
                 repair: RepairSettings | None = None, repairer: Any = None, metrics: AgentMetrics | None = None,
                 dns_capture: bool = True):
        self.node = node
        self.dns_capture = dns_capture          # the node default; a pod's annotation overrides it
        self.warnings: dict[str, str] = {}      # uid -> what the agent ignored on a captured pod (status)
        self.bypassed: dict[str, str] = {}      # uid -> why its plaintext inbound is not captured (status)
        self.source = source
        self.engine = engine
        self.link = link
        self.node_ip = node_ip
        self.status_file = status_file
        self.drain = drain
        self.applied: dict[str, PodRef | None] = {}
        self.errors: dict[str, str] = {}       # uid -> why the pod is not captured
        self.refs: dict[str, PodRef] = {}      # uid -> last desired ref (for status)
        self.excluded: dict[str, str] = {}     # pod key -> reason it is not enrolled
        self.revision = ""                      # the source's revision of the view last reconciled
        self.handoff = HandoffRetry()           # captured pods ztunnel could not serve yet: retried
        self.capture_retry = HandoffRetry()     # pods the engine failed to enrol or unenrol: retried
        self.capture_failures = {"enrol": 0, "unenrol": 0}  # counters, in the status file
        self.clock = time.monotonic
        self.lock = threading.RLock()           # the CNI server's requests vs the reconcile loop
        self.cni: dict[str, PodRef] = {}        # uid -> ref: enrolled by the plugin, in no view yet
        self.adopted: set[str] = set()          # pods a previous agent captured, in no view yet
        self.shown: set[str] = set()            # uids of the pods the last view showed
        self.ztunnel_sync = 5.0                 # seconds between checks of the node's ztunnel set
        # Pods whose capture keeps failing: repaired per --repair-pods (agent/repair.py) by
        # `repairer` (agent/repair_kube.py) on a thread of its own, off the reconcile loop.
        self.repair = RepairPlanner(repair or RepairSettings())
        self.repairer = repairer
        self.repairs: queue.Queue[Repair] = queue.Queue()
        self.repair_counts: dict[str, int] = {}   # "action/result" -> count, in the status file
        self.labelled: dict[str, tuple[str, str]] = {}  # uid -> (ns, name) this agent labelled
        self.metrics = metrics or AgentMetrics()
        self.writer = readymark.writer()        # this process, stamped in the status file (readiness)
        self.status_inode = 0                   # the status file as this process last wrote it
        # Set by the first status written (the end of the first reconcile): readiness, as the
        # status file's writer stamp says it and /healthz/ready answers it (agent/health.py).
        self.reported = False

    # -- capture ----------------------------------------------------------------------------
    def _capture(self, ref: PodRef) -> Any:
        from agent.capture import PodCapture, annotations_to_exclusions
        from agent.capture.dns import dns_capture
        ann = dict(ref.annotations)
        ports, cidrs, in_ports = annotations_to_exclusions(ann)
        dns = dns_capture(ann, self.dns_capture)
        bypass = inbound_bypass(ann)
        self._note(ref, self.warnings, "; ".join(w for w in (dns.warning, bypass.warning) if w))
        if ref.uid in self.bypassed and not bypass.enabled:
            log.info("pod %s: %s is off: plaintext inbound is captured again", ref.key, ANN_BYPASS_INBOUND)
        self._note(ref, self.bypassed, BYPASS_NOTE if bypass.enabled else "")
        return PodCapture(uid=ref.uid, netns_path=ref.netns, cgroup_path=ref.cgroup, pod_ip=ref.ip,
                          node_ip=self.node_ip, exclude_outbound_ports=ports,
                          exclude_outbound_cidrs=cidrs, exclude_inbound_ports=in_ports,
                          probe_ports=list(ref.probe_ports), dns_capture=dns.enabled,
                          bypass_inbound=bypass.enabled)

    @staticmethod
    def _note(ref: PodRef, notes: dict[str, str], text: str) -> None:
        """Keep `text` as the pod's entry in `notes` (shown in its status), logged as a warning
        when it is new or changed; no text removes the entry."""
        if not text:
            notes.pop(ref.uid, None)
            return
        if notes.get(ref.uid) != text:
            log.warning("pod %s: %s", ref.key, text)
        notes[ref.uid] = text

    def _info(self, ref: PodRef) -> PodInfo:
        return PodInfo(uid=ref.uid, name=ref.name, namespace=ref.namespace, ip=ref.ip, node=self.node,
                       service_account=ref.service_account, labels=dict(ref.labels), node_ip=self.node_ip)

    def enrol(self, ref: PodRef) -> None:
        try:
            cap = self._capture(ref)            # validates annotations before touching anything
            refused = ""
            try:
                self.link.add(self._info(ref), ref.netns)
            except ZtunnelRefused as e:
                refused = str(e)
            # Capture goes in place even when ztunnel could not serve the pod: inbound is then
            # dropped and outbound refused (fail closed) until a retried hand-off succeeds.
            try:
                self.engine.enrol(cap)
            except Exception:
                self._undo_handoff(ref)
                raise
            self.applied[ref.uid] = ref
            self.errors.pop(ref.uid, None)
            self.capture_retry.forget(ref.uid)
            if refused:
                self._handoff_failed(ref.uid, refused)
            else:
                self.handoff.succeeded(ref.uid)
                log.info("enrolled %s (%s)", ref.key, ref.ip)
        except ZtunnelError:
            raise
        except Exception as e:  # one bad pod must not stop the node
            self.errors[ref.uid] = str(e)
            self._capture_failed("enrol", ref.uid, ref.key, e)

    def _capture_failed(self, op: str, uid: str, key: str, e: Exception) -> None:
        """Count, log (naming the pod and the error) and schedule the retry of a failed engine call.
        Whatever failed (netlink, iptables, a full BPF map, EPERM, a netns gone), it is this pod's
        problem: the others are still reconciled, and this one is tried again with backoff."""
        self.capture_failures[op] += 1
        a = self.capture_retry.failed(uid, self.clock(), f"{type(e).__name__}: {e}")
        log.error("cannot %s %s: %s; attempt %d failed, next in %.1fs", op, key, a.reason, a.failures,
                  a.next_at - self.clock())

    def _retry_due(self, uid: str) -> bool:
        """Whether a pod whose engine call failed may be tried again now (its backoff is over)."""
        a = self.capture_retry.pending.get(uid)
        return a is None or a.next_at <= self.clock()

    def _undo_handoff(self, ref: PodRef) -> None:
        """Capture failed after ztunnel took the pod. A pod that was not captured before (its
        sandbox went away mid-enrolment, say) is never in `applied`, so no later unenrol would
        tell ztunnel: its listeners would hold the pod's netns alive for good. Take it back now.
        A pod captured before keeps ztunnel: its old capture is still in place."""
        if ref.uid not in self.applied:
            self._ztunnel_delete(ref.uid, 0.0)

    def _ztunnel_delete(self, uid: str, drain: float) -> None:
        """Tell ztunnel to stop serving a pod. A refusal is logged; a lost link is raised (the
        replay after reconnecting leaves ztunnel with our pods only)."""
        try:
            self.link.delete(uid, drain)
        except ZtunnelError as e:
            if not self.link.connected():
                raise
            log.warning("ztunnel: %s", e)

    def _handoff_failed(self, uid: str, error: str) -> None:
        a = self.handoff.failed(uid, self.clock(), reason_of(error))
        key = self.refs[uid].key if uid in self.refs else uid
        log.warning("ztunnel cannot serve %s (captured, traffic dropped meanwhile): %s; attempt %d failed, "
                    "next in %.1fs", key, a.reason, a.failures, a.next_at - self.clock())

    def retry_handoffs(self) -> None:
        """Hand again to ztunnel the captured pods it could not serve, once their backoff is due."""
        changed = False
        for uid in self.handoff.due(self.clock()):
            ref = self.applied.get(uid)
            if ref is None:
                self.handoff.forget(uid)
                continue
            try:
                self.link.add(self._info(ref), ref.netns)
            except ZtunnelRefused as e:
                self._handoff_failed(uid, str(e))
            except OSError as e:
                self._handoff_failed(uid, f"cannot open {ref.netns}: {e}")
            else:
                self.handoff.succeeded(uid)
                log.info("ztunnel serves %s (%s) after a failed hand-off", ref.key, ref.ip)
            changed = True
        if changed:
            self.write_status()

    def recapture_replaced(self) -> None:
        """Capture again the pods whose sandbox was re-created at the same netns path (the same
        uid, path and IP: the same ref, so no plan sees a change). Their capture and ztunnel's
        listeners are in the old netns; the new one would run uncaptured."""
        refs = {uid: ref for uid, ref in self.applied.items() if ref is not None}
        try:
            replaced = self.engine.replaced_sandboxes(refs)     # one sweep: this runs every heartbeat
        except Exception as e:  # noqa: BLE001 - looked at again next time
            log.warning("cannot check the captured pods' netns: %s", e)
            return
        for uid, ref in refs.items():
            if uid in replaced and self._retry_due(uid):    # a failing re-capture waits its backoff
                log.info("%s: a new netns at %s (sandbox re-created): capturing it again", ref.key, ref.netns)
                self.enrol(ref)

    def unenrol(self, uid: str) -> bool:
        """Stop capturing a pod; whether that worked. On failure the pod stays in `applied` (still
        captured, still served by ztunnel) and is retried (`_capture_failed`)."""
        try:
            self.engine.unenrol(uid)
        except Exception as e:  # noqa: BLE001 - one bad pod must not stop the node
            ref = self.applied.get(uid)
            self._capture_failed("unenrol", uid, ref.key if ref is not None else uid, e)
            return False
        self.capture_retry.forget(uid)
        self.applied.pop(uid, None)
        self.errors.pop(uid, None)
        self.warnings.pop(uid, None)
        self.bypassed.pop(uid, None)
        self.handoff.forget(uid)
        self._ztunnel_delete(uid, self.drain)
        log.info("unenrolled %s", uid)
        return True

    def reconcile(self, view: PodView) -> None:
        # Whichever source the view came from, enrolment was decided in one place before this
        # (the agent's rule for Kubernetes objects, the controller's for Workloads).
        pods = view.local_pods(self.node)
        want = enrolment.to_capture(pods)
        shown, refused = enrolment.known_uids(pods)
        self.revision = view.revision
        self.excluded = {p.key: p.reason for p in pods if not p.enrolled and p.reason}
        want = self._with_cni_pods(want, shown, refused)
        for uid, r in want.items():
            if uid in self.refs and self.refs[uid] != r:
                self.capture_retry.forget(uid)  # a changed pod is worth trying at once
        self.refs = want
        # Retry pods that failed before (their ref may be unchanged), once their backoff is over.
        current = {uid: r for uid, r in self.applied.items()}
        p = enrolment.plan(current, want)
        for uid in self._adopted_kept(p.remove, want, shown, refused):
            if self._retry_due(uid):
                self.unenrol(uid)
        self.shown = shown
        for ref in p.add + p.update:
            problem = enrolment.missing_paths(ref)
            if problem:     # one pod we cannot act on (yet) is that pod's status, not the node's
                self.errors[ref.uid] = problem
                continue
            if self._retry_due(ref.uid):
                self.enrol(ref)
        self.recapture_replaced()
        for uid in list(self.errors):
            if uid not in want:
                self.errors.pop(uid)
        for uid in list(self.handoff.pending):
            if uid not in self.applied:
                self.handoff.forget(uid)
        for uid in list(self.capture_retry.pending):
            if uid not in want and uid not in self.applied:
                self.capture_retry.forget(uid)
        self.plan_repairs()
        self.write_status()

    def _adopted_kept(self, remove: list[str], want: dict[str, PodRef], shown: set[str],
                      refused: set[str]) -> list[str]:
        """`remove` without the adopted pods kept for now. A pod the previous agent captured at
        sandbox creation (CNI ADD) is in no view until the API server shows its address, and that
        agent's record of it died with it: removing its capture would let its app start
        unprotected. So a pod adopted from the pins keeps its capture by the plugin pods' rule."""
        for uid in list(self.adopted):
            if uid in want or not self._kept_by_sandbox(uid, shown, refused):
                self.adopted.discard(uid)
        return [uid for uid in remove if uid not in self.adopted]

    def _kept_by_sandbox(self, uid: str, shown: set[str], refused: set[str]) -> bool:
        """Whether a pod captured at sandbox creation, which no view shows as one to capture, keeps
        its capture: yes while its netns lives, unless the source says no (not enrolled, opted
        out) or showed the pod and no longer does (deleted). No time limit: a pod whose IP the API
        server is slow to show runs its app all the same, and must not run it uncaptured."""
        if uid in refused or (uid in self.shown and uid not in shown):
            return False
        return self._sandbox_alive(uid)

    def _sandbox_alive(self, uid: str) -> bool:
        """Whether the pod's captured netns still exists; when that cannot be told, assume it does
        (keeping a capture fails closed, dropping it might not)."""
        try:
            return bool(self.engine.sandbox_alive(uid))
        except Exception as e:  # noqa: BLE001 - this pod's problem, not the node's
            log.warning("pod %s: cannot check its netns: %s", uid, e)
            return True

    def _with_cni_pods(self, want: dict[str, PodRef], shown: set[str], refused: set[str]) -> dict[str, PodRef]:
        """`want` plus the plugin's pods the source does not show yet (see the module docstring)."""
        for uid, ref in list(self.cni.items()):
            if uid in want or ref.key in self.excluded or not self._kept_by_sandbox(uid, shown, refused):
                del self.cni[uid]           # the source knows it now (or has said no, or it is gone)
            else:
                want = {**want, uid: ref}
        return want

    # -- repairing pods whose capture keeps failing (agent/repair.py) ---------------------------
    def uncaptured(self) -> list[Failing]:
        """Enrolled pods running uncaptured: the engine failed to capture them and no old capture
        is in place. A pod the CNI plugin is adding is not one (its ADD fails: it never starts)."""
        out = []
        for uid, ref in self.refs.items():
            a = self.capture_retry.pending.get(uid)
            if a is not None and uid not in self.applied and uid not in self.cni:
                out.append(Failing(uid, ref.namespace, ref.name, a.failures, a.reason))
        return out

    def plan_repairs(self) -> None:
        """Queue the repairs now due (the planner bounds when, and how many)."""
        failing = self.uncaptured()
        self.metrics.uncaptured.set(len(failing))
        if self.repairer is None:           # --repair-pods off: retries only
            return
        captured = {uid for uid in self.applied if uid not in self.errors}
        # The label as the view shows it (a restarted agent cleans up after its predecessor), and
        # as this agent set it (a source that does not carry pod labels: the config stream, the lab).
        self.labelled = {uid: k for uid, k in self.labelled.items() if uid in self.refs}
        labelled = {uid: (r.namespace, r.name) for uid, r in self.refs.items() if LABEL in dict(r.labels)}
        labelled |= self.labelled
        limited = self.repair.limited
        for r in self.repair.plan(self.clock(), failing, captured, labelled, set(self.refs)):
            self.repairs.put(r)
        if self.repair.limited > limited:
            self._count(self.repair.settings.mode, "limited", self.repair.limited - limited)

    def _count(self, action: str, result: str, n: int = 1) -> None:
        self.metrics.repairs.labels(action, result).inc(n)
        k = f"{action}/{result}"
        self.repair_counts[k] = self.repair_counts.get(k, 0) + n

    def carry_out_repair(self, r: Repair) -> None:
        """One repair, against the API server (the repair worker's thread, or a test's)."""
        try:
            done, why = self.repairer.carry_out(r)
        except Exception as e:  # noqa: BLE001 - the API server refused or is away: due again later
            with self.lock:
                self.repair.undo(r, self.clock())
                self._count(r.action, "failed")
                self.write_status()
            log.error("cannot %s uncaptured pod %s: %s", r.action, r.key, e)
            return
        with self.lock:
            self._count(done or r.action, "success" if done else "skipped")
            if done == "label":
                self.labelled[r.uid] = (r.namespace, r.name)
            elif r.action == "unlabel":
                self.labelled.pop(r.uid, None)
            self.write_status()
        if not done:
            log.info("not repairing %s (%s): %s", r.key, r.action, why)
            return
        if done == "unlabel":
            log.info("%s is captured now: label %s removed", r.key, LABEL)
        else:
            log.warning("uncaptured pod %s: %s (%s)", r.key, "deleted" if done == "delete" else "labelled", why)

    def repair_worker(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                r = self.repairs.get(timeout=0.5)
            except queue.Empty:
                continue
            self.carry_out_repair(r)

    # -- the CNI plugin's requests (agent/cni/server.py) ------------------------------------------
    def cni_add(self, pod: dict[str, Any]) -> str | None:
        """Capture a pod whose sandbox is being created; None once capture is in place, else why not."""
        ref = PodRef(uid=str(pod.get("uid") or ""), name=str(pod.get("name") or ""),
                     namespace=str(pod.get("namespace") or ""), ip=str(pod.get("ip") or ""),
                     service_account=str(pod.get("serviceAccount") or "default"),
                     netns=str(pod.get("netns") or ""), cgroup=str(pod.get("cgroup") or ""),
                     annotations=enrolment.capture_annotations(dict(pod.get("annotations") or {})),
                     labels=tuple(sorted(dict(pod.get("labels") or {}).items())),
                     probe_ports=tuple(int(p) for p in pod.get("probePorts") or []))
        if not (ref.uid and ref.name and ref.namespace and ref.ip and ref.netns):
            return f"{ref.key}: the request lacks uid, name, namespace, ip or netns"
        if not ref.cgroup:
            from agent.kube_pods import SandboxFinder
            cg = SandboxFinder().pod_cgroup(ref.uid)
            if cg is None:
                return f"{ref.key}: no cgroup of pod {ref.uid} on this host"
            ref = replace(ref, cgroup=str(cg))
        try:
            if os.stat(ref.netns).st_ino == os.stat("/proc/self/ns/net").st_ino:
                return f"{ref.key}: {ref.netns} is the node's own network namespace; refusing to capture it"
        except OSError as e:
            return f"{ref.key}: {e}"
        with self.lock:
            if not self.link.connected():
                return f"{ref.key}: the agent is not connected to ztunnel yet"
            self.refs = {**self.refs, ref.uid: ref}
            self.enrol(ref)
            why = self.errors.get(ref.uid) or (self.handoff.pending[ref.uid].reason
                                               if ref.uid in self.handoff.pending else "")
            if why:
                self.unenrol(ref.uid)
                self.refs.pop(ref.uid, None)
                self.write_status()
                return why
            self.cni[ref.uid] = ref
            self.write_status()
        return None

    def cni_del(self, uid: str, key: str) -> None:
        """The sandbox is going: stop capturing it now rather than when the source notices."""
        with self.lock:
            if not uid:
                uid = next((u for u, r in self.applied.items() if r is not None and r.key == key), "")
            self.cni.pop(uid, None)
            if uid in self.applied:
                self.unenrol(uid)
                self.refs.pop(uid, None)
                self.write_status()

    def cni_check(self, uid: str) -> str | None:
        with self.lock:
            if uid not in self.applied:
                return f"pod {uid} is not captured on this node"
            if uid in self.errors:
                return self.errors[uid]
            if uid in self.handoff.pending:
                return self.handoff.pending[uid].reason
        return None

    def replay(self) -> None:
        """After (re)connecting to ztunnel: make its pod set equal to ours."""
        pods = [(self._info(r), r.netns) for uid, r in self.applied.items() if r is not None]
        failed = dict(self.link.snapshot(pods))
        for uid in self.applied:
            if uid in failed:
                self._handoff_failed(uid, failed[uid])
            else:
                self.handoff.succeeded(uid)
        self.write_status()

    def write_status(self) -> None:
        """Write the status file (when there is one), and from then on report ready: every caller
        runs after the first reconcile, so the first write is its end, for the file's writer stamp
        (ambit/readymark.py) and /healthz/ready (agent/health.py) alike."""
        if self.status_file is not None:
            self._write_status_file()
        self.reported = True

    def _write_status_file(self) -> None:
        assert self.status_file is not None
        pods: dict[str, Any] = {}
        for uid, ref in self.refs.items():
            failing = self.handoff.status(uid, self.clock())
            if uid in self.errors:
                retry = self.capture_retry.status(uid, self.clock()) or {}
                pods[ref.key] = {"state": "error", "reason": self.errors[uid], "uid": uid,
                                 "captured": uid in self.applied,
                                 **{k: retry[k] for k in ("failures", "retryIn") if k in retry}}
            elif uid in self.applied and failing is not None:
                pods[ref.key] = {**failing, "uid": uid}
            elif uid in self.applied:
                pods[ref.key] = {"state": "captured", "uid": uid}
            if uid in self.applied and uid in self.warnings and ref.key in pods:
                pods[ref.key]["warning"] = self.warnings[uid]
            if uid in self.applied and uid in self.bypassed and ref.key in pods:
                pods[ref.key]["inbound"] = self.bypassed[uid]
        for key, why in self.excluded.items():
            pods[key] = {"state": "opted-out", "reason": why}
        for uid in self.capture_retry.pending.keys() - self.refs.keys():   # still captured: unenrol failed
            old = self.applied.get(uid)
            pods[old.key if old is not None else uid] = {
                **(self.capture_retry.status(uid, self.clock()) or {}), "state": "unenrol-failed", "uid": uid}
        try:
            stats = self.engine.stats()
        except Exception:
            stats = {}
        # The writer's stamp is what the readiness probe checks (ambit/readymark.py): a file left
        # by a previous run of the agent is not this one's, so it does not make the pod Ready.
        doc = {"node": self.node, "time": time.time(), "revision": self.revision, "pods": pods, "stats": stats,
               "captureFailures": dict(self.capture_failures), "repairs": dict(self.repair_counts),
               readymark.WRITER: self.writer}
        tmp = self.status_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(doc))
        inode = tmp.stat().st_ino       # before the rename: another writer may replace it right after
        os.replace(tmp, self.status_file)
        self.status_inode = inode

    def keep_status(self) -> None:
        """Write the status again if the file is no longer the one this process wrote (another
        writer replaced it, or it was removed): readiness is read from its writer stamp, and in a
        surge roll of the lab the old agent shares the path. Once written, a stat per heartbeat."""
        if self.status_file is None or not self.status_inode:
            return              # nothing written yet: not ready until the first reconcile
        try:
            ours = self.status_file.stat().st_ino == self.status_inode
        except OSError:
            ours = False
        if not ours:
            self.write_status()

    def run(self, stop: threading.Event, heartbeat: float = 0.5) -> None:
        self.adopt()
        views: queue.Queue[PodView | BaseException] = queue.Queue()

        def feed() -> None:
            # A source that dies must end the agent, not leave it reconciling its last view for
            # ever (new pods uncaptured, label changes ignored) while it looks alive. Capture stays
            # pinned through the restart, so pods stay protected meanwhile.
            try:
                for v in self.source.views(stop):
                    views.put(v)
            except BaseException as e:  # noqa: BLE001 - handed to the agent's loop
                views.put(e)
            else:
                if not stop.is_set():
                    views.put(RuntimeError("the pod source ended"))
        threading.Thread(target=feed, name="pod-source", daemon=True).start()
        if self.repairer is not None:
            threading.Thread(target=self.repair_worker, args=(stop,), name="pod-repair", daemon=True).start()
        last: PodView | None = None
        synced = self.clock()
        while not stop.is_set():
            if self.clock() - synced >= self.ztunnel_sync:
                synced = self.clock()
                self.sync_ztunnels()
            try:
                got = views.get(timeout=heartbeat)
                while not views.empty() and not isinstance(got, BaseException):
                    got = views.get_nowait()    # only the newest view matters
            except queue.Empty:
                got = None
            if isinstance(got, BaseException):
                raise RuntimeError(f"pod source failed: {got}") from got
            view: PodView | None = got
            last = view or last
            if last is None:
                continue
            with self.lock:
                self._step(last, view, stop)

    def adopt(self) -> None:
        """Pods a previous agent enrolled are captured already (pinned links); we know their uids
        but not their refs until a view shows them (`_adopted_kept`)."""
        for uid in self.engine.enrolled():
            self.applied[uid] = None
            self.adopted.add(uid)

    def sync_ztunnels(self) -> None:
        """Forget the ztunnels whose cgroup is gone (the old node pod of a surge roll, once it is
        deleted); every other one keeps its capture exemption (agent/capture/ztunnels.py)."""
        try:
            with self.lock:
                self.engine.sync_ztunnels()
        except Exception as e:  # noqa: BLE001 - stale exemptions are harmless; retried next time
            log.warning("cannot check the node's ztunnel set: %s", e)

    def _step(self, last: PodView, view: PodView | None, stop: threading.Event) -> None:
        """One turn of the loop: (re)connect and replay, reconcile a new view, or keep alive."""
        try:
            if not self.link.connected():
                self.link.connect(time.monotonic() + 30)
                self.reconcile(last)
                self.replay()
            elif view is not None:
                self.reconcile(view)
                self.retry_handoffs()
            else:
                self.link.ping()            # notices a restarted ztunnel within a heartbeat
                self.retry_handoffs()
                self.keep_status()
                if self.capture_retry.due(self.clock()):
                    self.reconcile(last)    # pods whose capture (or its removal) failed, once due
                else:                       # (reconcile sweeps too)
                    self.recapture_replaced()   # a sandbox re-created with no change any view shows
                    self.plan_repairs()     # a failing pod's bound may pass between attempts
        except ZtunnelError as e:
            log.warning("%s; reconnecting", e)
            self.link.close()
            stop.wait(0.2)


def make_repairer(args: Any) -> Any:
    """The API client --repair-pods acts through (None when off). No credentials is a start-up
    error naming the flag: a repair that silently never happens would leave the STRICT gap open."""
    if args.repair_pods == "off":
        return None
    from agent.repair_kube import KubeRepairer
    from ambit.kube.client import make_api_client
    try:
        api = make_api_client(args.kube_api)
    except Exception as e:  # noqa: BLE001 - no in-cluster credentials and no kubeconfig
        raise SystemExit(f"agent: --repair-pods {args.repair_pods}: cannot reach the Kubernetes API: {e}") from None
    log.info("--repair-pods %s: pods uncaptured for %.0fs and %d attempts are %s (at most %d at once, then one "
             "every %.0fs)", args.repair_pods, args.repair_after, args.repair_min_attempts,
             "deleted" if args.repair_pods == "delete" else "labelled", args.repair_burst, args.repair_interval)
    return KubeRepairer(api, args.node)


def preflight() -> None:
    from ambit import check
    results = check.run_all(REQUIRED_CHECKS)  # only what capture needs: no test netns, no pip metadata
    for r in results:
        if r.name in REQUIRED_CHECKS and not r.ok:
            print(f"agent: refusing to start: `ambit check` item {r.name!r} failed: {r.detail}"
                  + (f" (hint: {r.hint})" if r.hint else ""), file=sys.stderr)
            sys.exit(3)


def install_cni(args: Any, stop: threading.Event) -> None:
    """Chain the plugin into the node's CNI configuration (after the server listens: a sandbox
    created from now on finds the agent)."""
    if args.cni_conf_dir is None:
        return
    from agent.cni import install
    entry: dict[str, Any] = {"name": "ambit-cni", "agentSocket": str(args.cni_socket), "timeoutSeconds": 30}
    if args.cni_lab_store is not None:
        entry["labStore"] = str(args.cni_lab_store)
    else:
        entry["kubernetes"] = install.kube_credentials(args.cni_conf_dir)
        threading.Thread(target=_refresh_cni_token, args=(args.cni_conf_dir, stop), daemon=True,
                         name="cni-token").start()
    conf = install.install(args.cni_conf_dir, args.cni_bin_dir, entry, args.cni_python)
    log.info("CNI plugin chained into %s, copied to %s", conf, args.cni_bin_dir)


def _refresh_cni_token(conf_dir: Path, stop: threading.Event, every: float = 60.0) -> None:
    """Keep the plugin's copy of the (rotated) service-account token current."""
    from agent.cni import install
    while not stop.wait(every):
        try:
            install.kube_credentials(conf_dir)
        except (OSError, install.InstallError) as e:
            log.warning("cannot refresh the CNI plugin's token: %s", e)


def trim_heap(stop: threading.Event, interval: float, trim: Callable[[], int] | None) -> None:
    """Hand freed heap back to the OS now, then every `interval` seconds until `stop` (a thread).

    Why: loading the eBPF programs compiles them (bcc, LLVM), which mallocs and frees tens of MB;
    glibc keeps what was freed, resident. Measured on the lab after 600 churned pods: 72 MB of
    arena, 14 MB of it in use, 58 MB free; one malloc_trim took the agent from 199 to 145 MB RSS.
    Without it the agent's RSS also crept up with pod churn (+4 to +9 KB a pod) while its Python
    objects stayed flat: pages of that free heap touched again, not a leak (docs/operations.md,
    "Memory over time"). Off the reconcile thread: a trim walks the heap for milliseconds."""
    if trim is None or interval <= 0:
        return
    trim()
    while not stop.wait(interval):
        trim()


def uninstall_cni(args: Any) -> None:
    if args.cni_conf_dir is None:
        return
    from agent.cni import install
    for conf in install.uninstall(args.cni_conf_dir, args.cni_bin_dir):
        log.info("CNI plugin removed from %s", conf)


def main(argv: list[str] | None = None) -> None:
    try:
        args = load_settings(argv)
    except ValueError as e:
        raise SystemExit(f"agent: {e}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    preflight()
    from agent.capture import CaptureEngine
    engine = CaptureEngine(args.node, args.ztunnel_cgroup, pin_base=args.pin_base, mode=args.capture)
    if args.uninstall:
        engine.load()
        engine.uninstall()
        uninstall_cni(args)
        log.info("uninstalled: every Ambit program, link and pin of node %s is gone", args.node)
        return
    # From here on a SIGTERM (even one arriving while starting) ends in the stop decision below.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.cleanup_on_delete:
        from agent.shutdown import prepare
        threading.Thread(target=prepare, name="shutdown-prepare", daemon=True).start()
    t0 = time.monotonic()
    try:
        engine.load()
    except ValueError as e:     # a flag that names no cgroup: say so, not a traceback
        raise SystemExit(f"agent: --ztunnel-cgroup: {e}") from None
    log.info("eBPF programs ready in %.2fs; adopted %d pods", time.monotonic() - t0, len(engine.enrolled()))
    from ambit.dataplane.memory import heap_trimmer
    threading.Thread(target=trim_heap, args=(stop, args.memory_trim_interval, heap_trimmer()), daemon=True,
                     name="malloc-trim").start()
    source: PodSource
    if args.controller:
        from agent.streamsource import StreamPodSource
        source = StreamPodSource(args.controller, args.node, args.config_cache, paths=args.pod_paths,
                                 token_file=args.node_token_file, trust=args.controller_tls.trust())
    elif args.store is not None:
        source = LabPodSource(args.store)
    else:
        from agent.podsource import KubePodSource
        source = KubePodSource(args.node)
    metrics = AgentMetrics()
    agent = Agent(args.node, source, engine, ZtunnelLink(args.zds_socket), args.node_ip,
                  args.status_file, args.drain, repair=args.repair_settings(),
                  repairer=make_repairer(args), metrics=metrics, dns_capture=args.dns_capture)
    if args.metrics_port:   # the metrics and /healthz/ready, the kubelet's probe (agent/health.py)
        from agent import health
        health.serve(metrics, health.readiness(lambda: agent.reported, stop), args.metrics_port)
    if args.cni_socket is not None:
        from agent.cni.server import CniServer
        CniServer(args.cni_socket, agent).start(stop)
        install_cni(args, stop)
    try:
        agent.run(stop)
    except RuntimeError as e:   # the pod source died: exit, to be restarted (capture stays pinned)
        log.error("%s: exiting, capture kept in place", e)
        raise SystemExit(1) from None
    # A normal stop keeps capture in place (pods stay protected while the agent restarts);
    # `--uninstall` removes it, and so does a stop once the agent's DaemonSet is deleted
    # (--cleanup-on-delete; agent/shutdown.py).
    if args.cleanup_on_delete:
        from agent.shutdown import should_clean_up
        clean, why = should_clean_up(args.cleanup_on_delete, args.kube_api)
        log.info("stopping: %s", why)
        if clean:
            engine.uninstall()
            uninstall_cni(args)
            log.info("uninstalled: every Ambit program, link and pin of node %s is gone", args.node)


if __name__ == "__main__":
    main()
