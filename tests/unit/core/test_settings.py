"""Typed settings: flag, then environment, then default; bad values name their source and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambit.settings import SettingsError
from ztunnel.settings import load

BASE = ["--node", "n1", "--zds-socket", "/run/zds.sock"]


def test_defaults_are_the_documented_ones():
    s = load(BASE, {})
    assert s.node == "n1" and s.zds_socket == Path("/run/zds.sock")
    assert s.admin_address == "127.0.0.1:15000" and s.metrics_address == "0.0.0.0:15020"
    assert s.tunnel.connect_timeout == 10.0 and s.tunnel.cert_wait == 5.0
    assert s.ca_target is None


def test_flag_beats_environment_beats_default_also_for_nested_groups():
    env = {"AMBIT_ZTUNNEL_CERT_TTL": "600", "AMBIT_ZTUNNEL_TUNNEL_CONNECT_TIMEOUT": "3",
           "AMBIT_ZTUNNEL_CONTROLLER": "unix:/x"}
    s = load([*BASE, "--tunnel-connect-timeout", "2.5"], env)
    assert s.tunnel.connect_timeout == 2.5          # flag
    assert s.cert_ttl == 600.0                      # environment
    assert s.ca_target == "unix:/x"                 # the CA defaults to the controller
    assert s.tunnel.drain == 5.0                    # default


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--cert-ttl", "-1"], {}, "--cert-ttl: '-1': must be > 0"),
    (["--tunnel-connect-timeout", "soon"], {}, "--tunnel-connect-timeout: 'soon': could not convert"),
    ([], {"AMBIT_ZTUNNEL_ADMIN_ADDRESS": "localhost"}, "AMBIT_ZTUNNEL_ADMIN_ADDRESS: 'localhost': must be HOST:PORT"),
])
def test_a_bad_value_names_where_it_came_from_and_why(argv, env, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        load([*BASE, *argv], env)


def test_a_missing_required_setting_is_refused(capsys):
    with pytest.raises(SystemExit):
        load(["--node", "n1"], {})
    assert "the following arguments are required: --zds-socket" in capsys.readouterr().err
    # ... unless the environment provides it.
    assert load(["--node", "n1"], {"AMBIT_ZTUNNEL_ZDS_SOCKET": "/run/z.sock"}).zds_socket == Path("/run/z.sock")


def test_agent_settings_refuse_two_pod_sources_and_unknown_capture_modes():
    from agent.settings import load as agent_load
    base = ["--node", "n1", "--zds-socket", "/z", "--ztunnel-cgroup", "/cg", "--node-ip", "10.0.0.1"]
    s = agent_load([*base, "--controller", "unix:/c", "--node-token-file", "/t"], {})
    assert (s.capture, s.pod_paths, s.drain, s.uninstall) == ("ebpf", "host", 5.0, False)
    assert agent_load([*base, "--uninstall"], {}).uninstall is True
    with pytest.raises(SettingsError, match="two sources of pods"):
        agent_load([*base, "--controller", "unix:/c", "--store", "/s"], {})
    with pytest.raises(SettingsError, match="--pod-paths need --controller"):
        agent_load([*base, "--pod-paths", "controller"], {})
    with pytest.raises(SettingsError, match="AMBIT_AGENT_CAPTURE: 'nft': must be one of ebpf, iptables"):
        agent_load(base, {"AMBIT_AGENT_CAPTURE": "nft"})


def test_controller_settings_need_exactly_one_source_and_repeat_aliases():
    from controller.settings import load as controller_load
    s = controller_load(["--kube", "--trust-domain-alias", "a.td", "--trust-domain-alias", "b.td"], {})
    assert s.kube and s.trust_domain_alias == ("a.td", "b.td") and s.status and not s.no_status
    assert controller_load(["--lab-store", "/s"], {"AMBIT_CONTROLLER_TRUST_DOMAIN_ALIAS": "x.td,y.td"}
                           ).trust_domain_alias == ("x.td", "y.td")
    assert controller_load(["--kube", "--no-status"], {}).no_status
    for argv in ([], ["--kube", "--lab-store", "/s"]):
        with pytest.raises(SettingsError, match="exactly one source"):
            controller_load(argv, {})
