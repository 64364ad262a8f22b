"""What a ztunnel process loads: every module it imports stays mapped (and counted in its RSS) for
its whole life, so the libraries only other components use must never be pulled in
(docs/performance.md, "Round 5 (issue 17, L4): the ztunnel's memory floor")."""

from __future__ import annotations

import json
import subprocess
import sys

# Each costs megabytes of resident memory and ztunnel needs none of them: the Kubernetes client and
# YAML (the controller's and the CLI's), netlink and BPF loaders (the agent's), HTTP/1 libraries,
# and grpcio (the controller's servers; ztunnel's gRPC clients are grpclib's: about 19 MB less,
# docs/performance.md round 9).
NEVER = ("kubernetes", "yaml", "pyroute2", "bcc", "aiohttp", "requests", "h11", "numpy", "grpc",
         "controller", "agent", "waypoint", "ambitctl")


def test_a_ztunnel_process_does_not_import_what_only_other_components_need():
    code = ("import json, sys, ztunnel.__main__, ztunnel.serve, ztunnel.workers; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert "ztunnel" in loaded and "grpclib" in loaded    # the probe really imported the ztunnel
    assert sorted(loaded.intersection(NEVER)) == []


def test_the_dns_codec_loads_at_a_nodes_first_query_not_at_start():
    """dnspython is about 4 MB of modules: a ztunnel pays for it once one of its pods asks a name
    (ztunnel/dns/upstream.py), not at start, and reading resolv.conf for the upstreams does not
    load it either."""
    code = ("import json, sys, ztunnel.__main__, ztunnel.serve, ztunnel.workers\n"
            "from ztunnel.dns.settings import DnsSettings\n"
            "DnsSettings().upstreams()\n"
            "started = 'dns' in sys.modules\n"
            "from ztunnel.dns.server import DnsProxy\n"
            "from ztunnel.dns.metrics import DnsMetrics\n"
            "from ztunnel.dns.forwarder import Forwarder\n"
            "proxy = DnsProxy(None, Forwarder([], 1.0), DnsMetrics())\n"
            "from ztunnel.dns.wire import parse\n"
            "q = parse(bytes.fromhex('1234010000010000000000000377777706676f6f676c6503636f6d0000010001'))\n"
            "print(json.dumps([started, proxy.answer('demo', q) is None]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [False, True]
