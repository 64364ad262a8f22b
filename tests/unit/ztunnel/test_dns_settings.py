"""`--dns-upstream` and its default: ztunnel's resolv.conf without the loopback nameservers (a pod's
netns cannot reach them), systemd-resolved's list when those were all it had."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ambit.settings import SettingsError
from ztunnel import settings
from ztunnel.dns.forwarder import Upstream
from ztunnel.dns.settings import parse_upstream, resolv_conf_upstreams

REQUIRED = ["--node", "n1", "--zds-socket", "/tmp/zds.sock"]


def test_flag_takes_addresses_with_optional_ports() -> None:
    s = settings.load([*REQUIRED, "--dns-upstream", "10.96.0.10,10.0.0.2:5353", "--dns-upstream", "[fd00::a]:53"], {})
    assert s.dns.upstreams() == [Upstream("10.96.0.10"), Upstream("10.0.0.2", 5353), Upstream("fd00::a")]
    s = settings.load(REQUIRED, {"AMBIT_ZTUNNEL_DNS_UPSTREAM": "192.0.2.53"})
    assert s.dns.upstreams() == [Upstream("192.0.2.53")]
    assert settings.load([*REQUIRED, "--cluster-domain", "corp.example"], {}).cluster_domain == "corp.example"


@pytest.mark.parametrize("value,reason", [
    ("127.0.0.53", "loopback resolver is unreachable from the pods' netns"),
    ("kube-dns.kube-system", r"not IP\[:port\] \(a resolver.s address, not a name\)"),
    ("10.96.0.10:0", "port .0. is not 1-65535"),
])
def test_bad_upstreams_are_refused_naming_the_flag(value: str, reason: str) -> None:
    with pytest.raises(SettingsError, match=reason) as e:
        settings.load([*REQUIRED, "--dns-upstream", value], {})
    assert "--dns-upstream" in str(e.value)


def test_bad_cluster_domain_is_refused() -> None:
    with pytest.raises(SettingsError, match="--cluster-domain"):
        settings.load([*REQUIRED, "--cluster-domain", "not a domain"], {})


def test_default_skips_loopback_nameservers_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("search svc.cluster.local\nnameserver 127.0.0.53\nnameserver 10.96.0.10\n")
    with caplog.at_level(logging.WARNING):
        assert resolv_conf_upstreams(conf, tmp_path / "absent") == [Upstream("10.96.0.10")]
    assert "127.0.0.53" in caplog.text


def test_only_loopback_falls_back_to_systemd_resolveds_list(tmp_path: Path) -> None:
    conf, real = tmp_path / "resolv.conf", tmp_path / "real.conf"
    conf.write_text("nameserver 127.0.0.53\n")
    real.write_text("nameserver 192.0.2.1\nnameserver 127.0.0.1\n")
    assert resolv_conf_upstreams(conf, real) == [Upstream("192.0.2.1")]
    assert resolv_conf_upstreams(conf, tmp_path / "absent") == []


def test_parse_upstream() -> None:
    assert parse_upstream("fd00::a") == Upstream("fd00::a")
    assert str(parse_upstream("[fd00::a]:5353")) == "[fd00::a]:5353"
    with pytest.raises(ValueError):
        parse_upstream("[fd00::a")


def test_an_unusable_nameserver_is_skipped_not_fatal(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver fe80::1%eth0\nnameserver 10.96.0.10\n")     # link-local: the node's interface's
    assert resolv_conf_upstreams(conf, tmp_path / "absent") == [Upstream("10.96.0.10")]
    conf.write_text("nameserver not-an-ip\n")
    assert resolv_conf_upstreams(conf, tmp_path / "absent") == []
