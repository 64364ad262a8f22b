"""Ingress mode (Istio's ambient.istio.io/bypass-inbound-capture) on the agent's side: how the
annotation is read (ParseBool spellings, a bad value logged and shown, never silently ignored), that
a change re-applies capture, the per-pod eBPF flags, and the iptables rules that leave plaintext
inbound alone while outbound and DNS stay captured."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest

from agent.__main__ import Agent
from agent.capture import maps
from agent.capture.constants import PORT_INBOUND, PORT_OUTBOUND, bpf_dir
from agent.capture.dns import ANN_DNS_CAPTURE
from agent.capture.engine import PodCapture, _ebpf_flags
from agent.capture.iptables import IptablesPlan, rules
from agent.cni.plugin import BYPASS_INBOUND_ANNOTATION
from agent.enrolment import capture_annotations, plan
from ambit.podannotations import ANN_BYPASS_INBOUND, inbound_bypass
from tests.unit.agent.test_agent_faults import RecordingLink, ref, view
from tests.unit.agent.test_dns_capture import CapturingEngine


@pytest.mark.parametrize("value,enabled", [
    ("true", True), ("TRUE", True), ("True", True), ("1", True), ("t", True), (" true ", True),
    ("false", False), ("FALSE", False), ("0", False), ("f", False),
])
def test_the_annotation_reads_as_istio_reads_it(value: str, enabled: bool) -> None:
    d = inbound_bypass({ANN_BYPASS_INBOUND: value})
    assert (d.enabled, d.warning) == (enabled, "")


def test_without_the_annotation_inbound_is_captured() -> None:
    assert inbound_bypass(None).enabled is False
    assert inbound_bypass({ANN_DNS_CAPTURE: "false"}) == inbound_bypass({})
    assert inbound_bypass({}).warning == ""


@pytest.mark.parametrize("value", ["yes", "on", "", "bypass", "2"])
def test_a_bad_value_keeps_inbound_captured_and_says_so(value: str) -> None:
    d = inbound_bypass({ANN_BYPASS_INBOUND: value})
    assert d.enabled is False
    assert ANN_BYPASS_INBOUND in d.warning and repr(value) in d.warning and "not a boolean" in d.warning
    assert "inbound is captured" in d.warning


def test_the_annotation_is_a_capture_annotation_so_a_change_re_applies(tmp_path: Path) -> None:
    assert capture_annotations({ANN_BYPASS_INBOUND: "true", "other.io/x": "1"}) == ((ANN_BYPASS_INBOUND, "true"),)
    r = ref(tmp_path)
    changed = replace(r, annotations=capture_annotations({ANN_BYPASS_INBOUND: "true"}))
    assert plan({r.uid: r}, {r.uid: changed}).update == [changed]
    assert BYPASS_INBOUND_ANNOTATION == ANN_BYPASS_INBOUND      # the CNI plugin forwards the same key


def _agent(tmp_path: Path) -> tuple[Agent, CapturingEngine]:
    engine = CapturingEngine()
    return Agent("node1", source=None, engine=engine, link=RecordingLink(), node_ip="10.0.0.1",
                 status_file=tmp_path / "status.json"), engine


def _status(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "status.json").read_text())["pods"]


def test_the_agent_bypasses_per_annotation_says_what_it_gives_up_and_flips_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, engine = _agent(tmp_path)
    plain = ref(tmp_path, "u1", "10.0.0.5")
    edge = replace(ref(tmp_path, "u2", "10.0.0.6"), annotations=capture_annotations({ANN_BYPASS_INBOUND: "true"}))
    with caplog.at_level(logging.INFO, logger="ambit.agent"):
        a.reconcile(view("1", plain, edge))
    assert [engine.caps[u].bypass_inbound for u in ("u1", "u2")] == [False, True]
    pods = _status(tmp_path)
    note = pods["mesh/pod-u2"]["inbound"]
    assert pods["mesh/pod-u2"]["state"] == "captured" and "inbound" not in pods["mesh/pod-u1"]
    assert ANN_BYPASS_INBOUND in note and "STRICT" in note and "HBONE" in note
    assert f"pod mesh/pod-u2: inbound bypassed ({ANN_BYPASS_INBOUND}=true)" in caplog.text
    # Turned off on the running pod: capture is re-applied, the note goes, the log says so.
    caplog.clear()
    off = replace(edge, annotations=capture_annotations({ANN_BYPASS_INBOUND: "false"}))
    with caplog.at_level(logging.INFO, logger="ambit.agent"):
        a.reconcile(view("2", plain, off))
    assert engine.caps["u2"].bypass_inbound is False
    assert "inbound" not in _status(tmp_path)["mesh/pod-u2"]
    assert "plaintext inbound is captured again" in caplog.text


def test_a_bad_value_is_logged_and_shown_beside_a_bad_dns_capture_value(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, engine = _agent(tmp_path)
    bad = replace(ref(tmp_path, "u3", "10.0.0.7"),
                  annotations=capture_annotations({ANN_BYPASS_INBOUND: "yes", ANN_DNS_CAPTURE: "maybe"}))
    with caplog.at_level(logging.WARNING, logger="ambit.agent"):
        a.reconcile(view("1", bad))
    assert engine.caps["u3"].bypass_inbound is False
    assert f"annotation {ANN_BYPASS_INBOUND}='yes' is not a boolean" in caplog.text
    warning = _status(tmp_path)["mesh/pod-u3"]["warning"]
    assert "'yes'" in warning and "'maybe'" in warning
    fixed = replace(bad, annotations=capture_annotations({ANN_BYPASS_INBOUND: "t"}))
    a.reconcile(view("2", fixed))
    assert engine.caps["u3"].bypass_inbound is True
    assert "warning" not in _status(tmp_path)["mesh/pod-u3"]


def _pod(**over) -> PodCapture:
    return PodCapture(uid="u", netns_path="/nonexistent", cgroup_path="/nonexistent", pod_ip="10.0.0.5",
                      node_ip="10.0.0.1", **over)


def test_ebpf_flags_keep_the_inbound_guard_and_add_the_bypass() -> None:
    flags = _ebpf_flags(_pod(bypass_inbound=True))
    # POD_INBOUND stays: it is what refuses bind() to ztunnel's ports and guards 15006/15008.
    assert flags & maps.POD_INBOUND and flags & maps.POD_OUTBOUND and flags & maps.POD_INBOUND_BYPASS
    assert not _ebpf_flags(_pod()) & maps.POD_INBOUND_BYPASS
    with pytest.raises(ValueError, match="bypass_inbound"):
        _pod(bypass_inbound="true").validate()


def _define(name: str) -> int:
    m = re.search(rf"#define {name} (0x[0-9a-f]+|\d+)", (bpf_dir() / "ambit_maps.h").read_text())
    assert m, name
    return int(m.group(1), 0)


def test_the_flag_and_counter_match_the_c_header() -> None:
    assert _define("AMBIT_POD_INBOUND_BYPASS") == maps.POD_INBOUND_BYPASS
    assert maps.POD_INBOUND_BYPASS not in (maps.POD_OUTBOUND, maps.POD_INBOUND, maps.POD_NODE_GUARD, maps.POD_DNS)
    assert "inbound_bypassed" in maps.stat_names()


def test_iptables_ingress_mode_has_no_inbound_redirect_but_keeps_outbound_and_dns() -> None:
    p = IptablesPlan(pod_ip="10.0.0.5", node_ip="10.0.0.1", ztunnel_cgroups=("/zt",), probe_ports=(8080,),
                     exclude_inbound_ports=(9090,), dns_capture=True)
    captured, bypassed = rules(p).splitlines(), rules(replace(p, bypass_inbound=True)).splitlines()
    assert f"-A AMBIT_PREROUTING -p tcp -d 10.0.0.5/32 -j REDIRECT --to-ports {PORT_INBOUND}" in captured
    assert not [x for x in bypassed if x.startswith("-A AMBIT_PREROUTING")]
    assert ":AMBIT_PREROUTING - [0:0]" in bypassed      # declared (flushed): a flip is one transaction
    assert [x for x in bypassed if x.startswith("-A AMBIT_OUTPUT")] == \
        [x for x in captured if x.startswith("-A AMBIT_OUTPUT")]
    assert f"-A AMBIT_OUTPUT -p tcp -j REDIRECT --to-ports {PORT_OUTBOUND}" in bypassed
    assert bypassed[-1] == "COMMIT"
