"""`ambit authz check`: the data plane's own evaluators (ztunnel routing and admission, the
waypoint's L7 authorization) decide each request; the table (tests/unit/ambitctl/authz_scenario.py)
gives Istio's answer with the deciding policy and rule. The lab test runs the same table with real
requests (tests/lab/test_cli_lab.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from ambit.labstore import LabStore
from ambitctl import authzcheck as ac
from ambitctl.cli import build_parser
from ambitctl.lab.paths import store_path
from tests.unit.ambitctl.authz_scenario import CASES, POLICIES, lab_objects

OBJECTS = lab_objects()


def decider(r: ac.Result) -> tuple[str, str]:
    hops = [h for p in r.paths for h in p.hops]
    denying = [h for h in hops if not h.allowed]
    named = denying or [h for h in hops if h.policy]
    if not named:
        return "", ""
    h = named[0]
    return h.policy.split(" ", 1)[-1] if h.policy else "", h.rule


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert {c[5] for c in CASES} == {True, False}


@pytest.mark.parametrize("src,dst,method,path,headers,allowed,policy,rule", CASES,
                         ids=[f"{c[0]}->{c[1]} {c[2]} {c[3]}{' ' + str(dict(c[4])) if c[4] else ''}" for c in CASES])
def test_each_case(src: str, dst: str, method: str, path: str, headers: tuple[tuple[str, str], ...],
                   allowed: bool, policy: str, rule: str) -> None:
    r = ac.check(OBJECTS, src, dst, ac.Request(method, path, headers))
    assert r.allowed is allowed, json.dumps(r.as_dict(), indent=1)
    assert decider(r) == (policy, rule), json.dumps(r.as_dict(), indent=1)


def test_the_hops_say_where_each_decision_was_taken() -> None:
    r = ac.check(OBJECTS, "default/frontend", "myapp.default:80", ac.Request("GET", "/api/x"))
    assert [p.destination for p in r.paths] == ["default/myapp-v1", "default/myapp-v2"]
    first = r.paths[0].hops
    assert first[0].where == "waypoint default/waypoint (L7)" and first[0].rule == "spec.rules[0]"
    assert first[1].where.startswith("ztunnel node1 -> default/myapp-v1:8080 (L4, HBONE)")
    assert first[1].policy == "AuthorizationPolicy default/myapp-via-waypoint"
    r = ac.check(OBJECTS, "demo/client", "default/myapp-v1:8080")
    assert "bypassed the waypoint" in r.paths[0].hops[0].reason


def test_bad_arguments_are_one_line_errors() -> None:
    for src, dst in (("client", ECHO := "echo.demo"), ("demo/nobody", ECHO), ("demo/client", "demo/nothing"),
                     ("demo/client", "echo.demo:9999"), ("demo/client", "demo/echo-v1")):
        with pytest.raises(ac.CheckError):
            ac.check(OBJECTS, src, dst)


@pytest.fixture
def lab_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LabStore:
    monkeypatch.setenv("AMBIT_LAB_DIR", str(tmp_path))
    s = LabStore(store_path())
    s.apply([o for o in OBJECTS if o["metadata"].get("namespace") != "default" or o["kind"] not in
             ("AuthorizationPolicy",)])
    return s


def run(*argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    args.stdout, args.stderr = out, err
    return args.func(args), out.getvalue(), err.getvalue()


def test_cli_exit_codes_and_output(lab_store: LabStore) -> None:
    rc, out, _ = run("authz", "check", "demo/client", "echo.demo:8080")
    assert rc == 0 and out.startswith("ALLOWED  demo/client -> echo.demo.svc.cluster.local:8080  (GET /)")
    assert "[AuthorizationPolicy demo/echo-from-client, spec.rules[0]]" in out
    rc, out, _ = run("authz", "check", "demo/iperf", "echo.demo", "-o", "json")
    doc = json.loads(out)
    assert rc == 3 and doc["allowed"] is False
    assert doc["paths"][0]["hops"][0]["policy"] == "AuthorizationPolicy demo/echo-deny-iperf"
    rc, out, _ = run("authz", "check", "--path", "/admin", "default/frontend", "-X", "get", "myapp.default")
    assert rc == 0, out              # the default/ policies are not applied in this store


def test_cli_decides_a_policy_from_files_before_it_is_applied(lab_store: LabStore) -> None:
    """-f: what would happen if these policies were applied (the store lacks default/'s policies)."""
    rc, out, _ = run("authz", "check", "default/frontend", "myapp.default", "--path", "/admin",
                     "-f", str(POLICIES))
    assert rc == 3 and "[AuthorizationPolicy default/no-admin, spec.rules[0]]" in out
    rc, out, _ = run("authz", "check", "default/frontend", "myapp.default", "-H", "x-team=blue",
                     "--path", "/x", "-f", str(POLICIES))
    assert rc == 3 and "no rule of the ALLOW policies (default/myapp-api) matched" in out
    rc, _, err = run("authz", "check", "default/frontend", "myapp.default", "-H", "novalue")
    assert rc == 1 and "NAME=VALUE" in err


def test_a_jwt_header_is_verified_as_the_waypoint_verifies_it() -> None:
    """RequestAuthentication + a DENY on requests without a principal: `-H authorization=Bearer ...`
    runs the waypoint's own authenticator (a bad token is its 401) and the end user reaches authz."""
    import time

    import jwt as pyjwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = json.dumps({"keys": [{**json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "kid": "k"}]})
    target = [{"kind": "Service", "group": "", "name": "myapp"}]
    ra = {"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
          "metadata": {"name": "jwt", "namespace": "default"},
          "spec": {"targetRefs": target, "jwtRules": [{"issuer": "https://issuer.example", "jwks": jwks}]}}
    deny = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "require-jwt", "namespace": "default"},
            "spec": {"targetRefs": target, "action": "DENY",
                     "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}],
                                "to": [{"operation": {"paths": ["/api/secure"]}}]}]}}

    def bearer(exp: float) -> tuple[tuple[str, str], ...]:
        tok = pyjwt.encode({"iss": "https://issuer.example", "sub": "alice", "exp": time.time() + exp}, key,
                           algorithm="RS256", headers={"kid": "k"})
        return (("authorization", f"Bearer {tok}"),)

    objs = OBJECTS + [ra, deny]
    r = ac.check(objs, "default/frontend", "myapp.default:80", ac.Request("GET", "/api/secure"))
    assert not r.allowed and decider(r) == ("default/require-jwt", "spec.rules[0]")
    r = ac.check(objs, "default/frontend", "myapp.default:80", ac.Request("GET", "/api/secure", bearer(600)))
    assert r.allowed, json.dumps(r.as_dict(), indent=1)
    r = ac.check(objs, "default/frontend", "myapp.default:80", ac.Request("GET", "/api/secure", bearer(-600)))
    [hop] = r.paths[0].hops
    assert not r.allowed and hop.where == "waypoint default/waypoint (RequestAuthentication)"
    assert hop.reason == "401 Jwt is expired"


def test_a_policy_apply_would_refuse_is_an_error_not_left_out(lab_store: LabStore, tmp_path: Path) -> None:
    """-f with a DENY policy that does not validate (a typo in `action`): the answer was ALLOWED,
    decided as if the file were not there; it is the validation error `ambit apply` would give."""
    bad = tmp_path / "deny.yaml"
    bad.write_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                   "metadata: {name: deny-client, namespace: demo}\n"
                   "spec: {action: DENNY, rules: [{from: [{source: {namespaces: [demo]}}]}]}\n")
    rc, out, err = run("authz", "check", "demo/client", "echo.demo:8080", "-f", str(bad))
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and 'AuthorizationPolicy/demo/deny-client: spec.action: must be one of' in err
    bad.write_text("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: deny-client\n")
    rc, out, err = run("authz", "check", "demo/client", "echo.demo:8080", "-f", str(bad))
    assert rc == 1 and 'metadata: must be a map, got "deny-client"' in err      # was an AttributeError


def test_the_host_is_what_the_client_sends_and_hosts_rules_see_it_whole() -> None:
    """hosts/notHosts match the whole Host, as Istio's (and so the waypoint's) matcher does: the
    check sends what curl sends for the Service (no `:80`), or `-H host=...` when given."""
    only_fqdn = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                 "metadata": {"name": "only-fqdn", "namespace": "default"},
                 "spec": {"targetRefs": [{"kind": "Service", "group": "", "name": "myapp"}], "action": "DENY",
                          "rules": [{"to": [{"operation": {"notHosts": ["myapp.default.svc.cluster.local"]}}]}]}}
    objs = OBJECTS + [only_fqdn]

    def check(*headers: tuple[str, str]) -> ac.Result:
        return ac.check(objs, "default/frontend", "myapp.default:80", ac.Request("GET", "/api/x", headers))

    assert check().allowed
    assert check(("host", "MYAPP.default.svc.cluster.local")).allowed
    denied = check(("host", "evil.example"))
    assert not denied.allowed and decider(denied) == ("default/only-fqdn", "spec.rules[0]")
    assert not check(("Host", "myapp.default.svc.cluster.local:8080")).allowed     # Istio: the port is part of it


def test_a_non_http_client_is_judged_by_the_waypoints_l4_view(lab_store: LabStore) -> None:
    """--tcp: the waypoint relays a non-HTTP tunnel as opaque TCP and judges it by its policies' L4
    view (waypoint/authz/l4.py, as Istio's TCP chain): the DENY of paths and methods loses its HTTP
    attributes and so denies every tunnel; without --tcp the same client's GET is allowed."""
    http = ac.check(OBJECTS, "demo/client", "myapp.default:80", ac.Request("GET", "/", (("x-team", "blue"),)))
    assert http.allowed and decider(http) == ("default/myapp-api", "spec.rules[2]")
    tcp = ac.check(OBJECTS, "demo/client", "myapp.default:80", ac.Request(tcp=True))
    assert not tcp.allowed and decider(tcp) == ("default/no-admin", "spec.rules[0]")
    assert tcp.paths[0].hops[0].where == "waypoint default/waypoint (L4, opaque TCP)"
    rc, out, _ = run("authz", "check", "demo/client", "myapp.default", "--tcp", "-f", str(POLICIES))
    assert rc == 3 and "(TCP)" in out and "[AuthorizationPolicy default/no-admin, spec.rules[0]]" in out


def test_trust_domain_policies_are_decided_at_ztunnel_and_at_the_waypoint() -> None:
    """trustDomains is an L4 attribute: a DENY of every trust domain (`*`) refuses a mesh client at the
    destination ztunnel (demo/echo has no waypoint) and at the waypoint (default/myapp), naming the
    policy; a DENY of another trust domain denies nothing, and neither denies plaintext."""
    def deny(name: str, ns: str, tds: list[str], target: dict | None = None) -> dict:
        spec: dict = {"action": "DENY", "rules": [{"from": [{"source": {"trustDomains": tds}}]}]}
        if target:
            spec["targetRefs"] = [target]
        return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": name, "namespace": ns}, "spec": spec}

    myapp = {"kind": "Service", "group": "", "name": "myapp"}
    for tds, allowed in ((["*"], False), (["other.td"], True)):
        objs = OBJECTS + [deny("td-echo", "demo", tds), deny("td-myapp", "default", tds, myapp)]
        echo = ac.check(objs, "demo/client", "echo.demo:8080")
        assert echo.allowed is allowed, json.dumps(echo.as_dict(), indent=1)
        via = ac.check(objs, "default/frontend", "myapp.default:80", ac.Request("GET", "/api/x"))
        assert via.allowed is allowed, json.dumps(via.as_dict(), indent=1)
        # plaintext (legacy is outside the mesh) has no trust domain: no trustDomains DENY catches it
        assert ac.check(objs, "legacy/client", "echo.demo:8080").allowed
        if not allowed:
            assert decider(echo) == ("demo/td-echo", "spec.rules[0]")
            assert echo.paths[0].hops[-1].where.startswith("ztunnel ")
            assert decider(via) == ("default/td-myapp", "spec.rules[0]")
            assert via.paths[0].hops[0].where == "waypoint default/waypoint (L7)"
