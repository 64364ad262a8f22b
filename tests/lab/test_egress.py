"""Egress in the lab: ServiceEntry hosts on an external netns, and outboundTrafficPolicy REGISTRY_ONLY.

One external host (ambitctl/lab/external.py) on the session lab's underlay, outside the mesh, with
two addresses: one a ServiceEntry registers, one nobody registers. Real curl from an enrolled pod.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ambit.dataplane.telemetry.metrics import scrape
from ambitctl.lab import external as ext_mod
from ambitctl.lab import state
from ambitctl.lab.topology import LabNames
from tests.lab.labctl import Lab

VIP = "240.240.0.10"        # the ServiceEntry's address: what the app's DNS would hand out


@pytest.fixture(scope="module")
def external(lab: Lab) -> Iterator[ext_mod.External]:
    st = state.load(lab.dir)
    assert st is not None
    names = LabNames(st.name)
    try:
        ext = ext_mod.add(st, lab.dir)
        lab.wait_for(lambda: subprocess.run(["ip", "netns", "exec", ext.netns, "curl", "-sf", "-m", "1",
                                             f"http://{ext.ip}/up"], capture_output=True).returncode == 0,
                     timeout=15, interval=0.2, what="the external server to listen")
        yield ext
    finally:
        ext_mod.remove(names)


def apply(lab: Lab, *objs: dict[str, Any]) -> None:
    lab.ambit("apply", "-f", "-", "--wait", input=yaml.safe_dump_all(list(objs)))


def delete(lab: Lab, *objs: dict[str, Any]) -> None:
    lab.ambit("delete", "-f", "-", "--ignore-not-found", "--wait", input=yaml.safe_dump_all(list(objs)),
              check=False)


def service_entry(ext: ext_mod.External) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "external", "namespace": "demo"},
            "spec": {"hosts": [ext_mod.HOSTNAME], "addresses": [VIP], "location": "MESH_EXTERNAL",
                     "resolution": "STATIC", "endpoints": [{"address": ext.ip}],
                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP"},
                               {"number": 443, "name": "tls", "protocol": "TLS"}]}}


def curl(lab: Lab, url: str, *opts: str) -> tuple[int, dict[str, Any] | None]:
    p = lab.exec("demo/client", "curl", "-sS", "-m", "10", *opts, url, timeout=40)
    try:
        return p.returncode, json.loads(p.stdout.splitlines()[0]) if p.returncode == 0 else None
    except (ValueError, IndexError):
        return p.returncode, None


def tcp_opened(lab: Lab, **match: str) -> float:
    text = scrape(lab.dir / "node1" / "metrics.sock")
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "istio_tcp_connections_opened_total"
               and all(s.labels.get(k) == v for k, v in match.items()))


@contextlib.contextmanager
def registry_only_switch(lab: Lab, external: ext_mod.External) -> Iterator[Callable[[], None]]:
    """A function that puts the mesh in REGISTRY_ONLY (in force once the unregistered address is
    refused); on exit the mesh config is as it was, and ALLOW_ANY is in force again for the tests
    after this one."""
    mesh_cfg = lab.dir / "mesh-config.yaml"
    before = mesh_cfg.read_text() if mesh_cfg.exists() else None

    def registry_only() -> None:
        mesh = (yaml.safe_load(before) if before else None) or {}
        mesh_cfg.write_text(yaml.safe_dump({**mesh, "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}))
        lab.wait_for(lambda: curl(lab, f"http://{external.other_ip}/registry-only")[0] != 0, timeout=15,
                     what="REGISTRY_ONLY to refuse the unregistered address")
    try:
        yield registry_only
    finally:
        if before is None:
            mesh_cfg.unlink(missing_ok=True)
        else:
            mesh_cfg.write_text(before)
        lab.wait_for(lambda: curl(lab, f"http://{external.other_ip}/restored")[0] == 0, timeout=15,
                     what="ALLOW_ANY back for the tests after this one")


def test_service_entry_host_and_registry_only(lab: Lab, external: ext_mod.External) -> None:
    se = service_entry(external)
    apply(lab, se)
    with registry_only_switch(lab, external) as registry_only:
        try:
            # ALLOW_ANY: the VIP reaches the external server through its endpoint, from the pod's own address
            url = f"http://{ext_mod.HOSTNAME}/via-vip"
            resolve = ("--resolve", f"{ext_mod.HOSTNAME}:80:{VIP}")
            code, seen = lab.wait_for(lambda: (r := curl(lab, url, *resolve))[0] == 0 and r, timeout=15,
                                      what="the ServiceEntry VIP to route")
            assert seen["peer"] == lab.pod("demo/client")["ip"] and seen["host"] == ext_mod.HOSTNAME
            assert seen["tls"] is False, "MESH_EXTERNAL: plain TCP from the pod, no HBONE"
            # HTTPS to the host's TLS port: the app's own TLS passes through untouched, verified by the test CA
            code, seen = curl(lab, f"https://{ext_mod.HOSTNAME}/tls", "--resolve", f"{ext_mod.HOSTNAME}:443:{VIP}",
                              "--cacert", str(external.ca))
            assert code == 0 and seen["tls"] is True and seen["sni"] == ext_mod.HOSTNAME
            assert tcp_opened(lab, reporter="source", destination_service=ext_mod.HOSTNAME,
                              destination_service_namespace="demo", source_workload="client") >= 2
            # an address nobody registered still passes under ALLOW_ANY
            assert curl(lab, f"http://{external.other_ip}/allow-any")[0] == 0

            registry_only()
            refused = [r for r in lab.access_log("node1") if r["direction"] == "outbound"
                       and r.get("dst.addr") == f"{external.other_ip}:80" and "error" in r]
            assert refused and refused[-1]["error"] == (f"outboundTrafficPolicy REGISTRY_ONLY: {external.other_ip}:80 "
                                                       "is not a mesh workload, Service or ServiceEntry"), refused[-1:]
            assert refused[-1]["dst.service"] == "BlackHoleCluster"
            assert tcp_opened(lab, destination_service="BlackHoleCluster", response_flags="DENY",
                              source_workload="client") >= 1
            # the registered host still goes: by its VIP, and straight to its STATIC endpoint
            assert curl(lab, url, *resolve)[0] == 0
            code, seen = curl(lab, f"http://{external.ip}/direct")
            assert code == 0 and seen["peer"] == lab.pod("demo/client")["ip"]
            # and so does the mesh
            assert lab.curl("demo/client", "http://echo.demo.svc.cluster.local:8080/")["namespace"] == "demo"
        finally:
            delete(lab, se)


EGRESS_VIP = "240.240.0.20"
EGRESS_NS = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-egress"}}
EGRESS_WAYPOINT = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
    "metadata": {"name": "waypoint", "namespace": "istio-egress", "annotations": {"lab.ambit.io/node": "node2"}},
    # demo's ServiceEntry uses it from another namespace: the listener must admit demo (Istio alike)
    "spec": {"gatewayClassName": "istio-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE",
                                                                  "allowedRoutes": {"namespaces": {"from": "All"}}}]},
}


def egress_objects(ext: ext_mod.External) -> list[dict[str, Any]]:
    """Istio ambient's egress gateway pattern: a ServiceEntry bound to a waypoint in istio-egress,
    an AuthorizationPolicy on the ServiceEntry, and TLS origination on two of its ports."""
    host = "egress.example"
    se = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
          "metadata": {"name": "egress", "namespace": "demo",
                       "labels": {"istio.io/use-waypoint": "waypoint", "istio.io/use-waypoint-namespace": "istio-egress"}},
          "spec": {"hosts": [host], "addresses": [EGRESS_VIP], "resolution": "STATIC",
                   "endpoints": [{"address": ext.ip}],
                   "ports": [{"number": 80, "name": "http", "protocol": "HTTP"},
                             {"number": 8080, "name": "http-simple", "protocol": "HTTP", "targetPort": 443},
                             {"number": 9090, "name": "http-mutual", "protocol": "HTTP", "targetPort": 8443},
                             {"number": 7070, "name": "http-btls", "protocol": "HTTP", "targetPort": 443},
                             {"number": 6060, "name": "http-cred", "protocol": "HTTP", "targetPort": 8443}]}}
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
          "metadata": {"name": "egress-tls", "namespace": "demo"},
          "spec": {"host": host, "trafficPolicy": {"portLevelSettings": [
              {"port": {"number": 8080}, "tls": {"mode": "SIMPLE", "caCertificates": str(ext.ca),
                                                  "sni": ext_mod.HOSTNAME}},
              {"port": {"number": 9090}, "tls": {"mode": "MUTUAL", "caCertificates": str(ext.ca),
                                                  "sni": ext_mod.HOSTNAME, "clientCertificate": str(ext.client_cert),
                                                  "privateKey": str(ext.client_key)}},
              # the same mutual TLS from a Secret in the waypoint's namespace (istio-egress), not the files
              {"port": {"number": 6060}, "tls": {"mode": "MUTUAL", "credentialName": "partner-client",
                                                  "sni": ext_mod.HOSTNAME}}]}}}
    client_secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                     "metadata": {"name": "partner-client", "namespace": "istio-egress"},
                     "stringData": {"tls.crt": Path(ext.client_cert).read_text(),
                                    "tls.key": Path(ext.client_key).read_text(), "ca.crt": Path(ext.ca).read_text()}}
    ap = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
          "metadata": {"name": "egress-from-client", "namespace": "demo"},
          "spec": {"targetRefs": [{"kind": "ServiceEntry", "group": "networking.istio.io", "name": "egress"}],
                   "action": "ALLOW",
                   "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/demo/sa/client"]}}]}]}}
    # the Gateway API way (BackendTLSPolicy) on one port, its CA inline from a ConfigMap
    ca = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "external-ca", "namespace": "demo"},
          "data": {"ca.crt": Path(ext.ca).read_text()}}
    btls = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
            "metadata": {"name": "egress-btls", "namespace": "demo"},
            "spec": {"targetRefs": [{"group": "networking.istio.io", "kind": "ServiceEntry", "name": "egress",
                                     "sectionName": "http-btls"}],
                     "validation": {"hostname": ext_mod.HOSTNAME,
                                    "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "external-ca"}]}}}
    return [se, client_secret, dr, ap, ca, btls]


def test_egress_through_a_waypoint_with_authorization_and_tls_origination(lab: Lab, external: ext_mod.External) -> None:
    objs = [EGRESS_NS, EGRESS_WAYPOINT, *egress_objects(external)]
    apply(lab, *objs)
    try:
        wp = lab.wait_for(lambda: [w for w in lab.status()["waypoints"]
                                   if w["namespace"] == "istio-egress" and w["ready"]], timeout=30,
                          what="the egress waypoint ready")[0]
        resolve = ("--resolve", f"egress.example:80:{EGRESS_VIP}", "--resolve", f"egress.example:8080:{EGRESS_VIP}",
                   "--resolve", f"egress.example:9090:{EGRESS_VIP}", "--resolve", f"egress.example:6060:{EGRESS_VIP}")
        code, seen = lab.wait_for(lambda: (r := curl(lab, "http://egress.example/out", *resolve))[0] == 0 and r,
                                  timeout=20, what="egress through the waypoint")
        # it left through the waypoint: the external server sees the waypoint's address, not the pod's
        assert seen["peer"] == wp["ip"] != lab.pod("demo/client")["ip"], (seen, wp)
        assert (seen["tls"], seen["host"]) == (False, "egress.example")
        # authorized by the source's identity at the waypoint: client2 (sa other) is refused with 403
        p = lab.exec("demo/client2", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10",
                     *resolve, "http://egress.example/denied", timeout=30)
        assert p.stdout.strip() == "403", (p.stdout, p.stderr)
        # going around the VIP, straight to the endpoint, does not go around the waypoint or its policy
        code, seen = curl(lab, f"http://{external.ip}/direct")
        assert code == 0 and seen["peer"] == wp["ip"], seen
        p = lab.exec("demo/client2", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10",
                     f"http://{external.ip}/direct-denied", timeout=30)
        assert p.stdout.strip() == "403", (p.stdout, p.stderr)
        # TLS origination: the app speaks HTTP, the external server sees TLS (SIMPLE, then MUTUAL)
        code, seen = curl(lab, "http://egress.example:8080/simple", *resolve)
        assert code == 0 and seen["tls"] is True and seen["sni"] == ext_mod.HOSTNAME, seen
        assert seen["peer"] == wp["ip"] and seen["path"] == "/simple"
        code, seen = curl(lab, "http://egress.example:9090/mutual", *resolve)
        assert code == 0 and seen["tls"] is True and seen["path"] == "/mutual", seen
        code, seen = curl(lab, "http://egress.example:6060/credential", *resolve)       # credentialName
        assert code == 0 and seen["tls"] is True and seen["path"] == "/credential", seen
        code, seen = curl(lab, "http://egress.example:7070/btls", "--resolve", f"egress.example:7070:{EGRESS_VIP}")
        assert code == 0 and seen["tls"] is True and seen["sni"] == ext_mod.HOSTNAME, seen    # BackendTLSPolicy
    finally:
        delete(lab, *reversed(objs))


def test_a_service_entry_over_the_pod_range_does_not_take_other_namespaces_pod_traffic(lab: Lab) -> None:
    """A ServiceEntry of namespace "tenant" whose CIDR covers every pod: demo/client's connection to
    demo/echo-v2's address must stay HBONE to echo-v2 (here under STRICT, which refuses plain TCP),
    not become the entry's plain-TCP passthrough (before: so it did, and echo-v2's ztunnel refused it)."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tenant"}}
    host = "pods.tenant.example"
    se = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
          "metadata": {"name": "all-pods", "namespace": "tenant"},
          "spec": {"hosts": [host], "addresses": ["10.210.0.0/16"], "resolution": "NONE",
                   "location": "MESH_EXTERNAL", "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}]}}
    strict = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
              "metadata": {"name": "strict", "namespace": "demo"}, "spec": {"mtls": {"mode": "STRICT"}}}
    echo_ip = lab.pod("demo/echo-v2")["ip"]
    apply(lab, ns, strict)
    try:
        assert lab.curl("demo/client", f"http://{echo_ip}:8080/")["namespace"] == "demo"
        apply(lab, se)

        def entry_in_force() -> bool:   # an address of its CIDR that is no pod is the entry's
            lab.curl_rc("demo/client", "http://10.210.9.9:8080/", timeout=1)
            return any(r.get("dst.service") == host for r in lab.access_log("node1"))
        lab.wait_for(entry_in_force, timeout=15, what="the ServiceEntry in force at ztunnel")
        for i in range(3):
            p = lab.exec("demo/client", "curl", "-sS", "-m", "5", f"http://{echo_ip}:8080/pod-{i}", timeout=30)
            assert p.returncode == 0 and json.loads(p.stdout)["namespace"] == "demo", p.stderr
        mine = [r for r in lab.access_log("node1") if r.get("direction") == "outbound"
                and str(r.get("dst.addr", "")).startswith(f"{echo_ip}:")]
        assert mine and all(r.get("dst.service") != host for r in mine[-3:]), mine[-3:]
    finally:
        delete(lab, se, strict, ns)


def dns_requests(lab: Lab, node: str, **match: str) -> float:
    text = scrape(lab.dir / node / "metrics.sock")
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "istio_dns_requests_total" and all(s.labels.get(k) == v for k, v in match.items()))


def test_service_entry_by_name_through_the_dns_proxy(lab: Lab, external: ext_mod.External) -> None:
    """The app only knows the host's name: the controller allocates the entry an address, the pod's
    DNS query is captured to ztunnel's DNS proxy, which answers with it, and ztunnel routes the
    connection to the entry's endpoint, also under REGISTRY_ONLY (Istio ambient's egress pattern)."""
    se = service_entry(external)
    se["metadata"]["name"] = "external-by-name"
    del se["spec"]["addresses"]
    apply(lab, se)
    with registry_only_switch(lab, external) as registry_only:
        try:
            got = yaml.safe_load(lab.ambit("get", "serviceentry", "external-by-name", "-n", "demo", "-o", "yaml").stdout)
            allocated = [a for a in (got.get("status") or {}).get("addresses") or [] if a.get("host") == ext_mod.HOSTNAME]
            assert len(allocated) == 1 and allocated[0]["value"].startswith("240.240."), got.get("status")
            vip = allocated[0]["value"]

            queries = dns_requests(lab, "node1", source_canonical_service="client")
            # a real resolver (dig) asks the lab's cluster DNS; the proxy answers, authoritative, TTL 30
            dig = lab.wait_for(lambda: (p := lab.exec("demo/client", "dig", "+time=2", "+tries=1", "+noall", "+answer",
                                                      "+comments", ext_mod.HOSTNAME)).returncode == 0
                               and vip in p.stdout and p.stdout, timeout=15, what="the DNS proxy to answer the entry")
            flags = next(line for line in dig.splitlines() if "flags:" in line).split("flags:")[1].split(";")[0].split()
            assert "aa" in flags, dig
            assert re.search(rf"^{re.escape(ext_mod.HOSTNAME)}\.\s+30\s+IN\s+A\s+{re.escape(vip)}$", dig, re.M), dig
            # glibc's resolver (curl, no --resolve) goes the same way, and the connection reaches the endpoint
            code, seen = curl(lab, f"http://{ext_mod.HOSTNAME}/by-name")
            assert code == 0 and seen["host"] == ext_mod.HOSTNAME, seen
            assert seen["peer"] == lab.pod("demo/client")["ip"], "MESH_EXTERNAL: plain TCP from the pod"
            assert dns_requests(lab, "node1", source_canonical_service="client") > queries
            # a pod outside the mesh asks the same resolver, which does not know the entry
            legacy = lab.exec("legacy/client", "dig", "+time=2", "+tries=1", "+short", ext_mod.HOSTNAME)
            assert vip not in legacy.stdout, legacy.stdout

            registry_only()
            code, seen = curl(lab, f"http://{ext_mod.HOSTNAME}/registry-only-by-name")
            assert code == 0 and seen["host"] == ext_mod.HOSTNAME, seen
            # a name the mesh does not know is forwarded to the cluster DNS, which says it does not exist
            nx = lab.exec("demo/client", "dig", "+time=2", "+tries=1", "nothing-here.example.com")
            assert "status: NXDOMAIN" in nx.stdout, nx.stdout
        finally:
            delete(lab, se)


def test_dig_is_never_answered_with_its_own_query(lab: Lab) -> None:
    """Seen once under a loaded full run (the NXDOMAIN check above): dig got its own query back as
    the answer. dig's socket (SO_REUSEPORT, root) had been given port 15053, which the pod's range
    (1024-65000) covered and its reserved ports (15000-15021) did not, beside ztunnel's SO_REUSEPORT
    DNS socket; its query, redirected to 127.0.0.1:15053, went to itself. The lab's pods now reserve
    15053 too; and where a pod's range covers it unreserved (here: a range of 15053 alone, so that
    dig is always given it), the query goes to the cluster DNS uncaptured instead of to itself."""
    reserved = lab.exec("demo/client", "cat", "/proc/sys/net/ipv4/ip_local_reserved_ports").stdout.strip()
    assert "15053" in reserved.split(","), reserved
    sysctl = "/proc/sys/net/ipv4/ip_local_"
    saved = lab.exec("demo/client", "cat", f"{sysctl}port_range").stdout.split()
    try:
        lab.exec("demo/client", "sh", "-c", f"echo > {sysctl}reserved_ports; echo 15053 15053 > {sysctl}port_range",
                 check=True)
        nx = lab.exec("demo/client", "dig", "+time=2", "+tries=1", "nothing-here.example.com")
        assert "status: NXDOMAIN" in nx.stdout, nx.stdout
    finally:
        lab.exec("demo/client", "sh", "-c", f"echo {reserved} > {sysctl}reserved_ports; "
                                            f"echo {' '.join(saved)} > {sysctl}port_range", check=True)


def test_service_entry_endpoint_weights_are_honoured_behind_a_waypoint(lab: Lab, external: ext_mod.External) -> None:
    """A ServiceEntry's endpoint weights, which ztunnel honoured and the waypoint ignored (it was
    warned as "not enforced yet"): its balancer now shares the requests by weight, as Envoy's
    weighted round robin and least request do. The external host's two addresses are the two
    endpoints, weights 1 and 3; 40 requests on one connection from the client."""
    vip, host = "240.240.0.30", "weighted.example"
    se = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
          "metadata": {"name": "weighted", "namespace": "demo",
                       "labels": {"istio.io/use-waypoint": "waypoint", "istio.io/use-waypoint-namespace": "istio-egress"}},
          "spec": {"hosts": [host], "addresses": [vip], "resolution": "STATIC",
                   "endpoints": [{"address": external.ip, "weight": 1}, {"address": external.other_ip, "weight": 3}],
                   "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}}
    objs = [EGRESS_NS, EGRESS_WAYPOINT, se]
    apply(lab, *objs)
    try:
        lab.wait_for(lambda: [w for w in lab.status()["waypoints"] if w["namespace"] == "istio-egress" and w["ready"]],
                     timeout=30, what="the egress waypoint ready")
        resolve = ("--resolve", f"{host}:80:{vip}")
        lab.wait_for(lambda: curl(lab, f"http://{host}/up", *resolve)[0] == 0, timeout=20, what="the entry served")
        p = lab.exec("demo/client", "curl", "-sS", "-m", "20", *resolve, f"http://{host}/w[1-40]", timeout=60)
        seen = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
        assert len(seen) == 40, (p.stdout[-500:], p.stderr[-500:])
        by = {a: sum(1 for s in seen if s["local"] == a) for a in (external.ip, external.other_ip)}
        assert by == {external.ip: 10, external.other_ip: 30}, by
    finally:
        delete(lab, *reversed(objs))
