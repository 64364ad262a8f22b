"""`Metrics` across controller replicas (pure): every replica's scrape joined to the asked one's.

Each proxy's feed is open to one replica, so a replica scrapes only its own proxies. The one a
reader asks (`ambit stat`/`top`) also asks every other replica (`local_only`, controller/debug/
fanout.py) and merges their answers here: each proxy's exposition labelled with its replica
(`MetricsResponse.replica`), and each replica in `replicas` (the asked one first), a replica that
did not answer named with the reason (its proxies are missing: the answer is partial). A proxy
answering on two replicas (both node pods of a surge roll, each connected to another replica)
keeps both texts, as one replica keeps the texts of several feeds under one key (feeds.py
`answer`): each counts its own connections, and readers sum samples with equal labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ambit.api import debug_pb2
from controller.debug.replicas import MAX_MERGED, PeerAnswer, note_unanswered, sift


def own_metrics(metrics: dict[str, str], missing: Sequence[str], me: str) -> Any:
    """This replica's own answer, each proxy labelled with it, and its `replicas` entry."""
    out = debug_pb2.MetricsResponse(metrics=metrics, missing=list(missing))
    for key in metrics:
        out.replica[key] = me
    out.replicas.add(name=me, answered=True, proxies=len(metrics))
    return out


def _join(prior: str, text: str) -> str:
    return prior + ("" if not prior or prior.endswith("\n") else "\n") + text


def merge_metrics(own: Any, answers: Sequence[PeerAnswer], skipped: Sequence[str] = (),
                  max_bytes: int = MAX_MERGED) -> Any:
    """`own` with every peer's answer (see the module's docstring)."""
    out = debug_pb2.MetricsResponse()
    out.CopyFrom(own)
    me = own.replicas[0].name if len(own.replicas) else ""
    sifted = sift(answers, me, out.ByteSize(), lambda r: r.replicas[0].name if len(r.replicas) else "", max_bytes)
    for name, address, r in sifted.taken:
        for key, text in r.metrics.items():
            out.metrics[key] = _join(out.metrics.get(key, ""), text)
            held = out.replica.get(key, "")
            out.replica[key] = f"{held},{name}" if held and held != name else name
        out.missing.extend(f"{key} (on controller replica {name})" for key in r.missing)
        out.replicas.add(name=name, address=address, answered=True, proxies=len(r.metrics))
    note_unanswered(out.replicas, sifted.left, skipped)
    return out
