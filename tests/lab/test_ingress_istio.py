"""Istio's bookinfo-shaped ingress in a running lab: a `networking.istio.io` Gateway (selector
`istio: ingressgateway`, an HTTPS server per hostname with its `credentialName`, an HTTP server with
`httpsRedirect`) and a VirtualService bound with `gateways: [...]` (a `prefixRewrite` redirect
too, and a route delegated to another VirtualService), served by Ambit's ingress gateway
(a Gateway API Gateway of class `ambit` whose pods carry that label) and reached with real curl from
the lab's outside netns over HTTPS with SNI. The destination namespace is STRICT and echo-v2 admits
the gateway's identity only. About 30 s (the gateway pod starts once)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.lab.labctl import Lab
from tests.lab.test_ingress import HOSTS, NS, objects, outside_curl, strict_and_only_the_gateway, test_ca

pytestmark = pytest.mark.lab
GATEWAY = "istio-ingressgateway"     # the name Istio's installer gives it (not test_ingress's, which may be going away)


def only_the_gateway() -> list[dict[str, Any]]:
    """STRICT, and echo-v2 admits this gateway's identity only."""
    objs = strict_and_only_the_gateway()
    objs[1]["spec"]["rules"] = [{"from": [{"source": {"principals": [f"cluster.local/ns/{NS}/sa/{GATEWAY}"]}}]}]
    return objs


def istio_objects(secrets: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    services = [o for o in objects(secrets) if o["kind"] == "Service"]
    https = [{"port": {"number": 443, "name": f"https-{h.split('.')[0]}", "protocol": "HTTPS"}, "hosts": [h],
              "tls": {"mode": "SIMPLE", "credentialName": secrets[h]["metadata"]["name"]}} for h in HOSTS]
    return [*secrets.values(), *services,
            # what Istio's installer deploys as istio-ingressgateway, in Ambit: an ingress Gateway's pods
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
             "metadata": {"name": GATEWAY, "namespace": NS, "annotations": {"lab.ambit.io/node": "node1"}},
             "spec": {"gatewayClassName": "ambit", "infrastructure": {"labels": {"istio": "ingressgateway"}},
                      "listeners": [{"name": "http-alt", "port": 8080, "protocol": "HTTP"}]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
             "metadata": {"name": "bookinfo-gateway", "namespace": NS},
             "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
                 {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": list(HOSTS),
                  "tls": {"httpsRedirect": True}}, *https]}},
            {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": {"name": "bookinfo", "namespace": NS},
             "spec": {"hosts": list(HOSTS), "gateways": ["bookinfo-gateway"], "http": [
                 {"match": [{"uri": {"prefix": "/productpage"}}],
                  "route": [{"destination": {"host": "echo-v2", "port": {"number": 8080}}}]},
                 {"match": [{"uri": {"prefix": "/reviews/"}}], "redirect": {"prefixRewrite": "/productpage/"}},
                 {"match": [{"uri": {"prefix": "/team/"}}], "delegate": {"name": "team-routes"}},
                 {"route": [{"destination": {"host": "echo-v1", "port": {"number": 8080}}}]}]}},
            # an app team's delegate: no hosts, no gateways; served through the root's /team/ route only
            {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": {"name": "team-routes", "namespace": NS},
             "spec": {"http": [{"match": [{"uri": {"prefix": "/team/v1/"}}],
                                "route": [{"destination": {"host": "echo-v1", "port": {"number": 8080}}}]},
                               {"route": [{"destination": {"host": "echo-v2", "port": {"number": 8080}}}]}]}}]


def exported(name: str, export: list[str]) -> dict[str, Any]:
    """A VirtualService of another team's namespace bound to the gateway, for /<name>/ on the first
    host: served only if exported to the namespace the ingress gateway's pods run in (NS)."""
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "books"},
            "spec": {"hosts": [HOSTS[0]], "gateways": [f"{NS}/bookinfo-gateway"], "exportTo": export, "http": [
                {"match": [{"uri": {"prefix": f"/{name}/"}}],
                 "route": [{"destination": {"host": f"echo-v2.{NS}.svc.cluster.local", "port": {"number": 8080}}}]}]}}


def test_bookinfo_shaped_istio_gateway_and_virtual_service(lab: Lab, tmp_path: Path) -> None:
    ca, secrets = test_ca(tmp_path)
    # applied first, so that they come before the root VirtualService's catch-all (older, then by namespace)
    teams = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "books"}},
             exported("hidden", ["."]), exported("shared", [".", NS])]
    objs = istio_objects(secrets) + only_the_gateway()
    try:
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump_all(teams))
        lab.ambit("apply", "-f", "-", input=yaml.safe_dump_all(objs))
        # an Istio Gateway is listed as such, apart from Gateway API's
        got = lab.ambit("get", "gateway.networking.istio.io", "-n", NS, "-o", "name").stdout.split()
        assert got == ["gateway.networking.istio.io/bookinfo-gateway"]

        def address() -> str | None:
            st = json.loads(lab.ambit("get", "gateway", GATEWAY, "-n", NS, "-o", "json").stdout).get("status") or {}
            return next((a["value"] for a in st.get("addresses") or []), None)
        ip = lab.wait_for(address, timeout=30, what="the ingress gateway's address")
        resolve = [a for h in HOSTS for port in (80, 443) for a in ("--resolve", f"{h}:{port}:{ip}")]
        # the HTTP server redirects to https (the gateway serves it once its config arrived)
        def redirected() -> bool:
            p = outside_curl(lab, f"http://{HOSTS[0]}/productpage", "-o", "/dev/null", "-w",
                             "%{http_code} %{redirect_url}", *resolve)
            assert p.stdout == f"301 https://{HOSTS[0]}/productpage", (ip, p.stdout, p.stderr)
            return True
        lab.wait_for(redirected, timeout=60, what="the https redirect on port 80")
        for h in HOSTS:
            # SNI picks the server, so its credentialName's certificate, which curl verifies
            p = outside_curl(lab, f"https://{h}/productpage", "-v", "--cacert", str(ca), *resolve)
            assert p.returncode == 0, p.stderr
            assert f"subject: CN={h}" in p.stderr, p.stderr
            # the VirtualService's rules: /productpage to echo-v2 (STRICT, the gateway's identity only)
            assert json.loads(p.stdout)["pod"] == "echo-v2"
            p = outside_curl(lab, f"https://{h}/other", "--cacert", str(ca), *resolve)
            assert p.returncode == 0 and json.loads(p.stdout)["pod"] == "echo-v1", p.stderr
        # redirect.prefixRewrite: the matched prefix swapped, the rest and the query kept
        p = outside_curl(lab, f"https://{HOSTS[0]}/reviews/1?u=2", "-o", "/dev/null", "-w",
                         "%{http_code} %{redirect_url}", "--cacert", str(ca), *resolve)
        assert p.stdout == f"301 https://{HOSTS[0]}/productpage/1?u=2", (p.stdout, p.stderr)
        # http[].delegate: /team/ takes the delegate's routes (its catch-all is echo-v2, not the root's echo-v1)
        for path, pod in (("/team/x", "echo-v2"), ("/team/v1/x", "echo-v1")):
            p = outside_curl(lab, f"https://{HOSTS[0]}{path}", "--cacert", str(ca), *resolve)
            assert p.returncode == 0 and json.loads(p.stdout)["pod"] == pod, (path, p.stdout, p.stderr)
        # exportTo: another namespace's VirtualService is served only if exported to the gateway's (NS);
        # /hidden/ falls through to the root's catch-all (echo-v1)
        for path, pod in (("/shared/x", "echo-v2"), ("/hidden/x", "echo-v1")):
            p = outside_curl(lab, f"https://{HOSTS[0]}{path}", "--cacert", str(ca), *resolve)
            assert p.returncode == 0 and json.loads(p.stdout)["pod"] == pod, (path, p.stdout, p.stderr)
        # a meshed client of another identity is refused by echo-v2's policy: the gateway's mTLS got in
        assert lab.curl_rc("demo/client", f"http://{lab.pod('demo/echo-v2')['ip']}:8080/") != 0
    finally:
        lab.ambit("delete", "-f", "-", "--ignore-not-found", input=yaml.safe_dump_all(objs + teams), check=False)
