"""The libnghttp2 binding's out-of-line form (ambit/dataplane/nghttp2/build.py): the committed
`_cdefs.py` is what the declarations generate, and using the codec never loads cffi's C parser
(docs/performance.md, round 7: ~3 MB per process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ambit.dataplane.nghttp2 import build

ROOT = Path(__file__).resolve().parents[3]


def test_committed_cdefs_module_is_what_the_declarations_generate() -> None:
    # Fails after an edit of build.CDEF until `python -m ambit.dataplane.nghttp2.build` is run.
    assert build.TARGET.read_text() == build.generate()


def test_a_session_runs_without_importing_the_c_parser() -> None:
    code = """
import json, sys
from ambit.dataplane.nghttp2 import NgHttp2Connection, available
assert available() is None, available()
c = NgHttp2Connection(client_side=True)
c.initiate_connection()
c.send_headers(c.get_next_available_stream_id(), [(b":method", b"GET"), (b":scheme", b"http"),
               (b":authority", b"a"), (b":path", b"/")], end_stream=True)
sent = c.data_to_send()
print(json.dumps({"sent": len(sent), "loaded": sorted(m for m in ("cffi", "pycparser") if m in sys.modules)}))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["sent"] > 24 and out["loaded"] == []       # the preface, SETTINGS and a HEADERS frame went out
