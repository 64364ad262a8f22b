"""The shared example manifests (/work/shared/examples), loaded for tests."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO.parent / "shared" / "examples"
if not EXAMPLES.is_dir():           # CI clones main with shared/ beside it
    EXAMPLES = Path("/work/shared/examples")


def example_files() -> list[Path]:
    files = sorted(p for d in ("istio", "gateway-api") for p in (EXAMPLES / d).glob("*.yaml"))
    # Never let the example tests pass vacuously because shared/ is missing.
    assert files, f"no example manifests under {EXAMPLES}: shared/ must sit beside the clone"
    return files


def example_docs() -> list[tuple[str, dict]]:
    out = []
    for f in example_files():
        for i, d in enumerate(yaml.safe_load_all(f.read_text())):
            if d:
                out.append((f"{f.parent.name}/{f.name}#{i}", d))
    return out
