"""The client's per-type config state and how a delta is applied to it (sans-IO).

A delta is *staged* first (decoded and merged into a copy), handed to the component, and only
*committed* if the component accepted it. A rejected delta therefore leaves the last good state
untouched, which is what the client keeps serving and what it tells the server it holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ambit.configclient.codec import DecodeError, Encoded, content_version, decode
from ambit.model import Resource


@dataclass(frozen=True)
class ConfigUpdate:
    """What a component's apply callback receives for one type.

    `changed` and `removed` are the delta; `state` is the full state the delta leads to, for
    components that would rather rebuild their tables than patch them.
    """

    type_url: str
    system_version: str
    changed: Mapping[str, Resource]
    removed: frozenset[str]
    state: Mapping[str, Resource]
    from_cache: bool = False


@dataclass
class Staged:
    update: ConfigUpdate
    resources: dict[str, Resource]
    encoded: dict[str, Encoded]


@dataclass
class TypeState:
    """The last good state of one type: objects, their wire form (for the cache) and versions.

    `resources` and `encoded` are replaced by each commit, never edited: the component and the
    cache writer's thread hold them as they are, without a copy."""

    type_url: str
    system_version: str = ""
    resources: dict[str, Resource] = field(default_factory=dict)
    encoded: dict[str, Encoded] = field(default_factory=dict)

    def versions(self) -> dict[str, str]:
        return {name: e.version for name, e in self.encoded.items()}

    def stage(self, system_version: str, changed: Iterable[Encoded], removed: Iterable[str],
              *, from_cache: bool = False) -> Staged:
        """Decode and merge a delta into copies; raise DecodeError (a NACK) on any bad resource."""
        changed = list(changed)
        removed_set = frozenset(removed)
        names = [e.name for e in changed]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise DecodeError(f"{self.type_url}: resources {dup} appear more than once in one response")
        both = removed_set.intersection(names)
        if both:
            raise DecodeError(f"{self.type_url}: resources {sorted(both)} are both updated and removed")
        for e in changed:
            # The version names the content; a mismatch would corrupt what we report on reconnect.
            if content_version(e.body) != e.version:
                raise DecodeError(f"{self.type_url} {e.name!r}: version {e.version!r} does not match its body")
        decoded = {e.name: decode(self.type_url, e.name, e.body) for e in changed}
        resources = dict(self.resources)
        encoded = dict(self.encoded)
        for name in removed_set:
            resources.pop(name, None)
            encoded.pop(name, None)
        for e in changed:
            resources[e.name] = decoded[e.name]
            encoded[e.name] = e
        update = ConfigUpdate(
            type_url=self.type_url,
            system_version=system_version,
            changed=MappingProxyType(decoded),
            # Removing what the client never had is harmless; report only real removals.
            removed=frozenset(n for n in removed_set if n in self.resources),
            # a read-only view of the state this delta commits, not a copy: neither is edited once
            # made (the next delta is staged into a copy), and a component that keeps it (the
            # waypoint) then holds one map of 10,000 workloads with the client, not two
            state=MappingProxyType(resources),
            from_cache=from_cache,
        )
        return Staged(update, resources, encoded)

    def commit(self, staged: Staged) -> None:
        self.system_version = staged.update.system_version
        self.resources = staged.resources
        self.encoded = staged.encoded
