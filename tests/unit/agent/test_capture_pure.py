"""The capture layer's pure parts: annotations, iptables rules, map byte layouts (no root needed)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from agent.capture import AMBIT_MARK, annotations_to_exclusions, maps
from agent.capture.iptables import IptablesPlan, rules
from agent.capture.pins import _mount_fstype, check_name
from ambit.dataplane.origdst import original_dst


def test_annotations_are_parsed_sorted_and_deduplicated() -> None:
    ann = {"ambit.io/exclude-outbound-ports": " 6379, 5432,5432 ,",
           "ambit.io/exclude-outbound-ip-ranges": "10.1.2.3, 10.0.0.0/8, fd00::/8, 192.168.1.7/24",
           "ambit.io/exclude-inbound-ports": "9100"}
    assert annotations_to_exclusions(ann) == ([5432, 6379], ["10.0.0.0/8", "10.1.2.3/32", "192.168.1.0/24"], [9100])


def test_no_annotations_mean_no_exclusions() -> None:
    assert annotations_to_exclusions({}) == ([], [], [])
    assert annotations_to_exclusions(None) == ([], [], [])


@pytest.mark.parametrize("name,value,msg", [
    ("ambit.io/exclude-outbound-ports", "80,http", "'http' is not a port number"),
    ("ambit.io/exclude-outbound-ports", "70000", "port 70000 is outside 1-65535"),
    ("ambit.io/exclude-inbound-ports", "0", "port 0 is outside"),
    ("ambit.io/exclude-outbound-ip-ranges", "10.0.0.0/33", "'10.0.0.0/33' is not an IP address or CIDR"),
])
def test_bad_annotation_values_name_the_annotation(name: str, value: str, msg: str) -> None:
    with pytest.raises(ValueError, match=re.escape(name) + ".*" + re.escape(msg)):
        annotations_to_exclusions({name: value})


def test_iptables_rules_exempt_ztunnel_loopback_own_ip_and_exclusions() -> None:
    text = rules(IptablesPlan(pod_ip="10.0.0.5", node_ip="10.0.0.1", ztunnel_cgroups=("/lab/zt", "/lab/zt2"),
                              exclude_outbound_ports=(5432,), exclude_outbound_cidrs=("10.96.0.0/12",),
                              exclude_inbound_ports=(9100,), probe_ports=(8081,)))
    lines = text.splitlines()
    out = [x for x in lines if x.startswith("-A AMBIT_OUTPUT")]
    inb = [x for x in lines if x.startswith("-A AMBIT_PREROUTING")]
    assert out[-1] == "-A AMBIT_OUTPUT -p tcp -j REDIRECT --to-ports 15001"
    assert inb[-1] == "-A AMBIT_PREROUTING -p tcp -d 10.0.0.5/32 -j REDIRECT --to-ports 15006"
    for needed in (f"--mark {AMBIT_MARK:#x}/0xfff -j RETURN", "-m cgroup --path /lab/zt -j RETURN",
                   "-m cgroup --path /lab/zt2 -j RETURN",   # both ztunnels of a surge roll
                   "-d 127.0.0.0/8 -j RETURN", "-d 10.0.0.5/32 -j RETURN", "--dport 5432 -j RETURN",
                   "-d 10.96.0.0/12 -j RETURN"):
        assert any(needed in x for x in out[:-1]), needed
    for needed in ("-i lo -j RETURN", "-s 10.0.0.1/32 -p tcp --dport 8081 -j RETURN", "--dport 15008 -j RETURN",
                   "--dport 9100 -j RETURN"):
        assert any(needed in x for x in inb[:-1]), needed
    # The node IP is exempt on the probe ports only, never on every port.
    assert not any(x.endswith("-s 10.0.0.1/32 -j RETURN") for x in inb)
    assert lines[0] == "*nat" and lines[-1] == "COMMIT"
    # Only our own chains are declared (declaring a chain flushes it in --noflush mode).
    assert [x for x in lines if x.startswith(":")] == [":AMBIT_OUTPUT - [0:0]", ":AMBIT_PREROUTING - [0:0]"]


def test_map_layouts_match_the_c_header() -> None:
    assert maps.POD.size == 16 and maps.DST.size == 8 and maps.PORT_KEY.size == 16
    assert maps.XPORT_KEY.size == 16 and maps.XCIDR_KEY.size == 16 and maps.META.size == 536
    assert maps.stat_names()[:3] == ("redirected", "skip_not_enrolled", "skip_not_tcp")
    assert "inbound_assigned" in maps.stat_names()


def test_xcidr_key_covers_netns_then_prefix() -> None:
    key = maps.xcidr_key(0x1122334455667788, "10.1.2.3/16")
    prefixlen, lo, hi, ip = maps.XCIDR_KEY.unpack(key)
    assert prefixlen == 64 + 16 and ip == bytes([10, 1, 0, 0])
    assert maps.xcidr_netns(key) == 0x1122334455667788


def test_meta_round_trips_and_rejects_oversized_fields() -> None:
    m = maps.Meta(uid="0f1e-uid", netns=42, pod_ip="10.0.0.5", node_ip="10.0.0.1", mode=maps.MODE_EBPF,
                  tc_mode=maps.TC_TCX, netns_path="/var/run/netns/x", cgroup_path="/sys/fs/cgroup/p")
    assert maps.Meta.unpack(m.key(), m.pack()) == m
    with pytest.raises(ValueError, match="netns_path"):
        maps.Meta(**{**m.__dict__, "netns_path": "/" + "x" * 300}).pack()


def test_node_and_uid_names_must_be_plain_path_components() -> None:
    assert check_name("node name", "node-1.lab") == "node-1.lab"
    for bad in ("", "../etc", "a/b", 'q"uote', "x" * 64):
        with pytest.raises(ValueError, match="node name"):
            check_name("node name", bad)


def test_mount_lookup_picks_the_innermost_mount() -> None:
    info = ("22 1 0:21 / /sys rw - sysfs sysfs rw\n"
            "40 22 0:35 / /sys/fs/bpf rw - bpf bpf rw\n")
    assert _mount_fstype(Path("/sys/fs/bpf/ambit/n1"), info) == "bpf"
    assert _mount_fstype(Path("/sys/fs/bpfx"), info) == "sysfs"


def test_original_dst_falls_back_to_getsockname_without_nat() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        with socket.create_connection(srv.getsockname()) as c:
            accepted, _ = srv.accept()
            with accepted:
                # No NAT and no BPF here: SO_ORIGINAL_DST fails, so the socket's own address is it.
                assert original_dst(accepted) == srv.getsockname()
                assert c.getpeername() == srv.getsockname()
