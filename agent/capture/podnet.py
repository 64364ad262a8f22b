"""What the capture layer changes inside a pod's netns, besides BPF programs.

Source-preserving delivery: ztunnel connects to the app from the *client's* IP (IP_TRANSPARENT,
SO_MARK=AMBIT_MARK). For the app's replies to come back to ztunnel over lo instead of leaving by
eth0 towards the real client, the pod netns needs:

    net.ipv4.tcp_fwmark_accept = 1                   accepted sockets inherit the SYN's mark
    net.ipv4.fwmark_reflect = 1                      so do the kernel's own replies (a RST from a
                                                     closed port, ICMP)
    ip rule add fwmark 0x539/0xfff lookup 133        marked traffic uses table 133 ...
    ip route add local 0.0.0.0/0 dev lo table 133    ... where every address is local

Without fwmark_reflect, the RST for ztunnel's SYN to a port nothing listens on left by eth0 towards
the real client: ztunnel's connect waited for its timeout (10 s) and the client hung meanwhile,
instead of being refused at once.

Every function runs its netlink work from a thread that has setns()'d into the pod
(`ambit.netns.entered`), so sockets are created in the pod netns and the agent's own stays intact.
pyroute2's synchronous API runs its own event loop: call these from a worker thread, never from
inside a running asyncio loop.
"""

from __future__ import annotations

import contextlib
import errno
import json
import subprocess
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.capture.constants import AMBIT_MARK, AMBIT_MARK_MASK, AMBIT_ROUTE_TABLE, AMBIT_RULE_PRIORITY
from ambit.netns import entered

POD_IFNAME = "eth0"
CLSACT_PARENT_INGRESS = "ffff:fff2"
CLSACT_PRIO = 0xA5B    # our filter's priority on clsact ingress: removal touches only ours
_RT_SCOPE_HOST = 254
_RTPROT_STATIC = 4
_FWMARK_SYSCTL = "/proc/sys/net/ipv4/tcp_fwmark_accept"
_REFLECT_SYSCTL = "/proc/sys/net/ipv4/fwmark_reflect"
_MARK_SYSCTLS = (_FWMARK_SYSCTL, _REFLECT_SYSCTL)
# When one of a SO_REUSEPORT group's listeners closes, move its queued connections (and half-open
# ones) to another listener of the group instead of resetting them: the old ztunnel of a surge
# roll closes its listeners while the new one's stay (Linux 5.14; absent before, then skipped).
_MIGRATE_SYSCTL = "/proc/sys/net/ipv4/tcp_migrate_req"


class PodNetError(RuntimeError):
    pass


def _ifindex(ipr: IPRoute, ifname: str, netns_path: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise PodNetError(f"pod netns {netns_path}: no interface named {ifname!r}")
    return found[0]


def eth0_ifindex_here(netns_name: str) -> int:
    """eth0's ifindex in the calling thread's current netns (`netns_name` is for messages)."""
    with IPRoute() as ipr:
        return _ifindex(ipr, POD_IFNAME, netns_name)


def host_peer_ifindex(netns_path: str | Path) -> int | None:
    """The ifindex, in the *calling* netns, of the host-side peer of the pod's eth0; None when the
    pod's eth0 is not a veth whose peer lives here (another CNI layout): then the node-IP guard
    cannot be attached and the pod gets no node-IP exemption."""
    with entered(netns_path), IPRoute() as ipr:
        idx = _ifindex(ipr, POD_IFNAME, str(netns_path))
        link = ipr.get_links(idx)[0]
        peer = link.get_attr("IFLA_LINK")
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    if kind != "veth" or not peer:
        return None
    with IPRoute() as ipr:
        try:
            here = ipr.get_links(peer)[0]
        except NetlinkError:
            return None
        info = here.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "veth" or here.get_attr("IFLA_LINK") != idx:
            return None
    return peer


_V6_SYSCTLS = ("/proc/sys/net/ipv6/conf/default/disable_ipv6", f"/proc/sys/net/ipv6/conf/{POD_IFNAME}/disable_ipv6")


def set_ipv6(netns_path: str | Path, enabled: bool) -> None:
    """Enrolled pods are IPv4-only: IPv6 off on eth0 (and on interfaces created later), so the pod
    has no IPv6 address to be reached at or to send from. lo keeps ::1 (it never leaves the pod).
    A pod without CAP_NET_ADMIN cannot turn it back on; ambit_tc_in drops IPv6 regardless."""
    with entered(netns_path):
        for path in _V6_SYSCTLS:
            try:
                Path(path).write_text("0\n" if enabled else "1\n")
            except FileNotFoundError:
                if not enabled and Path("/proc/sys/net/ipv6").exists():
                    raise PodNetError(f"pod netns {netns_path}: cannot disable IPv6 ({path} is missing)") from None


def _our_rules(ipr: IPRoute) -> list:
    return [r for r in ipr.get_rules(family=2)
            if r.get("fwmark") == AMBIT_MARK and r.get("table") == AMBIT_ROUTE_TABLE]


def setup_delivery(netns_path: str | Path) -> None:
    """Idempotently install the sysctl, rule and route for source-preserving delivery."""
    with entered(netns_path):
        # /proc/sys/net follows the calling thread's netns.
        for path in _MARK_SYSCTLS:
            Path(path).write_text("1\n")
        with contextlib.suppress(FileNotFoundError):
            Path(_MIGRATE_SYSCTL).write_text("1\n")
        with IPRoute() as ipr:
            if not _our_rules(ipr):
                ipr.rule("add", family=2, fwmark=AMBIT_MARK, fwmask=AMBIT_MARK_MASK,
                         table=AMBIT_ROUTE_TABLE, priority=AMBIT_RULE_PRIORITY)
            lo = _ifindex(ipr, "lo", str(netns_path))
            ipr.route("replace", family=2, dst="0.0.0.0", dst_len=0, type="local", scope=_RT_SCOPE_HOST,
                      proto=_RTPROT_STATIC, oif=lo, table=AMBIT_ROUTE_TABLE)


def teardown_delivery(netns_path: str | Path) -> None:
    """Remove what setup_delivery added (a missing piece is fine: teardown is idempotent)."""
    with entered(netns_path):
        for path in (*_MARK_SYSCTLS, _MIGRATE_SYSCTL):
            with contextlib.suppress(OSError):
                Path(path).write_text("0\n")
        with IPRoute() as ipr:
            for _ in _our_rules(ipr):
                with contextlib.suppress(NetlinkError):
                    ipr.rule("del", family=2, fwmark=AMBIT_MARK, fwmask=AMBIT_MARK_MASK,
                             table=AMBIT_ROUTE_TABLE, priority=AMBIT_RULE_PRIORITY)
            lo = _ifindex(ipr, "lo", str(netns_path))
            try:   # the kernel matches scope and device too: name them as setup_delivery did
                ipr.route("del", family=2, dst="0.0.0.0", dst_len=0, type="local", scope=_RT_SCOPE_HOST,
                          oif=lo, table=AMBIT_ROUTE_TABLE)
            except NetlinkError as e:
                if e.code not in (errno.ESRCH, errno.ENOENT):
                    raise


def delivery_state(netns_path: str | Path) -> tuple[bool, bool, bool]:
    """(fwmark_accept and fwmark_reflect on, rule present, route present): for the lab tests (tests/lab/test_capture*.py)."""
    with entered(netns_path):
        sysctl = all(Path(p).read_text().strip() == "1" for p in _MARK_SYSCTLS)
        with IPRoute() as ipr:
            rule = bool(_our_rules(ipr))
            route = bool(ipr.get_routes(family=2, table=AMBIT_ROUTE_TABLE))
    return sysctl, rule, route


# ---- clsact fallback for kernels without tcx (< 6.6) ----------------------------------------

def clsact_attach(netns_path: str | Path, prog_fd: int, name: str) -> None:
    """Attach (or atomically replace) our direct-action filter on eth0's clsact ingress."""
    with entered(netns_path), IPRoute() as ipr:
        idx = _ifindex(ipr, POD_IFNAME, str(netns_path))
        try:
            ipr.tc("add", "clsact", idx)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        ipr.tc("replace-filter", "bpf", idx, ":1", fd=prog_fd, name=name, parent=CLSACT_PARENT_INGRESS,
               prio=CLSACT_PRIO, classid=1, direct_action=True)


def clsact_detach(netns_path: str | Path) -> None:
    """Remove our filter; remove the clsact qdisc too when nothing else uses it."""
    with entered(netns_path), IPRoute() as ipr:
        found = ipr.link_lookup(ifname=POD_IFNAME)
        if not found:
            return
        idx = found[0]
        with contextlib.suppress(NetlinkError):
            ipr.tc("del-filter", "bpf", idx, ":1", parent=CLSACT_PARENT_INGRESS, prio=CLSACT_PRIO)
        remaining = []
        for parent in (CLSACT_PARENT_INGRESS, "ffff:fff3"):
            with contextlib.suppress(NetlinkError):
                remaining += [f for f in ipr.get_filters(index=idx, parent=parent) if f.get("kind")]
        if not remaining:
            with contextlib.suppress(NetlinkError):
                ipr.tc("del", "clsact", idx)


def clsact_prog_ids(netns_path: str | Path) -> list[int]:
    """Program ids of our clsact ingress filter on the pod's eth0 (empty when absent).

    pyroute2 0.9 does not decode TCA_BPF_ID, so ask tc(8) for JSON from inside the netns.
    """
    r = subprocess.run(["nsenter", f"--net={netns_path}", "tc", "-j", "filter", "show", "dev", POD_IFNAME,
                        "ingress"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return []
    return [f["options"]["prog"]["id"] for f in json.loads(r.stdout)
            if f.get("pref") == CLSACT_PRIO and "prog" in f.get("options", {})]
