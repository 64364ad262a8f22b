"""The DNS proxy's answers, as Istio ztunnel gives them (its src/dns/server.rs tests, ported as
behaviour): search-domain aliases and CNAMEs, short Kubernetes names, wildcards, visibility,
namespace preference, headless Services, address families and what is left to the upstream."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from ambit.model import Endpoint, Service, ServicePort
from ztunnel.dns import names
from ztunnel.dns.lookup import Answer, Hosts, domain_labels, resolve
from ztunnel.dns.wire import TCP_MAX, Query, answer_reply, parse, relay_reply, upstream_query

A, AAAA = dns.rdatatype.A, dns.rdatatype.AAAA
DOMAIN = domain_labels("cluster.local")
P80 = [ServicePort(80, 80, "http")]


def k8s(name: str, ns: str, vips: list[str], endpoints: list[Endpoint] = (), hostname: str = "") -> Service:
    return Service(name=name, namespace=ns, hostname=hostname or f"{name}.{ns}.svc.cluster.local", vips=vips,
                   ports=P80, endpoints=list(endpoints))


def entry(host: str, ns: str, vips: list[str], export_to: list[str] = (), endpoints: list[Endpoint] = ()) -> Service:
    return Service(name=host, namespace=ns, hostname=host, vips=vips, ports=P80, endpoints=list(endpoints),
                   kind="ServiceEntry", resolution="STATIC" if endpoints else "NONE", export_to=list(export_to))


def ep(ip: str, ready: bool = True) -> Endpoint:
    return Endpoint(workload_uid=f"uid-{ip}", ip=ip, ready=ready)


HOSTS = Hosts.of([
    entry("www.google.com", "ns1", ["1.1.1.1"]),
    k8s("productpage", "ns1", ["9.9.9.9"]),
    k8s("example", "ns2", ["10.10.10.10"]),
    # exportTo ".": visible to its own namespace only
    entry("nslocal.ns2.svc.cluster.local", "ns2", ["10.10.10.240"], export_to=["ns2"]),
    entry("nslocalsame.ns1.svc.cluster.local", "ns1", ["10.10.10.241"], export_to=["ns1"]),
    # one host in several namespaces
    entry("everywhere.io", "ns2", ["10.10.10.110"]),
    entry("everywhere.io", "preferred-ns", ["10.10.10.111"]),
    entry("everywhere.io", "ns1", ["10.10.10.112"]),
    entry("canonical.ns3.svc.cluster.local", "ns2", ["10.10.10.140"]),
    k8s("canonical", "ns3", ["10.10.10.141"]),
    entry("canonical.ns2.svc.cluster.local", "ns1", ["10.10.10.150"]),
    k8s("canonical", "ns2", ["10.10.10.151"]),
    # a Service of another cluster domain
    k8s("details", "ns2", ["11.11.11.11", "12.12.12.12", "13.13.13.13", "14.14.14.14"],
        hostname="details.ns2.svc.cluster.remote"),
    entry("ipv4.localhost", "ns1", ["2.2.2.2"]),
    entry("ipv6.localhost", "ns1", ["2001:db8::ff00:42:8329"]),
    entry("dual.localhost", "ns1", ["2.2.2.2", "2001:db8::ff00:42:8329"]),
    entry("*.wildcard", "ns1", ["10.10.10.10"]),
    entry("*.b.wildcard", "ns1", ["11.11.11.11"]),
    entry("*.svc.mesh.company.net", "ns1", ["10.1.2.3"]),
    # headless: ready endpoints only
    k8s("headless", "ns1", [], [ep("30.30.30.30"), ep("31.31.31.31"), ep("2001:db8::30"), ep("32.32.32.32", False)]),
    entry("headless.example.com", "ns1", [], endpoints=[ep("33.33.33.33")]),
    entry("headless-no-endpoints.example.com", "ns1", []),
])


def ask(host: str, rdtype: int = A, ns: str = "ns1") -> Answer | None:
    return resolve(HOSTS, ns, names.labels_of(host if host.endswith(".") else host + "."), rdtype, DOMAIN)


def L(host: str) -> names.Labels:
    return names.labels_of(host + ".")


@pytest.mark.parametrize("host,rdtype,owner,addrs,cname", [
    # a ServiceEntry host, asked as is and through the client's first search domain
    ("www.google.com", A, "www.google.com", ["1.1.1.1"], None),
    ("www.google.com.ns1.svc.cluster.local", A, "www.google.com", ["1.1.1.1"], "www.google.com"),
    # the Kubernetes forms of a Service in the client's namespace, owned by the name asked
    ("productpage.ns1.svc.cluster.local", A, "productpage.ns1.svc.cluster.local", ["9.9.9.9"], None),
    ("productpage.ns1", A, "productpage.ns1", ["9.9.9.9"], None),
    ("productpage", A, "productpage", ["9.9.9.9"], None),
    ("productpage.ns1.ns1.svc.cluster.local", A, "productpage.ns1", ["9.9.9.9"], "productpage.ns1"),
    # another namespace's Service: by <svc>.<ns>, <svc>.<ns>.svc and the FQDN
    ("example.ns2", A, "example.ns2", ["10.10.10.10"], None),
    ("example.ns2.svc", A, "example.ns2.svc", ["10.10.10.10"], None),
    ("example.ns2.svc.cluster.local", A, "example.ns2.svc.cluster.local", ["10.10.10.10"], None),
    ("nslocalsame.ns1.svc.cluster.local", A, "nslocalsame.ns1.svc.cluster.local", ["10.10.10.241"], None),
    # another cluster domain: only its exact host
    ("details.ns2.svc.cluster.remote", A, "details.ns2.svc.cluster.remote",
     ["11.11.11.11", "12.12.12.12", "13.13.13.13", "14.14.14.14"], None),
    # address families
    ("dual.localhost", A, "dual.localhost", ["2.2.2.2"], None),
    ("dual.localhost", AAAA, "dual.localhost", ["2001:db8::ff00:42:8329"], None),
    # wildcards, the most specific first; no CNAME through a wildcard
    ("foo.wildcard", A, "foo.wildcard", ["10.10.10.10"], None),
    ("a.b.wildcard", A, "a.b.wildcard", ["11.11.11.11"], None),
    ("foo.svc.mesh.company.net", A, "foo.svc.mesh.company.net", ["10.1.2.3"], None),
    ("foo.foons.svc.mesh.company.net", A, "foo.foons.svc.mesh.company.net", ["10.1.2.3"], None),
    ("foo.svc.mesh.company.net.ns1.svc.cluster.local", A, "foo.svc.mesh.company.net.ns1.svc.cluster.local",
     ["10.1.2.3"], None),
    # headless: the ready endpoints of the family
    ("headless.ns1.svc.cluster.local", A, "headless.ns1.svc.cluster.local", ["30.30.30.30", "31.31.31.31"], None),
    ("headless.ns1.svc.cluster.local", AAAA, "headless.ns1.svc.cluster.local", ["2001:db8::30"], None),
    # one host in several namespaces: the client's own, else the Kubernetes Service, else the first
    ("everywhere.io", A, "everywhere.io", ["10.10.10.112"], None),
    ("canonical.ns3.svc.cluster.local", A, "canonical.ns3.svc.cluster.local", ["10.10.10.141"], None),
    ("canonical.ns2.svc.cluster.local", A, "canonical.ns2.svc.cluster.local", ["10.10.10.150"], None),
])
def test_answered(host: str, rdtype: int, owner: str, addrs: list[str], cname: str | None) -> None:
    got = ask(host, rdtype)
    assert got is not None, f"{host} was forwarded"
    assert (got.owner, sorted(got.addresses), got.cname) == (L(owner), sorted(addrs), cname and L(cname))


@pytest.mark.parametrize("host,rdtype", [
    ("productpage.ns1.ns1.svc.cluster.local", AAAA),    # an IPv4 Service asked for AAAA
    ("ipv6.localhost", A),
    ("ipv4.localhost", AAAA),
])
def test_known_host_without_the_family_is_an_empty_answer(host: str, rdtype: int) -> None:
    got = ask(host, rdtype)
    assert got is not None and got.addresses == () and got.cname is None


@pytest.mark.parametrize("host,rdtype,ns", [
    ("productpage.ns1", dns.rdatatype.NS, "ns1"),       # not A/AAAA
    ("productpage.ns1", dns.rdatatype.TXT, "ns1"),
    ("www.bing.com", A, "ns1"),                         # not the mesh's
    ("nslocal.ns2.svc.cluster.local", A, "ns1"),        # exported to ns2 only
    ("example", A, "ns1"),                              # a short name means the client's namespace
    ("details.ns2", A, "ns1"),                          # short forms expand to this cluster's domain only
    ("headless.example.com", A, "ns1"),                 # no VIP and not a Kubernetes Service: upstream resolves
    ("headless-no-endpoints.example.com", A, "ns1"),
    ("headless.pod0.ns1.svc.cluster.local", A, "ns1"),  # pod hostnames: upstream (as Istio, for now)
])
def test_forwarded(host: str, rdtype: int, ns: str) -> None:
    assert ask(host, rdtype, ns) is None


def test_exported_entry_resolves_in_its_namespace_only() -> None:
    assert ask("nslocal.ns2.svc.cluster.local", A, ns="ns2") is not None
    assert ask("nslocal.ns2.svc.cluster.local", A, ns="ns1") is None


def test_short_name_follows_the_client_namespace() -> None:
    got = ask("example", A, ns="ns2")
    assert got is not None and got.addresses == ("10.10.10.10",)
    got = ask("example.ns2.svc.cluster.local", A, ns="ns2")     # what `example` becomes through the search list
    assert got is not None and got.cname is None


def test_names_are_case_insensitive() -> None:
    got = ask("ProductPage.NS1.svc.Cluster.Local")
    assert got is not None and got.addresses == ("9.9.9.9",)


def test_other_cluster_domain() -> None:
    hosts = Hosts.of([k8s("web", "shop", ["10.0.0.9"], hostname="web.shop.svc.corp.example")])
    got = resolve(hosts, "shop", names.labels_of("web."), A, domain_labels("corp.example"))
    assert got is not None and got.addresses == ("10.0.0.9",)
    assert resolve(hosts, "shop", names.labels_of("web."), A, DOMAIN) is None


def test_kube_fqdns_by_label_count() -> None:
    cases = {
        "name": ["name.ns1.svc.cluster.local"],
        "name.ns2": ["name.ns2.svc.cluster.local", "name.ns2.ns1.svc.cluster.local"],
        "name.ns2.svc": ["name.ns2.svc.cluster.local", "name.ns2.svc.svc.cluster.local"],
        "name.ns2.not-svc": ["name.ns2.not-svc.svc.cluster.local"],
        "pod.sub-domain.ns.svc": ["pod.sub-domain.ns.svc.cluster.local"],
        "pod.sub-domain.ns.not-svc": [],
        "name.ns2.svc.cluster": [],
        "name.ns2.svc.cluster.local": [],
    }
    for host, want in cases.items():
        assert names.kube_fqdns(L(host), "ns1", DOMAIN) == [L(w) for w in want], host


def test_wildcards() -> None:
    assert names.wildcards(L("svc1")) == [L("svc1")]
    assert names.wildcards(L("svc1.ns1.svc.cluster.local")) == [
        L("svc1.ns1.svc.cluster.local"), ("*", "ns1", "svc", "cluster", "local"), ("*", "svc", "cluster", "local"),
        ("*", "cluster", "local"), ("*", "local")]


def test_trim_domain() -> None:
    assert names.trim_domain(L("name.ns.svc.cluster.local"), L("svc.cluster.local")) == L("name.ns")
    assert names.trim_domain(L("name.ns.a.different.domain"), L("svc.cluster.local")) is None
    assert names.trim_domain(L("svc.cluster.local"), L("svc.cluster.local")) is None


def test_search_domains_are_per_pod() -> None:
    assert names.search_domains("default-ns", DOMAIN) == [
        L("default-ns.svc.cluster.local"), L("svc.cluster.local"), L("cluster.local")]


def _query(host: str, rdtype: int = A, **kw: object) -> Query:
    q = parse(dns.message.make_query(host, rdtype, **kw).to_wire())
    assert isinstance(q, Query)
    return q


def test_reply_is_authoritative_with_cname_then_addresses_ttl_30() -> None:
    q = _query("www.google.com.ns1.svc.cluster.local.")
    ans = resolve(HOSTS, "ns1", q.qname, q.rdtype, DOMAIN)
    assert ans is not None
    r = dns.message.from_wire(answer_reply(q, ans, 30, q.udp_limit))
    assert r.flags & dns.flags.AA and r.flags & dns.flags.QR and r.id == q.message.id
    assert [(str(rr.name), dns.rdatatype.to_text(rr.rdtype), rr.ttl, sorted(x.to_text() for x in rr)) for rr in r.answer] == [
        ("www.google.com.ns1.svc.cluster.local.", "CNAME", 30, ["www.google.com."]),
        ("www.google.com.", "A", 30, ["1.1.1.1"])]


def test_large_answer_is_truncated_over_udp_only() -> None:
    hosts = Hosts.of([k8s("large", "ns1", [], [ep(f"240.0.0.{i}") for i in range(256)])])
    q = _query("large.ns1.svc.cluster.local.")
    ans = resolve(hosts, "ns1", q.qname, q.rdtype, DOMAIN)
    assert ans is not None and len(ans.addresses) == 256
    udp = dns.message.from_wire(answer_reply(q, ans, 30, q.udp_limit))
    assert udp.flags & dns.flags.TC
    tcp = dns.message.from_wire(answer_reply(q, ans, 30, TCP_MAX))
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 256
    big = _query("large.ns1.svc.cluster.local.", use_edns=0, payload=8192)   # an EDNS client takes it over UDP
    assert not dns.message.from_wire(answer_reply(big, ans, 30, big.udp_limit)).flags & dns.flags.TC


# --- relaying an upstream's reply (found by tests/unit/ztunnel/test_dns_upstream_fuzz.py) --------------

def _forwarded(name: str = "example.com.") -> tuple[Query, dns.message.Message]:
    m = dns.message.make_query(name, "A")
    m.id = 7
    q = parse(m.to_wire())
    return q, upstream_query(q, 0x4242)


def test_an_upstream_reply_repeating_the_question_is_dropped() -> None:
    """dnspython's is_response compares the question sections as sets: a reply with the question
    twice passed and went to the pod as a two-question reply."""
    q, sent = _forwarded()
    r = dns.message.make_response(sent)
    r.question = [r.question[0], r.question[0]]
    with pytest.raises(ValueError, match="2 questions"):
        relay_reply(sent, r.to_wire(), q, 512)


def test_an_upstream_error_without_a_question_reaches_the_pod_as_that_error_without_records() -> None:
    """An error may come without its question (is_response takes FORMERR, SERVFAIL, NOTIMP and
    REFUSED so); its records went to the pod as they came, answers to no question it asked."""
    q, sent = _forwarded()
    r = dns.message.make_response(sent)
    r.question = []
    r.set_rcode(dns.rcode.REFUSED)
    r.answer.append(dns.rrset.from_text("bank.example.", 3600, "IN", "A", "10.6.6.6"))
    out = dns.message.from_wire(relay_reply(sent, r.to_wire(), q, 512))
    assert out.id == 7 and out.rcode() == dns.rcode.REFUSED and out.flags & dns.flags.QR
    assert [x.name.to_text() for x in out.question] == ["example.com."] and not out.answer
