"""bench/importrss.py charges each first import its own growth in memory, nested imports apart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench import importrss


def test_smaps_rollup_fields():
    text = "00400000-7ffd ---p 00000000 00:00 0  [rollup]\nRss:  4000 kB\nPss:  3000 kB\nAnonymous:  1500 kB\n"
    assert importrss.parse_rollup(text) == (4000, 1500)
    assert importrss.read_self()[0] > importrss.read_self()[1] > 0


def test_each_import_is_charged_its_own_growth_not_its_nested_imports(tmp_path, monkeypatch):
    """A fake reader makes the figures exact: `big` grows memory by 300 kB, `outer` by 10 kB
    besides importing `big`, and `outer` must be charged 10, not 310."""
    pkg = tmp_path / "rsspkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "big.py").write_text("import rsspkg.meter as m\nm.grow(300)\n")
    (pkg / "outer.py").write_text("import rsspkg.meter as m\nm.grow(10)\nfrom . import big\nm.grow(0)\n")
    (pkg / "meter.py").write_text("used = [1000]\ndef grow(kb):\n    used[0] += kb\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import rsspkg.meter as meter
    rows = importrss.attribute(["rsspkg.outer"], by="module", read=lambda: (meter.used[0], meter.used[0] // 2))
    assert rows["rsspkg.big"][0] == 300 and rows["rsspkg.big"][1] == 150
    assert rows["rsspkg.outer"][0] == 10
    assert rows["rsspkg.big"][2] == 1 and rows["rsspkg.outer"][2] == 1     # modules are charged alike
    for name in ("rsspkg", "rsspkg.meter", "rsspkg.big", "rsspkg.outer"):
        sys.modules.pop(name, None)


def test_the_command_prints_a_table_in_a_fresh_interpreter(tmp_path):
    (tmp_path / "rssbig.py").write_text("DATA = bytes(range(256)) * 16384\n")     # 4 MiB, touched
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[3])])}
    out = subprocess.run([sys.executable, "-m", "bench.importrss", "--by", "module", "rssbig"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    row = next(line.split() for line in out.stdout.splitlines() if line.startswith("rssbig"))
    assert float(row[1]) >= 3.5 and float(row[2]) >= 3.5
