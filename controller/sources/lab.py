"""The lab source: the lab store's objects, as snapshots.

LabStore.watch already polls the store file and yields a snapshot per revision; this adds the
last-good-version rule (the CLI validates before writing, but other writers need not).
"""

from __future__ import annotations

import threading

from ambit.labstore import LabStore
from controller.kinds import known_kind
from controller.sources import OnSnapshot
from controller.sources.cache import LastGoodCache
from controller.validation import FieldError


class LabSource:
    def __init__(self, store: LabStore, interval: float = 0.05):
        self.store = store
        self.interval = interval
        self.cache = LastGoodCache()

    def run(self, on_snapshot: OnSnapshot, stop: threading.Event) -> None:
        published = -1
        if not self.store.path.exists():    # LabStore.watch yields nothing until the file exists
            published = self.cache.version
            on_snapshot([])
        for snap in self.store.watch(interval=self.interval, stop=stop.is_set):
            objs = [o for o in snap.objects.values() if known_kind(o)]
            self.cache.replace(objs, owns=lambda _k: True)
            if self.cache.version != published:
                published = self.cache.version
                on_snapshot(self.cache.objects())

    def errors(self) -> list[FieldError]:
        return self.cache.errors()
