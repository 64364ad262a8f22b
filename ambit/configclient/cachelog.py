"""The config cache's on-disk format: a snapshot plus a journal of deltas (sans-IO).

Rewriting the whole cache after every accepted response cost ~100 ms of event loop at 10,000
pods (docs/performance.md, "The config cache: a journal of deltas"). Now a response appends one
record (its delta) to a journal, and the journal is folded into a new snapshot only once it has
grown as large as the snapshot, so each update costs what its delta does and the files stay
within about twice the state.

Every frame is length-prefixed and checksummed, so a reader tells a complete record from a torn
one without trusting the writer to have finished. The journal names the snapshot it follows (a
random id), so a journal left from before a compaction is never replayed over the snapshot that
already holds it. Crash consistency, by step:
- a record is appended: a crash leaves it whole (replayed) or torn (cut off with the rest of the
  journal): the state after the previous record, a state the component once committed;
- a compaction writes the snapshot under a temporary name and renames it, then the journal:
  between the two renames the old journal names the old snapshot and is ignored.

Bodies are stored as they came (bytes, no JSON escaping): only the names, versions and sizes go
through `json`, which is most of what made the old whole-file JSON slow.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice

from ambit.configclient.codec import Encoded

SNAPSHOT_MAGIC = b"ambit-config-cache 2\n"
JOURNAL_MAGIC = b"ambit-config-journal 2\n"
_FRAME = struct.Struct(">II")      # payload length, crc32 of the payload

# (system_version, resources): read back as lists; written from any collection that nobody edits
# while the writer's thread lays it out (the client's committed maps are replaced, never edited)
CachedType = tuple[str, Collection[Encoded]]

# A journal is compacted once it would outgrow the snapshot, but never below this (a small state
# would otherwise be rewritten on nearly every update).
JOURNAL_FLOOR = 256 * 1024


@dataclass(frozen=True)
class Delta:
    """One accepted response of one type, as the journal records it.

    `replace`: `put` is the type's whole state (its first accepted response since the process
    started, or one after a rejection), not a change to what the cache holds of it.
    """

    type_url: str
    system_version: str
    put: Collection[Encoded]
    removed: Collection[str] = ()
    replace: bool = False


def frame(payload: bytes) -> bytes:
    """The frame header for `payload` (written before it): its length and checksum."""
    return _FRAME.pack(len(payload), zlib.crc32(payload))


# Laying out a type's frame is Python work that holds the GIL (names, versions and sizes into
# JSON, the bodies joined): at 10,000 pods ~10 ms for a snapshot, which the event loop lost in
# one or two blocks although it ran in the writer's thread. It is therefore done a slice at a
# time (SLICE resources, or SLICE_BYTES of bodies: one large policy must not make a slice long),
# and the pieces below mark with PAUSE where the writer may let the loop run. Nothing is joined
# across slices: the header goes out as its slices' parts, the bodies as their slices' joins.
SLICE = 256
SLICE_BYTES = 64 * 1024
PAUSE = None
Piece = bytes | None        # bytes to write in order, or PAUSE

_COMPACT = (",", ":")


def _slices(items: Iterable[Encoded], size: int, limit: int) -> Iterator[tuple[list[Encoded], list[bytes]]]:
    """`items` in slices of at most `size`, ending one once its bodies reach `limit` bytes; with
    each slice, its bodies."""
    chunk: list[Encoded] = []
    bodies: list[bytes] = []
    held = 0
    for e in items:
        body = e.body
        chunk.append(e)
        bodies.append(body)
        held += len(body)
        if len(chunk) >= size or held >= limit:
            yield chunk, bodies
            chunk, bodies, held = [], [], 0
    if chunk:
        yield chunk, bodies


def _items(parts: list[bytes]) -> Iterator[bytes]:
    """A JSON array's items, given as parts that each hold some of them without brackets."""
    for i, p in enumerate(parts):
        if i:
            yield b","
        yield p


def _type_chunks(delta: Delta, size: int, limit: int = SLICE_BYTES) -> Iterator[bytes | None]:
    """A type frame's payload in chunks, PAUSE after each slice: byte for byte the payload
    `parse_type` reads (a JSON header line, then the bodies), the same text `json.dumps` gives
    for the whole header, without ever holding more than a slice's work between two pauses."""
    names: list[bytes] = []
    versions: list[bytes] = []
    sizes: list[bytes] = []
    joined: list[bytes] = []
    for chunk, bodies in _slices(delta.put, size, limit):
        # each part is a JSON array's items without its brackets
        names.append(json.dumps([e.name for e in chunk], separators=_COMPACT)[1:-1].encode())
        versions.append(json.dumps([e.version for e in chunk], separators=_COMPACT)[1:-1].encode())
        sizes.append(",".join([str(len(b)) for b in bodies]).encode())
        joined.append(b"".join(bodies))
        yield PAUSE
    removed = []
    it = iter(delta.removed)
    while chunk := list(islice(it, size)):
        removed.append(json.dumps(chunk, separators=_COMPACT)[1:-1].encode())
        yield PAUSE
    head = json.dumps({"type": delta.type_url, "system_version": delta.system_version, "replace": delta.replace},
                      separators=_COMPACT)[:-1]
    yield head.encode() + b',"names":['
    yield from _items(names)
    yield b'],"versions":['
    yield from _items(versions)
    yield b'],"sizes":['
    yield from _items(sizes)
    yield b'],"removed":['
    yield from _items(removed)
    yield b"]}\n"
    yield from joined


def _framed(chunks: Iterable[bytes | None]) -> Iterator[Piece]:
    """One frame from its payload's chunks: the pauses as they come, then the frame header and
    the chunks (the header needs the whole payload's length and checksum, so the chunks are held
    until then: as much memory as the joined payload, never joined)."""
    held: list[bytes] = []
    size, crc = 0, 0
    for c in chunks:
        if c is PAUSE:
            yield PAUSE
            continue
        held.append(c)
        size += len(c)
        crc = zlib.crc32(c, crc)        # released the GIL for a chunk over 5 KiB (a slice's bodies)
    yield _FRAME.pack(size, crc)
    yield from held


def record_pieces(delta: Delta, size: int = SLICE) -> Iterator[Piece]:
    """One journal record, framed, in pieces."""
    return _framed(_type_chunks(delta, size))


def record(delta: Delta) -> bytes:
    """One journal record, framed, joined."""
    return b"".join(p for p in record_pieces(delta) if p is not PAUSE)


def snapshot_pieces(node_key: str, ident: str, types: Mapping[str, CachedType], size: int = SLICE) -> Iterator[Piece]:
    """A whole snapshot file in pieces: the magic, a header frame, then one frame per type with its
    whole state (a `replace` Delta); PAUSE between slices of `size` resources."""
    yield SNAPSHOT_MAGIC
    head = json.dumps({"node": node_key, "id": ident, "types": len(types)}).encode()
    yield frame(head)
    yield head
    for t, (sv, res) in types.items():
        yield from _framed(_type_chunks(Delta(t, sv, res, replace=True), size))


def journal_head(ident: str) -> bytes:
    """A new journal's start: it follows the snapshot `ident`."""
    payload = json.dumps({"follows": ident}).encode()
    return JOURNAL_MAGIC + frame(payload) + payload


class Torn(ValueError):
    """A frame that is incomplete or fails its checksum."""


def _frames(data: bytes, start: int) -> Iterable[tuple[int, bytes]]:
    pos = start
    while pos < len(data):
        if len(data) - pos < _FRAME.size:
            raise Torn(f"byte {pos}: {len(data) - pos} bytes of a frame header")
        size, crc = _FRAME.unpack_from(data, pos)
        body = data[pos + _FRAME.size: pos + _FRAME.size + size]
        if len(body) != size:
            raise Torn(f"byte {pos}: a frame of {size} bytes, {len(body)} there")
        if zlib.crc32(body) != crc:
            raise Torn(f"byte {pos}: checksum mismatch")
        yield pos, body
        pos += _FRAME.size + size


def _json(payload: bytes, what: str) -> dict:
    """A header: a JSON object, or ValueError saying which header and why."""
    try:
        doc: object = json.loads(payload)
    except ValueError as e:
        doc = e
    if isinstance(doc, dict):
        return doc
    raise ValueError(f"{what}: not JSON: {doc}" if isinstance(doc, ValueError) else f"{what}: not a mapping")


def _strs(v: object, what: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ValueError(f"{what}: not a list of strings")
    return v


def parse_type(payload: bytes) -> Delta:
    """A type's frame back into a Delta; ValueError naming what is wrong."""
    nl = payload.find(b"\n")
    if nl < 0:
        raise ValueError("a type frame without its header line")
    head = _json(payload[:nl], "type header")
    t, sv = head.get("type"), head.get("system_version")
    if not isinstance(t, str) or not isinstance(sv, str):
        raise ValueError("type header: type and system_version must be strings")
    names, versions = _strs(head.get("names"), f"{t}: names"), _strs(head.get("versions"), f"{t}: versions")
    sizes, removed = head.get("sizes"), _strs(head.get("removed"), f"{t}: removed")
    if (not isinstance(sizes, list) or not all(type(n) is int and n >= 0 for n in sizes)
            or not len(names) == len(versions) == len(sizes)):
        raise ValueError(f"{t}: names, versions and sizes do not match")
    bodies, pos = [], nl + 1
    for n in sizes:
        bodies.append(payload[pos:pos + n])
        pos += n
    if pos != len(payload):
        raise ValueError(f"{t}: bodies of {len(payload) - nl - 1} bytes, sizes say {pos - nl - 1}")
    put = [Encoded(n, v, b) for n, v, b in zip(names, versions, bodies, strict=True)]
    return Delta(t, sv, put, removed, replace=bool(head.get("replace")))


def apply(state: dict[str, dict[str, Encoded]], versions: dict[str, str], delta: Delta) -> None:
    """Fold one delta into `state` (type -> name -> resource) and `versions` (type -> system version)."""
    held = {} if delta.replace else state.get(delta.type_url, {})
    held = dict(held)
    for name in delta.removed:
        held.pop(name, None)
    for e in delta.put:
        held[e.name] = e
    state[delta.type_url] = held
    versions[delta.type_url] = delta.system_version


def read(node_key: str, snapshot: bytes, journal: bytes | None) -> tuple[dict[str, CachedType], list[str]]:
    """The state the files hold: the snapshot, then the journal's records while they are whole.

    Raises ValueError (the reason) when the snapshot is not one this version wrote for this node,
    or is damaged: it was renamed into place whole, so damage means it cannot be trusted at all.
    Returns the state and notes about the journal: a journal that follows another snapshot is
    ignored, and one whose tail is torn (a crash during an append) is replayed up to it.
    """
    if not snapshot.startswith(SNAPSHOT_MAGIC):
        raise ValueError(f"not a config cache of this format (starts with {snapshot[:24]!r})")
    try:
        frames = [p for _, p in _frames(snapshot, len(SNAPSHOT_MAGIC))]
    except Torn as e:
        raise ValueError(f"damaged: {e}") from None
    if not frames:
        raise ValueError("no header")
    head = _json(frames[0], "header")
    if head.get("node") != node_key:
        # Config is scoped per node: another node's cache would make this one serve wrong state.
        raise ValueError(f"written for {head.get('node')!r}, this is {node_key!r}")
    if head.get("types") != len(frames) - 1:
        raise ValueError(f"header says {head.get('types')!r} types, {len(frames) - 1} there")
    state: dict[str, dict[str, Encoded]] = {}
    versions: dict[str, str] = {}
    for p in frames[1:]:
        apply(state, versions, parse_type(p))
    notes = _replay(journal, head.get("id"), state, versions) if journal is not None else []
    return {t: (versions[t], list(res.values())) for t, res in state.items()}, notes


def _replay(journal: bytes, ident: object, state: dict[str, dict[str, Encoded]],
            versions: dict[str, str]) -> list[str]:
    if not journal.startswith(JOURNAL_MAGIC):
        return [f"journal: not one of this format (starts with {journal[:24]!r}); ignored"]
    applied = 0
    try:
        it = iter(_frames(journal, len(JOURNAL_MAGIC)))
        first = next(it, None)
        if first is None:
            return ["journal: no header; ignored"]
        follows = _json(first[1], "journal header").get("follows")
        if follows != ident:
            return [f"journal: follows snapshot {follows!r}, not this one ({ident!r}); ignored"]
        for pos, p in it:
            try:
                delta = parse_type(p)
            except ValueError as e:
                raise Torn(f"byte {pos}: {e}") from None
            apply(state, versions, delta)
            applied += 1
    except Torn as e:
        return [f"journal: record {applied + 1} at {e}; replayed the {applied} before it (a crash during a write)"]
    except ValueError as e:
        return [f"journal: {e}; ignored"]
    return []


class Compaction:
    """When the writer appends a record and when it writes a new snapshot instead (sans-IO).

    No snapshot of ours yet (a new process, or after a failed write): a snapshot. Otherwise a
    record, unless the journal would then outgrow the snapshot (or JOURNAL_FLOOR): so the files
    stay within about twice the state plus one record, and each byte of state is rewritten once
    per the state's size in deltas, whatever the update rate.
    """

    def __init__(self, floor: int = JOURNAL_FLOOR) -> None:
        self.floor = floor
        self.snapshot: int | None = None     # bytes of the snapshot we wrote; None: none that we know of
        self.journal = 0                     # bytes of its journal

    def wants_snapshot(self, record_size: int) -> bool:
        return self.snapshot is None or self.journal + record_size > max(self.snapshot, self.floor)

    def wrote_snapshot(self, snapshot: int, journal: int) -> None:
        self.snapshot, self.journal = snapshot, journal

    def appended(self, size: int) -> None:
        self.journal += size

    def lost(self) -> None:
        """A write failed (or another process may have written): start over with a snapshot."""
        self.snapshot = None
