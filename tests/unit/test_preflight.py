"""Preflight helpers: the cgroup v2 mount and `ambit check` item selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambit.cgroups import CgroupError, find_cgroup2_mount

HYBRID = """\
25 1 0:23 / /sys rw,nosuid - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
"""
UNIFIED = "40 1 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"


def test_hybrid_hosts_use_the_unified_mount() -> None:
    assert find_cgroup2_mount(HYBRID) == Path("/sys/fs/cgroup/unified")


def test_pure_v2_hosts() -> None:
    assert find_cgroup2_mount(UNIFIED) == Path("/sys/fs/cgroup")


def test_no_v2_is_a_clear_error() -> None:
    with pytest.raises(CgroupError, match="cgroup2"):
        find_cgroup2_mount(HYBRID.replace("cgroup2", "cgroup"))


def test_check_runs_only_the_named_items_and_rejects_unknown_names() -> None:
    from ambit import check
    assert [r.name for r in check.run_all(["kernel"])] == ["kernel"]
    with pytest.raises(ValueError, match="no-such-check"):
        check.run_all(["no-such-check"])
