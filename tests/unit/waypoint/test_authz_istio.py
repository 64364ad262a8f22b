"""AuthorizationPolicy at the waypoint against Istio's documented outcomes, table-driven and sans-IO,
through the REAL controller translation.

Ground truth: istio/istio pilot/pkg/security/authz/builder/testdata (http/allow-full-rule-out.yaml:
hosts are `:authority` exact/prefix/suffix with ignore_case, `*` is present_match; request headers
are the regex `^v$|^v,.*|.*,v,.*|.*,v$` over the comma-joined values, `*` is present_match;
action-allow-HTTP-for-TCP-filter: an ALLOW rule with an HTTP-only attribute is skipped whole on a TCP
chain), the proto's decision order, and ../shared/notes/l7-semantics.md §4.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.waypoint.support import req
from tests.unit.waypoint.test_authz import FRONTEND, WP, allowed, down, policies, to_service
from waypoint.authz import authorize, policy_set
from waypoint.authz.l4 import l4_policy_set
from waypoint.request import EndUser, RequestHead


def head(path: str = "/", method: str = "GET", authority: str = "myapp",
         headers: list[tuple[str, str]] = ()) -> RequestHead:   # type: ignore[assignment]
    h = req(path, authority=authority, method=method)
    h.headers = list(headers)       # repeated names kept, as the codecs deliver them
    return h


def decide(rules: list[dict[str, Any]] | None, action: str, h: RequestHead, identity: str = FRONTEND) -> bool:
    return allowed(policies(to_service(rules, action)), h, down(identity))


def when_header(name: str, values: list[str] | None = None, not_values: list[str] | None = None) -> list[dict]:
    cond: dict[str, Any] = {"key": f"request.headers[{name}]"}
    if values:
        cond["values"] = values
    if not_values:
        cond["notValues"] = not_values
    return [{"when": [cond]}]


# -- request.headers: Istio's regex over the joined values ----------------------------------------

@pytest.mark.parametrize("rules,action,headers,ok", [
    # a DENY on a value is not dodged by sending the header twice (Envoy joins them: "guest,admin")
    (when_header("x-user", ["admin"]), "DENY", [("x-user", "guest"), ("x-user", "admin")], False),
    (when_header("x-user", ["adm*"]), "DENY", [("x-user", "guest"), ("x-user", "admin")], False),
    (when_header("x-user", ["*min"]), "DENY", [("x-user", "admin"), ("x-user", "guest")], False),
    (when_header("x-user", ["admin"]), "DENY", [("x-user", "guest,admin")], False),
    # ... nor by one line with spaces after the commas (a DENY reads the elements trimmed too)
    (when_header("x-user", ["admin"]), "DENY", [("x-user", "guest, admin")], False),
    (when_header("x-user", ["admin"]), "ALLOW", [("x-user", "guest, admin")], False),   # Istio's regex: " admin"
    (when_header("x-env", not_values=["prod"]), "ALLOW", [("x-env", "dev, prod")], False),
    # `*` is present_match: an empty value is present, so it cannot dodge a DENY on presence
    (when_header("x-debug", ["*"]), "DENY", [("x-debug", "")], False),
    (when_header("x-debug", ["*"]), "DENY", [], True),
    (when_header("x-debug", ["*"]), "ALLOW", [("x-debug", "")], True),
    # ALLOW: one element matching is a match, as in Istio
    (when_header("x-user", ["admin"]), "ALLOW", [("x-user", "guest"), ("x-user", "admin")], True),
    (when_header("x-user", ["admin"]), "ALLOW", [("x-user", "guest")], False),
    (when_header("x-user", ["admin"]), "ALLOW", [("x-user", "administrator")], False),
    # notValues in an ALLOW: any element excludes (Istio)
    (when_header("x-env", not_values=["prod"]), "ALLOW", [("x-env", "dev"), ("x-env", "prod")], False),
    (when_header("x-env", not_values=["prod"]), "ALLOW", [], True),          # absent: not excluded
    # notValues in a DENY: only the whole value excuses (stricter than Istio, never looser)
    (when_header("x-token", not_values=["good"]), "DENY", [("x-token", "good")], True),
    (when_header("x-token", not_values=["good"]), "DENY", [("x-token", "good"), ("x-token", "bad")], False),
    (when_header("x-token", not_values=["good"]), "DENY", [], False),       # absent: denied
    (when_header("x-token", not_values=["*"]), "DENY", [("x-token", "")], False),
])
def test_request_header_conditions(rules: list[dict], action: str, headers: list[tuple[str, str]],
                                   ok: bool) -> None:
    assert decide(rules, action, head(headers=headers)) is ok


# -- hosts: the whole :authority, case-insensitive ---------------------------------------------------

def hosts(field: str, values: list[str]) -> list[dict]:
    return [{"to": [{"operation": {field: values}}]}]


@pytest.mark.parametrize("rules,action,authority,ok", [
    (hosts("hosts", ["myapp.example.com"]), "ALLOW", "MyApp.Example.COM", True),
    (hosts("hosts", ["myapp.example.com"]), "ALLOW", "myapp.example.com:8080", False),   # Istio: exact
    (hosts("hosts", ["myapp.example.com", "myapp.example.com:*"]), "ALLOW", "myapp.example.com:8080", True),
    (hosts("hosts", ["*.example.com"]), "ALLOW", "a.example.com", True),
    (hosts("hosts", ["myapp.*"]), "ALLOW", "MYAPP.local:80", True),
    (hosts("hosts", ["*"]), "ALLOW", "anything", True),
    # notHosts in a DENY: "deny every host but myapp" denies myapp:80 too (Istio)
    (hosts("notHosts", ["myapp"]), "DENY", "myapp:80", False),
    (hosts("notHosts", ["myapp"]), "DENY", "MYAPP", True),
    # hosts in a DENY also catch the authority with a port (stricter than Istio, never looser)
    (hosts("hosts", ["myapp"]), "DENY", "myapp:80", False),
    (hosts("hosts", ["myapp"]), "DENY", "other", True),
])
def test_hosts(rules: list[dict], action: str, authority: str, ok: bool) -> None:
    assert decide(rules, action, head(authority=authority)) is ok


# -- the rest of the checklist --------------------------------------------------------------------

@pytest.mark.parametrize("rules,action,h,identity,ok", [
    (None, "ALLOW", head(), FRONTEND, False),                                  # spec: {} allows nothing
    ([{}], "ALLOW", head(), FRONTEND, True),                                   # rules: [{}] allows all
    # (a DENY without rules would deny nothing: refused when applied, as by Istio, test_config_validation.py)
    ([{}], "DENY", head(), FRONTEND, False),
    (hosts("paths", ["/api/*"]), "ALLOW", head("/api"), FRONTEND, False),       # prefix is "/api/"
    (hosts("paths", ["*/admin"]), "DENY", head("/x/admin"), FRONTEND, False),
    (hosts("paths", ["*"]), "ALLOW", head("/x?y"), FRONTEND, True),
    (hosts("paths", ["/admin"]), "DENY", head("/%61dmin"), FRONTEND, False),     # normalized first
    (hosts("notPaths", ["/admin*"]), "ALLOW", head("/admin/x"), FRONTEND, False),
    (hosts("methods", ["GET"]), "ALLOW", head(method="POST"), FRONTEND, False),
    ([{"from": [{"source": {"principals": ["*/sa/frontend"]}}]}], "ALLOW", head(), FRONTEND, True),
    ([{"from": [{"source": {"principals": ["cluster.local/ns/default/*"]}}]}], "ALLOW", head(), FRONTEND, True),
    ([{"from": [{"source": {"notPrincipals": ["*"]}}]}], "DENY", head(), "", False),     # plaintext denied
    ([{"from": [{"source": {"notNamespaces": ["default"]}}]}], "DENY", head(), "", False),
    ([{"from": [{"source": {"namespaces": ["default"]}}], "to": [{"operation": {"methods": ["POST"]}}]}],
     "ALLOW", head(), FRONTEND, False),                                        # from AND to
    ([{"to": [{"operation": {"methods": ["POST"]}}, {"operation": {"paths": ["/"]}}]}],
     "ALLOW", head(), FRONTEND, True),                                         # to entries ORed
    ([{"when": [{"key": "destination.port", "notValues": ["80"]}]}], "ALLOW", head(), FRONTEND, False),
    ([{"when": [{"key": "connection.sni", "values": ["x"]}]}], "DENY", head(), FRONTEND, False),   # fail safe
    ([{"when": [{"key": "connection.sni", "values": ["x"]}]}], "ALLOW", head(), FRONTEND, False),
    # a `*` inside a namespace is a wildcard, as in Istio's Envoy matcher (`.*/ns/team-.*-prod/.*`)
    ([{"from": [{"source": {"namespaces": ["de*lt"]}}]}], "DENY", head(), FRONTEND, False),
    ([{"from": [{"source": {"namespaces": ["d*x*t"]}}]}], "DENY", head(), FRONTEND, True),
    ([{"from": [{"source": {"notNamespaces": ["d*ult"]}}]}], "ALLOW", head(), FRONTEND, False),
    # remoteIpBlocks: zero trusted hops (Istio's default), so a client's X-Forwarded-For is no evidence
    ([{"from": [{"source": {"remoteIpBlocks": ["1.2.3.4"]}}]}], "ALLOW",
     head(headers=[("x-forwarded-for", "1.2.3.4")]), FRONTEND, False),
    ([{"from": [{"source": {"notRemoteIpBlocks": ["10.244.1.5"]}}]}], "DENY",
     head(headers=[("x-forwarded-for", "10.244.1.5")]), FRONTEND, True),
])
def test_istio_outcomes(rules: list[dict] | None, action: str, h: RequestHead, identity: str, ok: bool) -> None:
    assert decide(rules, action, h, identity) is ok


# -- the waypoint's L4 view (opaque TCP tunnels) ------------------------------------------------------

def tcp_allowed(rules: list[dict[str, Any]], action: str) -> bool:
    ps = l4_policy_set(policy_set(policies(to_service(rules, action)), WP))
    tunnel = RequestHead(method="", path="", authority="10.96.0.20:80")
    return authorize(ps, tunnel, down(), None)[1].allowed


@pytest.mark.parametrize("rules,action,ok", [
    # an ALLOW rule with an HTTP attribute in any entry admits no TCP tunnel (Istio skips it whole)
    ([{"to": [{"operation": {"methods": ["GET"]}}, {"operation": {"ports": ["80"]}}]}], "ALLOW", False),
    ([{"from": [{"source": {"requestPrincipals": ["*"]}}, {"source": {"namespaces": ["default"]}}]}],
     "ALLOW", False),
    ([{"to": [{"operation": {"methods": ["GET"]}}]}, {"to": [{"operation": {"ports": ["80"]}}]}], "ALLOW", True),
    ([{"from": [{"source": {"namespaces": ["default"]}}]}], "ALLOW", True),
    # a DENY applies its L4 part: wider, never narrower
    ([{"to": [{"operation": {"methods": ["GET"]}}]}], "DENY", False),
    ([{"from": [{"source": {"namespaces": ["other"]}}], "to": [{"operation": {"methods": ["GET"]}}]}],
     "DENY", True),
    # trust domains are an L4 attribute: they stay in the view and decide a tunnel
    ([{"from": [{"source": {"trustDomains": ["cluster.local"]}}]}], "ALLOW", True),
    ([{"from": [{"source": {"trustDomains": ["other.td"]}}]}], "ALLOW", False),
    ([{"when": [{"key": "source.trustDomain", "values": ["*"]}], "to": [{"operation": {"methods": ["GET"]}}]}],
     "DENY", False),
    ([{"from": [{"source": {"notTrustDomains": ["cluster.local"]}}], "to": [{"operation": {"methods": ["GET"]}}]}],
     "DENY", True),
])
def test_waypoint_l4_view(rules: list[dict[str, Any]], action: str, ok: bool) -> None:
    assert tcp_allowed(rules, action) is ok


# -- request principals: issuer and subject apart, split at the pattern's last "/" ----------------

def user(iss: str, sub: str) -> EndUser:
    return EndUser(f"{iss}/{sub}", {"iss": iss, "sub": sub})


def rp(values: list[str], field: str = "requestPrincipals") -> list[dict]:
    return [{"from": [{"source": {field: values}}]}]


@pytest.mark.parametrize("rules,action,who,ok", [
    (rp(["https://idp.example.com/*"]), "ALLOW", user("https://idp.example.com", "alice"), True),
    (rp(["https://idp.example.com/*"]), "ALLOW", user("https://idp.example.com/evil", "x"), False),   # iss exact
    (rp(["*/alice"]), "ALLOW", user("https://any", "alice"), True),
    (rp(["*/alice"]), "ALLOW", user("https://idp", "mallory/alice"), False),                           # sub exact
    (rp(["https://idp/ali*"]), "ALLOW", user("https://idp", "alice"), True),
    (rp(["*idp/alice"]), "ALLOW", user("https://idp", "alice"), True),
    (rp(["*"]), "ALLOW", user("https://idp", "alice"), True),
    (rp(["*"]), "ALLOW", None, False),
    ([{"when": [{"key": "request.auth.principal", "values": ["https://idp.example.com/*"]}]}], "ALLOW",
     user("https://idp.example.com/evil", "x"), False),
    # a DENY still catches the joined reading: it can only deny more
    (rp(["https://idp.example.com/*"]), "DENY", user("https://idp.example.com/evil", "x"), False),
    (rp(["https://idp.example.com/*"], "notRequestPrincipals"), "DENY", user("https://idp.example.com/evil", "x"),
     False),
    (rp(["https://idp.example.com/*"], "notRequestPrincipals"), "DENY", user("https://idp.example.com", "x"), True),
])
def test_request_principals(rules: list[dict], action: str, who: EndUser | None, ok: bool) -> None:
    ps = policies(to_service(rules, action))
    assert allowed(ps, head(), down(), None, who) is ok
