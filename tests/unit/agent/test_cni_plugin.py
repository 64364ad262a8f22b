"""The `ambit-cni` plugin as the runtime runs it: the installed file (install.plugin_bytes), executed
with environment variables and the configuration on stdin, talking to a real CniServer.

The configurations are the CNI spec's own example (containernetworking/cni SPEC.md, spec 0.4.0,
"Example operations": the `tuning` plugin chained after `bridge`, fixtures/cni_spec_tuning_add.json),
with the chained plugin's fields made ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.cni import install, spec
from agent.cni.server import CniServer
from ambit.labstore import LabStore

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "cni_spec_tuning_add.json").read_text())
UID = "7c3f6f1e-0000-4000-8000-000000000001"


class Recorder:
    """The agent's side, answering as told and remembering what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.refuse = ""
        self.captured: set[str] = set()

    def cni_add(self, pod: dict[str, Any]) -> str | None:
        self.calls.append(("add", pod))
        if self.refuse:
            return self.refuse
        self.captured.add(pod["uid"])
        return None

    def cni_del(self, uid: str, key: str) -> None:
        self.calls.append(("del", (uid, key)))
        self.captured.discard(uid)

    def cni_check(self, uid: str) -> str | None:
        return None if uid in self.captured else f"pod {uid} is not captured on this node"


@pytest.fixture
def env(tmp_path: Path):
    plugin = tmp_path / "bin" / "ambit-cni"
    plugin.parent.mkdir()
    plugin.write_bytes(install.plugin_bytes())
    plugin.chmod(0o755)
    store = LabStore(tmp_path / "store.json")
    store.apply([
        {"kind": "Namespace", "metadata": {"name": "mesh", "labels": {"ambit.io/dataplane-mode": "ambient"}}},
        {"kind": "Namespace", "metadata": {"name": "plain"}},
        {"kind": "Pod", "metadata": {"name": "db", "namespace": "mesh", "uid": UID, "labels": {"app": "db"},
                                     "annotations": {"ambit.io/exclude-outbound-ports": "5432",
                                                     "lab.ambit.io/cgroup": "/sys/fs/cgroup/x", "other": "y"}},
         "spec": {"serviceAccountName": "db", "containers": [
             {"name": "db", "readinessProbe": {"tcpSocket": {"port": 5432}}}]}},
        {"kind": "Pod", "metadata": {"name": "db", "namespace": "plain"}, "spec": {}},
    ])
    rec = Recorder()
    stop = threading.Event()
    sock = tmp_path / "run" / "cni.sock"
    CniServer(sock, rec).start(stop)
    yield {"plugin": plugin, "store": store.path, "sock": sock, "rec": rec, "dir": tmp_path}
    stop.set()


def config(e: dict[str, Any], **extra: Any) -> dict[str, Any]:
    conf = {k: v for k, v in FIXTURE.items() if k != "sysctl"}
    return {**conf, "type": "ambit-cni", "agentSocket": str(e["sock"]), "labStore": str(e["store"]), **extra}


def run(e: dict[str, Any], command: str, conf: Any, pod: tuple[str, str] | None = ("mesh", "db"),
        **env_over: str) -> tuple[int, Any]:
    environ = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": "c0ffee",
               "CNI_NETNS": "/var/run/netns/blue", "CNI_IFNAME": "eth0", "CNI_PATH": str(e["plugin"].parent)}
    if pod:
        environ["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod[0]};K8S_POD_NAME={pod[1]};K8S_POD_UID={UID}"
    environ.update(env_over)
    environ = {k: v for k, v in environ.items() if v}
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    p = subprocess.run([str(e["plugin"])], input=data, env=environ, capture_output=True, timeout=30)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None


def test_version_lists_the_spec_versions(env) -> None:
    code, out = run(env, "VERSION", b"")
    assert code == 0 and "0.4.0" in out["supportedVersions"] and "1.0.0" in out["supportedVersions"]


def test_add_for_an_ambient_pod_waits_for_capture_and_passes_the_result_through(env) -> None:
    code, out = run(env, "ADD", config(env))
    assert code == 0
    assert out == {**FIXTURE["prevResult"], "cniVersion": "0.4.0"}
    [(cmd, pod)] = env["rec"].calls
    assert cmd == "add"
    assert pod["uid"] == UID and pod["ip"] == "10.0.0.5" and pod["netns"] == "/var/run/netns/blue"
    assert pod["serviceAccount"] == "db" and pod["probePorts"] == [5432]
    assert pod["annotations"] == {"ambit.io/exclude-outbound-ports": "5432"}     # only ours
    assert pod["cgroup"] == "/sys/fs/cgroup/x"          # the lab store names it


def test_add_fails_the_sandbox_when_the_agent_cannot_capture(env) -> None:
    env["rec"].refuse = "mesh/db: cannot open netns"
    code, out = run(env, "ADD", config(env))
    assert code == 1 and out["code"] == 100 and "mesh/db" in out["msg"]
    assert out["details"] == "mesh/db: cannot open netns" and out["cniVersion"] == "0.4.0"


def test_add_for_an_ambient_pod_with_the_agent_unreachable_fails_try_again(env) -> None:
    code, out = run(env, "ADD", config(env, agentSocket=str(env["dir"] / "nobody.sock")))
    assert code == 1 and out["code"] == spec.TRY_AGAIN_LATER
    assert "mesh/db" in out["msg"] and "nobody.sock" in out["msg"]


def test_add_for_pods_outside_the_mesh_never_asks_the_agent(env) -> None:
    conf = config(env, agentSocket=str(env["dir"] / "nobody.sock"))
    for pod in (("plain", "db"), None):                 # not ambient; not a Kubernetes sandbox at all
        code, out = run(env, "ADD", conf, pod=pod)
        assert code == 0 and out == {**FIXTURE["prevResult"], "cniVersion": "0.4.0"}
    assert env["rec"].calls == []


def test_del_unenrols_and_succeeds_even_without_the_agent(env) -> None:
    assert run(env, "DEL", config(env)) == (0, None)
    assert env["rec"].calls == [("del", (UID, "mesh/db"))]
    assert run(env, "DEL", config(env, agentSocket=str(env["dir"] / "nobody.sock"))) == (0, None)


def test_check_fails_unless_the_pod_is_captured(env) -> None:
    code, out = run(env, "CHECK", config(env))
    assert code == 1 and out["code"] == 100 and "not captured" in out["details"]
    run(env, "ADD", config(env))
    assert run(env, "CHECK", config(env)) == (0, None)
    code, out = run(env, "CHECK", {k: v for k, v in config(env).items() if k != "prevResult"})
    assert code == 1 and out["code"] == spec.INVALID_CONFIG and "prevResult" in out["msg"]


@pytest.mark.parametrize("command,conf,env_over,code,word", [
    ("ADD", None, {"CNI_NETNS": ""}, spec.INVALID_ENV, "CNI_NETNS"),
    ("FROB", None, {}, spec.INVALID_ENV, "CNI_COMMAND"),
    ("ADD", b"{not json", {}, spec.DECODE_FAILURE, "stdin"),
    ("ADD", {"cniVersion": "9.9.9"}, {}, spec.INCOMPATIBLE_VERSION, "9.9.9"),
    ("ADD", "spec-tuning", {}, spec.UNSUPPORTED_FIELD, "sysctl"),    # the spec's example, verbatim
    ("ADD", {"timeoutSeconds": 0}, {}, spec.INVALID_CONFIG, "timeoutSeconds"),
])
def test_bad_invocations_get_the_spec_error_codes(env, command, conf, env_over, code, word) -> None:
    if conf is None:
        conf = config(env)
    elif conf == "spec-tuning":
        conf = {**FIXTURE, "type": "ambit-cni"}
    elif isinstance(conf, dict):
        conf = {**config(env), **conf}
    rc, out = run(env, command, conf, **env_over)
    assert rc == 1 and out["code"] == code and word in out["msg"]
    assert env["rec"].calls == []


def test_args_and_addresses_parse_as_the_spec_says() -> None:
    assert spec.parse_args("IgnoreUnknown=1;K8S_POD_NAME=a;;K8S_POD_NAMESPACE=b") == {
        "IgnoreUnknown": "1", "K8S_POD_NAME": "a", "K8S_POD_NAMESPACE": "b"}
    with pytest.raises(spec.CniError):
        spec.parse_args("novalue")
    prev = FIXTURE["prevResult"]
    assert spec.sandbox_ips(prev, "eth0") == ["10.0.0.5"]
    assert spec.sandbox_ips(prev, "net1") == []         # on another interface of the sandbox


def test_in_a_cluster_the_plugin_decides_from_the_api_server(env, tmp_path: Path) -> None:
    from tests.support.kube_emulator import KubeEmulator
    token = tmp_path / "token"
    token.write_text("node-token\n")
    with KubeEmulator() as kube:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": "mesh", "labels": {"istio.io/dataplane-mode": "ambient"}}})
        kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other", "namespace": "mesh"},
                     "spec": {"serviceAccountName": "other"}})
        kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "db", "namespace": "mesh", "annotations": {"lab.ambit.io/cgroup": "/chosen/by/the/pod"}},
            "spec": {"serviceAccountName": "db"}})
        conf = {**config(env), "kubernetes": {"server": kube.url, "tokenFile": str(token)}}
        del conf["labStore"]
        code, out = run(env, "ADD", conf)
        assert code == 0 and out["ips"] == FIXTURE["prevResult"]["ips"]
        [(cmd, pod)] = env["rec"].calls
        assert pod["serviceAccount"] == "db"
        assert pod["cgroup"] == "", "outside the lab a pod's annotations never name its cgroup"
        code, out = run(env, "ADD", conf, pod=("mesh", "missing"))
        assert code == 1 and out["code"] == spec.TRY_AGAIN_LATER and "mesh/missing" in out["msg"]
    code, out = run(env, "ADD", conf)               # the API server is gone: cannot decide, fail
    assert code == 1 and out["code"] == spec.TRY_AGAIN_LATER and "cannot tell" in out["msg"]
