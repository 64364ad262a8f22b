"""DNS capture's pure parts and the agent's decision per pod: the node default (--dns-capture),
the pod's ambient.istio.io/dns-capture annotation, what a bad value does (logged and shown, never
silently ignored), a change re-applying capture, the iptables rules and the C header's constants."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest

from agent.__main__ import Agent
from agent.capture import maps
from agent.capture.constants import bpf_dir
from agent.capture.dns import ANN_DNS_CAPTURE, dns_capture
from agent.capture.iptables import JUMPS, IptablesPlan, rules
from agent.cni.plugin import DNS_CAPTURE_ANNOTATION
from agent.enrolment import capture_annotations, plan
from agent.settings import load as agent_settings
from ambit.dataplane.ports import PORT_DNS
from tests.unit.agent.test_agent_faults import FailingEngine, RecordingLink, ref, view


@pytest.mark.parametrize("value,enabled", [
    ("true", True), ("TRUE", True), ("True", True), ("tRuE", True), ("1", True), ("t", True), (" true ", True),
    ("false", False), ("FALSE", False), ("0", False), ("f", False),
])
def test_the_annotation_overrides_the_node_default_either_way(value: str, enabled: bool) -> None:
    for default in (True, False):
        d = dns_capture({ANN_DNS_CAPTURE: value}, default)
        assert (d.enabled, d.source, d.warning) == (enabled, "annotation", "")


def test_without_the_annotation_the_node_default_decides() -> None:
    assert dns_capture({}, True).enabled is True
    assert dns_capture(None, False).enabled is False
    assert dns_capture({"ambit.io/exclude-outbound-ports": "53"}, True).source == "node default"


@pytest.mark.parametrize("value", ["yes", "on", "", "enabled", "2"])
def test_a_bad_value_follows_the_node_default_and_says_so(value: str) -> None:
    for default, word in ((True, "on"), (False, "off")):
        d = dns_capture({ANN_DNS_CAPTURE: value}, default)
        assert d.enabled is default and d.source == "node default"
        assert ANN_DNS_CAPTURE in d.warning and repr(value) in d.warning and "not a boolean" in d.warning
        assert f"node default ({word})" in d.warning


def test_the_annotation_is_a_capture_annotation_so_a_change_re_applies(tmp_path: Path) -> None:
    assert capture_annotations({ANN_DNS_CAPTURE: "false", "other.io/x": "1", "ambit.io/exclude-inbound-ports": "9"}) \
        == ((ANN_DNS_CAPTURE, "false"), ("ambit.io/exclude-inbound-ports", "9"))
    r = ref(tmp_path)
    changed = replace(r, annotations=capture_annotations({ANN_DNS_CAPTURE: "false"}))
    assert plan({r.uid: r}, {r.uid: changed}).update == [changed]
    # The CNI plugin (standard library only) forwards the same key to the agent.
    assert DNS_CAPTURE_ANNOTATION == ANN_DNS_CAPTURE


class CapturingEngine(FailingEngine):
    def __init__(self) -> None:
        super().__init__()
        self.caps: dict[str, object] = {}

    def enrol(self, cap) -> None:  # noqa: ANN001
        self.caps[cap.uid] = cap
        super().enrol(cap)


def test_the_agent_captures_dns_per_node_default_and_annotation_and_reports_a_bad_value(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = CapturingEngine()
    a = Agent("node1", source=None, engine=engine, link=RecordingLink(), node_ip="10.0.0.1",
              status_file=tmp_path / "status.json", dns_capture=False)
    plain = ref(tmp_path, "u1", "10.0.0.5")
    on = replace(ref(tmp_path, "u2", "10.0.0.6"), annotations=capture_annotations({ANN_DNS_CAPTURE: "True"}))
    bad = replace(ref(tmp_path, "u3", "10.0.0.7"), annotations=capture_annotations({ANN_DNS_CAPTURE: "yes"}))
    with caplog.at_level(logging.WARNING, logger="ambit.agent"):
        a.reconcile(view("1", plain, on, bad))
    assert [engine.caps[u].dns_capture for u in ("u1", "u2", "u3")] == [False, True, False]
    assert f"pod mesh/pod-u3: annotation {ANN_DNS_CAPTURE}='yes' is not a boolean" in caplog.text
    pods = json.loads((tmp_path / "status.json").read_text())["pods"]
    assert pods["mesh/pod-u3"]["state"] == "captured" and "'yes'" in pods["mesh/pod-u3"]["warning"]
    assert "warning" not in pods["mesh/pod-u1"]
    # The pod's annotation changes on the running pod: capture is re-applied, the warning goes.
    fixed = replace(bad, annotations=capture_annotations({ANN_DNS_CAPTURE: "true"}))
    a.reconcile(view("2", plain, on, fixed))
    assert engine.caps["u3"].dns_capture is True
    assert "warning" not in json.loads((tmp_path / "status.json").read_text())["pods"]["mesh/pod-u3"]


def test_agent_flag_and_environment_set_the_node_default() -> None:
    base = ["--node", "n", "--zds-socket", "/z", "--ztunnel-cgroup", "/c", "--node-ip", "10.0.0.1"]
    assert agent_settings(base, {}).dns_capture is True
    assert agent_settings([*base, "--no-dns-capture"], {}).dns_capture is False
    assert agent_settings([*base, "--dns-capture"], {"AMBIT_AGENT_DNS_CAPTURE": "false"}).dns_capture is True
    assert agent_settings(base, {"AMBIT_AGENT_DNS_CAPTURE": "false"}).dns_capture is False


def test_iptables_rules_send_port_53_to_the_dns_proxy_only_when_on() -> None:
    p = IptablesPlan(pod_ip="10.0.0.5", node_ip="10.0.0.1", ztunnel_cgroups=("/zt",), exclude_outbound_cidrs=("10.9.0.0/16",))
    on = rules(replace(p, dns_capture=True)).splitlines()
    out = [x for x in on if x.startswith("-A AMBIT_OUTPUT")]
    dns = [f"-A AMBIT_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports {PORT_DNS}",
           f"-A AMBIT_OUTPUT -p tcp --dport 53 -j REDIRECT --to-ports {PORT_DNS}"]
    assert out[-3:-1] == dns and out[-1].endswith("--to-ports 15001")
    # ztunnel's cgroup, loopback, the pod's own IP and excluded ranges RETURN before them.
    first = out.index(dns[0])
    for needed in ("-m cgroup --path /zt -j RETURN", "-d 127.0.0.0/8 -j RETURN", "-d 10.0.0.5/32 -j RETURN",
                   "-d 10.9.0.0/16 -j RETURN"):
        assert any(needed in x for x in out[:first]), needed
    assert not any("15053" in x for x in rules(p).splitlines())
    # an excluded port 53 excludes DNS over UDP too
    ex = rules(replace(p, dns_capture=True, exclude_outbound_ports=(53,)))
    assert "-A AMBIT_OUTPUT -p udp --dport 53 -j RETURN" in ex and "-A AMBIT_OUTPUT -p tcp --dport 53 -j RETURN" in ex
    assert ("OUTPUT", ("-p", "udp", "--dport", "53"), "AMBIT_OUTPUT") in JUMPS


def _define(name: str) -> int:
    m = re.search(rf"#define {name} (0x[0-9a-f]+|\d+)", (bpf_dir() / "ambit_maps.h").read_text())
    assert m, name
    return int(m.group(1), 0)


def test_dns_constants_match_the_c_header() -> None:
    assert _define("AMBIT_PORT_DNS") == PORT_DNS
    assert _define("AMBIT_PORT_DNS_QUERY") == 53
    assert _define("AMBIT_POD_DNS") == maps.POD_DNS
    assert maps.POD_DNS not in (maps.POD_OUTBOUND, maps.POD_INBOUND, maps.POD_NODE_GUARD)
    names = maps.stat_names()
    for n in ("dns_udp_redirected", "dns_tcp_redirected", "dns_skip_off", "dns_reply_rewritten", "dns_no_storage",
              "dns_skip_self"):
        assert n in names
