"""External authorization of a tunnel that carries no HTTP (the waypoint's opaque path): the check
a CUSTOM policy's gRPC provider gets for it, and what its answer does to the tunnel. Sans-IO: the
opaque path (waypoint/app.py `WaypointProxy.opaque`) sends the check through the same machinery as
an HTTP request's (waypoint/http/authzcall.py: the authorizer's Service port, HBONE, pools) and
acts on the `TunnelVerdict` these functions return.

As Istio configures it for a TCP filter chain (pilot/pkg/security/authz/builder/builder.go
`buildTCP`, extauthz.go): a CUSTOM policy whose provider is `envoyExtAuthzGrpc` installs Envoy's
NETWORK ext_authz filter, before the RBAC (DENY, ALLOW) filters, with the provider's timeout and
`failure_mode_allow` = failOpen. That filter (source/extensions/filters/network/ext_authz/ext_authz.cc,
check_request_utils.cc `createTcpCheck`) holds the connection, reading nothing on, and sends a
CheckRequest with only the two peers, no request:
- source: the client's address and principal (the peer certificate's URI SAN: its SPIFFE id);
- destination: the address the connection was for (the connection's local address: here the
  original destination and port, as the HTTP check has it; at an ingress gateway the address and
  port the client connected to) and principal (the local certificate's URI SAN: this proxy's
  SPIFFE id).
OK: the connection goes on (the answer's header edits mean nothing to it). Denied: it is closed,
response flag UAEX (Envoy's response code details `ext_authz_denied`, no termination details). An
error (unreachable, reset, timed out, a failed call): closed the same way (`ext_authz_error`)
unless failOpen lets it on unchecked. The access-log line's details say why, naming the policy and
the provider, as an HTTP request's do. No span: the filter calls its client with the null span
(`callCheck`), so the check is untraced and carries no trace context.

Where Ambit differs, deliberately: a CUSTOM policy with an `envoyExtAuthzHttp` provider, which has
no way to check a connection, is ignored on a TCP chain by Istio ("ignored CUSTOM action with HTTP
provider on TCP filter chain"), which lets the tunnel through unchecked; Ambit refuses what its L4
view matches (fail closed: a policy that asks for a check is never silently skipped), flagged RBAC
with the termination details of the rule Istio names for the policy (`refused_detail`). A provider
that is not a MeshConfig ext_authz provider, or several providers for one Service, deny as for
HTTP (waypoint/authz/custom.py). Envoy dials the upstream while the check is out; Ambit opens it
only once the check allowed, so a refused client never reaches the backend at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from ambit.api import ext_authz_pb2 as pb
from ambit.model import Authorization, ExtAuthzProvider
from ambit.trustdomain import TrustDomains
from waypoint.authz import extauthz_grpc
from waypoint.authz.custom import DENY, Custom
from waypoint.authz.evaluate import RBAC_DENIED_DETAIL, RBAC_FLAG, rule_id
from waypoint.authz.extauthz import ALLOWED, DENIED, UAEX, CheckResult, error
from waypoint.request import Decision, Downstream, Forward, Hold, RequestHead, SubReply


@dataclass(frozen=True, slots=True)
class TunnelVerdict:
    """What happens to the tunnel: on (`allowed`), or closed with the access log's `flags`;
    `reason` is why, for the log line and the record's details (names the policy and provider)."""

    allowed: bool
    flags: str = ""
    reason: str = ""
    provider: str = ""
    result: str = ""            # the check's result (extauthz.RESULTS); "" when none was made


def check_message(down: Downstream, local_identity: str) -> pb.CheckRequest:
    """The CheckRequest for a tunnel: its peers, no request (Envoy's `createTcpCheck`). The peers
    are filled by the HTTP check's own builder, so both kinds of check name them alike; the
    request it adds for an HTTP head is then cleared."""
    req = extauthz_grpc.check_message(RequestHead("", "", ""), down, local_identity, "")
    req.attributes.ClearField("request")
    return req


def _not_resumed(reply: SubReply | None, why: str) -> Decision:
    raise AssertionError("a tunnel's check is read by `interpret`, never resumed as a request's")


def start(c: Custom, down: Downstream, local_identity: str) -> Hold | TunnelVerdict:
    """For a tunnel the L4 view of a CUSTOM policy matched: the check to send (a `Hold`, as the
    HTTP path's: the provider's Service port over HTTP/2, its timeout; its `build` makes the
    request), or at once the verdict when no check can be made."""
    p = c.provider
    if c.action == DENY or p is None:
        return TunnelVerdict(False, RBAC_FLAG, f"denied by {c.policy}: {c.reason}")
    if p.kind != "grpc":
        return TunnelVerdict(False, RBAC_FLAG, f"denied by {c.policy}: its provider {p.name} is envoyExtAuthzHttp, which checks "
                             f"HTTP requests only and this tunnel carries none (Istio ignores the policy on TCP "
                             f"and lets the tunnel through unchecked; Ambit refuses it: use an envoyExtAuthzGrpc "
                             f"provider to check TCP)", p.name)
    if not c.service:
        return after_check(p, c.policy, error(f"no Service has the hostname {p.service!r}"))
    msg = check_message(down, local_identity)

    def build(body: bytes | None, partial: bool) -> tuple[RequestHead, bytes]:
        return extauthz_grpc.check_request(p, c.hostname, msg)
    return Hold(Forward(c.service, p.port, hostname=c.hostname, route=f"ext_authz/{p.name}"), build, _not_resumed,
                h2=True, timeout=p.timeout)


def refused_detail(c: Custom, policy: Authorization | None, head: RequestHead, down: Downstream,
                   trust_domains: TrustDomains | None = None) -> str:
    """The connection termination details of a tunnel `start` refused without a check (its
    `TunnelVerdict` flagged RBAC), as Envoy's RBAC filter reports the rule Istio compiles for a
    CUSTOM policy: `istio-ext-authz-<provider>-ns[NS]-policy[NAME]-rule[I]` (builder.go
    `policyName`), with `-deny-due-to-bad-CUSTOM-action` when the policy denies for want of a good
    provider (`getBadCustomDenyRules`). `policy`: the CUSTOM policy `c` names (its L4 view)."""
    if policy is None:
        return RBAC_DENIED_DETAIL.format("none")
    name = f"istio-ext-authz-{policy.provider}-{rule_id(policy, head, down, trust_domains)}"
    return RBAC_DENIED_DETAIL.format(name + ("-deny-due-to-bad-CUSTOM-action" if c.action == DENY else ""))


def interpret(reply: SubReply | None, why: str) -> CheckResult:
    """The Check call's answer (None: it failed, `why`), read as the HTTP path reads it."""
    if reply is None:
        return error(why)
    return extauthz_grpc.interpret(reply.status, reply.headers, reply.body, reply.trailers)


def after_check(p: ExtAuthzProvider, policy: str, r: CheckResult) -> TunnelVerdict:
    """The tunnel's fate once its check answered `r` (Envoy's network ext_authz `onComplete`)."""
    if r.result == ALLOWED:
        return TunnelVerdict(True, provider=p.name, result=r.result)
    what = f"ext_authz {p.name} (policy {policy})"
    if r.result == DENIED:
        return TunnelVerdict(False, UAEX, f"{what} denied: {r.reason}", p.name, r.result)
    if p.fail_open:
        return TunnelVerdict(True, reason=f"{what} check failed: {r.reason}; let through unchecked (failOpen)",
                             provider=p.name, result=r.result)
    return TunnelVerdict(False, UAEX, f"{what} check failed: {r.reason}; refused", p.name, r.result)
