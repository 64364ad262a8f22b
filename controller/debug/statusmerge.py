"""`ambit status` (the config service's Status RPC) across controller replicas (pure).

Each proxy's config stream is open to one replica, which alone knows its subscription; so the
replica asked also asks every other (`local_only`, controller/debug/fanout.py) and merges here:

- subscribers: every replica's, each labelled with its replica (SubscriberStatus.replica); a
  proxy that left one replica for another keeps only its connected row;
- rejected configuration: each replica validates the same objects, so each rejection is listed
  once; one that only some replicas report (a replica whose snapshot lags behind) names them
  (ConfigError.replicas);
- replicas: each one asked, the asked one first, with its config version (each builds its own)
  and its subscribers; one that did not answer is named with the reason (the answer is partial).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ambit.api import config_pb2
from controller.debug.replicas import MAX_MERGED, PeerAnswer, merge_rows, note_unanswered, sift


def label_own(resp: Any, me: str, ca_problem: str = "") -> Any:
    """This replica's own answer, labelled: each subscriber's replica, and its `replicas` entry
    (with what is wrong with its CA, if anything)."""
    resp.replica = me
    for s in resp.subscribers:
        s.replica = me
    resp.replicas.add(name=me, answered=True, version=resp.version, subscribers=len(resp.subscribers),
                      ca_problem=ca_problem)
    return resp


def merge_status(own: Any, answers: Sequence[PeerAnswer], skipped: Sequence[str] = (),
                 max_bytes: int = MAX_MERGED) -> Any:
    """`own` (labelled by `label_own`) with every peer's answer (see the module's docstring)."""
    out = config_pb2.StatusResponse()
    out.CopyFrom(own)
    me = own.replica
    sifted = sift(answers, me, out.ByteSize(), lambda r: r.replica, max_bytes)
    taken: list[tuple[str, Any]] = [(me, own)]
    for name, address, r in sifted.taken:
        out.replicas.add(name=name, address=address, answered=True, version=r.version, subscribers=len(r.subscribers),
                         ca_problem=r.replicas[0].ca_problem if len(r.replicas) else "")
        taken.append((name, r))
    note_unanswered(out.replicas, sifted.left, skipped)

    del out.subscribers[:]
    merge_rows(out.subscribers, taken, lambda r: r.subscribers)
    rejected: dict[tuple[str, str, str], list[str]] = {}
    for name, r in taken:
        for e in r.config_errors:
            by = rejected.setdefault((e.ref, e.path, e.reason), [])
            if name not in by:
                by.append(name)
    del out.config_errors[:]
    for (ref, path, reason), by in rejected.items():
        out.config_errors.add(ref=ref, path=path, reason=reason, replicas=by if len(by) < len(taken) else [])
    return out
