"""The vagrant cluster runs what the e2e scenarios expect, with the image `ambit install` names.

The VMs cannot run here; these checks keep vagrant/ in step with the code and the lab spec
(test_checks.py runs `vagrant validate`, shellcheck and the Kubernetes schemas).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from ambitctl.commands import install
from ambitctl.lab.spec import load as load_spec

REPO = Path(__file__).resolve().parents[3]
VAGRANT = REPO / "vagrant"
E2E_SPEC = REPO / "tests" / "e2e" / "specs" / "e2e.yaml"
NODE_OF = {"node1": "ambit-w1", "node2": "ambit-w2"}


def demo_apps() -> list[dict]:
    return [d for d in yaml.safe_load_all((VAGRANT / "manifests" / "demo-apps.yaml").read_text()) if d]


def test_demo_apps_are_the_e2e_labs_pods_services_and_namespaces() -> None:
    spec = load_spec(E2E_SPEC)
    docs = demo_apps()
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    assert {d["metadata"]["name"]: d["metadata"].get("labels", {}) for d in by_kind["Namespace"]} == \
        spec.namespaces
    pods = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in by_kind["Pod"]}
    assert set(pods) == {(p.namespace, p.name) for p in spec.pods}
    for p in spec.pods:
        kp = pods[(p.namespace, p.name)]
        c = kp["spec"]["containers"][0]
        assert kp["metadata"]["labels"] == p.labels, p.name
        assert kp["spec"]["serviceAccountName"] == p.service_account
        assert kp["spec"]["nodeSelector"] == {"kubernetes.io/hostname": NODE_OF[p.node]}
        assert c["command"][1:] == p.command[1:], p.name
        assert {x["containerPort"] for x in c.get("ports", [])} == {int(x["containerPort"]) for x in p.ports}
        assert c["image"] == install.default_image()
        env = {e["name"]: e for e in c["env"]}
        assert json.loads(env["POD_LABELS"]["value"]) == p.labels, "the echo app reports its version from it"
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    def ports(ps: list) -> set[tuple]:
        return {(x["name"], x["port"], x["targetPort"]) if isinstance(x, dict) else (x.name, x.port, x.target_port)
                for x in ps}
    assert {(d["metadata"]["namespace"], d["metadata"]["name"]): (d["spec"]["selector"], ports(d["spec"]["ports"]))
            for d in by_kind["Service"]} == \
        {(s.namespace, s.name): (s.selector, ports(s.ports)) for s in spec.services}
    sas = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in by_kind["ServiceAccount"]}
    assert sas == {(p.namespace, p.service_account) for p in spec.pods}


def test_provisioning_uses_the_image_ambit_install_renders_by_default() -> None:
    image = install.default_image()
    for script in ("image.sh", "install.sh"):
        text = (VAGRANT / "provision" / script).read_text()
        assert f"IMAGE=${{AMBIT_IMAGE:-{image}}}" in text, script
    assert "ambitctl.cli install --dry-run" in (VAGRANT / "provision" / "install.sh").read_text()
    build = (VAGRANT / "provision" / "image.sh").read_text()
    assert '-f deploy/Dockerfile -t "$IMAGE" .' in build
    # pip in the build reads the node's wheelhouse: the Dockerfile must declare the build args it gets
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    for arg in re.findall(r"--build-arg \"?(\w+)=", build):
        assert f"ARG {arg}\n" in dockerfile, arg
    # The VMs build with Debian 12's docker.io, whose classic builder has no heredocs (BuildKit's).
    assert "<<" not in dockerfile, "a heredoc in deploy/Dockerfile: the classic builder cannot build it"


def test_vagrantfile_declares_one_server_and_two_workers_with_k3s_options() -> None:
    text = (VAGRANT / "Vagrantfile").read_text()
    nodes = re.findall(r'\{ name: "([\w-]+)", ip: [^,]+, role: "(\w+)"', text)
    assert nodes == [("ambit-cp", "server"), ("ambit-w1", "agent"), ("ambit-w2", "agent")]
    assert set(NODE_OF.values()) <= {n for n, _ in nodes}
    server = (VAGRANT / "provision" / "k3s.sh").read_text()
    for opt in ("--disable traefik", "--disable servicelb", "--flannel-backend vxlan", "--node-ip"):
        assert opt in server
    assert "debian/bookworm64" in text


def _mib(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Mi|Gi)", q)
    assert m, q
    return int(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)


def _install_argv(script: str) -> list[str]:
    """The `ambit install` arguments of install.sh (its continuation lines joined, up to the pipe)."""
    cmd = script[script.index("ambitctl.cli install --dry-run"):].replace("\\\n", " ").split("|", 1)[0]
    return cmd.split()[3:]


def test_the_cni_plugin_is_chained_where_k3s_runs_cni_from() -> None:
    """The cluster is k3s (provision/k3s.sh), whose containerd reads CNI configuration from
    /var/lib/rancher/k3s/agent/etc/cni/net.d and plugins from /var/lib/rancher/k3s/data/cni: an
    agent chaining ambit-cni into the default /etc/cni/net.d is never run by the runtime, and every
    pod's start races its capture (docs/operations.md, "Race-free pod start")."""
    assert "k3s" in (VAGRANT / "provision" / "k3s.sh").read_text()
    argv = _install_argv((VAGRANT / "provision" / "install.sh").read_text())
    del argv[argv.index("--image"):argv.index("--image") + 2]     # "$IMAGE", the shell's
    o = install.parse(argv)
    assert o.cni_conf_dir == "/var/lib/rancher/k3s/agent/etc/cni/net.d"
    assert o.cni_bin_dir == "/var/lib/rancher/k3s/data/cni"


def test_a_surge_roll_of_the_node_pod_fits_the_worker_vms() -> None:
    """install.sh restarts the node DaemonSet (maxSurge 1): for a moment each worker VM holds two node
    pods, and a second pod whose requests do not fit would hang the roll. The flags install.sh
    passes must size ztunnel for the VMs' CPUs and memory (docs/operations.md, "Memory requests")."""
    vagrantfile = (VAGRANT / "Vagrantfile").read_text()
    cpus = {int(c) for c in re.findall(r"\.cpus = (\d+)", vagrantfile)}
    memory = min(int(m) for m in re.findall(r'role: "agent", memory: (\d+)', vagrantfile))
    script = (VAGRANT / "provision" / "install.sh").read_text()
    argv = _install_argv(script)
    del argv[argv.index("--image"):argv.index("--image") + 2]     # "$IMAGE", the shell's
    assert argv[argv.index("--ztunnel-workers") + 1] == str(max(cpus)), "one ztunnel worker per VM CPU"
    docs = [d for d in yaml.safe_load_all(install.render(install.parse(argv))) if d]
    [ds] = [d for d in docs if d["kind"] == "DaemonSet"]
    node_pod = sum(_mib(c["resources"]["requests"]["memory"]) for c in ds["spec"]["template"]["spec"]["containers"])
    # k3s reserves nothing by default; leave a third of the VM to the OS, k3s and the scenario pods
    assert 2 * node_pod <= memory * 2 // 3, (node_pod, memory)
