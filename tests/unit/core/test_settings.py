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
    assert "--zds-socket (or AMBIT_ZTUNNEL_ZDS_SOCKET) is required" in capsys.readouterr().err
