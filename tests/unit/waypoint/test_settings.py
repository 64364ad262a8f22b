"""The engine's bounds and timeouts are one settings group the waypoint binary exposes as flags and
environment variables (ambit/settings.py), checked at start."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ambit import settings
from ambit.dataplane.nghttp2 import ffi as nghttp2_ffi
from waypoint.http.settings import HttpSettings


@dataclass(frozen=True)
class Binary:
    http: HttpSettings = field(default_factory=HttpSettings)


def test_flags_and_environment_reach_the_engine_settings() -> None:
    s = settings.load(Binary, ["--http-max-header-bytes", "8192", "--http-detect-timeout", "0.25"],
                      {"AMBIT_WAYPOINT_HTTP_STREAM_IDLE_TIMEOUT": "30"}, env_prefix="AMBIT_WAYPOINT")
    assert (s.http.max_header_bytes, s.http.detect_timeout, s.http.stream_idle_timeout) == (8192, 0.25, 30.0)
    assert s.http.max_headers == 100                   # Envoy's default headers count


def test_bad_values_are_refused_naming_the_flag() -> None:
    with pytest.raises(settings.SettingsError, match="--http-header-timeout.*must be > 0"):
        settings.load(Binary, ["--http-header-timeout", "0"], {}, env_prefix="AMBIT_WAYPOINT")


def test_h2_codec_is_checked_also_when_defaulted(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(settings.SettingsError, match="--http-h2-codec.*must be one of nghttp2, h2"):
        settings.load(Binary, ["--http-h2-codec", "hyper"], {}, env_prefix="AMBIT_WAYPOINT")
    assert settings.load(Binary, [], {}, env_prefix="AMBIT_WAYPOINT").http.h2_codec == "nghttp2"
    # a machine without libnghttp2: the default is refused at start, naming the library
    monkeypatch.setattr(nghttp2_ffi, "SONAME", "libnghttp2-missing.so.14")
    monkeypatch.setattr(nghttp2_ffi, "_lib", None)
    with pytest.raises(settings.SettingsError, match="--http-h2-codec nghttp2: libnghttp2-missing.so.14 cannot"):
        settings.load(Binary, [], {}, env_prefix="AMBIT_WAYPOINT")
    assert settings.load(Binary, ["--http-h2-codec", "h2"], {}, env_prefix="AMBIT_WAYPOINT").http.h2_codec == "h2"
