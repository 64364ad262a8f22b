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

What is held is the last snapshot's encodings only (each `encode_all` replaces them): memory
follows the current model, whatever churned through before.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence

from ambit.configclient.codec import Encoded, encode
from ambit.model import Resource

# Fixed, not DEFAULT_PROTOCOL: a key must mean the same state for the life of the process.
_PROTOCOL = 5


class Encodings:
    """The encodings of the last snapshot's resources, by state. Not thread-safe: one flow
    (the controller's, under its flow lock) uses it."""

    def __init__(self) -> None:
        self._by_state: dict[bytes, Encoded] = {}
        self.reused = 0         # in the last `encode_all` (for tests and logs)
        self.encoded = 0

    def __len__(self) -> int:
        return len(self._by_state)

    def held(self) -> list[Encoded]:
        """What is held now: the last snapshot's encodings (one per distinct state)."""
        return list(self._by_state.values())

    def encode_all(self, by_type: Mapping[str, Sequence[Resource]]) -> dict[int, Encoded]:
        """Every resource's encoding, by `id` of the resource (as `controller.app.encode_all`),
        reusing the last call's for a resource whose state it held; then hold this call's only."""
        last = self._by_state
        now: dict[bytes, Encoded] = {}
        out: dict[int, Encoded] = {}
        reused = 0
        for rs in by_type.values():
            for r in rs:
                key = pickle.dumps(r, _PROTOCOL)
                e = now.get(key)
                if e is None:
                    e = last.get(key)
                    if e is None:
                        e = encode(r)
                    else:
                        reused += 1
                    now[key] = e
                out[id(r)] = e
        self._by_state = now
        self.reused, self.encoded = reused, len(now) - reused
        return out
