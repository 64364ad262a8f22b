"""The node credential a component presents on the config stream (and to the CA).

The same file the CA reads (lab: `<labdir>/<node>/bootstrap-token`; cluster: the projected
service-account token), sent as gRPC metadata `authorization: Bearer <token>` and
`x-ambit-node: <node>`. The file is re-read on every connection attempt, so a rotated token (or
one written after the component started) is used without a restart; a missing or empty file fails
that attempt with a message naming the file, and the client retries with backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

NODE_HEADER = "x-ambit-node"

Metadata = tuple[tuple[str, str], ...]


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConnectionError(f"node credential {path}: {e.strerror or e}") from None
    if not token:
        raise ConnectionError(f"node credential {path} is empty")
    return token


def node_metadata(token_file: Path, node: str) -> Callable[[], Metadata]:
    """A callable giving the metadata for one connection attempt as `node`."""
    def metadata() -> Metadata:
        return (("authorization", f"Bearer {read_token(token_file)}"), (NODE_HEADER, node))
    return metadata
