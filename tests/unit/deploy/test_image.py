"""The image's entrypoint (run for real against fixture trees) and the Dockerfile's promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ambitctl.commands import install

REPO = Path(__file__).resolve().parents[3]
ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
KVER = "6.18.44-test"
UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def headers(base: Path, version: str = "6.1.0-56") -> tuple[Path, Path]:
    arch = base / f"linux-headers-{version}-amd64"
    common = base / f"linux-headers-{version}-common"
    for d in (arch, common):
        (d / "include").mkdir(parents=True)
    return arch, common


def run(tmp: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    venv_bin = str(Path(sys.executable).parent)
    e = {"PATH": f"{venv_bin}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
         "AMBIT_HOST_ROOT": str(tmp / "host"), "AMBIT_MODULES_DIR": str(tmp / "modules"),
         "AMBIT_IMAGE_HEADERS": str(tmp / "image-headers"), "AMBIT_KERNEL_RELEASE": KVER, **env}
    return subprocess.run(["sh", str(ENTRYPOINT), *argv], env=e, capture_output=True, text=True, timeout=60)


@pytest.fixture
def image_headers(tmp_path: Path) -> tuple[Path, Path]:
    headers(tmp_path / "image-headers", "6.1.0-50")
    return headers(tmp_path / "image-headers", "6.1.0-56")     # the newest is chosen


def test_without_host_headers_bcc_gets_the_images_and_the_host_modules(tmp_path: Path, image_headers) -> None:
    hostmods = tmp_path / "host" / "lib" / "modules" / KVER
    (hostmods / "kernel").mkdir(parents=True)
    (hostmods / "modules.dep").write_text("")
    p = run(tmp_path, "echo", "ran")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "ran\n", "the entrypoint must exec its arguments"
    mods = tmp_path / "modules" / KVER
    assert (mods / "build").resolve() == image_headers[0].resolve()
    assert (mods / "source").resolve() == image_headers[1].resolve()
    assert (mods / "kernel").resolve() == (hostmods / "kernel").resolve()
    assert (mods / "modules.dep").resolve() == (hostmods / "modules.dep").resolve()
    assert "host has none" in p.stderr


def test_host_headers_win_and_their_absolute_links_are_rerooted(tmp_path: Path, image_headers) -> None:
    arch, common = headers(tmp_path / "host" / "usr" / "src", "6.18.0-1")
    hostmods = tmp_path / "host" / "lib" / "modules" / KVER
    hostmods.mkdir(parents=True)
    # As on the host: absolute links into /usr/src, meaningless in the container until re-rooted.
    (hostmods / "build").symlink_to(f"/usr/src/{arch.name}")
    (hostmods / "source").symlink_to(f"/usr/src/{common.name}")
    p = run(tmp_path, "true")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "modules" / KVER / "build").resolve() == arch.resolve()
    assert (tmp_path / "modules" / KVER / "source").resolve() == common.resolve()
    # A second start (container restart) is fine and changes nothing.
    assert run(tmp_path, "true").returncode == 0
    assert (tmp_path / "modules" / KVER / "build").resolve() == arch.resolve()


def test_no_headers_anywhere_is_a_clear_failure(tmp_path: Path) -> None:
    p = run(tmp_path, "echo", "must not run")
    assert p.returncode == 1 and "must not run" not in p.stdout
    assert f"kernel {KVER}: no host headers and no image headers" in p.stderr


def test_the_pods_cgroup_is_appended_as_ztunnel_cgroup(tmp_path: Path, image_headers) -> None:
    cg = tmp_path / "cg" / "kubepods.slice" / f"kubepods-pod{UID.replace('-', '_')}.slice"
    cg.mkdir(parents=True)
    p = run(tmp_path, sys.executable, "-c", "import sys; print(sys.argv[1:])", "--node", "n1",
            AMBIT_ZTUNNEL_POD_UID=UID, AMBIT_CGROUP_ROOT=str(tmp_path / "cg"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(["--node", "n1", "--ztunnel-cgroup", str(cg)])


def test_a_missing_pod_cgroup_stops_the_agent_with_the_reason(tmp_path: Path, image_headers) -> None:
    (tmp_path / "cg").mkdir()
    p = run(tmp_path, "echo", "must not run", AMBIT_ZTUNNEL_POD_UID=UID, AMBIT_CGROUP_ROOT=str(tmp_path / "cg"),
            AMBIT_CGROUP_TRIES="1")
    assert p.returncode == 1 and "must not run" not in p.stdout
    assert f"no cgroup for pod {UID}" in p.stderr and "cannot find this pod's cgroup" in p.stderr


# -- Dockerfile -------------------------------------------------------------------------------------

def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_dockerfile_base_and_packages() -> None:
    text = dockerfile()
    assert re.search(r"^FROM debian:12(-slim)?$", text, re.M)
    apt = re.search(r"apt-get install[^\n]*\\\n(.*?)\n &&", text, re.S)
    assert apt, "one apt-get install"
    pkgs = set(apt.group(1).replace("\\", " ").split())
    # bcc, libbpf (bpf_link_create through cffi), headers, ip/tc, iptables mode, the readiness probe.
    assert {"python3-bpfcc", "libbpf1", "linux-headers-amd64", "iproute2", "iptables", "curl",
            "python3-venv"} <= pkgs
    assert "--system-site-packages" in text, "the venv must see Debian's bcc"


def test_dockerfile_installs_every_package_and_points_the_agent_at_its_bpf_sources() -> None:
    text = dockerfile()
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in include:
        pkg = pattern.rstrip("*")
        assert re.search(rf"^COPY {pkg} \./{pkg}$", text, re.M), f"package {pkg} is not copied into the image"
    bpf_dir = re.search(r"^COPY bpf (\S+)$", text, re.M)
    assert bpf_dir and f"AMBIT_BPF_DIR={bpf_dir.group(1)}" in text
    from agent.capture import constants
    assert "AMBIT_BPF_DIR" in Path(constants.__file__).read_text(), "the agent reads AMBIT_BPF_DIR"
    assert f"COPY deploy/entrypoint.sh {install.ENTRYPOINT}" in text
    assert "/opt/ambit/kernel-headers" in text and "AMBIT_IMAGE_HEADERS:-/opt/ambit/kernel-headers" in ENTRYPOINT.read_text()
    assert "PATH=/opt/ambit/venv/bin:$PATH" in text, "`python3` in the manifests must be the venv's"
