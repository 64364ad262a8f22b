"""Which source address a plaintext connection or a Forwarded header may claim (ztunnel.sourcecheck)."""

from __future__ import annotations

import pytest

from tests.unit.ztunnel.meshcfg import wl
from ztunnel.sourcecheck import bad_forwarded_address, plaintext_source, sends_plaintext_to

MESH = wl("client", "10.1.0.5")
LEGACY = wl("legacy", "10.1.0.6", ns="legacy", enrolled=False)


def test_plaintext_from_no_workload_or_a_non_mesh_one_is_plain_plaintext() -> None:
    assert plaintext_source(None, "10.9.9.9", "10.1.0.1", 80) == plaintext_source(LEGACY, "10.1.0.6", "10.1.0.1", 80)
    assert plaintext_source(None, "10.9.9.9", "10.1.0.1", 80).verified
    assert not plaintext_source(None, "10.9.9.9", "10.1.0.1", 80).refuse


def test_plaintext_from_a_mesh_workload_is_refused_naming_it() -> None:
    s = plaintext_source(MESH, "10.1.0.5", "10.1.0.1", 80)
    assert s.refuse.startswith("plaintext from 10.1.0.5, the address of mesh workload demo/client "
                               "(spiffe://cluster.local/ns/demo/sa/client)")


@pytest.mark.parametrize("annotations, dst, port, excluded", [
    ({"ambit.io/exclude-outbound-ports": "5432, 80"}, "10.1.0.1", 80, True),
    ({"ambit.io/exclude-outbound-ports": "5432"}, "10.1.0.1", 80, False),
    ({"ambit.io/exclude-outbound-ports": "junk,,80x"}, "10.1.0.1", 80, False),
    ({"ambit.io/exclude-outbound-ip-ranges": "10.1.0.0/30, bogus"}, "10.1.0.1", 80, True),
    ({"ambit.io/exclude-outbound-ip-ranges": "10.1.0.0/30"}, "10.1.0.9", 80, False),
    ({"ambit.io/exclude-outbound-ip-ranges": "fd00::/8"}, "10.1.0.1", 80, False),
    ({}, "10.1.0.1", 80, False),
])
def test_only_what_the_source_itself_excludes_from_capture_is_real_plaintext(annotations, dst, port, excluded) -> None:
    src = wl("client", "10.1.0.5")
    src.annotations = annotations
    assert sends_plaintext_to(src, dst, port) is excluded
    s = plaintext_source(src, "10.1.0.5", dst, port)
    assert (bool(s.refuse), s.verified) == ((False, False) if excluded else (True, True))


@pytest.mark.parametrize("ip, why", [
    ("10.1.0.7", ""), ("fd00::7", ""), ("127.0.0.2", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("fe80::1", "link-local"), ("ff02::1", "multicast"),
    ("10.1.0.1", ""),       # the destination's own address too: a hairpin through the waypoint
    ("10.1.0.254", "node")])
def test_bad_forwarded_addresses(ip: str, why: str) -> None:
    got = bad_forwarded_address(ip, "10.1.0.254")
    assert (why in got and got) if why else got == ""
