"""CaptureEngine: the kernel side of the node agent.

It compiles and loads the capture programs, attaches them per pod through pinned bpf_links, keeps
the per-pod maps in step, and re-adopts what an earlier agent process left pinned:

* load()      compile (bcc), load, add this agent's ztunnel to the node's ztunnel set (ambit_origdst
              on each of their cgroups: agent/capture/ztunnels.py), and swap every pinned link to
              the fresh programs with bpf_link_update (no capture gap, no duplicates).
* enrol()     idempotent; writes the pod's map entries, the netns delivery rule, and the links.
* unenrol()   removes all of that for one pod. Works for pods enrolled by an earlier process: what
              it needs is recorded in the pinned ambit_meta map.
* uninstall() removes every link, program, map and pin of the node.

All methods are blocking (netlink, bcc, iptables); call them from a worker thread, not from an
asyncio loop. A lock serialises them, so concurrent CNI and watch calls are safe, and so are two
agents of one node (a surge roll): it is also an flock on the node's pin directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.capture import iptables, libbpf, maps, podnet, programs, ztunnels
from agent.capture.constants import DEFAULT_PIN_BASE
from agent.capture.pins import (
    PinLayout,
    check_name,
    ensure_bpffs,
    remove_link_pin,
    remove_tree,
    rmdir_if_empty,
    update_link,
)
from ambit.cgroups import find_cgroup2_mount
from ambit.netns import entered, netns_cookie

log = logging.getLogger(__name__)

MODES = ("ebpf", "iptables")
TC_ATTACH = ("auto", "tcx", "clsact")


@dataclass
class PodCapture:
    """Everything the kernel side needs about one pod."""

    uid: str
    netns_path: str
    cgroup_path: str
    pod_ip: str
    node_ip: str
    exclude_outbound_ports: list[int] = field(default_factory=list)
    exclude_outbound_cidrs: list[str] = field(default_factory=list)
    exclude_inbound_ports: list[int] = field(default_factory=list)
    # The ports the pod's kubelet probes use: the only ports where packets from the node IP pass
    # uncaptured (and only when the host-side node-IP guard is attached).
    probe_ports: list[int] = field(default_factory=list)
    # DNS capture (Istio's dnsCapture): queries to port 53 of any resolver outside the pod go to
    # ztunnel's DNS proxy on 127.0.0.1:15053 in the pod netns. The agent decides it per pod (the
    # node default, or the pod's ambient.istio.io/dns-capture annotation: agent/capture/dns.py).
    dns_capture: bool = True
    # Ingress mode (Istio's ambient.istio.io/bypass-inbound-capture: ambit.podannotations): plaintext
    # inbound goes to the app, not to ztunnel; outbound, DNS and inbound HBONE are captured as before.
    bypass_inbound: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the pod, the field and the reason."""
        def bad(fld: str, why: str) -> ValueError:
            return ValueError(f"pod {self.uid!r}: {fld}: {why}")

        try:
            check_name("pod uid", self.uid)
        except ValueError as e:
            raise bad("uid", str(e)) from None
        for fld in ("pod_ip", "node_ip"):
            try:
                ipaddress.IPv4Address(getattr(self, fld))
            except ValueError:
                raise bad(fld, f"{getattr(self, fld)!r} is not an IPv4 address") from None
        for fld in ("dns_capture", "bypass_inbound"):
            if not isinstance(getattr(self, fld), bool):
                raise bad(fld, f"{getattr(self, fld)!r} is not a boolean")
        if not Path(self.netns_path).exists():
            raise bad("netns_path", f"{self.netns_path} does not exist")
        if not Path(self.cgroup_path).is_dir():
            raise bad("cgroup_path", f"{self.cgroup_path} is not a cgroup directory")
        for fld in ("exclude_outbound_ports", "exclude_inbound_ports", "probe_ports"):
            for p in getattr(self, fld):
                if not isinstance(p, int) or not 1 <= p <= 65535:
                    raise bad(fld, f"{p!r} is not a port in 1-65535")
        for c in self.exclude_outbound_cidrs:
            try:
                ipaddress.IPv4Network(c, strict=False)
            except ValueError:
                raise bad("exclude_outbound_cidrs", f"{c!r} is not an IPv4 CIDR") from None


class CaptureEngine:
    def __init__(self, node: str, ztunnel_cgroup: Path, pin_base: Path = DEFAULT_PIN_BASE,
                 mode: str = "ebpf", tc_attach: str = "auto", src_dir: Path | None = None,
                 node_netns: str | Path | None = None) -> None:
        """`node_netns`: the netns holding the host side of the pods' veths (where the node-IP guard
        attaches); None means the agent's own, as on a real node and in `ambit lab`."""
        if mode not in MODES:
            raise ValueError(f"capture mode {mode!r}: expected one of {', '.join(MODES)}")
        if tc_attach not in TC_ATTACH:
            raise ValueError(f"tc_attach {tc_attach!r}: expected one of {', '.join(TC_ATTACH)}")
        self.node = check_name("node name", node)
        self.ztunnel_cgroup = Path(ztunnel_cgroup)
        self.pin_base = Path(pin_base)
        self.layout = PinLayout(self.pin_base / node)
        self.mode = mode
        self.src_dir = src_dir
        self.node_netns = node_netns
        self._lock = ztunnels.NodeLock(self.layout.root)
        self._module = None
        self._prog_fds: dict[str, int] = {}      # pin name -> fd
        self._maps: dict[str, libbpf.RawMap] = {}
        self._tcx_ok: bool | None = None if tc_attach == "auto" else tc_attach == "tcx"
        self._held: dict[str, _HeldNetns] = {}   # uid -> its captured netns, open (`replaced_sandboxes`)

    # ---- loading and adoption ---------------------------------------------------------------

    def load(self) -> None:
        if not self.ztunnel_cgroup.is_dir():
            raise ValueError(f"ztunnel cgroup {self.ztunnel_cgroup} is not a cgroup directory")
        ensure_bpffs(self.pin_base)
        for d in (self.layout.maps, self.layout.pods, self.layout.ztunnel):
            d.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._module is not None:
                return
            self._module = programs.compile_module(self.layout.maps, self.src_dir)
            for name, spec in maps.MAPS.items():
                fd = self._module.get_table(name.encode()).map_fd
                vsize = spec.value_size * maps.possible_cpus() if spec.percpu else spec.value_size
                self._maps[name] = libbpf.RawMap(fd, spec.key_size, vsize, name)
            ztunnels.register(self._maps["ambit_ztunnels"], self.ztunnel_cgroup)
            if self.mode == "ebpf":
                for p in programs.PROGRAMS:
                    self._prog_fds[p.pin] = programs.load(self._module, p)
            self._sync_ztunnels()
            if self.mode == "ebpf":
                self._adopt_pod_links()
                self._adopt_clsact_filters()

    def _require_loaded(self) -> None:
        if self._module is None:
            raise RuntimeError(f"capture engine for node {self.node}: call load() first")

    def _sync_ztunnels(self) -> list[str]:
        fd = self._prog_fds.get(programs.ORIGDST_PROGRAM.pin) if self.mode == "ebpf" else None
        return ztunnels.sync(self._maps["ambit_ztunnels"], self.layout, fd,
                             lambda cg, pin: self._create_cgroup_link(programs.ORIGDST_PROGRAM, cg, pin))

    def sync_ztunnels(self) -> list[str]:
        """Drop the ztunnels whose cgroup is gone (the old node pod of a surge roll, once deleted)
        and make sure every other one keeps its exemption; returns their cgroups. The agent calls
        this every few seconds."""
        with self._lock:
            self._require_loaded()
            return self._sync_ztunnels()

    def _adopt_pod_links(self) -> None:
        """Swap every pinned pod link to the programs this process just loaded."""
        for uid in self.layout.pod_uids():
            for pin in sorted(self.layout.pod(uid).iterdir()):
                prog = programs.BY_PIN.get(pin.name)
                if prog is None or prog.scope == programs.SCOPE_ZTUNNEL:
                    log.warning("removing unknown capture link %s", pin)
                    remove_link_pin(pin)
                    continue
                self._update_link(pin, prog)

    def _adopt_clsact_filters(self) -> None:
        """Pods attached through the clsact fallback hold the old TC program in their filter:
        replace it (tc's replace is atomic too)."""
        tc = programs.TC_PROGRAM
        for k in self._maps["ambit_meta"].keys():
            raw = self._maps["ambit_meta"].get(k)
            if raw is None:
                continue
            meta = maps.Meta.unpack(k, raw)
            if meta.mode == maps.MODE_EBPF and meta.tc_mode == maps.TC_CLSACT and _same_netns(meta):
                podnet.clsact_attach(meta.netns_path, self._prog_fds[tc.pin], tc.func)

    def _update_link(self, pin: Path, prog: programs.Program) -> bool:
        """Point a pinned link at our program; a defunct link is removed. Whether it is live."""
        return update_link(pin, self._prog_fds[prog.pin])

    def _create_cgroup_link(self, prog: programs.Program, cgroup: Path, pin: Path) -> None:
        cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = libbpf.link_create(self._prog_fds[prog.pin], cg, prog.attach_type, f"{prog.func} on {cgroup}")
        finally:
            os.close(cg)
        try:
            libbpf.obj_pin(fd, pin)
        finally:
            os.close(fd)   # the pin keeps the link; closing our fd leaves the pin as the only owner

    # ---- enrolment ----------------------------------------------------------------------------

    def enrol(self, pod: PodCapture) -> None:
        """Capture a pod's traffic. Idempotent: enrolling again refreshes its config."""
        pod.validate()
        with self._lock:
            self._require_loaded()
            cookie = netns_cookie(pod.netns_path)
            old = self._meta(pod.uid)
            if old and (old.netns != cookie or old.mode != self._mode_code()):
                # Same pod uid, new sandbox (netns) or other capture mode: start clean.
                self._unenrol_locked(pod.uid)
            fresh = self._meta(pod.uid) is None
            self._release(pod.uid)      # the next sweep holds the netns captured now
            try:
                self._enrol_locked(pod, cookie)
            except BaseException:
                if fresh:   # never leave a half-captured pod behind (e.g. outbound but not inbound)
                    with contextlib.suppress(Exception):
                        self._unenrol_locked(pod.uid)
                raise

    def _enrol_locked(self, pod: PodCapture, cookie: int) -> None:
        tc_mode = maps.TC_NONE
        if self.mode == "ebpf":
            tc_mode = maps.TC_CLSACT if self._tcx_ok is False else maps.TC_TCX
            old = self._meta(pod.uid)
            if old is not None and old.tc_mode == maps.TC_CLSACT:
                tc_mode = maps.TC_CLSACT   # keep an existing fallback attachment where it is
        meta = maps.Meta(uid=pod.uid, netns=cookie, pod_ip=pod.pod_ip, node_ip=pod.node_ip,
                         mode=self._mode_code(), tc_mode=tc_mode, netns_path=str(pod.netns_path),
                         cgroup_path=str(pod.cgroup_path))
        self._maps["ambit_meta"].put(meta.key(), meta.pack())
        self._write_pod_maps(pod, cookie)
        podnet.setup_delivery(pod.netns_path)
        podnet.set_ipv6(pod.netns_path, enabled=False)
        if self.mode == "ebpf":
            self._attach_pod(pod, tc_mode)
            if self._attach_host_guard(pod):
                self._maps["ambit_pods"].put(maps.U64.pack(cookie), maps.pod_value(
                    pod.pod_ip, pod.node_ip, _ebpf_flags(pod) | maps.POD_NODE_GUARD))
        else:
            cg2 = find_cgroup2_mount()
            iptables.apply(pod.netns_path, iptables.IptablesPlan(
                pod_ip=pod.pod_ip, node_ip=pod.node_ip,
                ztunnel_cgroups=tuple("/" + str(Path(p).relative_to(cg2))
                                      for p in ztunnels.live_paths(self._maps["ambit_ztunnels"])),
                exclude_outbound_ports=tuple(pod.exclude_outbound_ports),
                exclude_outbound_cidrs=tuple(pod.exclude_outbound_cidrs),
                exclude_inbound_ports=tuple(pod.exclude_inbound_ports),
                probe_ports=tuple(pod.probe_ports), dns_capture=pod.dns_capture,
                bypass_inbound=pod.bypass_inbound))

    def _mode_code(self) -> int:
        return maps.MODE_EBPF if self.mode == "ebpf" else maps.MODE_IPTABLES

    def _write_pod_maps(self, pod: PodCapture, cookie: int) -> None:
        ebpf = self.mode == "ebpf"
        flags = _ebpf_flags(pod) if ebpf else 0
        m = self._maps
        # Exclusions first, so the programs never see the pod enabled without them.
        want_ports = {maps.xport_key(cookie, p, maps.DIR_OUT) for p in pod.exclude_outbound_ports}
        want_ports |= {maps.xport_key(cookie, p, maps.DIR_IN) for p in pod.exclude_inbound_ports}
        want_ports |= {maps.xport_key(cookie, p, maps.DIR_PROBE) for p in pod.probe_ports}
        want_cidrs = {maps.xcidr_key(cookie, c) for c in pod.exclude_outbound_cidrs}
        for k in want_ports:
            m["ambit_xports"].put(k, b"\x01")
        for k in want_cidrs:
            m["ambit_xcidr"].put(k, b"\x01")
        for k in m["ambit_xports"].keys():
            if maps.XPORT_KEY.unpack(k)[0] == cookie and k not in want_ports:
                m["ambit_xports"].delete(k)
        for k in m["ambit_xcidr"].keys():
            if maps.xcidr_netns(k) == cookie and k not in want_cidrs:
                m["ambit_xcidr"].delete(k)
        # The node guard flag is set by _enrol_locked once the guard is attached; a refresh keeps
        # it if the pod had it (the guard link stays in place), so probes never flap.
        old = m["ambit_pods"].get(maps.U64.pack(cookie))
        if ebpf and old is not None and maps.POD.unpack(old)[2] & maps.POD_NODE_GUARD:
            flags |= maps.POD_NODE_GUARD
        # A pod IP can move to a new pod: drop any other mapping this netns still had.
        for k in m["ambit_pod_ips"].keys():
            v = m["ambit_pod_ips"].get(k)
            if v is not None and maps.U64.unpack(v)[0] == cookie and k != maps.ip4(pod.pod_ip):
                m["ambit_pod_ips"].delete(k)
        m["ambit_pod_ips"].put(maps.ip4(pod.pod_ip), maps.U64.pack(cookie))
        m["ambit_pods"].put(maps.U64.pack(cookie), maps.pod_value(pod.pod_ip, pod.node_ip, flags))

    def _attach_pod(self, pod: PodCapture, tc_mode: int) -> None:
        pin_dir = self.layout.pod(pod.uid)
        pin_dir.mkdir(parents=True, exist_ok=True)
        for prog in programs.POD_CGROUP_PROGRAMS:
            pin = pin_dir / prog.pin
            if pin.exists() and self._update_link(pin, prog):
                continue
            self._create_cgroup_link(prog, Path(pod.cgroup_path), pin)
        tc = programs.TC_PROGRAM
        pin = pin_dir / tc.pin
        if tc_mode == maps.TC_TCX:
            if pin.exists() and self._update_link(pin, tc):
                return
            if self._create_tcx_link(pod, pin):
                return
            # tcx unsupported here: record the fallback and use clsact.
            meta = self._meta(pod.uid)
            if meta is not None:
                self._maps["ambit_meta"].put(meta.key(), dataclasses.replace(meta, tc_mode=maps.TC_CLSACT).pack())
        podnet.clsact_attach(pod.netns_path, self._prog_fds[tc.pin], tc.func)

    def _attach_host_guard(self, pod: PodCapture) -> bool:
        """ambit_tc_host on the host-side peer of the pod's veth (tcx egress, in our netns).

        Returns whether the guard is in place. Without it a packet from the node IP cannot be told
        from a spoofed one, so the pod gets no node-IP exemption at all (probes are captured like
        any client); that is logged, never silently assumed."""
        with entered(self.node_netns) if self.node_netns else contextlib.nullcontext():
            return self._attach_host_guard_here(pod)

    def _attach_host_guard_here(self, pod: PodCapture) -> bool:
        prog = programs.HOST_GUARD_PROGRAM
        pin = self.layout.pod(pod.uid) / prog.pin
        peer = podnet.host_peer_ifindex(pod.netns_path)
        if pin.exists():
            fd = libbpf.obj_get(pin)
            try:
                same = libbpf.link_info(fd).ifindex == peer
            except libbpf.LibbpfError:
                same = False
            finally:
                os.close(fd)
            if same and self._update_link(pin, prog):
                return True
            remove_link_pin(pin)
        if peer is None:
            log.warning("pod %s: the host side of its eth0 is not a veth in the agent's netns: no node-IP guard, "
                        "so packets from the node IP (kubelet probes) are captured like any other", pod.uid)
            return False
        if self._tcx_ok is False:
            log.warning("pod %s: no tcx links on this kernel: no node-IP guard, so kubelet probes are captured",
                        pod.uid)
            return False
        try:
            fd = libbpf.link_create(self._prog_fds[prog.pin], peer, prog.attach_type,
                                    f"{prog.func} on the host veth of pod {pod.uid}")
        except libbpf.LibbpfError as e:
            log.warning("pod %s: cannot attach the node-IP guard (%s): kubelet probes are captured", pod.uid, e)
            return False
        try:
            libbpf.obj_pin(fd, pin)
        finally:
            os.close(fd)
        return True

    def _create_tcx_link(self, pod: PodCapture, pin: Path) -> bool:
        """tcx link on the pod's eth0 (kernel 6.6+). False when the kernel has no tcx."""
        tc = programs.TC_PROGRAM
        with entered(pod.netns_path):
            ifindex = podnet.eth0_ifindex_here(str(pod.netns_path))
            try:
                fd = libbpf.link_create(self._prog_fds[tc.pin], ifindex, tc.attach_type,
                                        f"{tc.func} on eth0 of pod {pod.uid}")
            except libbpf.LibbpfError as e:
                if self._tcx_ok is None and e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    log.warning("tcx links unavailable (%s): using clsact filters", e)
                    self._tcx_ok = False
                    return False
                raise
        self._tcx_ok = True
        try:
            libbpf.obj_pin(fd, pin)
        finally:
            os.close(fd)
        return True

    # ---- removal ------------------------------------------------------------------------------

    def unenrol(self, uid: str) -> None:
        """Stop capturing a pod; removes its links, netns rules and map entries. Idempotent."""
        check_name("pod uid", uid)
        with self._lock:
            self._require_loaded()
            self._unenrol_locked(uid)

    def _unenrol_locked(self, uid: str) -> None:
        self._release(uid)
        meta = self._meta(uid)
        pin_dir = self.layout.pod(uid)
        if pin_dir.exists():
            remove_tree(pin_dir)
        if meta is not None:
            cleanup_pod_netns(meta)
            delete_pod_entries(self._maps, meta)

    def _meta(self, uid: str) -> maps.Meta | None:
        raw = self._maps["ambit_meta"].get(maps.meta_key(uid))
        return maps.Meta.unpack(maps.meta_key(uid), raw) if raw else None

    def sandbox_alive(self, uid: str) -> bool:
        """Whether the netns this pod was captured in still exists (its sandbox has not gone)."""
        with self._lock:
            self._require_loaded()
            meta = self._meta(uid)
            return meta is not None and _same_netns(meta)

    def replaced_sandboxes(self, uids: Iterable[str]) -> set[str]:
        """The pods among `uids` whose netns path now names another netns than the one they were
        captured in: their sandbox was re-created there (same uid, path and IP: nothing else tells).

        The agent asks every heartbeat for every captured pod, so this is one lock for the sweep
        and, per pod, one stat(2) in the steady state. What makes a stat enough: the netns each pod
        was captured in is held open here (`_HeldNetns`), so it cannot be freed and its inode
        number cannot be reused; the path has the same (st_dev, st_ino) exactly when it names the
        same netns. Only a changed or new identity costs a netns cookie read (which the kernel
        never reuses), checked against the pod's current ambit_meta entry (another agent of the
        node may have captured the new netns already). A netns whose path is gone is let go."""
        uids = set(uids)
        out: set[str] = set()
        with self._lock:
            self._require_loaded()
            for uid in self._held.keys() - uids:
                self._release(uid)
            own: list[int] = []
            for uid in sorted(uids):
                held = self._held.get(uid)
                try:
                    if held is not None and held.same(os.stat(held.path)):
                        continue
                    self._release(uid)
                    if self._replaced_locked(uid, own):
                        out.add(uid)
                except OSError as e:    # gone, not a netns, or its meta unreadable: this pod only
                    self._release(uid)
                    if e.errno not in (errno.ENOENT, errno.EINVAL):    # gone, or not a netns
                        log.warning("pod %s: cannot check its netns: %s", uid, e)
        return out

    def _replaced_locked(self, uid: str, own: list[int]) -> bool:
        """The slow path of `replaced_sandboxes` for one pod: compare cookies, and hold the netns
        when it is the captured one. `own` caches the node's own netns cookie for the sweep."""
        meta = self._meta(uid)
        if meta is None or not meta.netns_path or meta.netns_path.startswith("/proc/"):
            # A pid's netns path that names another netns is a recycled pid, not a sandbox
            # re-created (that has a new pid): the next view finds the pod's new path.
            return False
        fresh = _HeldNetns.open(meta.netns_path)
        if fresh.cookie == meta.netns:
            self._held[uid] = fresh
            return False
        fresh.close()
        if not own:
            own.append(netns_cookie())
        return fresh.cookie != own[0]           # never the node's own

    def _release(self, uid: str) -> None:
        held = self._held.pop(uid, None)
        if held is not None:
            held.close()

    def enrolled(self) -> set[str]:
        """Pods captured on this node, including those enrolled by an earlier agent process."""
        with self._lock:
            self._require_loaded()
            uids = {k.rstrip(b"\0").decode() for k in self._maps["ambit_meta"].keys()}
            return uids | set(self.layout.pod_uids())

    def uninstall(self) -> None:
        """Remove everything of this node: links, programs, maps, pins, and pod netns rules."""
        with self._lock:
            if self._module is None:
                purge(self.layout.root)
                return
            for uid in sorted(self.enrolled()):
                self._unenrol_locked(uid)
            self._close()
            purge(self.layout.root)

    def close(self) -> None:
        """Drop this process's references (programs stay alive only through their pinned links)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        for uid in list(self._held):
            self._release(uid)
        if self._module is not None:
            self._module.cleanup()
            self._module = None
        self._prog_fds.clear()
        self._maps.clear()

    # ---- introspection ------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """The ambit_stats counters summed over CPUs (node-wide, all pods)."""
        with self._lock:
            self._require_loaded()
            out = {}
            for i, name in enumerate(maps.stat_names()):
                raw = self._maps["ambit_stats"].get(i.to_bytes(4, sys.byteorder))
                out[name] = maps.sum_percpu_u64(raw) if raw else 0
            return out

    def program_ids(self) -> dict[str, int]:
        """Kernel ids of this process's loaded programs, by pin name."""
        with self._lock:
            return {name: libbpf.prog_id(fd) for name, fd in self._prog_fds.items()}

    def map_ids(self) -> dict[str, int]:
        with self._lock:
            return {name: libbpf.map_id(m.fd) for name, m in self._maps.items()}

    def original_dst_entries(self) -> int:
        """How many (netns, port) original-destination entries are live (for leak checks)."""
        with self._lock:
            return len(self._maps["ambit_port_dst"].keys())


@dataclass
class _HeldNetns:
    """A pod's captured netns, held open: while it is, the netns lives, so its inode number is not
    reused, and a stat of the pod's path tells whether the path still names it. Holding it extends
    nothing in practice: it is let go when the path is gone or names another netns (then the sweep
    that notices releases it) and on unenrol, and ztunnel's listeners hold a served pod's netns
    anyway."""

    path: str
    fd: int
    dev: int
    ino: int
    cookie: int

    @classmethod
    def open(cls, path: str) -> _HeldNetns:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            return cls(path, fd, st.st_dev, st.st_ino, netns_cookie(fd))
        except BaseException:
            os.close(fd)
            raise

    def same(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) == (self.dev, self.ino)

    def close(self) -> None:
        os.close(self.fd)


def _ebpf_flags(pod: PodCapture) -> int:
    """The pod's ambit_pods flags in eBPF mode, before the node guard (set once it is attached).
    An ingress-mode pod keeps POD_INBOUND: it is what guards ztunnel's ports (the bind refusal, the
    squatter check on 15006/15008); POD_INBOUND_BYPASS lets the rest of its inbound pass."""
    return (maps.POD_OUTBOUND | maps.POD_INBOUND | (maps.POD_DNS if pod.dns_capture else 0)
            | (maps.POD_INBOUND_BYPASS if pod.bypass_inbound else 0))


# ---- shared by unenrol and purge (no compiled module needed) ----------------------------------

def _same_netns(meta: maps.Meta) -> bool:
    """Touch a pod netns only if its path still names the netns we enrolled (paths like
    /proc/<pid>/ns/net can be reused by another pod)."""
    if not meta.netns_path or not Path(meta.netns_path).exists():
        return False
    try:
        return netns_cookie(meta.netns_path) == meta.netns
    except OSError:
        return False


@contextlib.contextmanager
def _held_netns(meta: maps.Meta) -> Iterator[str | None]:
    """The pod's netns held open for the body, as a path naming the held netns (/proc/<pid>/fd/N,
    good for setns and nsenter alike); None if it is gone, or its path now names another netns.

    Why held: a sandbox may be deleted at any moment, also between checking its path and using it
    (the agent then died on the error). A held netns cannot vanish; one already gone took its
    rules with it, so there is nothing to clean up in it."""
    try:
        held = _HeldNetns.open(meta.netns_path) if meta.netns_path else None
    except OSError:         # gone, or not a netns (the path was reused)
        held = None
    try:
        yield f"/proc/{os.getpid()}/fd/{held.fd}" if held is not None and held.cookie == meta.netns else None
    finally:
        if held is not None:
            held.close()


def cleanup_pod_netns(meta: maps.Meta) -> None:
    """Undo enrolment's changes inside the pod's netns, if it still exists (see `_held_netns`)."""
    with _held_netns(meta) as ns:
        if ns is None:
            return
        with contextlib.suppress(Exception):
            if meta.tc_mode == maps.TC_CLSACT:
                podnet.clsact_detach(ns)
        if meta.mode == maps.MODE_IPTABLES:
            iptables.remove(ns)
        podnet.teardown_delivery(ns)
        with contextlib.suppress(Exception):
            podnet.set_ipv6(ns, enabled=True)


def delete_pod_entries(m: dict[str, libbpf.RawMap], meta: maps.Meta) -> None:
    cookie = meta.netns
    m["ambit_pods"].delete(maps.U64.pack(cookie))
    ip_key = maps.ip4(meta.pod_ip)
    v = m["ambit_pod_ips"].get(ip_key)
    if v is not None and maps.U64.unpack(v)[0] == cookie:
        m["ambit_pod_ips"].delete(ip_key)
    for k in m["ambit_xports"].keys():
        if maps.XPORT_KEY.unpack(k)[0] == cookie:
            m["ambit_xports"].delete(k)
    for k in m["ambit_xcidr"].keys():
        if maps.xcidr_netns(k) == cookie:
            m["ambit_xcidr"].delete(k)
    for k in m["ambit_port_dst"].keys():
        if maps.PORT_KEY.unpack(k)[0] == cookie:
            m["ambit_port_dst"].delete(k)
    m["ambit_meta"].delete(meta.key())


def purge(node_pin_root: Path) -> None:
    """Remove every trace of one node's capture, without compiling anything.

    For `ambit lab down` and crash recovery: works after the agent was SIGKILLed. Pod netns
    rules are removed for pods whose netns still exists (from the ambit_meta map), then all link
    pins are detached and removed, then the map pins. Programs die with their last link.
    """
    root = Path(node_pin_root)
    if not root.exists():
        return
    meta_pin = PinLayout(root).maps / "ambit_meta"
    if meta_pin.exists():
        spec = maps.MAPS["ambit_meta"]
        try:
            with libbpf.RawMap.open_pinned(meta_pin, spec.key_size, spec.value_size) as mm:
                for k in mm.keys():
                    raw = mm.get(k)
                    if raw is None:
                        continue
                    with contextlib.suppress(Exception):
                        cleanup_pod_netns(maps.Meta.unpack(k, raw))
        except libbpf.LibbpfError as e:
            log.warning("purge %s: cannot read %s: %s", root, meta_pin, e)
    remove_tree(root)
    rmdir_if_empty(root.parent)
