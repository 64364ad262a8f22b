"""Finding a Kubernetes pod's sandbox on this node: its cgroup and its network namespace.

The agent needs both for every enrolled pod: the cgroup to attach the connect programs to, the netns
to open ztunnel's listeners and attach inbound capture in. The API server knows neither, so they are
found on the host, from the pod's UID:

cgroup  The kubelet names each pod's cgroup after the pod UID, under a `kubepods` tree of the cgroup
        v2 hierarchy. With the systemd driver (k3s and kubeadm on Debian 12 by default)::

            kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_with_underscores>.slice
            kubepods.slice/kubepods-pod<uid_with_underscores>.slice                      (Guaranteed QoS)

        and with the cgroupfs driver::

            kubepods/besteffort/pod<uid>        kubepods/pod<uid>

        The `kubepods` tree may itself sit below a parent (k3s in a container, kind), so it is
        searched for to a small depth. The pod-level directory is the one we attach to: programs
        attached with BPF_F_ALLOW_MULTI apply to every container cgroup below it, including
        containers that restart later.

netns   Every process of the pod shares the sandbox's netns, so `/proc/<pid>/ns/net` of any process
        in the pod cgroup names it. The oldest process is the sandbox's pause process, which lives as
        long as the pod, so the path stays valid when app containers restart. If the runtime bind-
        mounted the netns under /var/run/netns (containerd does: `cni-<uuid>`), that name is used
        instead, because it outlives any single process. A pid path is re-checked against the
        netns inode before every use, so a recycled pid never points the agent at another netns.

Safety: a pod whose processes are in the host's netns (hostNetwork, or a runtime we misread) is
refused: capturing the node's own netns would redirect the whole node's traffic.

`python -m agent.kube_pods pod-cgroup UID` prints a pod's cgroup directory; the DaemonSet's
entrypoint uses it to give the agent the cgroup of its own pod (ztunnel's) as `--ztunnel-cgroup`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ambit import cgroups
from ambit.readymark import start_time

log = logging.getLogger("ambit.agent.sandboxes")

KUBEPODS_SEARCH_DEPTH = 3       # levels above `kubepods*` we accept (k3s in a container, kind)
POD_SEARCH_DEPTH = 3            # kubepods -> QoS class -> pod
DEFAULT_NETNS_DIR = Path("/var/run/netns")
DEFAULT_PROC = Path("/proc")

# `pod<uid>` as the cgroupfs driver writes it, or `...-pod<uid_with_underscores>.slice` (systemd).
_POD_DIR = re.compile(r"(?:^|-)pod([0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}"
                      r"[-_][0-9a-fA-F]{12})(?:\.slice)?$")


class SandboxError(RuntimeError):
    """A pod's sandbox was found but must not be used (e.g. it is the host's netns)."""


@dataclass(frozen=True)
class Sandbox:
    uid: str
    cgroup: Path
    netns: Path
    netns_id: tuple[int, int]        # (st_dev, st_ino) of the nsfs file: the netns' identity


def pod_uid_of_dir(name: str) -> str | None:
    """The pod UID a kubelet cgroup directory name carries, in its canonical dashed form."""
    m = _POD_DIR.search(name)
    return m.group(1).replace("_", "-").lower() if m else None


def _subdirs(d: Path) -> list[Path]:
    try:
        return sorted(e for e in d.iterdir() if e.is_dir() and not e.is_symlink())
    except OSError:     # a cgroup removed while we walk
        return []


def kubepods_roots(cgroup_root: Path, depth: int = KUBEPODS_SEARCH_DEPTH) -> list[Path]:
    """Every `kubepods` / `kubepods.slice` directory at most `depth` levels below `cgroup_root`."""
    found: list[Path] = []
    level = [cgroup_root]
    for _ in range(depth + 1):
        nxt: list[Path] = []
        for d in level:
            for sub in _subdirs(d):
                if sub.name in ("kubepods", "kubepods.slice"):
                    found.append(sub)
                else:
                    nxt.append(sub)
        level = nxt
    return found


def pod_cgroups(cgroup_root: Path) -> dict[str, Path]:
    """pod UID -> its pod-level cgroup directory, for every pod the kubelet runs on this node."""
    out: dict[str, Path] = {}
    for root in kubepods_roots(cgroup_root):
        level = [root]
        for _ in range(POD_SEARCH_DEPTH):
            nxt: list[Path] = []
            for d in level:
                for sub in _subdirs(d):
                    uid = pod_uid_of_dir(sub.name)
                    if uid is not None:
                        out.setdefault(uid, sub)    # do not descend into a pod's containers
                    else:
                        nxt.append(sub)
            level = nxt
    return out


def _ns_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:     # gone, or a zombie (whose ns links vanish)
        return None
    return (st.st_dev, st.st_ino)


class SandboxFinder:
    """Locates pod sandboxes on this node (see the module docstring for how and why).

    Every path is injectable so the logic is tested on fixture trees; the defaults are the agent's
    view inside the DaemonSet (host cgroup v2 tree mounted at the cgroup2 mount, hostPID).
    """

    def __init__(self, cgroup_root: Path | None = None, *, netns_dir: Path = DEFAULT_NETNS_DIR,
                 proc: Path = DEFAULT_PROC, host_netns: Path | None = Path("/proc/1/ns/net")):
        self.cgroup_root = cgroup_root if cgroup_root is not None else cgroups.find_cgroup2_mount()
        self.netns_dir = netns_dir
        self.proc = proc
        self.host_netns = host_netns

    def pod_cgroups(self) -> dict[str, Path]:
        return pod_cgroups(self.cgroup_root)

    def pod_cgroup(self, uid: str) -> Path | None:
        return self.pod_cgroups().get(uid.lower())

    def find(self, uid: str, cgroup: Path | None = None) -> Sandbox | None:
        """The pod's sandbox, or None while it has no cgroup or no live process yet.

        `cgroup` skips the search when the caller indexed every pod at once (`pod_cgroups()`).
        Raises SandboxError when the pod's processes are in the host's netns.
        """
        cg = cgroup if cgroup is not None else self.pod_cgroup(uid)
        if cg is None:
            return None
        candidates = []
        for pid in set(cgroups.pids(cg)):
            started = start_time(pid, self.proc)
            ns = self.proc / str(pid) / "ns" / "net"
            ident = _ns_id(ns) if started is not None else None
            if ident is not None:
                candidates.append((started, pid, ns, ident))
        if not candidates:
            return None
        _, _, ns_path, ident = min(candidates)      # the oldest: the sandbox's pause process
        if self.host_netns is not None and _ns_id(self.host_netns) == ident:
            raise SandboxError(f"pod {uid}: its processes are in the host's network namespace "
                               f"(hostNetwork?); refusing to capture the node's traffic")
        return Sandbox(uid=uid, cgroup=cg, netns=self._named(ident) or ns_path, netns_id=ident)

    def _named(self, ident: tuple[int, int]) -> Path | None:
        """A bind-mounted name for the netns under netns_dir, if the runtime made one."""
        try:
            entries = sorted(self.netns_dir.iterdir())
        except OSError:
            return None
        for e in entries:
            if _ns_id(e) == ident:
                return e
        return None

    def still_valid(self, sb: Sandbox) -> bool:
        """Does `sb` still name the same netns and an existing cgroup? (pids get recycled)"""
        return sb.cgroup.is_dir() and _ns_id(sb.netns) == sb.netns_id


class SandboxCache:
    """uid -> Sandbox for the pods that want one, remembered and re-checked before each reuse.

    Shared by the agent's cluster sources (Kubernetes API and config stream): looking a sandbox
    up walks the cgroup tree and /proc, so it is done once per pod, and again only when the one
    remembered has gone stale. A refused sandbox (host netns) is logged once, not on every view.
    """

    def __init__(self, finder: SandboxFinder):
        self.finder = finder
        self._found: dict[str, Sandbox] = {}
        self._refused: dict[str, str] = {}

    def resolve(self, wanted: dict[str, str]) -> dict[str, Sandbox]:
        """The sandboxes of `wanted` (uid -> "ns/name", for log lines) found on this host.

        Pods not found (yet) are left out; pods no longer wanted are forgotten.
        """
        index: dict[str, Path] | None = None
        out: dict[str, Sandbox] = {}
        for uid, key in wanted.items():
            sb = self._found.get(uid)
            if sb is None or not self.finder.still_valid(sb):
                if index is None:
                    index = self.finder.pod_cgroups()
                try:
                    sb = self.finder.find(uid, index.get(uid)) if uid in index else None
                except SandboxError as e:
                    if self._refused.get(uid) != str(e):
                        log.error("%s: %s", key, e)
                    self._refused[uid] = str(e)
                    sb = None
                if sb is None:
                    self._found.pop(uid, None)
                    continue
                self._found[uid] = sb
            out[uid] = sb
        for uid in set(self._found) - set(wanted):
            del self._found[uid]
        for uid in set(self._refused) - set(wanted):
            del self._refused[uid]
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agent.kube_pods", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pod-cgroup", help="print the cgroup v2 directory of the pod with this UID")
    p.add_argument("uid")
    p.add_argument("--cgroup-root", type=Path, help="cgroup v2 mount (default: found from mountinfo)")
    args = ap.parse_args(argv)
    found = SandboxFinder(args.cgroup_root).pod_cgroup(args.uid)
    if found is None:
        print(f"no cgroup for pod {args.uid} under the kubepods tree of "
              f"{args.cgroup_root or cgroups.find_cgroup2_mount()}", file=sys.stderr)
        return 1
    print(found)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
