"""The checks of vagrant/ that run here, where no VM can: `vagrant validate`, shellcheck, and the
manifests `ambit install` renders against the schemas of the Kubernetes version k3s runs.

vagrant, vagrant-libvirt and shellcheck are Debian packages (scripts/setup.sh installs them);
kubernetes-validate (a dev dependency) carries the Kubernetes JSON schemas offline.
"""

from __future__ import annotations

import copy
import functools
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
VAGRANT = REPO / "vagrant"
SCRIPTS = sorted(p.relative_to(VAGRANT).as_posix() for p in VAGRANT.rglob("*.sh") if ".cache" not in p.parts)


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: scripts/setup.sh (make setup) installs it"
    return path


def k3s_kubernetes_version() -> str:
    """`v1.32.3+k3s1` in the Vagrantfile -> `1.32.3`."""
    m = re.search(r'"AMBIT_K3S_VERSION", "v(\d+\.\d+\.\d+)\+k3s\d+"', (VAGRANT / "Vagrantfile").read_text())
    assert m, "the Vagrantfile pins K3S_VERSION as vX.Y.Z+k3sN"
    return m.group(1)


@pytest.fixture(scope="module")
def vagrant_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """vagrant/ copied out: loading the Vagrantfile writes .k3s-token and .cache next to it."""
    root = tmp_path_factory.mktemp("vagrant")
    shutil.copytree(VAGRANT, root / "vagrant", ignore=shutil.ignore_patterns(".vagrant", ".cache", ".k3s-token",
                                                                           ".reports"))
    return root / "vagrant"


def validate(where: Path, *args: str, provider: str = "libvirt") -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(where.parent),
           "VAGRANT_HOME": str(where.parent / "vagrant.d"), "VAGRANT_DEFAULT_PROVIDER": provider,
           "VAGRANT_CHECKPOINT_DISABLE": "1"}
    return subprocess.run([tool("vagrant"), "validate", *args], cwd=where, env=env, capture_output=True,
                          text=True, timeout=60)


def test_vagrantfile_validates_with_the_libvirt_provider(vagrant_copy: Path) -> None:
    # vagrant-libvirt is installed, so the libvirt block's settings are checked too.
    p = validate(vagrant_copy)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "validated successfully" in p.stdout


def test_vagrantfile_validates_without_a_provider(vagrant_copy: Path) -> None:
    # VirtualBox is not in Debian: its block is checked statically below, the rest of the file here.
    p = validate(vagrant_copy, "--ignore-provider", provider="virtualbox")
    assert p.returncode == 0, p.stdout + p.stderr


def test_vagrant_validate_rejects_a_misspelt_libvirt_setting(vagrant_copy: Path, tmp_path: Path) -> None:
    broken = tmp_path / "vagrant"
    shutil.copytree(vagrant_copy, broken)
    vf = broken / "Vagrantfile"
    vf.write_text(vf.read_text().replace("lv.memory =", "lv.memroy ="))
    p = validate(broken)
    assert p.returncode != 0 and "memroy" in p.stdout + p.stderr


def test_both_providers_get_the_same_memory_and_cpus() -> None:
    text = (VAGRANT / "Vagrantfile").read_text()
    blocks = dict(re.findall(r'provider "(\w+)" do \|\w+\|\n(.*?)\n\s*end', text, re.S))
    assert set(blocks) == {"virtualbox", "libvirt"}
    def settings(body: str) -> set[tuple[str, str]]:
        return {(k, v.strip()) for k, v in re.findall(r"\w+\.(memory|cpus) = (.+)", body)}
    assert settings(blocks["virtualbox"]) == settings(blocks["libvirt"]) == {("memory", "n[:memory]"),
                                                                             ("cpus", "2")}


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_passes(script: str) -> None:
    p = subprocess.run([tool("shellcheck"), "-x", script], cwd=VAGRANT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def test_every_script_the_vagrantfile_runs_is_shellchecked() -> None:
    # (requirements.py is Python, run by the scripts; ruff checks it)
    text = (VAGRANT / "Vagrantfile").read_text()
    used = {re.sub(r"^(/ambit/)?vagrant/", "", u) for u in re.findall(r"[\w/.-]+\.sh", text)}
    assert {"provision/common.sh", "provision/k3s.sh", "provision/install.sh", "cache-pull.sh"} <= used
    assert used <= set(SCRIPTS), used - set(SCRIPTS)


@functools.cache
def _rendered() -> list[dict]:
    p = subprocess.run([sys.executable, "-m", "ambitctl.cli", "install", "--dry-run"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def rendered() -> list[dict]:
    """What `ambit install --dry-run` prints (rendered once: it takes seconds on a busy machine)."""
    return copy.deepcopy(_rendered())


def demo_apps() -> list[dict]:
    return [d for d in yaml.safe_load_all((VAGRANT / "manifests" / "demo-apps.yaml").read_text()) if d]


def test_install_manifests_and_demo_apps_match_the_kubernetes_schemas_k3s_runs() -> None:
    version = k3s_kubernetes_version()
    docs = rendered() + demo_apps()
    assert {"DaemonSet", "Deployment", "CustomResourceDefinition", "Pod", "Service"} <= {d["kind"] for d in docs}
    for d in docs:
        # strict: a field the API server would drop (a misspelling) fails here too
        kubernetes_validate.validate(d, version, strict=True)


def test_the_schema_check_catches_a_misplaced_field() -> None:
    ds = next(d for d in rendered() if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = ["IfNotPresent"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, k3s_kubernetes_version(), strict=True)
    ds = next(d for d in rendered() if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, k3s_kubernetes_version(), strict=True)


def test_the_vms_wheelhouse_covers_what_the_image_and_the_e2e_venv_install() -> None:
    def reqs(what: str) -> list[str]:
        p = subprocess.run([sys.executable, str(VAGRANT / "provision" / "requirements.py"), what,
                            str(REPO / "pyproject.toml")], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return p.stdout.split()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert reqs("image") == pyproject["project"]["dependencies"] + pyproject["build-system"]["requires"]
    e2e = {re.split(r"[<>=]", r)[0] for r in reqs("e2e")}
    assert e2e == {"pytest", "pytest-timeout", "PyYAML"}
