"""The lab's sample apps in process: httpbin under gunicorn, the gRPC echo service, and specs that
name them with `app:`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import grpc
import pytest

from ambitctl.lab.apps import APPS, grpc_echo
from ambitctl.lab.apps.httpbin import wsgi_app
from ambitctl.lab.spec import SpecError, parse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_httpbin_app_answers_the_endpoints_istio_tasks_use() -> None:
    c = wsgi_app().test_client()
    assert c.get("/status/418").status_code == 418
    r = c.get("/headers", headers={"x-canary": "true"})
    assert r.status_code == 200 and r.get_json()["headers"]["X-Canary"] == "true"
    assert c.get("/get?a=1").get_json()["args"] == {"a": "1"}


def test_httpbin_is_served_by_gunicorn() -> None:
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "ambitctl.lab.apps.httpbin", "--port", str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/anything/api/x", timeout=2) as r:
                    body = json.loads(r.read())
                    server = r.headers.get("Server", "")
                break
            except OSError:
                if time.monotonic() > deadline or p.poll() is not None:
                    out = p.stdout.read().decode() if p.poll() is not None and p.stdout else ""
                    raise AssertionError(f"httpbin did not start: {out}") from None
                time.sleep(0.2)
        assert body["url"].endswith("/anything/api/x") and body["method"] == "GET"
        assert "gunicorn" in server
        with pytest.raises(urllib.error.HTTPError) as e:   # positive control: the status endpoint really fails
            urllib.request.urlopen(f"http://127.0.0.1:{port}/status/503", timeout=2)
        assert e.value.code == 503
    finally:
        p.terminate()
        p.wait(timeout=10)


@pytest.fixture
def echo_server():
    server, port = grpc_echo.serve(0, grpc_echo.Echo("grpc-echo-v2", "demo", "v2"), host="127.0.0.1")
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_grpc_echo_unary_reports_pod_version_and_metadata(echo_server: str) -> None:
    (r,) = grpc_echo.call(echo_server, "hi", metadata=(("x-canary", "true"),))
    assert r["pod"] == "grpc-echo-v2" and r["version"] == "v2" and r["namespace"] == "demo"
    assert r["message"] == "hi" and r["metadata"]["x-canary"] == "true" and r["method"] == grpc_echo.UNARY
    assert r["peer"].startswith("ipv4:127.0.0.1:")


def test_grpc_echo_server_streaming_sends_count_replies(echo_server: str) -> None:
    rs = grpc_echo.call(echo_server, "s", stream=5)
    assert [int(r["seq"]) for r in rs] == [0, 1, 2, 3, 4] and {r["pod"] for r in rs} == {"grpc-echo-v2"}
    assert all(r["method"] == grpc_echo.STREAM for r in rs)


def test_grpc_echo_fails_with_the_status_asked_for(echo_server: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        grpc_echo.call(echo_server, status="unavailable")
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as e:
        grpc_echo.call(echo_server, stream=grpc_echo.MAX_STREAM + 1)
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_echo_cli_prints_one_json_line_per_reply(echo_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert grpc_echo.main(["call", echo_server, "--stream", "2", "--header", "k=v"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and lines[0]["metadata"]["k"] == "v"
    assert grpc_echo.main(["call", echo_server, "--status", "PERMISSION_DENIED"]) == 1
    assert json.loads(capsys.readouterr().out)["code"] == "PERMISSION_DENIED"


def test_grpc_echo_joins_repeated_metadata_and_repeats_calls(echo_server: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    (r,) = grpc_echo.call(echo_server, metadata=(("x-a", "1"), ("x-a", "2"), ("x-b", "3")))
    assert r["metadata"]["x-a"] == "1,2" and r["metadata"]["x-b"] == "3"
    assert grpc_echo.main(["call", echo_server, "--repeat", "4"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert grpc_echo.main(["call", echo_server]) == 0            # control: one call by default
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_http_echo_reports_method_path_and_joins_repeated_headers() -> None:
    import http.client
    import threading

    from ambitctl.lab.apps.echo import EchoHandler, Server
    srv = Server(("127.0.0.1", 0), EchoHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        c = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=5)
        c.putrequest("DELETE", "/p?q=1", skip_host=True)
        for k, v in (("Host", "echo-v1"), ("X-A", "1"), ("x-a", "2"), ("X-B", "3")):
            c.putheader(k, v)
        c.endheaders()
        body = json.loads(c.getresponse().read())
        assert body["method"] == "DELETE" and body["path"] == "/p?q=1"
        assert body["headers"]["host"] == "echo-v1"
        assert body["headers"]["x-a"] == "1,2" and body["headers"]["x-b"] == "3"
    finally:
        srv.shutdown()
        srv.server_close()


def test_http_echo_logs_a_peer_reset_in_one_line_not_a_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    """A proxy in front of the app restarting (SIGKILL of a ztunnel) resets its connections: the
    app's log must say so, not print a traceback that reads as a crash (the chaos soak checks every
    log of the lab for tracebacks)."""
    import struct
    import threading

    from ambitctl.lab.apps.echo import EchoHandler, Server
    srv = Server(("127.0.0.1", 0), EchoHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        s = socket.create_connection(srv.server_address[:2], timeout=5)
        s.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nx-echo-delay: 0.3\r\n\r\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()                                  # RST while the app is still answering
        for _ in range(50):
            err = capfd.readouterr().err
            if "lost" in err or "Traceback" in err:
                break
            time.sleep(0.05)
        assert "Traceback" not in err
        assert "connection from 127.0.0.1" in err and "lost" in err
    finally:
        srv.shutdown()
        srv.server_close()


def test_specs_name_sample_apps_with_app() -> None:
    spec = parse({"pods": [{"name": "httpbin", "namespace": "demo", "app": "httpbin", "labels": {"app": "httpbin"}},
                           {"name": "g", "namespace": "demo", "app": "grpc-echo",
                            "ports": [{"name": "grpc", "containerPort": 50051}]}]})
    hb, g = spec.pods
    assert hb.command[0] == sys.executable and hb.command[1:3] == ["-m", "ambitctl.lab.apps.httpbin"]
    assert hb.ports == [{"name": "http", "containerPort": 8000}]
    assert g.ports == [{"name": "grpc", "containerPort": 50051}], "explicit ports win over the app's"
    assert set(APPS) >= {"echo", "httpbin", "grpc-echo"}
    with pytest.raises(SpecError, match=r"pods\[0\].app: unknown app 'nginx'"):
        parse({"pods": [{"name": "x", "app": "nginx"}]})
    with pytest.raises(SpecError, match="either app or command"):
        parse({"pods": [{"name": "x", "app": "httpbin", "command": ["sleep", "1"]}]})


def test_ext_authz_app_serves_the_http_and_grpc_check_with_one_decision() -> None:
    """`python -m ambitctl.lab.apps.ext_authz`: HTTP ext_authz on one port, gRPC Authorization/Check
    on the other; `x-ext-authz: allow` allows, anything else denies 403 "denied by ext_authz"."""
    from ambit.api import ext_authz_pb2 as pb
    from ambit.api import ext_authz_pb2_grpc as pb_grpc
    assert APPS["ext-authz"][1] == [{"name": "http", "containerPort": 8000}, {"name": "grpc", "containerPort": 9000}]
    hp, gp = free_port(), free_port()
    p = subprocess.Popen([sys.executable, "-m", "ambitctl.lab.apps.ext_authz", "--http-port", str(hp),
                          "--grpc-port", str(gp)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{hp}/x", headers={"x-ext-authz": "allow"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    assert r.status == 200 and r.headers["x-ext-authz-check-result"] == "allowed"
                    assert json.loads(r.headers["x-ext-authz-check-received"])["path"] == "/x"
                break
            except urllib.error.HTTPError:
                raise  # it answered, and not as it should
            except OSError:  # refused, reset or timed out (URLError is an OSError) while it starts
                assert time.monotonic() < deadline, "the ext_authz app did not answer within 20 s"
                assert p.poll() is None, p.stdout.read().decode(errors="replace") if p.stdout else ""
                time.sleep(0.1)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{hp}/x", timeout=10)
        assert e.value.code == 403 and e.value.read() == b"denied by ext_authz"
        with grpc.insecure_channel(f"127.0.0.1:{gp}") as ch:
            check = pb_grpc.AuthorizationStub(ch).Check
            grpc.channel_ready_future(ch).result(timeout=20)
            ok = check(pb.CheckRequest(attributes=pb.AttributeContext(request=pb.AttributeContext.Request(
                http=pb.AttributeContext.HttpRequest(method="GET", path="/y", headers={"x-ext-authz": "allow"})))),
                timeout=10)
            assert ok.status.code == 0 and ok.ok_response.headers[0].header.value == "allowed"
            no = check(pb.CheckRequest(), timeout=10)
            assert (no.status.code, no.denied_response.status.code, no.denied_response.body) == (
                7, 403, "denied by ext_authz")
    finally:
        p.terminate()
        p.wait(10)
