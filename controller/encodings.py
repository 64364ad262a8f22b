"""Encodings reused from one snapshot to the next, for resources whose state did not change.

Every snapshot is translated in full, so every model object is new even when what it holds is
not: one churned pod among 10,000 re-encoded all 10,000 workloads (a JSON body and a hash each,
a third of the controller's time per snapshot). An unchanged resource's encoding (its body and
content version, hence its part of the snapshot's content version) is the one it had last time.

The key is the object's whole state, pickled: its class, and every field down to each value's
type. Dataclass equality is not exact enough: `True == 1 == 1.0` and `0.0 == -0.0`, which encode
differently ("true", "1", "1.0"), and verbatim fields (an AuthorizationPolicy's L7 rules, a
route's CORS policy) can hold any of them. Equal pickles are equal state, and encoding reads
nothing else (the fields, and attributes of the class, which the pickle names), so a reused
encoding is byte for byte the one `encode` would make. Holding the pickles, not the objects,
also keeps the key true if a caller edits a published object afterwards. Pickling is a quarter
of encoding's cost.

One exception skips the pickle: a resource the caller names in `unchanged`, that is the very
object this cache encoded last time. The controller names the Workloads its translation memo
handed out again (controller/translate/memo.py): the same object as in the last snapshot, which
nothing edits after translation. That is the memo's own premise; were a published Workload edited,
the memo would already hand the edit out, so the encoding adds no assumption of its own. Anything
else, and a Workload made anew, is keyed by its pickle as above.

What is held is the last snapshot's encodings only (each `encode_all` replaces them): memory
follows the current model, whatever churned through before.
"""

from __future__ import annotations

import pickle
from collections.abc import Collection, Mapping, Sequence

from ambit.configclient.codec import Encoded, encode
from ambit.model import Resource

# Fixed, not DEFAULT_PROTOCOL: a key must mean the same state for the life of the process.
_PROTOCOL = 5


class Encodings:
    """The encodings of the last snapshot's resources, by state. Not thread-safe: one flow
    (the controller's, under its flow lock) uses it."""

    def __init__(self) -> None:
        self._by_state: dict[bytes, Encoded] = {}
        self._keys: dict[int, tuple[Resource, bytes]] = {}  # the last call's resources: id -> (it, its key)
        self.reused = 0         # in the last `encode_all` (for tests and logs)
        self.encoded = 0
        self.unpickled = 0      # of the reused, named `unchanged` and found: not pickled again

    def __len__(self) -> int:
        return len(self._by_state)

    def held(self) -> list[Encoded]:
        """What is held now: the last snapshot's encodings (one per distinct state)."""
        return list(self._by_state.values())

    def encode_all(self, by_type: Mapping[str, Sequence[Resource]],
                   unchanged: Collection[int] = ()) -> dict[int, Encoded]:
        """Every resource's encoding, by `id` of the resource (as `controller.app.encode_all`),
        reusing the last call's for a resource whose state it held; then hold this call's only.
        `unchanged`: ids of resources that are the very objects of the last call, not edited since
        (see the module docstring)."""
        last, last_keys = self._by_state, self._keys
        now: dict[bytes, Encoded] = {}
        keys: dict[int, tuple[Resource, bytes]] = {}
        out: dict[int, Encoded] = {}
        reused = unpickled = 0
        for rs in by_type.values():
            for r in rs:
                held = last_keys.get(id(r)) if unchanged and id(r) in unchanged else None
                if held is not None and held[0] is r:
                    key = held[1]
                    unpickled += 1
                else:
                    key = pickle.dumps(r, _PROTOCOL)
                keys[id(r)] = (r, key)
                e = now.get(key)
                if e is None:
                    e = last.get(key)
                    if e is None:
                        e = encode(r)
                    else:
                        reused += 1
                    now[key] = e
                out[id(r)] = e
        self._by_state, self._keys = now, keys
        self.reused, self.encoded, self.unpickled = reused, len(now) - reused, unpickled
        return out
