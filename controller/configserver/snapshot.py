"""A validated, encoded snapshot of the desired state, and the per-subscriber views of it.

The translation hands the server full snapshots; everything per-resource that does not depend on
the subscriber (the JSON body and its content-hash version) is computed once here, not once per
subscriber.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from ambit.configclient.codec import Encoded, encode
from ambit.configclient.node import NodeInfo
from ambit.model import Resource, Workload
from controller.configserver.scope import scope, scope_key, workloads_by_node


class Versions(dict[str, str]):
    """name -> version of a `View`: shared by its subscribers once they ACK it, never edited."""


class View(dict[str, Encoded]):
    """What one scope key (every ztunnel, say) should hold of one type: name -> encoded resource.

    Shared by the subscribers of that key, and so is what is derived from it: `versions` (what a
    subscriber holds once it ACKs the view: one dict for 100 ztunnels, not 100 copies of 10,000
    names) and `deltas` (Subscription's changes from a state it held before, computed once per
    such state rather than once per subscriber). Neither a view nor its `versions` is ever edited.
    """

    def __init__(self) -> None:
        super().__init__()
        self._versions: Versions | None = None
        self.deltas: dict[int, tuple[Mapping[str, str], tuple[Encoded, ...], tuple[str, ...]]] = {}

    @property
    def versions(self) -> Versions:
        if self._versions is None:
            self._versions = Versions((n, e.version) for n, e in self.items())
        return self._versions


class Snapshot:
    def __init__(self, resources: dict[str, list[Resource]], version: str, generation: int,
                 encoded: Mapping[int, Encoded] | None = None):
        """`encoded`: the resources' encodings by `id`, when the caller already made them (the
        controller does, for the content version); any missing one is encoded here."""
        self.resources = resources
        self.version = version
        self.generation = generation
        self.created = time.monotonic()
        given = encoded or {}
        self._encoded: dict[int, Encoded] = {id(r): given.get(id(r)) or encode(r)
                                             for rs in resources.values() for r in rs}
        self._views: dict[tuple[tuple[str, ...], str], View] = {}
        self._by_node: dict[str, list[Resource]] | None = None     # agents' Workloads, built once

    @classmethod
    def build(cls, resources_by_type: Mapping[str, Sequence[Resource]], version: str, generation: int,
              encoded: Mapping[int, Encoded] | None = None) -> Snapshot:
        """Validate the translation's output; raise ValueError naming the offending entry."""
        if not isinstance(version, str) or not version:
            raise ValueError(f"update: version must be a non-empty string, got {version!r}")
        out: dict[str, list[Resource]] = {}
        for type_url, items in resources_by_type.items():
            seen: set[str] = set()
            checked: list[Resource] = []
            for i, r in enumerate(items):
                where = f"update: resources_by_type[{type_url!r}][{i}]"
                if not isinstance(r, Resource):
                    raise ValueError(f"{where}: is a {type(r).__name__}, not an ambit.model resource")
                if r.TYPE != type_url:
                    raise ValueError(f"{where}: is a {type(r).__name__} ({r.TYPE}), not {type_url}")
                name = r.resource_name
                if name in seen:
                    raise ValueError(f"{where}: name {name!r} appears more than once in {type_url}")
                seen.add(name)
                checked.append(r)
            out[type_url] = checked
        return cls(out, version, generation, encoded)

    def view(self, node: NodeInfo, type_url: str) -> View:
        """What `node` should hold of `type_url` now (memoized per scope key)."""
        key = (scope_key(node), type_url)
        v = self._views.get(key)
        if v is None:
            v = View()
            by_node = None
            if node.kind == "agent" and type_url == Workload.TYPE:
                if self._by_node is None:
                    self._by_node = workloads_by_node(self.resources.get(Workload.TYPE, []))
                by_node = self._by_node
            for r in scope(node, type_url, self.resources, by_node):
                e = self._encoded.get(id(r))
                v[r.resource_name] = e if e is not None else encode(r)
            self._views[key] = v
        return v

    def versions(self, node: NodeInfo, type_url: str) -> dict[str, str]:
        return dict(self.view(node, type_url).versions)
