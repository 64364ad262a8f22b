"""The API-server emulator's validating admission webhooks (tests/support/kube_emulator.py), driven
by the official `kubernetes` client against a real HTTPS webhook served here: what kube-apiserver
sends (AdmissionReview v1, TLS verified with the caBundle for `NAME.NAMESPACE.svc`), and what it
answers (refusals, call failures under failurePolicy, warnings, dry runs)."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import socket
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client as kclient
from kubernetes.client.rest import ApiException

from tests.support.kube_emulator import KubeEmulator

HOOK = "validate.ambit.io"
NS = "ns1"
VS_GROUP = "networking.istio.io"


# -- a throwaway CA and the webhook's certificate -------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
          ca: bool, sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Pki:
    ca_bundle: str          # base64 of the CA's PEM, as in clientConfig.caBundle
    other_ca_bundle: str    # a CA that did not sign the webhook's certificate
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("webhook-pki")
    ca_key, other_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    other = _cert("other-ca", other_key, "other-ca", other_key, ca=True)
    leaf = _cert("hook.ns1.svc", key, "test-ca", ca_key, ca=False,
                 sans=[x509.DNSName("hook.ns1.svc"), x509.DNSName("localhost"),
                       x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    (d / "tls.crt").write_bytes(_pem(leaf))
    (d / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return Pki(base64.b64encode(_pem(ca)).decode(), base64.b64encode(_pem(other)).decode(),
               d / "tls.crt", d / "tls.key")


# -- the webhook ----------------------------------------------------------------------------------
@dataclass
class Webhook:
    """Allows objects labelled ok=yes (with a warning), denies the others ("no label"). `mode`:
    "bad-uid" answers another uid; "callback" reads a ConfigMap from `emu_url` before answering."""

    server: ThreadingHTTPServer
    reviews: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    mode: str = "label"
    emu_url: str = ""
    callback_status: list[int] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.server_address[1]


@pytest.fixture(scope="module")
def webhook_server(pki: Pki) -> Iterator[Webhook]:
    hook: Webhook

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            return

        def do_POST(self) -> None:  # noqa: N802 - stdlib naming
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            hook.reviews.append(review)
            hook.paths.append(self.path)
            req = review["request"]
            if hook.mode == "callback":
                with urllib.request.urlopen(f"{hook.emu_url}/api/v1/namespaces/{NS}/configmaps/seen",
                                            timeout=5) as r:
                    hook.callback_status.append(r.status)
            labels = (req["object"].get("metadata") or {}).get("labels") or {}
            response: dict[str, Any] = {"uid": "nope" if hook.mode == "bad-uid" else req["uid"]}
            if labels.get("ok") == "yes":
                response.update(allowed=True, warnings=["looks fine"])
            else:
                response.update(allowed=False, status={"message": "no label"})
            data = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                               "response": response}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert_file, pki.key_file)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    hook = Webhook(server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def webhook(webhook_server: Webhook) -> Webhook:
    webhook_server.reviews.clear()
    webhook_server.paths.clear()
    webhook_server.callback_status.clear()
    webhook_server.mode = "label"
    return webhook_server


@pytest.fixture
def emu(webhook: Webhook) -> Iterator[KubeEmulator]:
    with KubeEmulator(groups=[VS_GROUP]) as e:
        e.route_service(NS, "hook", 443, "127.0.0.1", webhook.port)
        webhook.emu_url = e.url
        yield e


@pytest.fixture
def api(emu: KubeEmulator) -> Iterator[kclient.ApiClient]:
    cfg = kclient.Configuration()
    cfg.host = emu.url
    c = kclient.ApiClient(cfg)
    try:
        yield c
    finally:
        c.close()


def configuration(pki: Pki, name: str = "ambit-validation", *, rules: list[dict[str, Any]] | None = None,
                  client: dict[str, Any] | None = None, ca_bundle: str | None = "",
                  **hook: Any) -> dict[str, Any]:
    """A ValidatingWebhookConfiguration with one webhook, HOOK, on ConfigMaps by default."""
    client = dict(client or {"service": {"namespace": NS, "name": "hook", "path": "/validate"}})
    if ca_bundle is not None:
        client["caBundle"] = ca_bundle or pki.ca_bundle
    spec = {"name": HOOK, "clientConfig": client, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "rules": rules if rules is not None else [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""],
                                                        "apiVersions": ["v1"], "resources": ["configmaps"]}],
            **hook}
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name}, "webhooks": [spec]}


def cm(name: str, ok: bool = True, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NS, "labels": {"ok": "yes"} if ok else {"ok": "no"}},
            "data": data}


def vs(name: str, ok: bool = True) -> dict[str, Any]:
    return {"apiVersion": f"{VS_GROUP}/v1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": NS, "labels": {"ok": "yes" if ok else "no"}},
            "spec": {"hosts": ["a"]}}


def refused(call: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ApiException) as e:
        call()
    return e.value.status, json.loads(e.value.body)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- tests ----------------------------------------------------------------------------------------
def test_a_denied_create_is_refused_with_the_webhooks_message_and_nothing_is_stored(emu, api, webhook, pki) -> None:
    emu.create(configuration(pki))
    rv = emu.resource_version
    status, body = refused(lambda: kclient.CoreV1Api(api).create_namespaced_config_map(NS, cm("bad", ok=False)))
    assert status == 400
    assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == 400
    assert body["message"] == f'admission webhook "{HOOK}" denied the request: no label'
    assert emu.resource_version == rv       # nothing stored, no event recorded
    assert refused(lambda: kclient.CoreV1Api(api).read_namespaced_config_map("bad", NS))[0] == 404
    [review] = webhook.reviews
    assert review["apiVersion"] == "admission.k8s.io/v1" and review["kind"] == "AdmissionReview"
    req = review["request"]
    assert req["operation"] == "CREATE" and req["dryRun"] is False and req["oldObject"] is None
    assert req["kind"] == {"group": "", "version": "v1", "kind": "ConfigMap"}
    assert req["resource"] == {"group": "", "version": "v1", "resource": "configmaps"}
    assert req["requestKind"] == req["kind"] and req["requestResource"] == req["resource"]
    assert (req["name"], req["namespace"]) == ("bad", NS)
    assert req["userInfo"]["username"] == "emulator-admin"
    assert req["object"]["apiVersion"] == "v1" and req["object"]["kind"] == "ConfigMap"
    assert req["object"]["metadata"]["labels"] == {"ok": "no"}
    assert webhook.paths == ["/validate?timeout=10s"]
    assert [(c["webhook"], c["operation"], c["dryRun"], c["result"]) for c in emu.admission_calls] == [
        (HOOK, "CREATE", False, "denied")]


def test_an_allowed_create_is_stored_with_the_webhooks_warning(emu, api, webhook, pki) -> None:
    emu.create(configuration(pki))
    resp = kclient.CoreV1Api(api).create_namespaced_config_map(NS, cm("good", x="1"), _preload_content=False)
    assert resp.status == 201
    assert resp.headers.get("Warning") == '299 - "looks fine"'
    assert emu.get("v1", "ConfigMap", "good", NS)["data"] == {"x": "1"}
    assert len(webhook.reviews) == 1
    assert emu.admission_calls[0]["result"] == "allowed"


def test_update_and_merge_patch_are_admitted_with_the_old_object(emu, api, webhook, pki) -> None:
    emu.create(configuration(pki))
    emu.create(cm("c", a="1"))
    core = kclient.CoreV1Api(api)
    core.replace_namespaced_config_map("c", NS, cm("c", a="2"))
    core.patch_namespaced_config_map("c", NS, {"data": {"b": "3"}})
    put, patch = (r["request"] for r in webhook.reviews)
    assert put["operation"] == "UPDATE" and put["oldObject"]["data"] == {"a": "1"} and put["object"]["data"] == {"a": "2"}
    assert patch["operation"] == "UPDATE" and patch["oldObject"]["data"] == {"a": "2"}
    assert patch["object"]["data"] == {"a": "2", "b": "3"}       # the merged result
    assert patch["options"]["kind"] == "PatchOptions"
    assert emu.get("v1", "ConfigMap", "c", NS)["data"] == {"a": "2", "b": "3"}
    # a patch that would drop the label is refused, and the stored object stays
    status, body = refused(lambda: core.patch_namespaced_config_map("c", NS, {"metadata": {"labels": {"ok": None}},
                                                                             "data": {"a": "9"}}))
    assert status == 400 and body["message"].endswith("denied the request: no label")
    assert emu.get("v1", "ConfigMap", "c", NS)["data"] == {"a": "2", "b": "3"}


def test_dry_run_admits_with_dry_run_and_stores_nothing(emu, api, webhook, pki) -> None:
    emu.create(configuration(pki))
    emu.create(cm("c", a="1"))
    rv = emu.resource_version
    core = kclient.CoreV1Api(api)
    created = core.create_namespaced_config_map(NS, cm("new", a="1"), dry_run="All")
    assert created.metadata.name == "new" and created.metadata.uid
    updated = core.patch_namespaced_config_map("c", NS, {"data": {"a": "2"}}, dry_run="All")
    assert updated.data == {"a": "2"}
    status, body = refused(lambda: core.create_namespaced_config_map(NS, cm("bad", ok=False), dry_run="All"))
    assert status == 400 and body["message"].endswith("denied the request: no label")
    assert [r["request"]["dryRun"] for r in webhook.reviews] == [True, True, True]
    assert webhook.reviews[0]["request"]["options"]["dryRun"] == ["All"]
    assert emu.resource_version == rv
    assert emu.get("v1", "ConfigMap", "new", NS) is None
    assert emu.get("v1", "ConfigMap", "c", NS)["data"] == {"a": "1"}
    # a dryRun value other than All is refused as the API server validates CreateOptions (422)
    assert refused(lambda: core.create_namespaced_config_map(NS, cm("new"), dry_run="Some"))[0] == 422
    assert len(webhook.reviews) == 3


def test_dry_run_is_refused_for_a_webhook_with_side_effects(emu, api, webhook, pki) -> None:
    emu.create(configuration(pki, sideEffects="Some"))
    status, body = refused(lambda: kclient.CoreV1Api(api).create_namespaced_config_map(NS, cm("new"), dry_run="All"))
    assert status == 400 and "does not support dry run" in body["message"]
    assert webhook.reviews == [] and emu.get("v1", "ConfigMap", "new", NS) is None


def test_a_failed_call_refuses_under_fail_and_is_ignored_under_ignore(emu, api, webhook, pki) -> None:
    emu.route_service(NS, "down", 443, "127.0.0.1", closed_port())
    down = {"service": {"namespace": NS, "name": "down", "path": "/validate"}}
    emu.create(configuration(pki, client=down))      # failurePolicy unset: Fail
    core = kclient.CoreV1Api(api)
    status, body = refused(lambda: core.create_namespaced_config_map(NS, cm("a")))
    assert status == 500 and body["reason"] == "InternalError"
    assert body["message"].startswith(f'Internal error occurred: failed calling webhook "{HOOK}": ')
    assert emu.get("v1", "ConfigMap", "a", NS) is None
    emu.update(configuration(pki, client=down, failurePolicy="Ignore"))
    core.create_namespaced_config_map(NS, cm("a"))
    assert emu.get("v1", "ConfigMap", "a", NS) is not None
    assert [c["result"].startswith("error: failed calling webhook") for c in emu.admission_calls] == [True, True]


def test_tls_is_verified_with_the_ca_bundle_for_the_service_name(emu, api, webhook, pki) -> None:
    core = kclient.CoreV1Api(api)
    emu.create(configuration(pki, ca_bundle=pki.other_ca_bundle))
    status, body = refused(lambda: core.create_namespaced_config_map(NS, cm("a")))
    assert status == 500 and "failed to verify certificate" in body["message"]
    emu.update(configuration(pki, ca_bundle=None))          # no caBundle: the system's roots
    assert refused(lambda: core.create_namespaced_config_map(NS, cm("a")))[0] == 500
    # the right CA, but the certificate is not for other.ns1.svc
    emu.route_service(NS, "other", 443, "127.0.0.1", webhook.port)
    emu.update(configuration(pki, client={"service": {"namespace": NS, "name": "other"}}))
    status, body = refused(lambda: core.create_namespaced_config_map(NS, cm("a")))
    assert status == 500 and "failed to verify certificate" in body["message"]
    assert webhook.reviews == [] and emu.get("v1", "ConfigMap", "a", NS) is None


def test_a_url_client_config_is_called(emu, api, webhook, pki) -> None:
    emu.create(configuration(pki, client={"url": f"https://127.0.0.1:{webhook.port}/by-url"}, timeoutSeconds=3))
    status, _ = refused(lambda: kclient.CoreV1Api(api).create_namespaced_config_map(NS, cm("a", ok=False)))
    assert status == 400 and webhook.paths == ["/by-url?timeout=3s"]


def test_a_response_with_another_uid_is_a_call_failure(emu, api, webhook, pki) -> None:
    emu.create(configuration(pki))
    webhook.mode = "bad-uid"
    status, body = refused(lambda: kclient.CoreV1Api(api).create_namespaced_config_map(NS, cm("a")))
    assert status == 500 and "expected response.uid=" in body["message"]
    assert emu.get("v1", "ConfigMap", "a", NS) is None


def test_only_matching_rules_and_selectors_call_the_webhook(emu, api, webhook, pki) -> None:
    core, custom = kclient.CoreV1Api(api), kclient.CustomObjectsApi(api)
    emu.create(configuration(pki, rules=[{"operations": ["*"], "apiGroups": [VS_GROUP], "apiVersions": ["*"],
                                          "resources": ["*"], "scope": "Namespaced"}]))
    core.create_namespaced_config_map(NS, cm("other-group", ok=False))     # another group: no call
    assert webhook.reviews == []
    status, _ = refused(lambda: custom.create_namespaced_custom_object(VS_GROUP, "v1", NS, "virtualservices",
                                                                       vs("r", ok=False)))
    assert status == 400 and len(webhook.reviews) == 1
    emu.create(vs("r", ok=False))
    custom.patch_namespaced_custom_object_status(VS_GROUP, "v1", NS, "virtualservices", "r",
                                                 {"status": {"x": "y"}})    # a bare * is no subresource
    assert len(webhook.reviews) == 1 and emu.get(f"{VS_GROUP}/v1", "VirtualService", "r", NS)["status"] == {"x": "y"}
    # a rule on the status subresource only, another operation, another scope: no call
    for rule in ({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps/status"]},
                 {"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]},
                 {"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"],
                  "scope": "Cluster"}):
        emu.update(configuration(pki, rules=[rule]))
        core.create_namespaced_config_map(NS, cm(f"n{len(emu.requests)}", ok=False))
    assert len(webhook.reviews) == 1
    # selectors: objectSelector on the object's labels, namespaceSelector on its namespace's
    all_cm = [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["*/*"]}]
    emu.update(configuration(pki, rules=all_cm, objectSelector={"matchLabels": {"check": "me"}}))
    core.create_namespaced_config_map(NS, cm("unchecked", ok=False))
    assert len(webhook.reviews) == 1
    emu.update(configuration(pki, rules=all_cm,
                             namespaceSelector={"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                                                                      "operator": "In", "values": ["ns2"]}]}))
    core.create_namespaced_config_map(NS, cm("elsewhere", ok=False))
    assert len(webhook.reviews) == 1
    assert refused(lambda: core.create_namespaced_config_map("ns2", {**cm("here", ok=False),
                                                                      "metadata": {"name": "here"}}))[0] == 400
    assert len(webhook.reviews) == 2


def test_equivalent_match_policy_sends_the_object_at_the_rules_version(emu, api, webhook, pki) -> None:
    emu.create(configuration(pki, rules=[{"operations": ["CREATE"], "apiGroups": [VS_GROUP], "apiVersions": ["v1"],
                                          "resources": ["virtualservices"]}]))
    custom = kclient.CustomObjectsApi(api)
    refused(lambda: custom.create_namespaced_custom_object(VS_GROUP, "v1beta1", NS, "virtualservices",
                                                           {**vs("r", ok=False), "apiVersion": f"{VS_GROUP}/v1beta1"}))
    [review] = webhook.reviews
    req = review["request"]
    assert req["kind"]["version"] == "v1" and req["requestKind"]["version"] == "v1beta1"
    assert req["object"]["apiVersion"] == f"{VS_GROUP}/v1"
    emu.update(configuration(pki, rules=[{"operations": ["CREATE"], "apiGroups": [VS_GROUP], "apiVersions": ["v1"],
                                          "resources": ["virtualservices"]}], matchPolicy="Exact"))
    custom.create_namespaced_custom_object(VS_GROUP, "v1beta1", NS, "virtualservices",
                                           {**vs("r", ok=False), "apiVersion": f"{VS_GROUP}/v1beta1"})
    assert len(webhook.reviews) == 1


def test_the_emulators_own_writes_are_not_admitted(emu, webhook, pki) -> None:
    emu.create(configuration(pki))
    emu.create(cm("seeded", ok=False))
    emu.apply(cm("seeded", ok=False, a="1"))
    emu.update(cm("seeded", ok=False, a="2"))
    assert webhook.reviews == [] and emu.admission_calls == []
    assert emu.get("v1", "ConfigMap", "seeded", NS)["data"] == {"a": "2"}


def test_a_webhook_may_read_from_the_api_server_while_admitting(emu, api, webhook, pki) -> None:
    emu.create(configuration(pki, timeoutSeconds=3))
    emu.create(cm("seen"))
    webhook.mode = "callback"
    kclient.CoreV1Api(api).create_namespaced_config_map(NS, cm("a"))
    assert webhook.callback_status == [200]
    assert emu.get("v1", "ConfigMap", "a", NS) is not None


def test_the_requests_user_is_the_bearer_tokens(emu, webhook, pki) -> None:
    emu.create(configuration(pki))
    emu.add_user_token("t0k", "alice", groups=["devs"])
    req = urllib.request.Request(f"{emu.url}/api/v1/namespaces/{NS}/configmaps", method="POST",
                                 data=json.dumps(cm("a")).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer t0k"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 201 and r.headers["Warning"] == '299 - "looks fine"'
    assert webhook.reviews[0]["request"]["userInfo"]["username"] == "alice"
    assert webhook.reviews[0]["request"]["userInfo"]["groups"] == ["devs"]
