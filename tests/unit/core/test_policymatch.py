"""`ambit.policymatch.in_blocks`, which ztunnel's and the waypoint's ipBlocks checks share."""

from __future__ import annotations

from ambit.policymatch import in_blocks


def test_an_ipv4_mapped_peer_is_its_ipv4_address() -> None:
    """A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d: a DENY on 10.0.0.0/8 missed it
    (fail open) and an ALLOW refused it."""
    assert in_blocks("::ffff:10.0.0.5", ["10.0.0.0/8"])
    assert not in_blocks("::ffff:192.0.2.1", ["10.0.0.0/8"])
    assert in_blocks("10.0.0.5", ["10.0.0.0/8"]) and not in_blocks("10.0.0.5", ["fd00::/8"])


def test_other_ipv6_and_garbage_are_as_before() -> None:
    assert in_blocks("fd00::1", ["fd00::/8"]) and not in_blocks("fd00::1", ["10.0.0.0/8"])
    assert not in_blocks("not-an-ip", ["0.0.0.0/0"])
