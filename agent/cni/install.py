"""Chaining `ambit-cni` into the node's CNI configuration, and out again (as istio-cni does).

The runtime uses the first network configuration file of its directory (lexical order), so the
plugin goes at the end of that file's `plugins` list: it then runs after the network plugin that
created the pod's interface and sees its result as `prevResult`. The plugin itself is copied into
the CNI bin directory as one self-contained file: a zip of the modules it needs (standard library
only) whose shebang names the host's Python (`--cni-python`, /usr/bin/python3 by default).

`chain` / `unchain` are pure; `install` / `uninstall` write files atomically (write, then rename),
so the runtime never reads half a configuration.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

PLUGIN_TYPE = "ambit-cni"
CONF_SUFFIXES = (".conflist", ".conf", ".json")
# What the plugin imports, relative to the source tree: nothing outside the standard library.
PLUGIN_MODULES = ("agent/__init__.py", "agent/cni/__init__.py", "agent/cni/spec.py", "agent/cni/wire.py",
                  "agent/cni/podlookup.py", "agent/cni/plugin.py", "ambit/__init__.py", "ambit/enrolment.py",
                  "ambit/probes.py")
CREDENTIALS_DIR = "ambit-cni.d"      # the plugin's copy of the agent's token and CA, in conf_dir
# The host's Python, isolated (-I: no PYTHON* variables, no user site) and without site-packages (-S):
# the plugin needs the standard library only, and starts in tens of milliseconds.
DEFAULT_PYTHON = "/usr/bin/python3"

Obj = dict[str, Any]


class InstallError(RuntimeError):
    pass


def primary(conf_dir: Path) -> Path | None:
    """The configuration file the runtime uses: the first in lexical order (as libcni sorts)."""
    try:
        files = sorted(p for p in conf_dir.iterdir() if p.suffix in CONF_SUFFIXES and p.is_file())
    except FileNotFoundError:
        return None
    return files[0] if files else None


def chain(conflist: Obj, entry: Obj) -> Obj:
    """`conflist` with `entry` last in its plugins (replacing an earlier ambit-cni entry)."""
    plugins = conflist.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise InstallError("not a network configuration list: no `plugins` (a single-plugin .conf file "
                           "is not supported; convert it to a .conflist)")
    kept = [p for p in plugins if (p or {}).get("type") != PLUGIN_TYPE]
    return {**conflist, "plugins": [*kept, {**entry, "type": PLUGIN_TYPE}]}


def unchain(conflist: Obj) -> Obj:
    return {**conflist, "plugins": [p for p in conflist.get("plugins") or [] if (p or {}).get("type") != PLUGIN_TYPE]}


def chained(conflist: Obj) -> bool:
    return any((p or {}).get("type") == PLUGIN_TYPE for p in conflist.get("plugins") or [])


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.ambit-tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def plugin_bytes(python: str = DEFAULT_PYTHON, source_root: Path | None = None) -> bytes:
    """The plugin as one executable file (shebang + zip with a __main__)."""
    root = source_root or Path(__file__).resolve().parents[2]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for rel in PLUGIN_MODULES:
            z.write(root / rel, rel)
        z.writestr("__main__.py", "from agent.cni.plugin import main\nmain()\n")
    return f"#!{python} -IS\n".encode() + buf.getvalue()


def install(conf_dir: Path, bin_dir: Path, entry: Obj, python: str = DEFAULT_PYTHON) -> Path:
    """Copy the plugin into `bin_dir` and chain it into the primary conflist of `conf_dir`."""
    conf = primary(conf_dir)
    if conf is None:
        raise InstallError(f"no CNI network configuration in {conf_dir} yet (the node's network plugin writes it)")
    bin_dir.mkdir(parents=True, exist_ok=True)
    _write(bin_dir / PLUGIN_TYPE, plugin_bytes(python), 0o755)
    try:
        doc = json.loads(conf.read_text())
    except (OSError, ValueError) as e:
        raise InstallError(f"{conf}: {e}") from None
    new = chain(doc, entry)
    if new != doc:
        _write(conf, (json.dumps(new, indent=2) + "\n").encode(), 0o644)
    return conf


def uninstall(conf_dir: Path, bin_dir: Path) -> list[Path]:
    """Unchain the plugin from every configuration file that has it, and remove its file."""
    changed = []
    if conf_dir.is_dir():
        for conf in sorted(p for p in conf_dir.iterdir() if p.suffix in CONF_SUFFIXES and p.is_file()):
            try:
                doc = json.loads(conf.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and chained(doc):
                _write(conf, (json.dumps(unchain(doc), indent=2) + "\n").encode(), 0o644)
                changed.append(conf)
    (bin_dir / PLUGIN_TYPE).unlink(missing_ok=True)
    shutil.rmtree(conf_dir / CREDENTIALS_DIR, ignore_errors=True)
    return changed


SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def kube_credentials(conf_dir: Path, sa_dir: Path = SA_DIR, environ: dict[str, str] | None = None) -> Obj:
    """The API server and a copy of this agent's service-account token and CA, for the plugin, which
    runs on the host where the agent's secret volume is not mounted. The kubelet rotates the token
    (projected, about an hour): the agent calls this again every minute, and it rewrites what changed.
    The agent's ClusterRole lets it read pods and namespaces, which is what the plugin does."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise InstallError("KUBERNETES_SERVICE_HOST is not set: not in a cluster (the lab passes --cni-lab-store)")
    dest = conf_dir / CREDENTIALS_DIR
    dest.mkdir(mode=0o700, exist_ok=True)
    for name, mode in (("token", 0o600), ("ca.crt", 0o644)):
        data = (sa_dir / name).read_bytes()
        if not (dest / name).exists() or (dest / name).read_bytes() != data:
            _write(dest / name, data, mode)
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return {"server": server, "tokenFile": str(dest / "token"), "caFile": str(dest / "ca.crt")}
