"""The debug API across controller replicas (pure): who the other replicas are, and how their
answers join the one asked.

Every replica serves config streams, and each proxy is connected to one of them; a replica knows
only its own proxies, and serves a config version built from its own snapshot. So the replica a
reader asks (`ambit proxy-status`, `ambit wait`) also asks each other replica for its own answer
(`local_only`) and merges them, as istioctl's proxy-status and `x wait` cover every istiod:

- `peers_of` finds the others in the snapshot every replica already watches: the pods the
  controller's Service selects in the root namespace (running, Ready, not terminating), less this
  replica, at the pod IP and the port the Service's `grpc` port targets. At most `MAX_PEERS`.
- `merge` keeps each replica's own judgement: each proxy's state (SYNCED/STALE/...) is the one its
  own replica computed against its own config version, and each replica's observed objects (what
  `ambit wait` checks) come with that replica's entry in `replicas`. A replica that did not answer
  is listed with the reason, so the answer says it is partial; one whose answer would take the
  merged answer past `MAX_MERGED` bytes is listed the same way.
- `pick_config` decides `ProxyConfig` for a proxy not connected to the replica asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ambit.api import debug_pb2

MAX_PEERS = 16                      # other replicas asked (a Deployment of 3 is usual)
MAX_MERGED = 48 * 1024 * 1024       # bytes of a merged answer (the server sends at most 64 MiB)
GRPC_PORT_NAME = "grpc"             # the Service's port the proxies (and the CLI) reach


@dataclass(frozen=True)
class Peer:
    name: str                       # its pod name (its Lease identity)
    address: str                    # host:port of its gRPC port


@dataclass(frozen=True)
class PeerAnswer:
    """One peer's outcome: its response, or the gRPC code name and message of its failure."""

    peer: Peer
    response: Any = None
    code: str = ""
    error: str = ""


def _matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        return False
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False        # terminating: it ends its config streams (the proxies move) and stops
    conds = {c.get("type"): c.get("status") for c in status.get("conditions") or [] if isinstance(c, dict)}
    return conds.get("Ready", "True") == "True"


def _target_port(service: dict[str, Any]) -> int | str | None:
    ports = (service.get("spec") or {}).get("ports") or []
    chosen = next((p for p in ports if p.get("name") == GRPC_PORT_NAME), ports[0] if len(ports) == 1 else None)
    if chosen is None:
        return None
    return chosen.get("targetPort") or chosen.get("port")


def _pod_port(pod: dict[str, Any], target: int | str | None, default: int | None) -> int | None:
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return int(target)
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if target is not None and p.get("name") == target and p.get("containerPort"):
                return int(p["containerPort"])
    return default


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def peers_of(objects: Sequence[dict[str, Any]], namespace: str, service: str, me: str,
             default_port: int | None, max_peers: int = MAX_PEERS) -> tuple[list[Peer], list[str]]:
    """The other replicas in a snapshot (sorted by name, at most `max_peers`), and the names of
    those left out over the bound. No Service, or one without a selector: none."""
    svc = next((o for o in objects if o.get("kind") == "Service" and (o.get("metadata") or {}).get("name") == service
                and (o.get("metadata") or {}).get("namespace") == namespace), None)
    if svc is None:
        return [], []
    selector = (svc.get("spec") or {}).get("selector") or {}
    target = _target_port(svc)
    found: dict[str, Peer] = {}
    for o in objects:
        md = o.get("metadata") or {}
        if o.get("kind") != "Pod" or md.get("namespace") != namespace or md.get("name") == me:
            continue
        if not _matches(md.get("labels") or {}, selector) or not _ready(o):
            continue
        port = _pod_port(o, target, default_port)
        if port is None:
            continue
        found[md["name"]] = Peer(md["name"], f"{_host(o['status']['podIP'])}:{port}")
    names = sorted(found)
    return [found[n] for n in names[:max_peers]], names[max_peers:]


def own_replica(resp: Any, name: str, address: str = "") -> Any:
    """The ReplicaStatus of a replica's own answer (also of an older controller's, without one)."""
    if len(resp.replicas):
        r = debug_pb2.ReplicaStatus()
        r.CopyFrom(resp.replicas[0])
        r.address = address
        return r
    return debug_pb2.ReplicaStatus(name=resp.replica or name, address=address, answered=True,
                                   controller_version=resp.controller_version, config_version=resp.config_version,
                                   snapshot_applied=resp.snapshot_applied, observed=list(resp.observed),
                                   proxies=len(resp.proxies))


@dataclass(frozen=True)
class Sifted:
    """Peers' answers sorted for a merge: (name, address, response) of those that join it, and
    (name, address, why) of those that do not (failed, or too large to join)."""

    taken: list[tuple[str, str, Any]]
    left: list[tuple[str, str, str]]


def sift(answers: Sequence[PeerAnswer], me: str, size: int, name_of: Callable[[Any], str],
         max_bytes: int = MAX_MERGED) -> Sifted:
    """Which answers join a merged answer of `size` bytes so far: not a failure, not this replica
    itself under another address (`name_of` an answer is the replica that gave it, "": unknown),
    and not past `max_bytes` in all."""
    out = Sifted([], [])
    for a in answers:
        if a.response is None:
            out.left.append((a.peer.name, a.peer.address, f"{a.code}: {a.error}" if a.code else a.error))
            continue
        name = name_of(a.response) or a.peer.name
        if me and name == me:
            continue
        grow = a.response.ByteSize()
        if size + grow > max_bytes:
            out.left.append((name, a.peer.address,
                             f"its answer ({grow} bytes) would take the merged answer past {max_bytes} bytes"))
            continue
        size += grow
        out.taken.append((name, a.peer.address, a.response))
    return out


def note_unanswered(replicas: Any, left: Sequence[tuple[str, str, str]], skipped: Sequence[str] = ()) -> None:
    """Add to a response's `replicas` an unanswered entry for each peer `sift` left out and for each
    one `skipped` (over MAX_PEERS, not asked): the answer then says it is partial, and why."""
    for name, address, why in left:
        replicas.add(name=name, address=address, answered=False, error=why)
    for name in skipped:
        replicas.add(name=name, answered=False, error=f"not asked: more than {MAX_PEERS} other replicas")


def _key(p: Any) -> tuple[str, str, str, str]:
    return (p.node.kind, p.node.name, p.node.waypoint, p.node.instance_id)


def merge_rows(dest: Any, sources: Sequence[tuple[str, Any]], rows: Callable[[Any], Any]) -> None:
    """Every replica's rows about proxies (`rows(answer)`: its proxies or its subscribers) into the
    repeated field `dest`, each labelled with its replica. A proxy that left one replica for
    another is listed once: its DISCONNECTED row on the old one is dropped when it is connected to
    any replica."""
    connected = {_key(r) for _, resp in sources for r in rows(resp) if r.connected}
    for name, resp in sources:
        for r in rows(resp):
            if not r.connected and _key(r) in connected:
                continue
            row = dest.add()
            row.CopyFrom(r)
            row.replica = row.replica or name


def merge(own: Any, answers: Sequence[PeerAnswer], skipped: Sequence[str] = (),
          max_bytes: int = MAX_MERGED) -> Any:
    """`own` (this replica's answer, `replicas[0]` itself) with every peer's: their proxies, each
    labelled with its replica, and a `replicas` entry per peer (answered or not; `skipped`: peers
    over MAX_PEERS, not asked). A proxy that left one replica for another is listed once: its
    DISCONNECTED row on the old one is dropped when it is connected to another."""
    out = debug_pb2.ProxyStatusResponse()
    out.CopyFrom(own)
    sifted = sift(answers, own.replica, out.ByteSize(), lambda r: own_replica(r, "").name, max_bytes)
    taken: list[tuple[str, Any]] = [(own.replica, own)]
    for name, address, resp in sifted.taken:
        replica = own_replica(resp, name, address)
        replica.name = replica.name or name
        out.replicas.append(replica)
        taken.append((replica.name, resp))
    note_unanswered(out.replicas, sifted.left, skipped)
    del out.proxies[:]
    merge_rows(out.proxies, taken, lambda r: r.proxies)
    return out


def missing(resp: Any) -> list[str]:
    """The replicas that did not answer, each as "replica NAME (ADDRESS) did not answer: WHY"."""
    out = []
    for r in resp.replicas:
        if not r.answered:
            where = f" ({r.address})" if r.address else ""
            out.append(f"controller replica {r.name or '?'}{where} did not answer: {r.error or 'no reason given'}")
    return out


@dataclass(frozen=True)
class ConfigOutcome:
    """ProxyConfig's answer: a document (JSON bytes), or a gRPC code name and message."""

    doc: bytes = b""
    code: str = ""
    message: str = ""


def pick_config(proxy: str, here: str, answers: Sequence[PeerAnswer], known_here: str) -> ConfigOutcome:
    """ProxyConfig of `proxy`, not connected to replica `here` (whose connected proxies are
    `known_here`), from the peers' local answers: the one that has it; ambiguous when several do
    or one says so; NOT_FOUND when every replica answered that it has none; UNAVAILABLE, naming
    the silent replicas, when some did not answer (it may be connected there)."""
    docs = [a for a in answers if a.response is not None]
    if len(docs) == 1:
        return ConfigOutcome(doc=docs[0].response.json)
    if len(docs) > 1:
        return ConfigOutcome(code="FAILED_PRECONDITION", message=(
            f"{proxy!r} is connected to several replicas ({', '.join(a.peer.name for a in docs)}); name it kind/name"))
    ambiguous = [a for a in answers if a.code == "FAILED_PRECONDITION"]
    if ambiguous:
        return ConfigOutcome(code="FAILED_PRECONDITION", message=f"replica {ambiguous[0].peer.name}: {ambiguous[0].error}")
    silent = [a for a in answers if a.code != "NOT_FOUND"]
    asked = ", ".join([here, *(a.peer.name for a in answers if a.code == "NOT_FOUND")])
    if silent:
        why = "; ".join(f"replica {a.peer.name} ({a.peer.address}) did not answer: {a.code}: {a.error}" for a in silent)
        return ConfigOutcome(code="UNAVAILABLE", message=(
            f"no connected proxy {proxy!r} on replicas {asked}; {why} (it may be connected there)"))
    return ConfigOutcome(code="NOT_FOUND", message=(
        f"no connected proxy {proxy!r} on any controller replica ({asked}); connected to {here}: {known_here or 'none'}"))
