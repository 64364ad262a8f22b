"""ztunnel's memory tools: the admin /memory page and the trim flag (the tools themselves:
tests/unit/dataplane/test_memory.py)."""

from __future__ import annotations

import json
import tracemalloc

from ztunnel import admin
from ztunnel.meshstate import MeshState
from ztunnel.settings import load as parse_args


def test_memory_endpoint_reports_this_process():
    handlers = admin.routes(MeshState())
    status, body = admin.respond(handlers, "GET", "/memory")
    report = json.loads(body)
    assert status == 200
    assert report["rss_kb"] >= report["pss_kb"] > 0 and report["anon_kb"] > 0
    assert "MainThread" in report["threads"] and report["os_threads"] >= 1
    assert report["gc"]["tracked"] > 0
    assert "tracemalloc" not in report or tracemalloc.is_tracing()


def test_trim_interval_flag():
    base = ["--node", "n1", "--zds-socket", "/tmp/x.sock"]
    assert parse_args(base, {}).memory_trim_interval == 10.0
    assert parse_args([*base, "--memory-trim-interval", "0"], {}).memory_trim_interval == 0.0
