"""ambit/dataplane/workers.py and cpus.py without worker processes: the supervisor's metrics merge,
and how many workers `--workers 0` means (real supervisors and workers run in
tests/lab/test_ztunnel_workers.py and tests/lab/test_waypoint_workers.py)."""

from __future__ import annotations

import os

from ambit.dataplane.cpus import MAX_AUTO_WORKERS, cpu_quota, resolve_count
from ambit.dataplane.workers import merge_expositions


def test_merge_keeps_each_family_together_once_with_a_worker_label():
    w0 = ('# HELP a_total A\n# TYPE a_total counter\na_total{x="1"} 2.0\n'
          '# HELP g G\n# TYPE g gauge\ng 5.0\n')
    w1 = ('# HELP a_total A\n# TYPE a_total counter\na_total{x="1"} 3.0\na_total{} 1.0\n'
          '# HELP g G\n# TYPE g gauge\ng 7.0\n')
    assert merge_expositions({"0": w0, "1": w1}).splitlines() == [
        "# HELP a_total A", "# TYPE a_total counter",
        'a_total{worker="0",x="1"} 2.0', 'a_total{worker="1",x="1"} 3.0', 'a_total{worker="1"} 1.0',
        "# HELP g G", "# TYPE g gauge", 'g{worker="0"} 5.0', 'g{worker="1"} 7.0']


def test_merge_parses_as_prometheus_text_with_histograms():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    texts = {}
    for i in ("0", "1"):
        reg = CollectorRegistry()
        Histogram("lat_seconds", "latency", ["dir"], registry=reg).labels("in").observe(0.01)
        texts[i] = generate_latest(reg).decode()
    fams = {f.name: f for f in text_string_to_metric_families(merge_expositions(texts))}
    counts = [s for s in fams["lat_seconds"].samples if s.name == "lat_seconds_count"]
    assert sorted(s.labels["worker"] for s in counts) == ["0", "1"]
    assert all(s.labels["dir"] == "in" and s.value == 1.0 for s in counts)


def test_the_supervisors_own_families_follow_the_workers():
    from prometheus_client.metrics_core import CounterMetricFamily
    from prometheus_client.parser import text_string_to_metric_families
    restarts = CounterMetricFamily("ambit_ztunnel_worker_restarts", "restarts", labels=["worker"])
    restarts.add_metric(["0"], 2)
    text = merge_expositions({"0": "# TYPE g gauge\ng 5.0\n"}, extra=[restarts])
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert [(s.name, s.labels, s.value) for s in fams["ambit_ztunnel_worker_restarts"].samples] == [
        ("ambit_ztunnel_worker_restarts_total", {"worker": "0"}, 2.0)]
    assert [(s.labels, s.value) for s in fams["g"].samples] == [({"worker": "0"}, 5.0)]


def _cgroup(tmp_path, rel: str, limits: dict[str, str]):
    root = tmp_path / "cg"
    for path, value in limits.items():
        d = root / path if path else root
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.max").write_text(value + "\n")
    (root / rel).mkdir(parents=True, exist_ok=True)
    f = tmp_path / "self.cgroup"
    f.write_text(f"1:cpu:/\n0::/{rel}\n")
    return root, f


def test_a_cgroup_quota_is_the_tightest_cpu_max_on_the_path_up(tmp_path):
    root, f = _cgroup(tmp_path, "kubepods/pod1/ctr", {"kubepods": "max 100000", "kubepods/pod1": "250000 100000",
                                                    "kubepods/pod1/ctr": "150000 100000"})
    assert cpu_quota(root, f) == 1.5
    root, f = _cgroup(tmp_path / "b", "a/b", {"a": "50000 100000", "a/b": "max 100000"})
    assert cpu_quota(root, f) == 0.5


def test_no_quota_is_none(tmp_path):
    root, f = _cgroup(tmp_path, "x/y", {"x": "max 100000"})
    assert cpu_quota(root, f) is None


def test_zero_workers_is_one_per_usable_cpu_rounded_up_from_the_quota_and_capped():
    cpus = len(os.sched_getaffinity(0))
    assert resolve_count(3) == 3                                  # asked for: as asked
    assert resolve_count(0, quota=0.2) == 1                       # a fifth of a CPU: still one worker
    assert resolve_count(0, quota=1.5) == min(cpus, 2)
    assert resolve_count(0, quota=1000.0) == min(cpus, MAX_AUTO_WORKERS)
    assert resolve_count(0, quota=1000.0, cap=1) == 1


def test_a_supervisor_loads_no_grpc_tls_codec_or_engine():
    """A supervisor only parses settings and fronts its workers (docs/performance.md §34): importing
    what it runs must not load what only a worker uses. A fresh interpreter, as a supervisor starts."""
    import subprocess
    import sys
    heavy = ("grpc", "cryptography", "h2", "hpack", "waypoint.http.engine", "ambit.dataplane.hbone.connection",
             "ambit.configclient.client", "ambit.dataplane.nghttp2.connection")
    code = ("import sys, waypoint.settings, waypoint.workers, ztunnel.settings, ztunnel.workers\n"
            "waypoint.settings.load(['--waypoint', 'n/w', '--pod-name', 'p', '--node', 'n', '--workers', '2'], {})\n"
            "ztunnel.settings.load(['--node', 'n', '--zds-socket', '/z', '--workers', '2'], {})\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_memory_request_grows_with_each_worker_and_auto_is_sized_for_the_cap() -> None:
    from ambit.dataplane.cpus import memory_request_mib
    assert memory_request_mib(1, first_mib=256, per_worker_mib=64) == 256
    assert memory_request_mib(3, first_mib=256, per_worker_mib=64) == 384
    assert memory_request_mib(0, first_mib=256, per_worker_mib=64) == 256 + 64 * (MAX_AUTO_WORKERS - 1)
    assert memory_request_mib(0, first_mib=100, per_worker_mib=10, cap=2) == 110
