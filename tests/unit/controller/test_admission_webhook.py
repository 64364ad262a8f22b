"""The admission webhook end to end: the real controller process (`--kube --ca-secret
--webhook-listen`), the ValidatingWebhookConfiguration `ambit install` renders, and the API-server
emulator calling the webhook over TLS as kube-apiserver does (tests/support/kube_emulator.py), with
the official client standing in for `kubectl apply`.

What a platform team relies on:
* until the API server is shown to reach the webhook, the configuration stays `failurePolicy:
  Ignore` (nobody is locked out of Istio's kinds by a webhook that was never reachable); the
  leader writes the mesh roots into its caBundle first;
* once reachable, it fails closed, and an invalid object is refused at the write, naming the
  object, the field and the reason, and is not stored; a valid one is stored;
* an update that keeps a stored object's old problems is allowed (a label on an object written
  before the webhook), one that adds a problem is refused;
* with no controller serving, writes of these kinds are refused (istiod's behaviour), and go
  through again when one is back.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ambitctl.commands.install import WEBHOOK_PORT, parse, validating_webhook
from controller.admission.patcher import CONFIG_NAME
from tests.support.kube_emulator import KubeEmulator
from tests.support.net import connectable, free_port
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[3]
NS = "ambit-system"
AP = ("security.istio.io", "v1", "authorizationpolicies")


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.emu = KubeEmulator().start()
        self.webhook_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Any = None
        cfg = client.Configuration()
        cfg.host = self.emu.url
        self.api = client.ApiClient(cfg)
        self.objects = client.CustomObjectsApi(self.api)

    def start_controller(self) -> None:
        self.log = open(self.tmp / "controller.log", "a")  # noqa: SIM115 - closed in stop_controller()
        port = free_port()
        self.metrics_port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "--kube", "--kube-host", self.emu.url, "--listen", f"127.0.0.1:{port}",
             "--ca-secret", "ambit-ca", "--pod-name", "ctl-a", "--debounce", "0.01", "--dashboard-address", "",
             "--webhook-listen", f"127.0.0.1:{self.webhook_port}", "--metrics-port", str(self.metrics_port),
             "--metrics-address", "127.0.0.1"],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        proc = self.proc
        wait_for(lambda: connectable(self.webhook_port) or proc.poll() is not None, timeout=60,
                 what="the webhook listening")
        assert proc.poll() is None, self.logs()

    def stop_controller(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.log is not None:
            self.log.close()
            self.log = None

    def gauge(self) -> str | None:
        """The leader's `ambit_controller_admission_webhook_fails_closed` sample, or None."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return next((ln.split()[-1] for ln in text.splitlines()
                     if ln.startswith("ambit_controller_admission_webhook_fails_closed ")), None)

    def logs(self) -> str:
        return (self.tmp / "controller.log").read_text()

    def config(self) -> dict[str, Any]:
        return self.emu.get("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", CONFIG_NAME, "") or {}

    def create(self, body: dict[str, Any], dry_run: str | None = None) -> dict[str, Any]:
        kw = {"dry_run": dry_run} if dry_run else {}
        return self.objects.create_namespaced_custom_object(*AP[:2], "demo", AP[2], body, **kw)

    def stored(self, name: str) -> dict[str, Any] | None:
        return self.emu.get("security.istio.io/v1", "AuthorizationPolicy", name, "demo")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        for n in (NS, "demo"):
            c.emu.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}})
        c.emu.create(validating_webhook(parse(["--namespace", NS])))
        yield c
    finally:
        c.stop_controller()
        c.api.close()
        c.emu.stop()


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "demo"}, "spec": spec}


def refusal(e: ApiException) -> str:
    return json.loads(e.body)["message"]


def fails_closed(c: Cluster) -> bool:
    return all(wh.get("failurePolicy") == "Fail" for wh in c.config().get("webhooks") or [{}])


def test_invalid_policies_are_refused_at_the_write_once_the_webhook_is_proven_reachable(cluster: Cluster) -> None:
    c = cluster
    rendered = c.config()["webhooks"][0]
    assert rendered["failurePolicy"] == "Ignore" and "caBundle" not in rendered["clientConfig"]
    assert rendered["clientConfig"]["service"] == {"name": "ambit-controller", "namespace": NS, "path": "/validate",
                                                  "port": WEBHOOK_PORT}
    c.start_controller()
    # The API server cannot reach the webhook yet (no route to the Service): the roots go in, and
    # the configuration stays Ignore, so writes are not locked out.
    wait_for(lambda: c.config()["webhooks"][0]["clientConfig"].get("caBundle"), timeout=30, what="caBundle")
    root = c.emu.get("v1", "ConfigMap", "ambit-root-cert", NS)["data"]["root-cert.pem"]
    assert base64.b64decode(c.config()["webhooks"][0]["clientConfig"]["caBundle"]).decode() == root
    time.sleep(6)                   # a probe pass (every 5 s) came and went
    assert not fails_closed(c), c.logs()
    assert c.gauge() == "0.0"                                   # what AmbitAdmissionWebhookNotEnforcing reads
    c.create(policy("stored-unchecked", action="DENY"))        # Ignore: the unreachable webhook is skipped
    assert c.stored("stored-unchecked") is not None

    c.emu.route_service(NS, "ambit-controller", WEBHOOK_PORT, "127.0.0.1", c.webhook_port)
    wait_for(lambda: fails_closed(c), timeout=30, what="failurePolicy Fail")
    wait_for(lambda: "has the mesh roots and fails closed" in c.logs(), timeout=5, what="the log line")
    wait_for(lambda: c.gauge() == "1.0", timeout=5, what="the gauge at 1")
    assert "not failing closed yet: the API server accepted an invalid object in a dry run" in c.logs()

    with pytest.raises(ApiException) as e:
        c.create(policy("deny-nothing", action="DENY"))
    assert e.value.status == 400
    assert refusal(e.value) == (
        'admission webhook "validation.ambit.io" denied the request: AuthorizationPolicy/demo/deny-nothing: '
        "spec.rules: DENY action without `rules` is meaningless as it will never be triggered, add an empty "
        "rule `{}` if you want it be triggered for every request")
    assert c.stored("deny-nothing") is None
    with pytest.raises(ApiException) as e:              # kubectl apply --dry-run=server
        c.create(policy("deny-nothing", action="DENY"), dry_run="All")
    assert e.value.status == 400 and "DENY action without" in refusal(e.value)

    c.create(policy("deny-all", action="DENY", rules=[{}]))
    assert c.stored("deny-all") is not None
    with pytest.raises(ApiException) as e:              # an update that breaks it
        c.objects.patch_namespaced_custom_object(*AP[:2], "demo", AP[2], "deny-all",
                                                 {"spec": {"action": "CUSTOM"}})
    assert e.value.status == 400 and "spec.provider" in refusal(e.value)
    assert c.stored("deny-all")["spec"]["action"] == "DENY"

    # The object stored while unchecked keeps its problem, but can still be labelled: the update adds none.
    c.objects.patch_namespaced_custom_object(*AP[:2], "demo", AP[2], "stored-unchecked",
                                             {"metadata": {"labels": {"team": "web"}}})
    assert c.stored("stored-unchecked")["metadata"]["labels"] == {"team": "web"}
    assert "refused a create: AuthorizationPolicy/demo/deny-nothing: spec.rules: DENY action without" in c.logs()


def test_with_no_controller_serving_writes_are_refused_until_one_is_back(cluster: Cluster) -> None:
    c = cluster
    c.emu.route_service(NS, "ambit-controller", WEBHOOK_PORT, "127.0.0.1", c.webhook_port)
    c.start_controller()
    wait_for(lambda: fails_closed(c), timeout=30, what="failurePolicy Fail")
    c.stop_controller()
    with pytest.raises(ApiException) as e:
        c.create(policy("deny-all", action="DENY", rules=[{}]))
    assert e.value.status == 500 and 'failed calling webhook "validation.ambit.io"' in refusal(e.value)
    assert c.stored("deny-all") is None
    c.start_controller()        # the same CA (the Secret), so the caBundle written before still holds
    c.create(policy("deny-all", action="DENY", rules=[{}]))
    assert c.stored("deny-all") is not None


def test_new_roots_reach_the_configuration_at_once_when_the_ca_reload_pokes_the_patcher(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotation step changes the roots; the webhook's certificate is re-issued at once, so the
    API server must have the new roots at once too, not at the next 30 s tick."""
    import threading

    from controller.admission import patcher as pt
    monkeypatch.setattr(pt, "TICK", 60.0)
    monkeypatch.setattr(pt, "TICK_READY", 60.0)
    roots = ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
    p = pt.WebhookPatcher(cluster.api, NS, lambda: roots[0])
    stop = threading.Event()
    p.run(stop)
    try:
        def bundle() -> str:
            return base64.b64decode(cluster.config()["webhooks"][0]["clientConfig"].get("caBundle") or "").decode()
        wait_for(lambda: bundle() == roots[0], timeout=10, what="the first roots")
        roots[0] += "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n"
        p.poke()
        wait_for(lambda: bundle() == roots[0], timeout=10, what="the new roots, well before the 60 s tick")
    finally:
        stop.set()
        p.poke()


def test_kubectl_apply_says_why_and_prints_the_advice(cluster: Cluster, tmp_path: Path) -> None:
    """What a user sees: the real kubectl, against the emulator calling the controller's webhook."""
    import shutil

    from tests.unit.debugapi.test_cluster_path import kubeconfig
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed: scripts/setup.sh (make setup) installs it"
    c = cluster
    c.emu.route_service(NS, "ambit-controller", WEBHOOK_PORT, "127.0.0.1", c.webhook_port)
    c.start_controller()
    wait_for(lambda: fails_closed(c), timeout=30, what="failurePolicy Fail")
    kc = kubeconfig(tmp_path / "kubeconfig", c.emu.url)

    def apply(doc: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
        f = tmp_path / "obj.json"
        f.write_text(json.dumps(doc))
        # --validate=false: kubectl's own check against the server's OpenAPI, which the emulator does not serve
        return subprocess.run([kubectl, "--kubeconfig", str(kc), "apply", "--validate=false", "-f", str(f), *extra],
                              capture_output=True, text=True, timeout=60)

    bad = apply(policy("deny-admin", action="DENY", rules=[{"to": [{"operation": {"paths": [""]}}]}]))
    assert bad.returncode == 1, bad.stdout
    assert bad.stderr.startswith("Error from server: error when creating"), bad.stderr    # as istiod's reads
    assert 'admission webhook "validation.ambit.io" denied the request: AuthorizationPolicy/demo/deny-admin: ' \
           "spec.rules[0].to[0].operation.paths[0]" in bad.stderr, bad.stderr
    assert c.stored("deny-admin") is None
    dry = apply(policy("deny-admin", action="DENY"), "--dry-run=server")
    assert dry.returncode == 1 and "DENY action without" in dry.stderr, dry.stderr
    # valid, stored, and what it does wrong said where the writer sees it
    odd = apply(policy("deny-delete", action="DENY", rules=[{"to": [{"operation": {"methods": ["delete"]}}]}]))
    assert odd.returncode == 0, odd.stderr
    assert "authorizationpolicy.security.istio.io/deny-delete created" in odd.stdout
    assert "Warning: AuthorizationPolicy/demo/deny-delete: spec.rules[0].to[0].operation.methods[0]: methods are " \
           'case-sensitive, so "delete" matches no request' in odd.stderr, odd.stderr
    assert c.stored("deny-delete") is not None


def test_set_back_to_ignore_by_hand_it_fails_closed_again_only_once_proven_again(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator sets Ignore (the docs' way to write configuration with the webhook unreachable):
    the leader must prove the API server reaches the webhook again before setting Fail, not set it
    back blindly and lock everyone out again. In process, with short ticks: the webhook server and
    the patcher as the controller runs them."""
    import threading

    from controller.admission import patcher as pt
    from controller.admission import server as srv
    from controller.ca.authority import CertificateAuthority, generate_root
    from controller.ca_setup import ServingCertificate
    monkeypatch.setattr(pt, "TICK", 0.2)
    monkeypatch.setattr(pt, "TICK_READY", 0.2)
    ca = CertificateAuthority(generate_root("cluster.local"), "cluster.local")
    cert = ServingCertificate(ca, "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller",
                              [f"ambit-controller.{NS}.svc"])
    hook = srv.WebhookServer(("127.0.0.1", 0), srv.TLSContexts(cert.pem_if_due))
    hook.start()
    c = cluster
    c.emu.route_service(NS, "ambit-controller", WEBHOOK_PORT, "127.0.0.1", hook.server_address[1])
    p = pt.WebhookPatcher(c.api, NS, lambda: ca.trust_bundle().pem_bundle())
    stop = threading.Event()
    p.run(stop)
    try:
        wait_for(lambda: fails_closed(c), timeout=10, what="failurePolicy Fail")
        c.emu.route_service(NS, "ambit-controller", WEBHOOK_PORT, "127.0.0.1", free_port())    # unreachable now
        cfg = c.config()
        cfg["webhooks"][0]["failurePolicy"] = "Ignore"
        c.emu.update(cfg)
        time.sleep(1.5)                                 # several passes
        assert not fails_closed(c) and p.complete is False
        c.create(policy("written-meanwhile", action="DENY", rules=[{}]))     # writes go through meanwhile
        c.emu.route_service(NS, "ambit-controller", WEBHOOK_PORT, "127.0.0.1", hook.server_address[1])
        wait_for(lambda: fails_closed(c), timeout=10, what="Fail again, once proven")
    finally:
        stop.set()
        p.poke()
        hook.stop()
