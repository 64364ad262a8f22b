"""The waypoint's memory settings and its admin /memory page (the tools are
ambit/dataplane/memory.py and gctune.py; docs/performance.md, round 6, says why each is on)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ambit import settings
from tests.unit.waypoint.test_wiring import proxy
from waypoint import admin
from waypoint.settings import load

BASE = ["--waypoint", "default/waypoint", "--pod-name", "waypoint-0", "--node", "node1"]


def test_memory_flags_default_on_and_can_be_turned_off() -> None:
    s = load(BASE, {})
    assert (s.memory_trim_interval, s.malloc_arena_max, s.gc_freeze, s.gc_threshold) == (10.0, 2, True, "")
    s = load([*BASE, "--memory-trim-interval", "0", "--malloc-arena-max", "0", "--no-gc-freeze"],
             {"AMBIT_WAYPOINT_GC_THRESHOLD": "7000,20"})
    assert (s.memory_trim_interval, s.malloc_arena_max, s.gc_freeze, s.gc_threshold) == (0.0, 0, False, "7000,20")


@pytest.mark.parametrize(("argv", "message"), [
    (["--malloc-arena-max", "-1"], "--malloc-arena-max.*must be >= 0"),
    (["--memory-trim-interval", "-5"], "--memory-trim-interval.*must be >= 0"),
    (["--gc-threshold", "0"], "--gc-threshold.*disables the collector"),
])
def test_bad_memory_settings_are_refused_naming_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(settings.SettingsError, match=message):
        load([*BASE, *argv], {})


def test_admin_memory_page_reports_this_process() -> None:
    srv = admin.AdminServer(admin.routes(proxy(), None))
    r = srv.handle("GET", "/memory")
    report = json.loads(r.body)
    assert r.status == 200
    assert report["rss_kb"] >= report["pss_kb"] > 0 and report["anon_kb"] > 0
    assert "MainThread" in report["threads"] and report["gc"]["tracked"] > 0


PROBE = """
import asyncio, json, socket, sys
from waypoint.app import WaypointProxy
from waypoint.authz import Waypoint
from waypoint.config import WaypointConfig
from waypoint.settings import load

async def main():
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    s = load(["--waypoint", "default/waypoint", "--pod-name", "w-0", "--node", "n1", "--listen", f"127.0.0.1:{port}",
              *sys.argv[1:]], {})
    p = WaypointProxy(s, WaypointConfig(Waypoint("default", "waypoint"), "cluster.local"), None)
    await p.start()
    out = {"tracer": p.engine.tracing is not None,
           "sdk": "opentelemetry.sdk.trace" in sys.modules,
           "otlp_grpc": "waypoint.telemetry.otlp_grpc" in sys.modules,
           "zipkin": "opentelemetry.exporter.zipkin.json" in sys.modules,
           "cluster_tools": sorted(m for m in ("kubernetes", "yaml", "pyroute2", "bcc") if m in sys.modules),
           # grpcio's C core is the controller's (its servers); the waypoint's clients are grpclib's
           "grpc_core": "grpc" in sys.modules,
           # loaded when the config needs them (JWT rules, regexes), never at start; no C parser ever
           "lazy": sorted(m for m in ("jwt", "re2", "cffi", "pycparser") if m in sys.modules)}
    await p.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def _fresh(probe: str, *argv: str) -> dict[str, Any]:
    """Run `probe` in a fresh interpreter (nothing imported yet); its last line of output, as JSON."""
    p = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[3])
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _start_fresh(*argv: str) -> dict[str, Any]:
    """Start a WaypointProxy in a fresh interpreter and say what it loaded."""
    return _fresh(PROBE, *argv)


def test_without_tracing_configured_the_opentelemetry_sdk_is_never_imported() -> None:
    assert _start_fresh() == {"tracer": False, "sdk": False, "otlp_grpc": False, "zipkin": False,
                              "cluster_tools": [], "grpc_core": False, "lazy": []}   # nor the CLI's and controller's libraries


def test_a_configured_tracing_provider_loads_its_exporter_at_start_not_at_the_first_request() -> None:
    assert _start_fresh("--tracing-otlp", "127.0.0.1:4317") == {"tracer": True, "sdk": True, "otlp_grpc": True,
                                                                "zipkin": False, "cluster_tools": [],
                                                                "grpc_core": False, "lazy": []}


AUTHN_PROBE = """
import json, sys
if sys.argv[1:] == ["broken"]:
    sys.modules["jwt"] = None        # PyJWT missing: `import jwt` raises ImportError
import waypoint.__main__             # all a waypoint imports at start
from ambit.configclient import ConfigUpdate
from ambit.model import JwtRule, RequestAuthn
from waypoint.authz import Waypoint
from waypoint.config import TYPES, WaypointConfig

out = {"at_start": sys.modules.get("jwt") is not None}
cfg = WaypointConfig(Waypoint("default", "waypoint"), "cluster.local")
ra = RequestAuthn("jwt", "default", scope="waypoint", target_refs=[{"kind": "Gateway", "name": "waypoint"}],
                  rules=[JwtRule("https://issuer.example", jwks='{"keys": []}')])
try:
    for t in TYPES:
        state = {ra.resource_name: ra} if t == RequestAuthn.TYPE else {}
        cfg.apply(ConfigUpdate(t, "v1", state, frozenset(), state))
    out["applied"] = len(cfg.view.authn.gateway)
except Exception as e:
    out["refused"] = f"{type(e).__name__}: {e}"
out["after_config"] = sys.modules.get("jwt") is not None
print(json.dumps(out))
"""


def test_pyjwt_is_imported_when_a_jwt_rule_is_configured_not_at_start() -> None:
    assert _fresh(AUTHN_PROBE) == {"at_start": False, "applied": 1, "after_config": True}


def test_a_missing_pyjwt_refuses_the_config_update_that_needs_it() -> None:
    out = _fresh(AUTHN_PROBE, "broken")
    assert out["at_start"] is False and "applied" not in out      # the update is NACKed, not applied
    assert str(out["refused"]).startswith("PyJWTUnavailable: RequestAuthentication jwtRules need PyJWT")


def test_telemetry_caches_do_not_keep_the_workloads_of_gone_pods() -> None:
    """Pods churn behind a waypoint: every request's metrics labels and access-log line are made from
    the source and destination Workloads the config View resolves, and each config update replaces
    those objects. The label-value cache (~1,024 entries) and the access log's peer cache (~4,096)
    held the Workloads (and each tunnel's Downstream) until they filled: dead pods' objects kept
    alive on a waypoint whose pods churn. Through the real hooks (`_access_log`, `_stats`) and View."""
    import gc
    import weakref

    from ambit.configclient import ConfigUpdate
    from ambit.model import Workload
    from waypoint.app import WaypointProxy
    from waypoint.authz import Waypoint
    from waypoint.config import WaypointConfig
    from waypoint.http.record import RequestRecord
    from waypoint.request import Downstream
    from waypoint.telemetry.metrics import HttpMetrics

    cfg = WaypointConfig(Waypoint("default", "waypoint"), "cluster.local")
    p = WaypointProxy(load(BASE, {}), cfg, None, http_metrics=HttpMetrics())
    lines: list[str] = []
    assert p.telemetry.log is not None
    p.telemetry.log.sink = lines.append
    ips = [f"10.0.1.{i}" for i in range(1, 5)]
    gone: list[weakref.ref[object]] = []
    current: dict[str, Workload] = {}
    for rnd in range(60):
        gone.extend(weakref.ref(w) for w in current.values())
        current = {f"uid-{rnd}-{i}": Workload(uid=f"uid-{rnd}-{i}", name=f"app-{i}-{rnd}", namespace="default",
                                              ips=[ip], node="node1", service_account="app",
                                              identity="spiffe://cluster.local/ns/default/sa/app",
                                              labels={"app": f"app{i}", "version": f"v{rnd}"})
                   for i, ip in enumerate(ips)}
        cfg.apply(ConfigUpdate(Workload.TYPE, str(rnd), current, frozenset(), current))
        for src in ips:
            down = Downstream(source_identity="spiffe://cluster.local/ns/default/sa/app", source_ip=src,
                              destination_ip="10.96.0.10", destination_port=80)
            gone.append(weakref.ref(down))
            for dst in ips:
                rec = RequestRecord("GET", "/", "app", "HTTP/1.1", down, status=200, upstream=f"{dst}:8080")
                p._access_log(rec)
                p._stats(rec)
        del down, rec
    # a last request on a tunnel still open (the hooks remember the last record's peers)
    rec = RequestRecord("GET", "/", "app", "HTTP/1.1", Downstream(source_ip=ips[0]), status=200,
                        upstream=f"{ips[1]}:8080")
    p._access_log(rec)
    p._stats(rec)
    assert '"source_workload": "app-0-59"' in lines[-1] and '"destination_workload": "app-1-59"' in lines[-1]
    gc.collect()
    held = [r() for r in gone if r() is not None]
    assert held == [], f"{len(held)} objects of gone pods and closed tunnels still held, e.g. {held[0]!r:.120}"
