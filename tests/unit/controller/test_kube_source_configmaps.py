"""ConfigMaps, watched for the CA bundles of an ingress Gateway's client certificate validation
(spec.tls.frontend caCertificateRefs), against the API-server emulator through the official
client: a change of the bundle re-translates the Gateway's listeners, a deleted one stops them,
and what the controller keeps of a ConfigMap is its name and `ca.crt` alone, so that the rest of
a cluster's ConfigMaps (large ones, leader-election ones renewed every few seconds) costs neither
memory nor translations."""

from __future__ import annotations

from typing import Any

from controller.sources.kube import default_types
from controller.translate import translate
from tests.support.kube_emulator import Fault, KubeEmulator
from tests.support.wait import wait_for
from tests.unit.controller.test_ingress import HTTP, gateway, https, route, tls_secret
from tests.unit.controller.test_ingress_frontend_tls import CA1, CA2, cm_ref, configmap, validation, with_tls
from tests.unit.controller.test_kube_source import emu, run  # noqa: F401 - fixtures

CONFIGMAPS = next(t for t in default_types() if t.kind == "ConfigMap")


def client_ca(snapshot: list[dict[str, Any]]) -> str | None:
    """The client CA of listener "a" as the snapshot translates (None: not served)."""
    tr = translate(snapshot)
    served = {ln.name: ln for g in tr.ingress.gateways for ln in g.listeners}
    return served["a"].client_ca_pem if "a" in served else None


def test_a_changed_ca_bundle_retranslates_and_only_ca_crt_is_kept(emu: KubeEmulator, run) -> None:  # noqa: F811
    for o in ({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}},
              {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": "web"},
               "spec": {"clusterIP": "10.96.0.50", "selector": {"app": "echo"}, "ports": [{"port": 80}]}},
              tls_secret("cert-a"), route("r"),
              with_tls(gateway(HTTP, https("a", "a.example.com", "cert-a")),
                       {"frontend": {"default": validation(cm_ref("client-ca"))}})):
        emu.create(o)
    big = configmap("client-ca", {"ca.crt": CA1, "app.json": "x" * 200_000})
    big["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "y" * 200_000}
    emu.create(big)
    r = run(default_types())
    assert r.latest("ConfigMap", "client-ca") == {"apiVersion": "v1", "kind": "ConfigMap",
                                                  "metadata": {"name": "client-ca", "namespace": "web"},
                                                  "data": {"ca.crt": CA1},
                                                  # the names of what is not kept (a parametersRef reports them)
                                                  "omittedData": {"others": ["app.json"], "othersTotal": 1}}
    assert client_ca(r.snapshots[-1]) == CA1
    # a new bundle: the listener verifies against it
    emu.update({**big, "data": {**big["data"], "ca.crt": CA2}})
    wait_for(lambda: client_ca(r.snapshots[-1]) == CA2, "the listener to take the new CA bundle")
    # a change to anything else of a ConfigMap changes nothing the controller keeps: no new
    # snapshot (the reflector applies events in order, so once the marker is in, the noise was seen)
    version = r.source.cache.version
    emu.update({**big, "data": {"ca.crt": CA2, "app.json": "z"}})
    emu.create(configmap("marker", {}))
    wait_for(lambda: r.names("ConfigMap") >= {"marker"}, "the marker ConfigMap")
    assert r.source.cache.version == version + 1
    assert r.state(CONFIGMAPS).events >= 2
    # deleted: the listener is not served without the validation it asks for
    emu.delete("v1", "ConfigMap", "client-ca", "web")
    wait_for(lambda: client_ca(r.snapshots[-1]) is None, "the listener to stop")


def test_configmaps_the_install_does_not_grant_hold_back_nothing(emu: KubeEmulator, run) -> None:  # noqa: F811
    """A ClusterRole without ConfigMaps (or Secrets): an admin removed the rule, or the controller was
    upgraded before its ClusterRole. Every other kind is still published; the forbidden kind counts
    as empty, is reported, and is read once it is granted."""
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}})
    emu.create(configmap("client-ca", {"ca.crt": CA1}))
    emu.create(tls_secret("cert-a"))
    emu.inject(Fault(path="/configmaps", status=403))
    emu.inject(Fault(path="/secrets", status=403))
    r = run(default_types())
    assert "web" in r.names("Namespace") and not r.names("ConfigMap") and not r.names("Secret")
    wait_for(lambda: {e.ref for e in r.source.errors()} >= {"kubernetes-api/configmaps", "kubernetes-api/secrets"},
             "the forbidden kinds to be reported")
    emu.clear_faults()
    wait_for(lambda: r.names("ConfigMap") == {"client-ca"} and r.names("Secret") == {"cert-a"},
             "the kinds to be read once granted")
    wait_for(lambda: not r.source.errors(), "the errors to clear")


def test_a_gateways_parameter_overlays_are_kept_up_to_their_bound(emu: KubeEmulator, run) -> None:  # noqa: F811
    """The overlay keys of a parametersRef ConfigMap (controller/waypoints/params.py) are kept, each up
    to 16 KiB; a larger one is dropped as it arrives and its size kept, so the Gateway can say so."""
    from controller.waypoints.params import MAX_OVERLAY_BYTES
    emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "web"}})
    emu.create(configmap("gw-options", {"deployment": "spec: {}", "service": "x" * (MAX_OVERLAY_BYTES + 1),
                                        "notes": "y" * 100_000}))
    r = run(default_types())
    assert r.latest("ConfigMap", "gw-options") == {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "gw-options", "namespace": "web"},
        "data": {"deployment": "spec: {}"},
        "omittedData": {"oversize": {"service": MAX_OVERLAY_BYTES + 1}, "others": ["notes"], "othersTotal": 1}}
    emu.update(configmap("gw-options", {"deployment": "spec: {replicas: 2}"}))
    wait_for(lambda: (r.latest("ConfigMap", "gw-options") or {}).get("data") == {"deployment": "spec: {replicas: 2}"},
             "the edited overlay")
    assert "omittedData" not in r.latest("ConfigMap", "gw-options")
