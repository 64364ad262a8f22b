"""An ingress Gateway in a cluster, against the API-server emulator through the official client (no
mocks): the controller's source reads Secrets as istiod does (no Helm releases nor service account
tokens: a fieldSelector the server applies) and keeps only their certificate keys, an HTTPS listener resolves its certificateRefs from them, and the reconciler writes the
attached HTTPRoute's `status.parents` (httproutes/status) as well as the Gateway's."""

from __future__ import annotations

import threading
from typing import Any

from controller.sources.kube import KubeSource, make_api_client
from controller.translate import translate
from controller.waypoints.reconcile import KubeWaypointReconciler
from tests.support.kube_emulator import KubeEmulator
from tests.support.wait import wait_for
from tests.unit.controller.test_ingress import tls_secret

GW_V1 = "gateway.networking.k8s.io/v1"


def _cond(conds: list[dict[str, Any]], type_: str) -> tuple[str, str] | None:
    c = next((c for c in conds if c["type"] == type_), None)
    return (c["status"], c["reason"]) if c else None


def test_secrets_cut_to_certificate_keys_https_listener_and_route_status_in_a_cluster() -> None:
    with KubeEmulator(apply_selectors=True) as emu:
        seen: list[list[dict[str, Any]]] = []
        rec = KubeWaypointReconciler(make_api_client(emu.url))

        def on_snapshot(objs: list[dict[str, Any]]) -> None:
            seen.append(objs)
            rec.reconcile(objs, translate(objs))
        source = KubeSource(make_api_client(emu.url), debounce=0.01)
        stop = threading.Event()
        t = threading.Thread(target=source.run, args=(on_snapshot, stop), daemon=True)
        t.start()
        try:
            emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}})
            emu.create({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": {"name": "app-password", "namespace": "web"}, "data": {"password": "aHVudGVyMg=="}})
            emu.create({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                        "metadata": {"name": "sa-token", "namespace": "web"}, "data": {"token": "c2VjcmV0"}})
            emu.create({"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1",
                        "metadata": {"name": "sh.helm.release.v1.web.v1", "namespace": "web"},
                        "data": {"release": "aGVsbQ=="}})
            emu.create(tls_secret("cert-a"))
            emu.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "web"},
                        "spec": {"clusterIP": "10.96.0.50", "selector": {"app": "echo"}, "ports": [{"port": 80}]}})
            emu.create({"apiVersion": GW_V1, "kind": "Gateway", "metadata": {"name": "gw", "namespace": "web"},
                        "spec": {"gatewayClassName": "ambit", "listeners": [
                            {"name": "https", "port": 443, "protocol": "HTTPS", "hostname": "a.example.com",
                             "tls": {"certificateRefs": [{"name": "cert-a"}]}}]}})
            emu.create({"apiVersion": GW_V1, "kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "web"},
                        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": [{"name": "echo",
                                                                                            "port": 80}]}]}})

            def route_parents() -> list[dict[str, Any]]:
                return ((emu.get(GW_V1, "HTTPRoute", "r", "web") or {}).get("status") or {}).get("parents") or []
            parents = wait_for(route_parents, timeout=10, what="the HTTPRoute's status.parents")
            assert parents[0]["controllerName"] == "ambit.io/gateway-controller"
            assert _cond(parents[0]["conditions"], "Accepted") == ("True", "Accepted")
            assert _cond(parents[0]["conditions"], "ResolvedRefs") == ("True", "ResolvedRefs")

            def listener() -> dict[str, Any] | None:
                st = (emu.get(GW_V1, "Gateway", "gw", "web") or {}).get("status") or {}
                return next(iter(st.get("listeners") or []), None)
            ln = wait_for(listener, timeout=10, what="the Gateway's listener status")
            assert _cond(ln["conditions"], "ResolvedRefs") == ("True", "ResolvedRefs")
            # the source asked the server for no token nor Helm release: those never reached the controller;
            # the Opaque one did (a DestinationRule's credentialName may name one), with none of its data kept
            assert all(q.get("fieldSelector") == "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token"
                       for q in emu.list_requests("secrets"))
            secrets = {o["metadata"]["name"]: o for o in seen[-1] if o["kind"] == "Secret"}
            assert set(secrets) == {"cert-a", "app-password"}
            assert secrets["app-password"]["data"] == {} and secrets["app-password"]["type"] == "Opaque"
            assert set(secrets["cert-a"]["data"]) == {"tls.crt", "tls.key"}
        finally:
            stop.set()
            t.join(timeout=10)
