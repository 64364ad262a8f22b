"""`ambit check`: preflight for what the agent needs from the kernel and the machine.

Each item is a small function returning a CheckResult with a one-line hint when it fails. The
agent runs the same items at start and refuses to run, naming the failed item, if a required one
fails: a clear refusal beats a half-working capture.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from importlib import metadata

from ambit import cgroups

MIN_KERNEL = (5, 10)


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    required: bool = True


def _kernel_tuple(release: str) -> tuple[int, int]:
    parts = release.split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def check_kernel() -> CheckResult:
    rel = platform.release()
    ok = _kernel_tuple(rel) >= MIN_KERNEL
    return CheckResult("kernel", ok, f"Linux {rel}",
                       "" if ok else f"Ambit needs Linux >= {MIN_KERNEL[0]}.{MIN_KERNEL[1]} "
                       "(bpf_link for cgroups, sk_assign at TC, netns cookies)")


def check_bpf_syscall() -> CheckResult:
    try:
        import ctypes

        from bcc import BPF  # noqa: F401  (importing bcc is not enough; the load below proves the syscall)
        libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
        # A 1-entry array map: the smallest object that proves bpf(2) works for us.
        fd = libbpf.bpf_map_create(2, None, 4, 4, 1, None)
        if fd < 0:
            err = ctypes.get_errno()
            return CheckResult("bpf-syscall", False, f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)}",
                               "run as root (CAP_BPF+CAP_NET_ADMIN) and check kernel.unprivileged_bpf_disabled/lockdown")
        os.close(fd)
    except OSError as e:
        return CheckResult("bpf-syscall", False, str(e), "install libbpf1 (apt-get install libbpf1)")
    try:
        jit = open("/proc/sys/net/core/bpf_jit_enable").read().strip()
    except OSError:
        jit = "?"
    ok_jit = jit in ("1", "2")
    return CheckResult("bpf-syscall", True, f"bpf() works; JIT {'enabled' if ok_jit else 'disabled (' + jit + ')'}",
                       "" if ok_jit else "enable the JIT: sysctl net.core.bpf_jit_enable=1")


def check_btf() -> CheckResult:
    ok = os.path.exists("/sys/kernel/btf/vmlinux")
    return CheckResult("btf", ok, "/sys/kernel/btf/vmlinux present" if ok else "no kernel BTF",
                       "" if ok else "a kernel built with CONFIG_DEBUG_INFO_BTF=y is recommended", required=False)


def check_cgroup2() -> CheckResult:
    try:
        mnt = cgroups.find_cgroup2_mount()
    except cgroups.CgroupError as e:
        return CheckResult("cgroup-v2", False, str(e), "mount cgroup2 (e.g. mount -t cgroup2 none /sys/fs/cgroup/unified)")
    return CheckResult("cgroup-v2", True, f"mounted at {mnt}")


_SCHED_CLS = b"int ambit_chk_tc(struct __sk_buff *skb) { return 0; }"
_SOCK_ADDR = b"""
int ambit_chk_c4(struct bpf_sock_addr *ctx) { return 1; }
"""


def _bcc_load(name: str, src: bytes, fn: bytes, prog: str, attach: str | None) -> CheckResult:
    try:
        from bcc import BPF, BPFAttachType, BPFProgType
    except ImportError as e:
        return CheckResult(name, False, f"cannot import bcc: {e}",
                           "apt-get install python3-bpfcc and use a venv made with --system-site-packages")
    try:
        b = BPF(text=src)
        kw = {}
        if attach:
            kw["attach_type"] = getattr(BPFAttachType, attach)
        f = b.load_func(fn, getattr(BPFProgType, prog), **kw)
        ok = f.fd >= 0
        b.cleanup()
        return CheckResult(name, ok, f"compiled and loaded a {prog} program")
    except Exception as e:  # bcc raises plain Exception for compile/load failures
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = ("install linux-headers-amd64 and link /lib/modules/$(uname -r)/build to it (make setup does this)"
                if "modules" in msg or "header" in msg.lower() or "compile" in msg.lower()
                else "check that the kernel supports this program type and that you are root")
        return CheckResult(name, False, msg, hint)


def check_bcc_sched_cls() -> CheckResult:
    return _bcc_load("bcc-sched-cls", _SCHED_CLS, b"ambit_chk_tc", "SCHED_CLS", None)


def check_bcc_sock_addr() -> CheckResult:
    return _bcc_load("bcc-cgroup-sock-addr", _SOCK_ADDR, b"ambit_chk_c4", "CGROUP_SOCK_ADDR", "CGROUP_INET4_CONNECT")


CAPS = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21, "CAP_BPF": 39, "CAP_PERFMON": 38, "CAP_NET_RAW": 13}


def check_capabilities() -> CheckResult:
    eff = 0
    for line in open("/proc/self/status"):
        if line.startswith("CapEff:"):
            eff = int(line.split()[1], 16)
    have = {n for n, b in CAPS.items() if eff & (1 << b)}
    # CAP_SYS_ADMIN implies the BPF ones on older kernels.
    missing = [n for n in ("CAP_NET_ADMIN", "CAP_SYS_ADMIN") if n not in have]
    if "CAP_BPF" not in have and "CAP_SYS_ADMIN" not in have:
        missing.append("CAP_BPF")
    ok = not missing
    return CheckResult("capabilities", ok, "effective: " + ", ".join(sorted(have)) if ok else f"missing {', '.join(missing)}",
                       "" if ok else "run as root, or grant NET_ADMIN, SYS_ADMIN and BPF")


def check_netns_veth() -> CheckResult:
    """Create a veth pair in a throwaway network namespace.

    `unshare --net` makes an anonymous netns that dies with the command, so nothing can leak even
    if this check is killed half-way (an agent SIGKILLed during its preflight, say)."""
    cmd = ["unshare", "--net", "sh", "-c", "ip link add chk0 type veth peer name chk1 && ip link set chk0 up"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except FileNotFoundError as e:
        return CheckResult("netns-veth", False, str(e), "apt-get install iproute2 util-linux")
    if p.returncode != 0:
        return CheckResult("netns-veth", False, f"netns + veth failed: {p.stderr.strip()}",
                           "run as root; the kernel needs CONFIG_NET_NS and CONFIG_VETH")
    return CheckResult("netns-veth", True, "created a veth pair in a new network namespace")


PY_DEPS = ["pyroute2", "cryptography", "grpcio", "protobuf", "prometheus-client", "kubernetes", "cffi",
           "uvloop", "h2", "httptools", "PyYAML", "google-re2"]


def check_python_deps() -> CheckResult:
    found, missing = [], []
    for d in PY_DEPS:
        try:
            found.append(f"{d} {metadata.version(d)}")
        except metadata.PackageNotFoundError:
            missing.append(d)
    try:
        import bcc
        found.append(f"bcc {getattr(bcc, '__version__', '?')}")
    except ImportError:
        missing.append("bcc (python3-bpfcc)")
    ok = not missing
    return CheckResult("python-deps", ok, ", ".join(found) if ok else f"missing: {', '.join(missing)}",
                       "" if ok else "run `make setup`")


CHECKS: dict[str, Callable[[], CheckResult]] = {
    "kernel": check_kernel, "bpf-syscall": check_bpf_syscall, "btf": check_btf, "cgroup-v2": check_cgroup2,
    "bcc-sched-cls": check_bcc_sched_cls, "bcc-cgroup-sock-addr": check_bcc_sock_addr,
    "capabilities": check_capabilities, "netns-veth": check_netns_veth, "python-deps": check_python_deps,
}


def run_all(only: Iterable[str] | None = None) -> list[CheckResult]:
    """Run the named checks (all by default), in order; a crashing check reports, never raises."""
    wanted = set(CHECKS) if only is None else set(only)
    unknown = wanted - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown check(s): {', '.join(sorted(unknown))}")
    out = []
    for name, fn in CHECKS.items():
        if name not in wanted:
            continue
        try:
            out.append(fn())
        except Exception as e:
            out.append(CheckResult(name, False, f"check crashed: {e}"))
    return out


def as_json(results: list[CheckResult]) -> dict:
    return {"ok": all(r.ok or not r.required for r in results), "checks": [asdict(r) for r in results]}


def first_required_failure(results: list[CheckResult]) -> CheckResult | None:
    return next((r for r in results if r.required and not r.ok), None)
