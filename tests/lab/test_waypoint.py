"""The waypoint end to end: a real waypoint process (python -m waypoint) in a pod of its own,
started by applying a waypoint Gateway, with real HBONE/TLS on both hops, real clients (curl,
h2load, grpcio, iperf3) in lab pods, and the seed examples applied (adapted only where the text
says so).

Layout (tests/lab/specs/waypoint.yaml): namespace `default` uses the waypoint "waypoint"; clients
(frontend, other) and myapp v1/v2 on node1, myapp-v3 and the waypoint on node2.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane import endpoint
from ambit.dataplane.telemetry.metrics import LABELS as TCP_LABELS
from ambit.dataplane.telemetry.metrics import scrape
from ambit.labstore import LabStore
from ambitctl.lab import outside
from ambitctl.lab import waypoints as waypoints_mod
from ambitctl.lab.apps.grpc_echo import UNARY
from ambitctl.lab.topology import LabNames
from tests.lab.conftest import _artifacts
from tests.lab.labctl import Lab, lab_name_for, running_lab
from tests.lab.test_mtls import underlay_capture
from tests.support.jwks_server import JwksServer
from waypoint.telemetry.metrics import HTTP_LABELS as ISTIO_HTTP_LABELS

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")

SPEC = Path(__file__).parent / "specs" / "waypoint.yaml"
EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "examples"
GATEWAY = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
    "metadata": {"name": "waypoint", "namespace": "default", "labels": {"ambit.io/waypoint-for": "service"},
                 "annotations": {"lab.ambit.io/node": "node2"}},
    "spec": {"gatewayClassName": "ambit-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
}
SUBSETS = {    # DestinationRule for the canary example's subsets (the seed has none for them)
    "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
    "metadata": {"name": "myapp-canary", "namespace": "default"},
    "spec": {"host": "myapp", "subsets": [{"name": "stable", "labels": {"version": "v1"}},
                                          {"name": "canary", "labels": {"version": "v2"}},
                                          {"name": "premium", "labels": {"version": "v3"}}]},
}


def example(rel: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((EXAMPLES / rel).read_text()) if d]


def apply(lab: Lab, docs: list[dict], tmp: Path, name: str) -> Path:
    f = tmp / f"{name}.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    lab.ambit("apply", "-f", str(f), "--wait")     # in force at every proxy when it returns
    return f


def delete(lab: Lab, f: Path) -> None:
    lab.ambit("delete", "-f", str(f), "--wait", check=False)


def alive(pid: int) -> bool:
    """A process that runs (a zombie waiting for a reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def waypoints(lab: Lab) -> list[dict]:
    return lab.status()["waypoints"]


def many(lab: Lab, pod: str, url: str, n: int, *opts: str) -> list[dict]:
    """`n` requests in one curl (URL globbing: one process, one keep-alive connection; the waypoint
    still routes every request on its own)."""
    p = lab.exec(pod, "curl", "-sS", "-m", "60", "-w", "\n", *opts, f"{url}?n=[1-{n}]", timeout=90)
    assert p.returncode == 0, p.stderr
    out = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    assert len(out) == n, p.stdout[-500:]
    return out


def versions(replies: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in replies:
        out[r["version"]] = out.get(r["version"], 0) + 1
    return out


def status_of(lab: Lab, pod: str, url: str, *opts: str) -> tuple[int, str]:
    p = lab.exec(pod, "curl", "-sS", "-m", "5", "-o", "-", "-w", "\n%{http_code}", *opts, url, timeout=40)
    body, _, code = p.stdout.rpartition("\n")
    return int(code or 0), body


def waypoint_log(lab: Lab) -> str:
    return (lab.dir / "logs" / "waypoint-default-waypoint.log").read_text(errors="replace")


def access_records(lab: Lab, *needles: str, at_least: int = 1, where: Callable[[dict], bool] | None = None,
                   timeout: float = 5.0) -> list[dict]:
    """The waypoint's access records whose line holds every needle (and that `where` accepts),
    once there are `at_least` of them. The waypoint writes its access lines at the end of an
    event-loop iteration, after the response's last bytes, so a client can be done before its line
    is in the log: wait for it (up to `timeout`; then the caller's assertion says what is missing)."""
    def got() -> list[dict]:
        recs = [json.loads(x.split("access: ", 1)[1]) for x in waypoint_log(lab).splitlines()
                if "ambit.waypoint.access: " in x and all(n in x for n in needles)]
        return [r for r in recs if where is None or where(r)]
    try:
        lab.wait_for(lambda: len(got()) >= at_least, timeout=timeout, interval=0.1,
                     what=f"{at_least} access lines with {needles}")
    except AssertionError:
        pass
    return got()


@pytest.fixture(scope="module")
def wlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory.mktemp("wlab"), "hwp", SPEC, "waypoint-lab") as lab:
        lab.tmp = tmp_path_factory.mktemp("wcfg")  # type: ignore[attr-defined]
        apply(lab, [GATEWAY], lab.tmp, "gateway")  # type: ignore[attr-defined]
        lab.wait_for(lambda: [w for w in waypoints(lab) if w["ready"]], timeout=30, what="waypoint ready")
        lab.wait_for(lambda: status_of(lab, "default/frontend", "http://myapp/")[0] == 200, timeout=30,
                     interval=0.5, what="myapp through the waypoint")
        yield lab


# --- the path -------------------------------------------------------------------------------------

def test_a_gateway_starts_a_waypoint_pod_of_its_own(wlab: Lab) -> None:
    [w] = waypoints(wlab)
    assert (w["namespace"], w["name"], w["node"], w["ready"]) == ("default", "waypoint", "node2", True)
    assert w["ip"].startswith("10.210.2.") and w["pid"]
    # its own netns and cgroup, and the process runs in them
    assert f"{wlab.name}.default.{w['pod']}" in os.listdir("/var/run/netns")
    cg = Path(f"/proc/{w['pid']}/cgroup").read_text()
    assert f"/pods/default.{w['pod']}" in cg
    # its Pod: service account = the Gateway's name, labelled with it, not captured
    obj = LabStore(wlab.dir / "store.json").get("Pod", "default", w["pod"])
    assert obj["spec"]["serviceAccountName"] == "waypoint"
    assert obj["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
    assert obj["metadata"]["labels"]["ambit.io/dataplane-mode"] == "none"
    # its certificate, from the CA through its node's credential, is that service account's identity
    _, certs = endpoint.get_json(waypoints_mod.admin_socket(wlab.dir, "default", "waypoint"), "/certs")
    assert [c["identity"] for c in certs] == ["spiffe://cluster.local/ns/default/sa/waypoint"]
    assert all(c["state"] == "VALID" for c in certs)
    assert "default/waypoint" in wlab.ambit("lab", "status").stdout.split("WAYPOINTS", 1)[1]


def test_requests_go_through_the_waypoint_with_the_source_preserved(wlab: Lab) -> None:
    front = wlab.pod("default/frontend")["ip"]
    r = wlab.curl("default/frontend", "http://myapp/", "-H", "x-request-id: hwp-path-1")
    assert r["peer"].split(":")[0] == front            # Forwarded from the waypoint, honoured
    line = access_records(wlab, "hwp-path-1")[0]
    assert line["downstream_peer_principal"] == "spiffe://cluster.local/ns/default/sa/frontend"
    assert line["destination_service"] == "default/myapp" and line["response_code"] == 200
    assert line["source_workload"] == "frontend" and line["request_id"] == "hwp-path-1"
    # Istio's HTTP metrics, reporter="waypoint", on the waypoint's metrics endpoint
    text = scrape(wlab.dir / "waypoints" / "default.waypoint.metrics.sock")
    reqs = [s for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "istio_requests_total" and s.labels.get("source_workload") == "frontend"]
    assert reqs and all(s.labels["reporter"] == "waypoint" for s in reqs), text[:2000]
    assert any(s.labels["response_code"] == "200" and s.labels["destination_service_name"] == "myapp"
               and s.value >= 1 for s in reqs), reqs
    assert "hwp-path-1" in wlab.log("waypoint") and "hwp-path-1" in wlab.log("waypoint/default/waypoint")


# --- seed examples --------------------------------------------------------------------------------

def test_virtual_service_x_canary_goes_to_v2(wlab: Lab) -> None:
    # control: without the VirtualService, requests spread over v1, v2, v3 (least request, Istio's
    # default: at random when none is busy; 30 requests miss one with probability 3 (2/3)^30 < 2e-5)
    assert set(versions(many(wlab, "default/frontend", "http://myapp/", 30))) == {"v1", "v2", "v3"}
    docs = example("istio/destination-rule.yaml") + example("istio/virtual-service.yaml")
    for d in docs:
        d["metadata"].setdefault("namespace", "default")
    f = apply(wlab, docs, wlab.tmp, "vs")  # type: ignore[attr-defined]
    try:
        wlab.wait_for(lambda: versions(many(wlab, "default/frontend", "http://myapp/", 3)) == {"v1": 3},
                      timeout=15, interval=0.5, what="VirtualService in force")
        assert versions(many(wlab, "default/frontend", "http://myapp/", 30, "-H", "x-canary: true")) == {"v2": 30}
        assert versions(many(wlab, "default/frontend", "http://myapp/", 30)) == {"v1": 30}
        assert versions(many(wlab, "default/frontend", "http://myapp/", 10, "-H", "x-canary: false")) == {"v1": 10}
    finally:
        delete(wlab, f)


def test_canary_cookie_goes_to_premium_and_the_rest_splits_90_10(wlab: Lab) -> None:
    # Adapted: the seed's host `myapp.example.com` is no Service; a waypoint routes by the Service a
    # client addressed (Istio's waypoints do the same), so the VirtualService names `myapp`.
    [vs] = example("istio/canary-deployment.yaml")
    vs["metadata"]["namespace"] = "default"
    vs["spec"]["hosts"] = ["myapp"]
    f = apply(wlab, [SUBSETS, vs], wlab.tmp, "canary")  # type: ignore[attr-defined]
    try:
        wlab.wait_for(lambda: versions(many(wlab, "default/frontend", "http://myapp/", 3, "-b", "user=premium"))
                      == {"v3": 3}, timeout=15, interval=0.5, what="canary VirtualService in force")
        # the seed regex allows other cookies after it (";.*"); curl joins them with "; "
        assert versions(many(wlab, "default/frontend", "http://myapp/", 40, "-b", "user=premium; a=1")) == {"v3": 40}
        # control: a cookie that is not premium takes the split
        n = 1000
        got = versions(many(wlab, "default/frontend", "http://myapp/", n, "-b", "user=basic"))
        # 10 % of 1000: mean 100, sd sqrt(1000*.1*.9) = 9.5; +-4 sd (38) fails a correct split with
        # probability < 1e-4 and catches 5/95 or 15/85.
        print(f"canary split over {n}: {got}")
        assert set(got) <= {"v1", "v2"} and abs(got.get("v2", 0) - 100) <= 38, got
    finally:
        delete(wlab, f)


def test_authorization_policy_allows_get_api_for_frontend_only(wlab: Lab, tmp_path: Path) -> None:
    # Adapted: the seed selects pods (`selector: app: myapp`), which ztunnel enforces at L4 and so
    # cannot evaluate methods/paths (it fails closed). Bound to the Service with `targetRefs` it is
    # the waypoint's to enforce, which is what this test is about.
    [ap] = example("istio/authorization-policy.yaml")
    ap["metadata"]["namespace"] = "default"
    del ap["spec"]["selector"]
    ap["spec"]["targetRefs"] = [{"kind": "Service", "group": "", "name": "myapp"}]
    assert status_of(wlab, "default/other", "http://myapp/api/x")[0] == 200      # control: no policy yet
    f = apply(wlab, [ap], wlab.tmp, "authz")  # type: ignore[attr-defined]
    try:
        wlab.wait_for(lambda: status_of(wlab, "default/other", "http://myapp/api/x")[0] == 403,
                      timeout=15, interval=0.5, what="policy in force")
        assert status_of(wlab, "default/frontend", "http://myapp/api/users")[0] == 200
        assert status_of(wlab, "default/frontend", "http://myapp/api/users", "-X", "POST") == (403, "RBAC: access denied")
        assert status_of(wlab, "default/frontend", "http://myapp/admin") == (403, "RBAC: access denied")
        assert status_of(wlab, "default/other", "http://myapp/api/users") == (403, "RBAC: access denied")
        # a meshed client cannot go around the waypoint: straight to the pod with its own certificate
        # is refused by the destination ztunnel, where the policy above would have denied it
        v1 = wlab.pod("default/myapp-v1")["ip"]
        assert status_of(wlab, "default/other", f"http://{v1}:8080/admin")[0] == 0
        assert status_of(wlab, "default/frontend", f"http://{v1}:8080/api/users")[0] == 0
        assert "bypassed the waypoint" in wlab.log("ztunnel", "node1")
    finally:
        delete(wlab, f)


def test_an_httproute_sends_everything_to_myapp_v2(wlab: Lab) -> None:
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "all-to-v2", "namespace": "default"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "myapp", "port": 80}],
                      "rules": [{"backendRefs": [{"name": "myapp-v2", "port": 80}]}]}}
    assert len(versions(many(wlab, "default/frontend", "http://myapp/", 12))) > 1     # control
    f = apply(wlab, [route], wlab.tmp, "httproute")  # type: ignore[attr-defined]
    try:
        wlab.wait_for(lambda: versions(many(wlab, "default/frontend", "http://myapp/", 3)) == {"v2": 3},
                      timeout=15, interval=0.5, what="HTTPRoute in force")
        assert versions(many(wlab, "default/frontend", "http://myapp/", 50)) == {"v2": 50}
    finally:
        delete(wlab, f)


def test_apply_and_delete_wait_until_the_change_is_in_force(wlab: Lab) -> None:
    """`--wait` returns once every proxy holds the change, so the very next request meets it, round
    after round, with no polling. A waypoint that cannot apply it (stopped) makes the wait time out
    naming that waypoint; `ambit wait` then says when it is in force, once the waypoint runs again."""
    deny = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "wait-deny", "namespace": "default"},
            "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "myapp"}], "action": "DENY",
                     "rules": [{"to": [{"operation": {"paths": ["/deny-me"]}}]}]}}
    f = wlab.tmp / "wait-deny.yaml"  # type: ignore[attr-defined]
    f.write_text(yaml.safe_dump(deny))
    try:
        for _ in range(3):
            p = wlab.ambit("apply", "-f", str(f), "--wait")
            assert re.search(r"in force after [0-9.]+s: \d+ proxies in sync at config version v", p.stdout), p.stdout
            assert status_of(wlab, "default/frontend", "http://myapp/deny-me") == (403, "RBAC: access denied")
            wlab.ambit("delete", "-f", str(f), "--wait")
            assert status_of(wlab, "default/frontend", "http://myapp/deny-me")[0] == 200
        [w] = waypoints(wlab)
        os.kill(w["pid"], signal.SIGSTOP)
        try:
            p = wlab.ambit("apply", "-f", str(f), "--wait", "--timeout", "2s", check=False)
        finally:
            os.kill(w["pid"], signal.SIGCONT)
        assert p.returncode == 1 and "created" in p.stdout, (p.stdout, p.stderr)
        assert "timed out after 2s waiting for the change to be in force" in p.stderr, p.stderr
        assert re.search(r"waypoint/waypoint-0 is STALE \(ACKed v\w+, current v\w+\)", p.stderr), p.stderr
        p = wlab.ambit("wait", "-f", str(f))           # the object as the store has it now
        assert "in force after" in p.stdout, p.stdout
        assert status_of(wlab, "default/frontend", "http://myapp/deny-me") == (403, "RBAC: access denied")
    finally:
        delete(wlab, f)


def test_destination_rule_tls_istio_mutual_is_warned_and_traffic_stays_mesh_mtls(wlab: Lab) -> None:
    """shared/examples/istio/destination-rule-tls.yaml verbatim (no namespace: `default`, where
    myapp is). Documented (configuration.md, DestinationRule): `tls` does not apply to in-mesh
    traffic, which is HBONE mutual TLS anyway, and `ambit apply` says so; the rule is stored and
    myapp keeps answering every request through the waypoint, the client's mesh identity seen."""
    f = EXAMPLES / "istio" / "destination-rule-tls.yaml"
    p = wlab.ambit("apply", "-f", str(f))
    try:
        assert ("DestinationRule/default/myapp-tls: spec.trafficPolicy.tls: accepted, not applied: in-mesh "
                "traffic is always HBONE mutual TLS") in p.stderr, p.stderr
        assert "myapp-tls" in wlab.ambit("get", "destinationrule", "-n", "default").stdout
        got = versions(many(wlab, "default/frontend", "http://myapp/", 30, "-H", "x-request-id: hwp-drtls"))
        assert set(got) == {"v1", "v2", "v3"}, got
        lines = access_records(wlab, "hwp-drtls", at_least=30)
        assert len(lines) == 30 and all(x["response_code"] == 200 and x["downstream_peer_principal"]
                                        == "spiffe://cluster.local/ns/default/sa/frontend" for x in lines), lines[:2]
    finally:
        wlab.ambit("delete", "-f", str(f), check=False)


# --- end-user authentication (RequestAuthentication) ----------------------------------------------

ISSUER = "https://issuer.lab"


def test_a_deny_on_a_header_value_holds_when_curl_repeats_the_header_or_sends_it_empty(wlab: Lab) -> None:
    """Istio matches `request.headers[..]` against the values joined with "," (any element matches)
    and `*` as present: a client that sends the header twice, or empty, is still denied, over
    HTTP/1.1 and HTTP/2 alike."""
    ap = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
          "metadata": {"name": "deny-admin-header", "namespace": "default"},
          "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "myapp"}], "action": "DENY",
                   "rules": [{"when": [{"key": "request.headers[x-user]", "values": ["admin"]}]},
                             {"when": [{"key": "request.headers[x-debug]", "values": ["*"]}]}]}}
    f = apply(wlab, [ap], wlab.tmp, "deny-header")  # type: ignore[attr-defined]
    try:
        wlab.wait_for(lambda: status_of(wlab, "default/frontend", "http://myapp/h", "-H", "x-user: admin")[0] == 403,
                      timeout=15, interval=0.5, what="policy in force")
        for proto in ([], ["--http2-prior-knowledge"]):
            assert status_of(wlab, "default/frontend", "http://myapp/h", *proto, "-H", "x-user: guest")[0] == 200
            assert status_of(wlab, "default/frontend", "http://myapp/h", *proto,
                             "-H", "x-user: guest", "-H", "x-user: admin") == (403, "RBAC: access denied"), proto
            assert status_of(wlab, "default/frontend", "http://myapp/h", *proto,
                             "-H", "x-debug;") == (403, "RBAC: access denied"), proto     # `x-debug:` empty
    finally:
        delete(wlab, f)


def test_an_allow_on_hosts_matches_the_host_curl_sends_whole(wlab: Lab) -> None:
    """Istio's host match is the whole Host (or :authority), case-insensitive: `myapp` admits what
    curl sends for http://myapp/ (no :80) in any case, over HTTP/1.1 and HTTP/2, not `myapp:80`."""
    ap = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
          "metadata": {"name": "allow-host", "namespace": "default"},
          "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "myapp"}],
                   "rules": [{"to": [{"operation": {"hosts": ["myapp"]}}]}]}}
    f = apply(wlab, [ap], wlab.tmp, "allow-host")  # type: ignore[attr-defined]
    try:
        wlab.wait_for(lambda: status_of(wlab, "default/frontend", "http://myapp/", "-H", "Host: other")[0] == 403,
                      timeout=15, interval=0.5, what="policy in force")
        for proto in ([], ["--http2-prior-knowledge"]):
            assert status_of(wlab, "default/frontend", "http://myapp/", *proto)[0] == 200, proto
            assert status_of(wlab, "default/frontend", "http://myapp/", *proto, "-H", "Host: MyApp")[0] == 200, proto
            assert status_of(wlab, "default/frontend", "http://myapp/", *proto,
                             "-H", "Host: myapp:80") == (403, "RBAC: access denied"), proto
    finally:
        delete(wlab, f)


def myapp_jwt(name: str, server: JwksServer, **rule: object) -> dict:
    """A RequestAuthentication for myapp whose keys the controller fetches from `server`."""
    return {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "myapp"}],
                     "jwtRules": [{"issuer": ISSUER, "audiences": ["myapp"], "jwksUri": f"{server.base}/jwks.json",
                                   **rule}]}}


def test_request_authentication_with_a_jwks_uri_and_a_policy_requiring_a_principal(wlab: Lab) -> None:
    """JWTs checked at the waypoint against keys the controller fetched from the lab host's JWKS
    server (jwksUri): valid admitted, forged/expired/wrong-audience 401, no token passes until a
    policy requires a principal, and a key rotation at the server is picked up (the lab controller
    re-fetches every 2 s)."""
    server = JwksServer()
    server.rotate("k1")
    ra = myapp_jwt("jwt", server, outputClaimToHeaders=[{"header": "x-jwt-sub", "claim": "sub"}])
    ap = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
          "metadata": {"name": "require-jwt", "namespace": "default"},
          "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "myapp"}],
                   "rules": [{"from": [{"source": {"requestPrincipals": [f"{ISSUER}/*"]}}]}]}}

    def code(tok: str | None) -> int:
        return status_of(wlab, "default/frontend", "http://myapp/jwt",
                         *(["-H", f"authorization: Bearer {tok}"] if tok else []))[0]

    f = apply(wlab, [ra], wlab.tmp, "ra")  # type: ignore[attr-defined]
    g = None
    try:
        forged = server.token("k1", forge=True)
        wlab.wait_for(lambda: code(forged) == 401, timeout=20, interval=0.5, what="RequestAuthentication in force")
        good = server.token("k1")
        # published at once failing closed, then with the keys the controller fetched in the background
        wlab.wait_for(lambda: code(good) == 200, timeout=20, interval=0.5, what="the fetched key set in force")
        r = wlab.curl("default/frontend", "http://myapp/jwt", "-H", f"authorization: Bearer {good}")
        assert r["headers"].get("x-jwt-sub") == "alice"               # outputClaimToHeaders
        assert "authorization" not in r["headers"]                    # forwardOriginalToken: false
        q = wlab.curl("default/frontend", f"http://myapp/jwt?a=1&access_token={good}")
        assert (q["path"], q["headers"].get("x-jwt-sub")) == ("/jwt?a=1", "alice")   # nor in the query
        assert code(server.token("k1", exp=-600)) == 401              # expired
        assert code(server.token("k1", aud="other")) == 401           # wrong audience
        assert status_of(wlab, "default/frontend", "http://myapp/jwt", "-H", f"authorization: Bearer {forged}")[1] \
            == "Jwt verification fails"
        assert code(None) == 200                                      # no token: passes (no policy yet)
        # every token must verify: a forged header next to a valid ?access_token= was admitted, and
        # the forged header forwarded to the backend (HTTP/1.1 and HTTP/2 alike)
        for version in ("--http1.1", "--http2-prior-knowledge"):
            both = status_of(wlab, "default/frontend", f"http://myapp/jwt?access_token={good}", version,
                             "-H", f"authorization: Bearer {forged}")
            assert both == (401, "Jwt verification fails"), (version, both)
        g = apply(wlab, [ap], wlab.tmp, "require-jwt")  # type: ignore[attr-defined]
        wlab.wait_for(lambda: code(None) == 403, timeout=15, interval=0.5, what="requestPrincipals policy")
        assert code(good) == 200
        # rotation: the server now publishes k2 only; its tokens verify, k1's no longer do
        server.rotate("k2")
        wlab.wait_for(lambda: code(server.token("k2")) == 200, timeout=30, interval=0.5, what="rotated keys")
        assert code(good) == 401
    finally:
        if g is not None:
            delete(wlab, g)
        delete(wlab, f)
        server.close()


def test_routes_and_policies_read_the_verified_tokens_claims(wlab: Lab) -> None:
    """Istio's claim-based routing (`@request.auth.claims.group` in a VirtualService match) and an
    OAuth scope read as its words (`scope: "read write"` has the scope `write`), through a real
    waypoint: a client cannot reach the canary with a header of the claim's name, nor with an
    unverified token, and a POST needs a token whose scope includes `write`."""
    server = JwksServer()
    server.rotate("k1")
    ra = myapp_jwt("jwt-claims", server, spaceDelimitedClaims=["roles"],
                   outputClaimToHeaders=[{"header": "x-jwt-scope", "claim": "scope"}])
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
          "metadata": {"name": "by-claim", "namespace": "default"},
          "spec": {"hosts": ["myapp"], "http": [
              {"match": [{"headers": {"@request.auth.claims.group": {"exact": "beta"}}}],
               "route": [{"destination": {"host": "myapp", "subset": "canary"}}]},
              {"match": [{"headers": {"@request.auth.claims[roles]": {"exact": "premium"}}}],
               "route": [{"destination": {"host": "myapp", "subset": "premium"}}]},
              {"route": [{"destination": {"host": "myapp", "subset": "stable"}}]}]}}
    ap = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
          "metadata": {"name": "writers", "namespace": "default"},
          "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "myapp"}],
                   "rules": [{"to": [{"operation": {"methods": ["GET"]}}]},
                             {"to": [{"operation": {"methods": ["POST"]}}],
                              "when": [{"key": "request.auth.claims[scope]", "values": ["write"]}]}]}}

    def version(*opts: str) -> str:
        return str(wlab.curl("default/frontend", "http://myapp/claims", *opts)["version"])

    def bearer(**claims: object) -> tuple[str, str]:
        return "-H", f"authorization: Bearer {server.token('k1', **claims)}"

    f = apply(wlab, [SUBSETS, ra, vs, ap], wlab.tmp, "claims")  # type: ignore[attr-defined]
    try:
        wlab.wait_for(lambda: version(*bearer(group="beta")) == "v2", timeout=30, interval=0.5,
                      what="claim routing with the fetched key set in force")
        assert version(*bearer(group="stable")) == "v1"
        assert version() == "v1"                                              # no token, no claim
        # a header of the claim's name is no claim (nor a valid header name: refused, or routed as without it)
        code, body = status_of(wlab, "default/frontend", "http://myapp/claims", "-H", "@request.auth.claims.group: beta")
        assert code == 400 or (code == 200 and json.loads(body)["version"] == "v1"), (code, body)
        assert status_of(wlab, "default/frontend", "http://myapp/claims",
                         "-H", f"authorization: Bearer {server.token('k1', forge=True, group='beta')}")[0] == 401
        assert version(*bearer(roles="basic premium")) == "v3"                # spaceDelimitedClaims
        assert version(*bearer(roles="basicpremium")) == "v1"
        # the scope's words for the policy; the claim header gets the token's own value
        r = wlab.curl("default/frontend", "http://myapp/claims", "-X", "POST", "-d", "x", *bearer(scope="read write"))
        assert r["headers"].get("x-jwt-scope") == "read write"
        for scope, code in (("read write", 200), ("read", 403), ("write-all", 403)):
            got = status_of(wlab, "default/frontend", "http://myapp/claims", "-X", "POST", "-d", "x",
                            *bearer(scope=scope))[0]
            assert got == code, (scope, got)
        assert status_of(wlab, "default/frontend", "http://myapp/claims", "-X", "POST", "-d", "x")[0] == 403
    finally:
        delete(wlab, f)
        server.close()


# --- protocols ------------------------------------------------------------------------------------

def test_http2_prior_knowledge_end_to_end(wlab: Lab) -> None:
    p = wlab.exec("default/frontend", "curl", "-sS", "-m", "5", "--http2-prior-knowledge", "-w", "\n%{http_version}",
                  "http://myapp/h2", timeout=40)
    body, _, ver = p.stdout.rpartition("\n")
    assert p.returncode == 0 and ver == "2" and json.loads(body)["path"] == "/h2"
    # control: the same client without prior knowledge speaks HTTP/1.1
    p = wlab.exec("default/frontend", "curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_version}",
                  "http://myapp/h1", timeout=40)
    assert p.stdout == "1.1"
    p = wlab.exec("default/frontend", "h2load", "-n", "300", "-c", "3", "-m", "10", "http://myapp/", timeout=90)
    assert re.search(r"requests: 300 total, 300 started, 300 done, 300 succeeded", p.stdout), p.stdout


def test_grpc_end_to_end(wlab: Lab) -> None:
    def call(*args: str) -> dict:
        p = wlab.exec("default/frontend", sys.executable, "-m", "ambitctl.lab.apps.grpc_echo", "call", "grpc:9000",
                      "--message", "hi", *args, timeout=60)
        return json.loads(p.stdout.strip().splitlines()[-1])
    reply = call()
    assert reply["message"] == "hi" and reply["method"] == UNARY and reply["pod"], reply
    # the status travels in trailers, through both HTTP/2 legs
    assert call("--status", "FAILED_PRECONDITION") == {"code": "FAILED_PRECONDITION",
                                                       "details": "asked to fail with FAILED_PRECONDITION"}
    before = waypoint_samples(wlab)
    assert len([json.loads(x) for x in wlab.exec(
        "default/frontend", sys.executable, "-m", "ambitctl.lab.apps.grpc_echo", "call", "grpc:9000", "--stream", "5",
        timeout=60).stdout.strip().splitlines()]) == 5, "server streaming through the waypoint"
    assert '"destination_service": "default/grpc"' in waypoint_log(wlab)
    # Istio's gRPC message counters: one request message, five response messages, Istio's labels
    sel = {"reporter": "waypoint", "destination_service_name": "grpc", "source_workload": "frontend",
           "request_protocol": "grpc", "grpc_response_status": "0", "response_code": "200"}

    def delta(name: str) -> float:
        return sample_sum(waypoint_samples(wlab), name, sel) - sample_sum(before, name, sel)
    wlab.wait_for(lambda: delta("istio_response_messages_total") == 5, timeout=10, interval=0.2,
                  what="the stream's 5 response messages counted")
    assert delta("istio_request_messages_total") == 1
    [labels] = {tuple(sorted(s.labels)) for s in waypoint_samples(wlab) if s.name == "istio_request_messages_total"}
    assert set(labels) == set(ISTIO_HTTP_LABELS)


def waypoint_samples(lab: Lab) -> list:
    text = scrape(lab.dir / "waypoints" / "default.waypoint.metrics.sock")
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def sample_sum(samples: list, name: str, sel: dict[str, str]) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in sel.items()))


def test_a_non_http_protocol_to_a_waypointed_service_is_forwarded_at_l4(wlab: Lab) -> None:
    p = wlab.exec("default/frontend", "iperf3", "-c", "iperf", "-p", "5201", "-t", "2", "-J", timeout=60)
    assert p.returncode == 0, p.stdout[-500:] + p.stderr
    res = json.loads(p.stdout)
    assert res["end"]["sum_received"]["bytes"] > 1_000_000
    # the waypoint relayed it as opaque TCP (iperf3's data connection carried the bulk)
    front_ip = wlab.pod("default/frontend")["ip"]
    tcp = access_records(wlab, '"protocol": "TCP"', where=lambda r: r["bytes_received"] > 1_000_000
                         and r["downstream_remote_address"] == front_ip)
    assert tcp, "no TCP access line for iperf3's data connection"
    # and reported it with Istio's TCP metrics, reporter="waypoint" (control and data connections)
    sel = {"reporter": "waypoint", "source_workload": "frontend", "destination_service_name": "iperf",
           "destination_service_namespace": "default", "request_protocol": "tcp",
           "connection_security_policy": "mutual_tls"}
    samples = waypoint_samples(wlab)
    assert sample_sum(samples, "istio_tcp_connections_opened_total", sel) >= 2
    assert sample_sum(samples, "istio_tcp_connections_closed_total", sel) >= 2
    assert sample_sum(samples, "istio_tcp_received_bytes_total", sel) > 1_000_000
    tcp_labels = {tuple(sorted(s.labels)) for s in samples if s.name == "istio_tcp_received_bytes_total"
                  and s.labels.get("reporter") == "waypoint"}
    assert tcp_labels == {tuple(sorted(TCP_LABELS))}


def test_a_virtual_service_tcp_route_sends_non_http_connections_elsewhere(wlab: Lab) -> None:
    """`tcp` and `tls` routes, applied by the waypoint to what its detector finds is not HTTP:
    iperf's port routed to myapp-v2's HTTP server, which answers the probe's bytes with its error
    page (iperf3 would not), and a TLS client routed by the server name it asks for."""
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "iperf-moved",
                                                                                         "namespace": "default"},
          # the SNI names a tls route matches are within its hosts (Istio's validateSniHost)
          "spec": {"hosts": ["iperf", "*.moved.example"],
                   "tcp": [{"match": [{"port": 5201, "sourceLabels": {"app": "frontend"}}],
                            "route": [{"destination": {"host": "myapp-v2", "port": {"number": 80}}}]}],
                   "tls": [{"match": [{"port": 5201, "sniHosts": ["*.moved.example"]}],
                            "route": [{"destination": {"host": "myapp", "port": {"number": 80}}}]}]}}
    probe = "exec 3<>/dev/tcp/iperf/5201; printf '\\001\\002probe\\r\\n\\r\\n' >&3; timeout 1 head -c 12 <&3"

    def http_answered(pod: str) -> bool:
        """http.server's error page (no status line: the probe's "request" has no HTTP version)."""
        return wlab.exec(pod, "bash", "-c", probe, timeout=20).stdout.startswith("<!DOCTYPE")
    assert not http_answered("default/frontend"), "iperf3 answers no HTTP"
    f = apply(wlab, [vs], wlab.tmp, "tcp-route")  # type: ignore[attr-defined]
    try:
        wlab.wait_for(lambda: http_answered("default/frontend"), timeout=20, interval=0.5,
                      what="the tcp route in force at the waypoint")
        assert not http_answered("default/other"), "a client the match does not name"
        recs = [json.loads(x.split("access: ", 1)[1]) for x in waypoint_log(wlab).splitlines()
                if "ambit.waypoint.access" in x and '"protocol": "TCP"' in x and "iperf-moved" in x]
        assert recs and recs[-1]["route_name"] == "VirtualService/default/iperf-moved", recs[-1:]
        assert recs[-1]["destination_service"] == "default/myapp-v2"
        # a TLS client (openssl) asking for a name the tls route covers, from the pod the tcp
        # route does not match: routed by its SNI to myapp (whose HTTP server fails the handshake)
        wlab.exec("default/other", "bash", "-c", "timeout 2 openssl s_client -connect iperf:5201 "
                  "-servername api.moved.example </dev/null", timeout=20)

        def by_sni() -> list[dict]:
            return [json.loads(x.split("access: ", 1)[1]) for x in waypoint_log(wlab).splitlines()
                    if "ambit.waypoint.access" in x and '"destination_service": "default/myapp"' in x
                    and "iperf-moved" in x]
        wlab.wait_for(by_sni, timeout=10, what="the TLS tunnel routed by its server name")
    finally:
        delete(wlab, f)


# --- the wire ---------------------------------------------------------------------------------------

def test_both_hops_carry_only_tls(wlab: Lab, tmp_path: Path) -> None:
    marker = f"hwp-marker-{os.getpid()}-{time.time_ns()}"
    pcap = tmp_path / "wp.pcap"
    names_node1, ul2 = f"{wlab.name}.node1", next(n["underlayIP"] for n in wlab.status()["nodes"] if n["name"] == "node2")
    node2 = f"{wlab.name}.node2"
    listener = subprocess.Popen(["ip", "netns", "exec", node2, sys.executable, "-c",
                                 "import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);"
                                 "s.bind(('0.0.0.0', 18999)); s.listen(); c,_=s.accept(); c.recv(100)"])
    try:
        time.sleep(0.5)
        with underlay_capture(wlab, pcap):
            # until a request lands on a node1 pod (v1, v2): v3 is on the waypoint's own node and
            # its hop would not cross the underlay
            for _ in range(30):
                r = wlab.curl("default/frontend", "http://myapp/", "-H", f"x-marker: {marker}")
                if r["pod"] in ("myapp-v1", "myapp-v2"):
                    break
            # control: the same marker in clear between the nodes is seen by this capture
            subprocess.run(["ip", "netns", "exec", names_node1, "bash", "-c",
                            f"echo plain-{marker} > /dev/tcp/{ul2}/18999"], timeout=10)
    finally:
        listener.kill()
        listener.wait()
    raw = pcap.read_bytes()
    assert f"plain-{marker}".encode() in raw                 # the capture sees clear text when there is some
    assert raw.count(marker.encode()) == raw.count(f"plain-{marker}".encode())   # ... and only that
    wp_ip = waypoints(wlab)[0]["ip"]
    front = wlab.pod("default/frontend")["ip"]
    out = subprocess.run(["tshark", "-r", str(pcap), "-d", "tcp.port==15008,tls", "-Y", "tcp.port == 15008 && tls.record",
                          "-T", "fields", "-e", "ip.src", "-e", "ip.dst"],
                         capture_output=True, text=True, timeout=60).stdout
    flows = {tuple(line.split("\t")) for line in out.splitlines() if line.strip()}
    mine = {wlab.pod("default/myapp-v1")["ip"], wlab.pod("default/myapp-v2")["ip"]}
    # hop 1, client pod -> waypoint, and hop 2, waypoint -> a myapp pod on node1: TLS records on :15008
    assert (front, wp_ip) in flows and (wp_ip, front) in flows, flows
    assert any(src == wp_ip and dst in mine for src, dst in flows), flows


# --- an ingress gateway in front of a Service that uses the waypoint -------------------------------

EDGE = [
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
     "metadata": {"name": "edge", "namespace": "default", "annotations": {"lab.ambit.io/node": "node1"}},
     "spec": {"gatewayClassName": "ambit", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}},
    {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "edge", "namespace": "default"},
     "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": "myapp", "port": 80}]}]}},
    {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
     "metadata": {"name": "no-admin", "namespace": "default"},
     "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "myapp"}], "action": "DENY",
              "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}},
]


def test_an_ingress_gateway_sends_a_waypointed_service_through_its_waypoint(wlab: Lab) -> None:
    """myapp's pods accept tunnels only from its waypoint (the enforcement rule), so the ingress
    gateway sends its requests for myapp to the waypoint, as Istio's gateways do for Services
    labelled istio.io/ingress-use-waypoint: the waypoint's routes (the seed VirtualService's
    x-canary) and L7 policy (a DENY on /admin) apply to traffic from outside the mesh too. Before,
    every such request was refused at myapp's ztunnel ("bypassed the waypoint") and answered 503."""
    docs = example("istio/destination-rule.yaml") + example("istio/virtual-service.yaml")
    for d in docs:
        d["metadata"].setdefault("namespace", "default")
    f = apply(wlab, docs + EDGE, wlab.tmp, "edge")  # type: ignore[attr-defined]
    try:
        def programmed() -> str | None:
            st = json.loads(wlab.ambit("get", "gateway", "edge", "-n", "default", "-o", "json").stdout).get("status") or {}
            ok = any(c["type"] == "Programmed" and c["status"] == "True" for c in st.get("conditions") or [])
            return st["addresses"][0]["value"] if ok and st.get("addresses") else None
        ip = wlab.wait_for(programmed, timeout=30, what="the edge Gateway Programmed")
        outside_ns = outside.netns(LabNames(wlab.name))

        def get(path: str, *opts: str) -> tuple[int, str]:
            p = subprocess.run(["ip", "netns", "exec", outside_ns, "curl", "-sS", "-m", "5", "-o", "-", "-w",
                                "\n%{http_code}", *opts, f"http://{ip}{path}"], capture_output=True, text=True, timeout=30)
            body, _, code = p.stdout.rpartition("\n")
            return int(code or 0), body
        wlab.wait_for(lambda: get("/")[0] == 200 and get("/admin")[0] == 403, timeout=30, interval=0.5,
                      what="myapp through the ingress gateway and the waypoint")
        replies = [get("/", "-H", "x-canary: true") for _ in range(10)] + [get("/") for _ in range(10)]
        assert all(code == 200 for code, _ in replies), replies
        assert [json.loads(body)["version"] for _, body in replies] == ["v2"] * 10 + ["v1"] * 10
        assert get("/admin") == (403, "RBAC: access denied")
        # the waypoint served them, with the gateway's identity as the peer
        line = [x for x in waypoint_log(wlab).splitlines() if "ambit.waypoint.access" in x and '"/admin"' in x][-1]
        assert '"downstream_peer_principal": "spiffe://cluster.local/ns/default/sa/edge"' in line, line
    finally:
        delete(wlab, f)


def test_a_waypoint_sends_a_service_bound_to_another_waypoint_through_that_one(wlab: Lab) -> None:
    """myapp's VirtualService sends everything to the Service myapp-v2, which uses a waypoint of
    its own ("other"): the first waypoint goes through "other", so myapp-v2's own L7 policy (a DENY
    on /secret bound to it) holds for traffic routed there from myapp. Before, the first waypoint
    went straight to the pod (which it fronts for myapp too) and the DENY never ran."""
    original = json.loads(wlab.ambit("get", "service", "myapp-v2", "-n", "default", "-o", "json").stdout)
    bound = json.loads(json.dumps(original))
    bound["metadata"].setdefault("labels", {})["istio.io/use-waypoint"] = "other"
    other = json.loads(json.dumps(GATEWAY))
    other["metadata"]["name"] = "other"
    vs = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "to-v2", "namespace": "default"},
          "spec": {"hosts": ["myapp"], "http": [{"route": [{"destination": {"host": "myapp-v2"}}]}]}}
    deny = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "v2-no-secret", "namespace": "default"},
            "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "myapp-v2"}], "action": "DENY",
                     "rules": [{"to": [{"operation": {"paths": ["/secret"]}}]}]}}
    f = apply(wlab, [other, vs, deny], wlab.tmp, "chain")  # type: ignore[attr-defined]
    apply(wlab, [bound], wlab.tmp, "chain-svc")  # type: ignore[attr-defined]
    try:
        wlab.wait_for(lambda: status_of(wlab, "default/frontend", "http://myapp/secret")[0] == 403, timeout=30,
                      interval=0.5, what="myapp-v2's policy at its own waypoint")
        assert status_of(wlab, "default/frontend", "http://myapp/secret") == (403, "RBAC: access denied")
        assert versions(many(wlab, "default/frontend", "http://myapp/", 10)) == {"v2": 10}
        # "other" served them, with the first waypoint's identity as the peer
        log = (wlab.dir / "logs" / "waypoint-default-other.log").read_text(errors="replace")
        line = [x for x in log.splitlines() if "ambit.waypoint.access" in x and '"/secret"' in x][-1]
        assert '"downstream_peer_principal": "spiffe://cluster.local/ns/default/sa/waypoint"' in line, line
        # myapp-v2 opted out of every waypoint: the route still reaches it, straight from the first
        # waypoint (which used to know only the Services it fronts: 503 UH), with the client's address
        unbound = json.loads(json.dumps(original))
        unbound["metadata"].setdefault("labels", {})["istio.io/use-waypoint"] = "none"
        apply(wlab, [unbound], wlab.tmp, "chain-svc")  # type: ignore[attr-defined]
        wlab.wait_for(lambda: status_of(wlab, "default/frontend", "http://myapp/secret")[0] == 200, timeout=30,
                      interval=0.5, what="myapp-v2 without a waypoint of its own")
        r = wlab.curl("default/frontend", "http://myapp/")
        assert r["version"] == "v2" and r["peer"].split(":")[0] == wlab.pod("default/frontend")["ip"], r
    finally:
        apply(wlab, [original], wlab.tmp, "chain-svc")  # type: ignore[attr-defined]
        delete(wlab, f)
        wlab.wait_for(lambda: len(waypoints(wlab)) == 1, timeout=20, interval=0.3, what="waypoint other removed")


# --- waypoint-for ---------------------------------------------------------------------------------

def test_waypoint_for_all_takes_traffic_addressed_to_pods_too(wlab: Lab) -> None:
    v1 = wlab.pod("default/myapp-v1")["ip"]
    assert status_of(wlab, "default/frontend", f"http://{v1}:8080/")[0] == 0     # control: for service only
    gw = json.loads(json.dumps(GATEWAY))
    gw["metadata"]["labels"]["ambit.io/waypoint-for"] = "all"
    apply(wlab, [gw], wlab.tmp, "gateway-all")  # type: ignore[attr-defined]
    try:
        wlab.wait_for(lambda: status_of(wlab, "default/frontend", f"http://{v1}:8080/")[0] == 200,
                      timeout=15, interval=0.5, what="workload traffic through the waypoint")
        r = wlab.curl("default/frontend", f"http://{v1}:8080/", "-H", "x-request-id: hwp-wl-1")
        assert r["pod"] == "myapp-v1" and r["peer"].split(":")[0] == wlab.pod("default/frontend")["ip"]
        assert access_records(wlab, "hwp-wl-1")[0]["route_name"] == "passthrough"
    finally:
        apply(wlab, [GATEWAY], wlab.tmp, "gateway")  # type: ignore[attr-defined]
        wlab.wait_for(lambda: status_of(wlab, "default/frontend", f"http://{v1}:8080/")[0] == 0,
                      timeout=15, interval=0.5, what="back to waypoint-for: service")


# --- deletion ---------------------------------------------------------------------------------------

def test_deleting_the_gateway_stops_the_waypoint_and_leaves_nothing(wlab: Lab) -> None:
    [w] = waypoints(wlab)
    pid, pod = w["pid"], w["pod"]
    netns = f"{wlab.name}.default.{pod}"
    cg = LabNames(wlab.name).pod_cgroup("node2", "default", pod)
    assert alive(pid) and cg.exists()
    delete(wlab, wlab.tmp / "gateway.yaml")  # type: ignore[attr-defined]
    wlab.wait_for(lambda: not waypoints(wlab), timeout=20, interval=0.3, what="waypoint removed")
    assert not alive(pid)
    assert netns not in os.listdir("/var/run/netns")
    assert not cg.exists()
    assert not Path(f"/etc/netns/{netns}").exists()
    assert "waypoint/default/waypoint" not in wlab.status()["processes"]
    assert pod not in wlab.ambit("get", "pods", "-n", "default", check=False).stdout
    # with the namespace still bound to a waypoint that no longer runs, traffic is refused (fail
    # closed), where it flowed a moment ago
    assert status_of(wlab, "default/frontend", "http://myapp/")[0] == 0


def test_lab_down_removes_a_running_waypoint(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "state", name=lab_name_for("hwq"))
    try:
        lab.up("--spec", str(SPEC))
        apply(lab, [GATEWAY], tmp_path, "gateway")
        [w] = lab.wait_for(lambda: [w for w in waypoints(lab) if w["pid"]], timeout=30, what="waypoint running")
        cg = LabNames(lab.name).pod_cgroup("node2", "default", w["pod"])
        assert cg.exists()                                          # control: it is there
    finally:
        lab.save_logs(_artifacts("waypoint-lab-down"))
        lab.down()
    assert not alive(w["pid"])
    assert not [n for n in os.listdir("/var/run/netns") if n.startswith(f"{lab.name}.")]
    assert not cg.exists() and not Path(f"/etc/netns/{lab.name}.default.{w['pod']}").exists()
    assert not (tmp_path / "state" / "waypoints").exists()
