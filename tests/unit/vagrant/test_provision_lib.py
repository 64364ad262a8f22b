"""The cache logic of the provision scripts, run for real with sh (downloads from file:// URLs),
and cluster-test.sh's refusals, which need no VM."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LIB = REPO / "vagrant" / "provision" / "lib.sh"


def fetch(cache: Path, url: str, dest: Path) -> subprocess.CompletedProcess[str]:
    script = f'set -eu\nAMBIT_CACHE="{cache}"\n. "{LIB}"\nfetch "{url}" "{dest}"\n'
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)


def test_fetch_downloads_once_then_serves_the_cache(tmp_path: Path) -> None:
    src, cache = tmp_path / "k3s", tmp_path / "cache"
    src.write_bytes(b"binary v1")
    dest = cache / "k3s" / "v1" / "k3s"
    p = fetch(cache, src.as_uri(), dest)
    assert p.returncode == 0, p.stderr
    assert "fetching" in p.stdout and dest.read_bytes() == b"binary v1"
    src.unlink()                                   # offline now: a second fetch must not need it
    p = fetch(cache, src.as_uri(), dest)
    assert p.returncode == 0, p.stderr
    assert "cached: k3s/v1/k3s" in p.stdout and dest.read_bytes() == b"binary v1"


def test_an_interrupted_download_is_not_taken_for_a_cached_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    dest = cache / "images" / "base.tar"
    p = fetch(cache, (tmp_path / "missing").as_uri(), dest)
    assert p.returncode != 0 and not dest.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    (dest.parent / "base.tar.part").write_bytes(b"half")     # what a killed download leaves
    src = tmp_path / "base.tar"
    src.write_bytes(b"whole image")
    p = fetch(cache, src.as_uri(), dest)
    assert p.returncode == 0 and dest.read_bytes() == b"whole image"


def cluster_test(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "vagrant" / "cluster-test.sh"), *args], capture_output=True,
                          text=True, timeout=30)


def test_cluster_test_refuses_an_unknown_provider_or_argument() -> None:
    p = cluster_test("--provider", "hyperv")
    assert p.returncode == 2 and "provider hyperv: expected libvirt or virtualbox" in p.stderr
    p = cluster_test("--keep")
    assert p.returncode == 2 and "unknown argument --keep" in p.stderr
    p = cluster_test("--help")
    assert p.returncode == 0 and "--destroy" in p.stdout
