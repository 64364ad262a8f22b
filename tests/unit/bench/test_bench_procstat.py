from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import procstat


def test_cpu_stat_usage():
    assert procstat.parse_cpu_stat("usage_usec 2500000\nuser_usec 1\nsystem_usec 2\n") == pytest.approx(2.5)
    with pytest.raises(ValueError, match="no usage_usec"):
        procstat.parse_cpu_stat("nr_periods 0\n")


def test_proc_stat_with_spaces_and_parens_in_the_name():
    fields = ["S"] + ["0"] * 10 + ["300", "200"] + ["0"] * 30     # utime=300, stime=200 ticks
    text = "1234 (my (odd) proc) " + " ".join(fields)
    assert procstat.parse_proc_stat_cpu(text, clk_tck=100) == pytest.approx(5.0)


def test_reads_this_process_from_proc():
    me = os.getpid()
    assert procstat.parse_proc_stat_cpu(Path(f"/proc/{me}/stat").read_text()) >= 0.0
    assert procstat.parse_vmrss_kb(Path(f"/proc/{me}/status").read_text()) > 1000
    assert procstat.pids_rss_mb([me]) > 1.0
    assert procstat.parse_vmrss_kb("Name:\tkthreadd\n") == 0


SMAPS_ROLLUP = """00400000-7ffd1e1f0000 ---p 00000000 00:00 0                          [rollup]
Rss:               62092 kB
Pss:               32435 kB
Pss_Anon:          29668 kB
Pss_File:           2767 kB
Shared_Clean:      32396 kB
Anonymous:         29668 kB
"""


def test_smaps_rollup_tells_shared_libraries_from_own_memory():
    assert procstat.parse_smaps_rollup_kb(SMAPS_ROLLUP) == {"rss": 62092, "pss": 32435, "anon": 29668}
    assert procstat.parse_smaps_rollup_kb("") == {"rss": 0, "pss": 0, "anon": 0}


def test_memory_of_this_process():
    mem = procstat.pids_memory_mb([os.getpid(), 2 ** 22 + 1])   # a pid that does not exist is skipped
    assert mem["rss"] >= mem["pss"] > 0
    assert 0 < mem["anon"] <= mem["rss"]
