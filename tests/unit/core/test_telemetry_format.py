"""Access-log formats (ambit.telemetryformat) and the writer that applies a resolved config."""

from __future__ import annotations

import io
import json

from ambit.telemetryconfig import AccessLogConfig, Provider
from ambit.telemetryformat import ISTIO_TEXT_FORMAT, check_format, render
from ambit.telemetrylog import AccessLogWriter

VALUES = {"START_TIME": "2026-01-01T00:00:00.000Z", "REQ(:METHOD)": "GET", "REQ(X-ENVOY-ORIGINAL-PATH?:PATH)": "/x",
          "PROTOCOL": "HTTP/1.1", "RESPONSE_CODE": 503, "RESPONSE_FLAGS": "UF", "BYTES_RECEIVED": 0, "BYTES_SENT": 19,
          "DURATION": 3, "REQ(:AUTHORITY)": "reviews:9080", "UPSTREAM_HOST": "10.0.0.5:9080"}


def test_istio_default_text_format() -> None:
    line = render("text", {}, VALUES)
    assert line.startswith('[2026-01-01T00:00:00.000Z] "GET /x HTTP/1.1" 503 UF - - "-" 0 19 3 - "-" "-" "-" '
                           '"reviews:9080" "10.0.0.5:9080"')
    assert render("", {}, VALUES) == line and ISTIO_TEXT_FORMAT.count("%") % 2 == 0


def test_json_labels_keep_types_and_default_keys() -> None:
    d = json.loads(render("json", {"code": "%RESPONSE_CODE%", "req": "%REQ(:METHOD)% %REQ(:AUTHORITY)%",
                                   "missing": "%UPSTREAM_LOCAL_ADDRESS%"}, VALUES))
    assert d == {"code": 503, "req": "GET reviews:9080", "missing": None}
    default = json.loads(render("json", {}, VALUES))
    assert default["response_code"] == 503 and default["path"] == "/x" and default["authority"] == "reviews:9080"


def test_custom_text_and_unknown_operators() -> None:
    assert render("%RESPONSE_CODE% %DURATION%ms", {}, VALUES) == "503 3ms"
    assert check_format("%RESPONSE_CODE% %DYNAMIC_METADATA(x)%").startswith("command operator %DYNAMIC_METADATA(x)%")
    assert check_format("%START_TIME% %REQ(:METHOD)%") == ""


def test_writer_applies_disabled_filter_providers_and_files(tmp_path) -> None:
    lines: list[str] = []
    w = AccessLogWriter(lines.append)
    def write(cfg, code):  # noqa: ANN001, ANN202
        return w.write(cfg, {"response.code": code}, lambda: {**VALUES, "RESPONSE_CODE": code}, lambda: "builtin")
    assert write(None, 200) == 1 and lines == ["builtin"]
    assert write(AccessLogConfig(disabled=True), 500) == 0
    assert write(AccessLogConfig(filter="response.code >= 400"), 200) == 0
    assert write(AccessLogConfig(filter="response.code >= 400"), 404) == 1
    path = tmp_path / "access.log"
    cfg = AccessLogConfig(providers=(Provider("json", "envoyFileAccessLog", path=str(path), log_format="json",
                                              labels=(("code", "%RESPONSE_CODE%"),)),
                                     Provider("envoy", "envoyFileAccessLog", path="/dev/stdout", log_format="text")))
    assert write(cfg, 502) == 2
    w.close()
    assert json.loads(path.read_text()) == {"code": 502}
    assert lines[-1].startswith('[2026-01-01T00:00:00.000Z] "GET /x HTTP/1.1" 502 UF')
    assert lines[:2] == ["builtin", "builtin"]
    assert io.StringIO  # the writer takes any opener; files are appended, line-buffered
