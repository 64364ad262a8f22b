"""The package layers, enforced by walking every import in the tree (AST, so lazy imports inside
functions and TYPE_CHECKING blocks count too).

The rules (docs/architecture.md, "Layers"):

1. **The ground knows no component.** `ambit` (the core: model, identities, API, config client,
   Kubernetes reflector, lab store, netns/cgroup helpers) and `ambit.dataplane` (the library both
   proxies are built on) import nothing from `agent`, `ztunnel`, `controller`, `waypoint`,
   `ambitctl` or `bench`.
2. **The data plane sits on the core, not under it.** Core modules outside `ambit.dataplane` do not
   import `ambit.dataplane`.
3. **Components meet over gRPC and unix sockets, never imports.** `ztunnel`, `waypoint`, `agent`
   and `controller` each import only the ground (and themselves): ztunnel imports neither the
   controller nor the agent, the waypoint neither ztunnel nor the controller, and so on.
4. **The top sits on top.** `ambitctl` (the CLI and the lab) and `bench` may import anything, but
   only public names: `from pkg import _private` across top-level packages is refused everywhere.

A rule broken names the file, the line and the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GROUND = {"ambit"}
COMPONENTS = {"agent", "ztunnel", "controller", "waypoint"}
TOP = {"ambitctl", "bench"}
OURS = GROUND | COMPONENTS | TOP


def _module_of(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, module: str, is_pkg: bool) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every import, relative ones resolved."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target, [a.name for a in node.names]))
    return out


def violations(root: Path) -> list[str]:
    """Every import in the tree under `root` that breaks a rule, as 'file:line: rule: detail'."""
    found = []
    for top in sorted(OURS):
        for path in sorted((root / top).rglob("*.py")) if (root / top).is_dir() else []:
            if "_pb2" in path.name:
                continue
            module = _module_of(path, root)
            src = module.split(".")[0]
            in_dataplane = module == "ambit.dataplane" or module.startswith("ambit.dataplane.")
            tree = ast.parse(path.read_text(), str(path))
            for line, target, names in _imports(tree, module, path.name == "__init__.py"):
                dst = target.split(".")[0]
                if dst not in OURS:
                    continue
                where = f"{path.relative_to(root)}:{line}"
                if src in GROUND and dst not in GROUND:
                    found.append(f"{where}: rule 1 (the ground knows no component): {module} imports {target}")
                elif (src in GROUND and not in_dataplane
                      and (target == "ambit.dataplane" or target.startswith("ambit.dataplane."))):
                    found.append(f"{where}: rule 2 (the data plane sits on the core): {module} imports {target}")
                elif src in COMPONENTS and dst != src and dst not in GROUND:
                    found.append(f"{where}: rule 3 (components meet over gRPC and sockets, not imports): "
                                 f"{module} imports {target}")
                if dst != src:
                    private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                    if private:
                        found.append(f"{where}: rule 4 (only public names across packages): {module} imports "
                                     f"{', '.join(private)} from {target}")
    return found


def test_the_tree_keeps_its_layers():
    assert violations(REPO) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_each_rule_catches_its_breach_and_names_file_and_line(tmp_path):
    root = _tree(tmp_path, {
        "ambit/__init__.py": "",
        "ambit/model.py": "import os\n\ndef f():\n    from ztunnel import proxy\n",
        "ambit/configclient.py": "from ambit.dataplane import hbone\n",
        "ambit/dataplane/__init__.py": "",
        "ambit/dataplane/tls.py": "from ambit import model\nfrom . import hbone\n",
        "ambit/dataplane/hbone.py": "from ..model import thing\nfrom controller.ca import bundle\n",
        "ztunnel/__init__.py": "",
        "ztunnel/proxy.py": "from agent.capture import origdst\nfrom ambit.dataplane import tls\n",
        "waypoint/__init__.py": "import ztunnel.proxy\n",
        "controller/__init__.py": "",
        "controller/ca.py": "from ambit.dataplane.trust import TrustBundle\n",
        "ambitctl/__init__.py": "from controller.sources import _SECRET, public\nimport ztunnel\n",
    })
    got = violations(root)
    assert got == [
        "ambit/configclient.py:1: rule 2 (the data plane sits on the core): ambit.configclient imports "
        "ambit.dataplane",
        "ambit/dataplane/hbone.py:2: rule 1 (the ground knows no component): ambit.dataplane.hbone imports "
        "controller.ca",
        "ambit/model.py:4: rule 1 (the ground knows no component): ambit.model imports ztunnel",
        "ambitctl/__init__.py:1: rule 4 (only public names across packages): ambitctl imports _SECRET from "
        "controller.sources",
        "waypoint/__init__.py:1: rule 3 (components meet over gRPC and sockets, not imports): waypoint imports "
        "ztunnel.proxy",
        "ztunnel/proxy.py:1: rule 3 (components meet over gRPC and sockets, not imports): ztunnel.proxy imports "
        "agent.capture",
    ]
