"""Gateway API BackendTLSPolicy through the real validation and translation: what the waypoint is
told to originate for a ServiceEntry host (SNI, the CA bundle inline, SANs), what is refused or
not applied and said so (status.ancestors, `ambit apply` notices, `ambit analyze` AMB0125), and
how it ranks against another policy (the oldest wins) and a DestinationRule's tls (the rule wins,
as in Istio).

Before, the kind was refused outright ("in-mesh traffic is always HBONE mutual TLS") and nothing
originated TLS for it."""

from __future__ import annotations

from typing import Any

from ambitctl.analyze import analyze
from controller.kinds import by_name, unsupported_kind
from controller.translate import translate
from controller.translate.ingress import CONTROLLER_NAME
from controller.validation import validate_object
from controller.waypoints.advisories import advisories
from controller.waypoints.policy_status import ancestors_status, policy_updates, refused_policy_status
from tests.support.testca import make_ca, pem

NS = "demo"
HOST = "api.example.com"
GW_V1 = "gateway.networking.k8s.io/v1"
Obj = dict[str, Any]


CA = pem(make_ca("test-ca")[0])


def entry(name: str = "api", hosts: tuple[str, ...] = (HOST,), waypoint: str = "egress") -> Obj:
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": NS, "labels": {"istio.io/use-waypoint": waypoint}},
            "spec": {"hosts": list(hosts), "addresses": ["240.240.0.1"], "resolution": "STATIC",
                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 443},
                               {"number": 8080, "name": "admin", "protocol": "HTTP", "targetPort": 8443}],
                     "endpoints": [{"address": "10.200.0.254"}]}}


def waypoint() -> Obj:
    return {"apiVersion": GW_V1, "kind": "Gateway", "metadata": {"name": "egress", "namespace": NS},
            "spec": {"gatewayClassName": "ambit-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}


def configmap(name: str = "api-ca", data: dict[str, str] | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NS},
            "data": {"ca.crt": CA} if data is None else data}


def policy(name: str = "api-tls", targets: list[Obj] | None = None, created: str = "2026-01-01T00:00:00Z",
           **validation: Any) -> Obj:
    v = {"hostname": HOST, **validation}
    if "wellKnownCACertificates" not in v and "caCertificateRefs" not in v:
        v["caCertificateRefs"] = [{"group": "", "kind": "ConfigMap", "name": "api-ca"}]
    return {"apiVersion": GW_V1, "kind": "BackendTLSPolicy",
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": created, "generation": 1},
            "spec": {"targetRefs": targets if targets is not None else
                     [{"group": "networking.istio.io", "kind": "ServiceEntry", "name": "api"}],
                     "validation": v}}


def routes_of(objs: list[Obj], host: str = HOST):
    tr = translate(objs)
    assert not tr.errors, tr.errors
    return next(wr for wr in tr.waypoint_routes if wr.hostname == host), tr


def verdicts(tr, name: str = "api-tls") -> list[tuple[str, str, str, str]]:
    return [(a.ref["kind"], a.accepted[1], a.resolved[1], a.ref.get("sectionName", ""))
            for a in tr.backend_tls.ancestors[f"BackendTLSPolicy/{NS}/{name}"]]


# -- validation ----------------------------------------------------------------------------------

def test_the_kind_is_served_not_refused() -> None:
    assert unsupported_kind(GW_V1, "BackendTLSPolicy") is None
    assert by_name("btlspolicy").kind == "BackendTLSPolicy"
    assert validate_object(policy()) == []
    assert validate_object({**policy(), "apiVersion": "gateway.networking.k8s.io/v1alpha3"}) == []


def test_the_crds_cel_rules_are_checked() -> None:
    se = {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "api"}
    cases = [
        (policy(targets=[se, {**se, "sectionName": "http"}]), "sectionName must be specified"),
        (policy(targets=[{**se, "sectionName": "http"}, {**se, "sectionName": "http"}]), "sectionName must be unique"),
        (policy(wellKnownCACertificates="System", caCertificateRefs=[{"group": "", "kind": "ConfigMap", "name": "x"}]),
         "must not contain both"),
        (policy(caCertificateRefs=[]), "must specify either CACertificateRefs or WellKnownCACertificates"),
        (policy(subjectAltNames=[{"type": "Hostname", "uri": "spiffe://td/x"}]), "must contain Hostname"),
        (policy(subjectAltNames=[{"type": "URI", "uri": "not a uri"}]), "must be a URI"),
        (policy(hostname="*.example.com"), "validation.hostname"),
        (policy(targets=[]), "at least 1"),
    ]
    for obj, want in cases:
        errs = " | ".join(str(e) for e in validate_object(obj))
        assert want in errs, (want, errs)
    opts = policy()
    opts["spec"]["options"] = {"example.com/min-version": "1.3"}
    errs = [str(e) for e in validate_object(opts)]
    assert len(errs) == 1 and "spec.options[example.com/min-version]" in errs[0] and "not supported by Ambit" in errs[0]


# -- translation ---------------------------------------------------------------------------------

def test_a_service_entry_target_originates_tls_with_the_sni_and_the_configmaps_ca() -> None:
    wr, tr = routes_of([entry(), waypoint(), configmap(), policy(subjectAltNames=[
        {"type": "Hostname", "hostname": "api.internal"}, {"type": "URI", "uri": "spiffe://ext/api"}])])
    p = wr.policy
    assert (p.tls_mode, p.sni, p.subject_alt_names) == ("SIMPLE", HOST, ["api.internal", "spiffe://ext/api"])
    assert p.ca_certificate_pem.strip() == CA.strip() and not p.ca_certificates
    assert wr.waypoint == f"{NS}/egress" and f"BackendTLSPolicy/{NS}/api-tls" in wr.sources
    assert verdicts(tr) == [("ServiceEntry", "Accepted", "ResolvedRefs", "")]
    assert f"waypoint {NS}/egress" in tr.backend_tls.ancestors[f"BackendTLSPolicy/{NS}/api-tls"][0].accepted[2]


def test_system_roots_and_a_section_name_port_only() -> None:
    se = {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "api", "sectionName": "admin"}
    wr, tr = routes_of([entry(), waypoint(), policy(targets=[se], wellKnownCACertificates="System")])
    assert wr.policy is None or not wr.policy.tls_mode          # port 80 stays plain
    [pp] = wr.port_policies
    assert (pp.port, pp.policy.tls_mode, pp.policy.sni, pp.policy.ca_certificate_pem) == (8080, "SIMPLE", HOST, "")
    assert verdicts(tr) == [("ServiceEntry", "Accepted", "ResolvedRefs", "admin")]


def test_unresolved_ca_references_fail_closed_and_say_why() -> None:
    """No usable CA: still TLS, with a bundle holding no certificate (every connection fails),
    never plaintext nor the system roots; Accepted=False NoValidCACertificate."""
    cases = [
        ([], "InvalidCACertificateRef", "ConfigMap demo/api-ca does not exist"),
        ([configmap(data={"other": "x"})], "InvalidCACertificateRef", "has no key ca.crt"),
        ([configmap(data={"ca.crt": "junk"})], "InvalidCACertificateRef", "does not hold PEM certificates"),
    ]
    for extra, reason, why in cases:
        wr, tr = routes_of([entry(), waypoint(), *extra, policy()])
        assert wr.policy.tls_mode == "SIMPLE" and "BEGIN CERTIFICATE" not in wr.policy.ca_certificate_pem
        assert wr.policy.ca_certificate_pem
        [a] = tr.backend_tls.ancestors[f"BackendTLSPolicy/{NS}/api-tls"]
        assert a.accepted[:2] == (False, "NoValidCACertificate") and a.resolved[:2] == (False, reason)
        assert why in a.resolved[2]
    wr, tr = routes_of([entry(), waypoint(), policy(caCertificateRefs=[{"group": "", "kind": "Secret", "name": "s"}])])
    assert verdicts(tr) == [("ServiceEntry", "NoValidCACertificate", "InvalidKind", "")]
    wr, tr = routes_of([entry(), waypoint(), policy(wellKnownCACertificates="example.com/corp")])
    assert verdicts(tr) == [("ServiceEntry", "Invalid", "ResolvedRefs", "")]
    assert wr.policy.tls_mode == "SIMPLE" and "BEGIN CERTIFICATE" not in wr.policy.ca_certificate_pem


def test_targets_not_applied_are_said_per_target() -> None:
    targets = [{"group": "", "kind": "Service", "name": "web"},
               {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "missing"},
               {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "api", "sectionName": "nope"},
               {"group": "example.com", "kind": "Backend", "name": "b"},
               {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "api", "sectionName": "http"}]
    objs = [entry(), waypoint(), configmap(), policy(targets=targets)]
    wr, tr = routes_of(objs)
    assert [v[1] for v in verdicts(tr)] == ["Invalid", "TargetNotFound", "TargetNotFound", "TargetNotFound", "Accepted"]
    assert [(pp.port, pp.policy.tls_mode) for pp in wr.port_policies] == [(80, "SIMPLE")]
    notes = {(n.path, n.cause) for n in tr.parents.notices if n.ref == f"BackendTLSPolicy/{NS}/api-tls"}
    assert notes == {(f"spec.targetRefs[{i}]", "BackendTLSNotApplied") for i in range(4)}
    found = [(f.code, f.path) for f in analyze(objs, complete=True) if f.ref == f"BackendTLSPolicy/{NS}/api-tls"]
    assert sorted(found) == [("AMB0125", f"spec.targetRefs[{i}]") for i in range(4)]


def test_the_oldest_policy_on_a_target_wins_the_other_is_conflicted() -> None:
    old = policy("old", created="2026-01-01T00:00:00Z", subjectAltNames=[{"type": "Hostname", "hostname": "old.example"}])
    young = policy("young", created="2026-02-01T00:00:00Z", wellKnownCACertificates="System")
    wr, tr = routes_of([entry(), waypoint(), configmap(), young, old])
    assert wr.policy.subject_alt_names == ["old.example"] and wr.policy.ca_certificate_pem
    assert verdicts(tr, "old")[0][1] == "Accepted"
    [a] = tr.backend_tls.ancestors[f"BackendTLSPolicy/{NS}/young"]
    assert a.accepted[:2] == (False, "Conflicted") and f"BackendTLSPolicy/{NS}/old" in a.accepted[2]


def test_a_destination_rules_tls_wins_and_its_other_fields_stay() -> None:
    """As in Istio: the rule a user wrote overrides what the backend policy fills in; where the
    rule sets no tls, the policy's applies beside the rule's own fields."""
    dr_tls = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
              "metadata": {"name": "api", "namespace": NS},
              "spec": {"host": HOST, "trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": "dr.example"}}}}
    wr, tr = routes_of([entry(), waypoint(), configmap(), dr_tls, policy()])
    assert (wr.policy.sni, wr.policy.ca_certificate_pem) == ("dr.example", "")
    [n] = [n for n in tr.parents.notices if n.cause == "BackendTLSOverridden"]
    assert "DestinationRule/demo/api" in n.reason and HOST in n.reason
    assert any(f.code == "AMB0125" for f in analyze([entry(), waypoint(), configmap(), dr_tls, policy()], complete=True))

    dr_lb = {**dr_tls, "spec": {"host": HOST, "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}},
                                "subsets": [{"name": "v1", "labels": {"v": "1"}}]}}
    wr, tr = routes_of([entry(), waypoint(), configmap(), dr_lb, policy()])
    assert (wr.policy.lb, wr.policy.tls_mode, wr.policy.sni) == ("ROUND_ROBIN", "SIMPLE", HOST)
    assert wr.subsets[0].policy.tls_mode == "SIMPLE"
    assert not [n for n in tr.parents.notices if n.cause == "BackendTLSOverridden"]


def test_a_section_policy_wins_its_port_over_the_rules_top_level_tls() -> None:
    """Istio makes a policy with a sectionName the port-level tls of the merged DestinationRule
    (mergeBackendPolicyPortLevelSettings), and a port-level entry replaces the rule's top-level
    tls on its port: the policy's TLS is in force on port 80, the rule's on the other port. A
    port-level tls of the rule's own still wins its port."""
    section = {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "api", "sectionName": "http"}
    dr_tls = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
              "metadata": {"name": "api", "namespace": NS},
              "spec": {"host": HOST, "trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": "dr.example"}}}}
    wr, tr = routes_of([entry(), waypoint(), configmap(), dr_tls, policy(targets=[section])])
    assert wr.policy.sni == "dr.example"
    [pp] = wr.port_policies
    assert (pp.port, pp.policy.sni, pp.policy.ca_certificate_pem) == (80, HOST, CA)
    assert not [n for n in tr.parents.notices if n.cause == "BackendTLSOverridden"]
    dr_tls["spec"]["trafficPolicy"]["portLevelSettings"] = [{"port": {"number": 80},
                                                             "tls": {"mode": "SIMPLE", "sni": "port.example"}}]
    wr, tr = routes_of([entry(), waypoint(), configmap(), dr_tls, policy(targets=[section])])
    assert [(pp.port, pp.policy.sni) for pp in wr.port_policies] == [(80, "port.example")]
    assert [n for n in tr.parents.notices if n.cause == "BackendTLSOverridden"]


def test_a_host_no_waypoint_serves_is_warned() -> None:
    objs = [entry(waypoint="none"), configmap(), policy()]
    found = [a for a in advisories(objs) if a.ref == f"BackendTLSPolicy/{NS}/api-tls"]
    assert [a.cause for a in found] == ["NoWaypoint"]
    wr, tr = routes_of(objs)
    assert "no waypoint serves api.example.com" in tr.backend_tls.ancestors[f"BackendTLSPolicy/{NS}/api-tls"][0].accepted[2]


# -- status --------------------------------------------------------------------------------------

def test_status_ancestors_keep_other_controllers_entries_and_transition_times() -> None:
    objs = [entry(), waypoint(), configmap(), policy()]
    tr = translate(objs)
    theirs = {"ancestorRef": {"name": "gw"}, "controllerName": "example.com/other", "conditions": []}
    obj = {**policy(), "status": {"ancestors": [theirs]}}
    [(key, want)] = policy_updates([obj], tr.backend_tls.ancestors).items()
    assert key == ("BackendTLSPolicy", NS, "api-tls")
    mine, other = want["ancestors"]
    assert other == theirs
    assert mine["ancestorRef"] == {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "api"}
    assert mine["controllerName"] == CONTROLLER_NAME
    assert [(c["type"], c["status"], c["reason"], c["observedGeneration"]) for c in mine["conditions"]] == [
        ("Accepted", "True", "Accepted", 1), ("ResolvedRefs", "True", "ResolvedRefs", 1)]
    assert policy_updates([{**obj, "status": want}], tr.backend_tls.ancestors) == {}     # written once
    again = ancestors_status({**obj, "status": want}, tr.backend_tls.ancestors[f"BackendTLSPolicy/{NS}/api-tls"],
                             now=0.0)
    assert again["ancestors"][0]["conditions"][0]["lastTransitionTime"] == mine["conditions"][0]["lastTransitionTime"]


def test_a_refused_policy_is_invalid_on_each_target() -> None:
    bad = policy()
    bad["spec"]["options"] = {"x": "y"}
    want = refused_policy_status(bad, validate_object(bad), None)
    [a] = want["ancestors"]
    cond = a["conditions"][0]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Accepted", "False", "Invalid")
    assert "spec.options[x]" in cond["message"] and cond["message"].endswith("nothing of it is applied")


def test_status_is_written_in_a_cluster_and_a_refusal_replaces_it() -> None:
    """The real KubeSource and reconciler against the API-server emulator: a valid policy's
    verdict per target, then a refused update's Invalid at its generation."""
    import threading

    from controller.sources.kube import KubeSource, make_api_client
    from controller.waypoints.reconcile import KubeWaypointReconciler
    from tests.support.kube_emulator import KubeEmulator
    from tests.support.wait import wait_for

    emu = KubeEmulator().start()
    source = KubeSource(make_api_client(emu.url), debounce=0.01, write_status=True, backoff=(0.05, 0.3))
    rec = KubeWaypointReconciler(make_api_client(emu.url), None, refused=source.refused)
    stop = threading.Event()
    t = threading.Thread(target=source.run, args=(lambda objs: rec.reconcile(objs, translate(objs)), stop), daemon=True)
    t.start()

    def accepted() -> tuple[str, str, int] | None:
        got = emu.get(GW_V1, "BackendTLSPolicy", "api-tls", NS) or {}
        mine = [a for a in (got.get("status") or {}).get("ancestors") or [] if a["controllerName"] == CONTROLLER_NAME]
        c = next((c for c in mine[0]["conditions"] if c["type"] == "Accepted"), None) if mine else None
        return (c["status"], c["reason"], c["observedGeneration"]) if c else None
    try:
        for o in (entry(), waypoint(), configmap()):
            emu.create(o)
        created = emu.create({k: v for k, v in policy().items() if k != "status"})
        wait_for(lambda: accepted() == ("True", "Accepted", 1), "the policy's verdict", timeout=15)
        bad = {**created, "spec": {**created["spec"], "options": {"x": "y"}}}
        emu.update(bad)
        wait_for(lambda: (accepted() or ("",))[:2] == ("False", "Invalid") and accepted(), "the refusal", timeout=15)
        assert accepted()[2] == 2
    finally:
        stop.set()
        t.join(timeout=10)
        source.api.close()
        emu.stop()


def test_a_policy_changes_only_its_own_namespaces_entries() -> None:
    """Two namespaces' ServiceEntries with one host: the mesh's registry keeps one (here the other
    namespace's), and a policy on this namespace's entry does not change that host's TLS: its CA
    would be trusted for everyone's traffic to it."""
    e = entry()
    theirs = {**e, "metadata": {**e["metadata"], "namespace": "other", "creationTimestamp": "2025-01-01T00:00:00Z"},
              "spec": {**e["spec"], "addresses": ["240.240.0.9"]}}
    mine = {**e, "metadata": {**e["metadata"], "creationTimestamp": "2026-01-01T00:00:00Z"}}
    tr = translate([theirs, mine, waypoint(), configmap(), policy()])
    assert not tr.errors
    assert not [w for w in tr.waypoint_routes if w.hostname == HOST and w.policy and w.policy.tls_mode]
    assert [n.reason for n in tr.parents.notices] == [
        "not applied to api.example.com: the mesh's api.example.com is the ServiceEntry of namespace other, not this "
        "namespace's"]


def test_the_lab_store_gets_the_ancestors_too() -> None:
    from controller.waypoints.labstatus import desired_statuses
    objs = [entry(), waypoint(), configmap(), policy()]
    want = desired_statuses(objs, translation=translate(objs))[("BackendTLSPolicy", NS, "api-tls")]
    assert [c["reason"] for c in want["ancestors"][0]["conditions"]] == ["Accepted", "ResolvedRefs"]


def test_ports_and_endpoints_it_cannot_reach_are_warned() -> None:
    """TLS is originated on HTTP ports to endpoints outside the mesh: a TCP port of the target,
    and the mesh pods of a MESH_INTERNAL entry, do not get it, and `ambit apply` says so."""
    se = entry()
    se["spec"]["ports"].append({"number": 5432, "name": "db", "protocol": "TCP"})
    se["spec"]["location"] = "MESH_INTERNAL"
    _, tr = routes_of([se, waypoint(), configmap(), policy()])
    reasons = [n.reason for n in tr.parents.notices]
    assert len(reasons) == 2
    assert "port 5432 is not HTTP" in reasons[0] and "MESH_INTERNAL" in reasons[1]
    se = {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "api", "sectionName": "http"}
    _, tr = routes_of([entry(), waypoint(), configmap(), policy(targets=[se])])
    assert tr.parents.notices == []
    # the pods a (MESH_EXTERNAL) entry's workloadSelector selects are mesh workloads too
    se = entry()
    del se["spec"]["endpoints"]
    se["spec"]["workloadSelector"] = {"labels": {"app": "api"}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "api-0", "namespace": NS, "uid": "u-api-0",
                                                          "labels": {"app": "api"}},
           "spec": {"nodeName": "node1"}, "status": {"phase": "Running", "podIP": "10.210.1.9"}}
    _, tr = routes_of([se, pod, waypoint(), configmap(), policy()])
    assert ["workloadSelector selects mesh pods" in n.reason for n in tr.parents.notices] == [True]


def test_analyzing_files_alone_does_not_call_an_entry_elsewhere_missing() -> None:
    """`ambit analyze -f policy.yaml`: the ServiceEntry may be in other files or the cluster."""
    assert [f for f in analyze([policy()], complete=False) if f.code == "AMB0125"] == []
    assert [f.code for f in analyze([policy()], complete=True) if f.code == "AMB0125"] == ["AMB0125"]


def test_a_section_policy_wins_its_port_over_an_older_whole_entry_policy() -> None:
    """Istio turns a policy with a sectionName into a port-level tls and one without into the
    top-level tls of the same DestinationRule, so the port's policy is in force on its port
    whatever the ages (pilot/pkg/config/kube/gateway/backend_policies.go). Before, an older
    whole-entry policy kept the port, and the section policy was said to be overridden by a
    DestinationRule that does not exist."""
    other = pem(make_ca("other-ca")[0])
    whole = policy("whole", created="2026-01-01T00:00:00Z")
    section = policy("section", created="2026-02-01T00:00:00Z", hostname="admin.example.com",
                     caCertificateRefs=[{"group": "", "kind": "ConfigMap", "name": "other-ca"}],
                     targets=[{"group": "networking.istio.io", "kind": "ServiceEntry", "name": "api",
                               "sectionName": "http"}])
    objs = [entry(), waypoint(), configmap(), configmap("other-ca", {"ca.crt": other}), whole, section]
    wr, tr = routes_of(objs)
    from waypoint.traffic.cluster import effective_policy
    assert (effective_policy(wr, 80, "").sni, effective_policy(wr, 80, "").ca_certificate_pem) == \
        ("admin.example.com", other)
    assert (effective_policy(wr, 8080, "").sni, effective_policy(wr, 8080, "").ca_certificate_pem) == (HOST, CA)
    assert not [n for n in tr.parents.notices if n.cause == "BackendTLSOverridden"]
    assert [v[1] for v in verdicts(tr, "section")] == ["Accepted"]
