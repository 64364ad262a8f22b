"""YAML for manifests, read as strictly as kubectl reads them.

PyYAML's `safe_load` differs from kubectl (sigs.k8s.io/yaml) in two ways that matter for
configuration a user hands to `ambit apply` or `ambit analyze`:

- A key written twice in one mapping silently keeps the last value: an AuthorizationPolicy with
  `action: DENY` and, further down, `action: ALLOW` would be applied as ALLOW. kubectl refuses it
  ("mapping key ... already defined"); so does this loader, naming both lines.
- Aliases are expanded without bound: a 700-byte "billion laughs" document (nine anchors, each nine
  aliases of the one before) is 387 million strings to every later walk of the object (validation,
  JSON for the store), so the command hangs and eats memory. Like go-yaml, a document whose aliases
  expand it far beyond what was written is refused.

A document nested deeper than the parser can follow is refused too, rather than a traceback; an
unquoted date stays a string, as kubectl reads it, and YAML types JSON lacks (`!!set`, `!!binary`)
are refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

# Expanded nodes a document may reach through aliases: go-yaml's bound (400,000), and beyond it
# at most ten times the nodes actually written.
_ALIAS_FLOOR = 400_000
_ALIAS_RATIO = 10
_MERGE_TAG = "tag:yaml.org,2002:merge"


class ManifestYAMLError(ValueError):
    """A manifest kubectl would refuse; the message says where and why."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and excessive aliasing."""

    def compose_document(self) -> Node | None:
        node = super().compose_document()
        if node is not None:
            _check_aliasing(node)
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue            # `<<: *base` may be overridden by explicit keys, as YAML allows
            key = self.construct_object(key_node)
            try:
                first = seen.get(key)
            except TypeError:       # an unhashable key: the constructor reports it
                continue
            if first is not None:
                raise ManifestYAMLError(f'line {key_node.start_mark.line + 1}: mapping key "{key}" already defined '
                                        f"at line {first + 1}")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _as_written(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return loader.construct_scalar(node)


def _not_json(loader: yaml.SafeLoader, node: Node) -> Any:
    raise ManifestYAMLError(f"line {node.start_mark.line + 1}: a YAML {node.tag.rsplit(':', 1)[-1]} has no JSON "
                            "form, and a Kubernetes object is JSON")


# An unquoted date stays the string it is, as in kubectl's YAML-to-JSON (PyYAML made it a datetime,
# which the lab store's JSON could not hold: `ambit apply` died with a traceback after its dry run
# had said "created"). Types JSON lacks are refused.
_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _as_written)
for _tag in ("binary", "set", "omap", "pairs"):
    _StrictLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _not_json)


def _check_aliasing(root: Node) -> None:
    """Refuse a document whose aliases expand it beyond the bound (without expanding it), or that
    contains itself (`&a [*a]`: JSON cannot hold it, and walking it never ends)."""
    sizes: dict[int, int] = {}
    written: set[int] = set()
    visiting: set[int] = set()      # nodes whose subtree is being walked: meeting one again is a cycle
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:                    # post-order, iteratively: deep documents must not recurse here
        node, ready = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not ready:
            if id(node) in visiting:
                raise ManifestYAMLError(f"line {node.start_mark.line + 1}: an alias refers to a node that "
                                        "contains it; a Kubernetes object cannot contain itself")
            visiting.add(id(node))
            written.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        visiting.discard(id(node))
        sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
    expanded = sizes[id(root)]
    if expanded > max(_ALIAS_FLOOR, _ALIAS_RATIO * len(written)):
        raise ManifestYAMLError(f"document contains excessive aliasing: its {len(written)} nodes expand to "
                                f"{expanded} through anchors and aliases")


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def load_all(text: str) -> Iterator[Any]:
    """The documents of `text`; raises ManifestYAMLError or yaml.YAMLError naming the problem."""
    try:
        yield from yaml.load_all(text, Loader=_StrictLoader)   # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise ManifestYAMLError("nested too deeply to read") from None
