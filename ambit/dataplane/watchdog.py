"""An event-loop watchdog for the data-plane processes (Envoy's watchdog, the asyncio way).

Why: ztunnel and the waypoint have no liveness probe (a probe on `/healthz/ready` would kill a
process that is only waiting for the controller or the CA: docs/operations.md), so a loop wedged by
a blocking call, an endless callback or a stuck C extension would serve nothing, forever, and
nothing would say so. Envoy's answer is a watchdog: each event loop "touches" it, a thread counts
the loop's misses (`server.watchdog_miss`, 200 ms by default) and mega-misses
(`server.watchdog_mega_miss`, 1 s), and past `kill_timeout` aborts the process so it is restarted.
This is the same, in three parts:

- `Judge`, pure: given the loop's heartbeats, the thread's own wake-ups and an injected clock's
  readings, it decides miss / mega-miss / dump / kill. Unit-tested without threads or sleeps.
- `Heartbeat`, on the loop: a `call_later` every `BEAT_INTERVAL` that stores when it ran and how late
  (a few attribute stores per beat: nothing on the data path).
- `Watchdog`, a daemon thread: every `TICK` it feeds the judge and carries out its decisions: count
  (`ambit_event_loop_stalls_total{severity}`), log the loop thread's Python stack at a stall's first
  mega-miss (at most once per `DUMP_EVERY`), and past `--watchdog-kill-after` log the stack and the
  stall's length and `os.abort()` (SIGABRT: the kubelet, or a `--workers` supervisor, restarts it).

A stopped process (SIGSTOP, a frozen cgroup, a CPU quota's throttling) is not a wedged loop: no
thread runs, so when it resumes the loop's last beat looks old. The thread tells the two apart by
its own sleep: woken much later than asked *and* the process used almost no CPU meanwhile, so the
whole process was not running; that span is excused from every stall it overlaps. A loop that
blocks while releasing the GIL (`time.sleep`, a blocking socket call, a lock) leaves the thread on
time, so its stall is counted in full; one that burns CPU holding the GIL is counted too (the CPU
clock moved). What cannot be caught from Python: a C extension blocked while *holding* the GIL
stops this thread as well (documented in docs/operations.md).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("ambit.dataplane.watchdog")

# Envoy's defaults (bootstrap `watchdogs`: miss_timeout 200 ms, megamiss_timeout 1 s): a 200 ms
# stall is already a latency every connection of the loop feels; a second is an outage.
MISS = 0.2
MEGA_MISS = 1.0
BEAT_INTERVAL = 0.1     # the loop's heartbeat; its cost is measured in docs/performance.md
TICK = 0.2              # the thread's check (Envoy's guard dog: the smallest timeout); a stall is seen at most this late
DUMP_EVERY = 60.0       # at most one mega-miss stack per minute in the log
PAUSE_SLACK = 0.1       # a wake-up later than asked by more than this may be a stopped process...
PAUSE_CPU_SHARE = 0.5   # ...if the process used less than this share of a CPU meanwhile

ABORT_GRACE = 5.0       # the kill's log line gets this long to be written before the abort goes ahead anyway

MISS_ACTION, MEGA_ACTION, DUMP_ACTION, KILL_ACTION = "miss", "mega_miss", "dump", "kill"


@dataclass
class Judge:
    """Decides, from readings alone, what a stall of the loop is worth.

    A stall is the time by which the heartbeat is late: `now - last_beat - interval`, less the
    spans in which the whole process was not running (`pause`). Each threshold is acted on once per
    stall; a stall that ended between two ticks is reported by the loop itself (`ended`: its
    previous beat, and how late the beat that ended it ran), so one shorter than a tick still counts."""

    interval: float = BEAT_INTERVAL
    miss: float = MISS
    mega_miss: float = MEGA_MISS
    kill_after: float = 0.0         # 0: never
    dump_every: float = DUMP_EVERY
    stalls: dict[str, int] = field(default_factory=lambda: {MISS_ACTION: 0, MEGA_ACTION: 0})
    longest: float = 0.0            # the longest stall seen, seconds
    _pauses: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=64))
    _levels: dict[float, int] = field(default_factory=dict)     # a stall's previous beat -> thresholds acted on
    _last_dump: float | None = None

    def pause(self, start: float, end: float) -> None:
        """The process did not run from `start` to `end` (the thread's own oversleep)."""
        if end > start:
            self._pauses.append((start, end))

    def excused(self, start: float, end: float) -> float:
        """How much of [start, end] the process spent stopped."""
        return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self._pauses)

    def stall(self, beat: float, now: float) -> float:
        """How late the beat due `interval` after `beat` is at `now`, stopped spans excused."""
        due = beat + self.interval
        return max(0.0, now - due - self.excused(due, now))

    def check(self, now: float, last_beat: float, ended: Sequence[tuple[float, float, float]] = ()) -> list[str]:
        """The actions due now: `ended` holds (previous beat, beat, how late it ran) of stalls the
        loop saw end since the last check; `last_beat` is its latest beat."""
        actions: list[str] = []
        for prev, beat, late in ended:
            due = beat - late
            took = max(0.0, late - self.excused(due, beat))
            actions += self._cross(prev, took, now, ongoing=False)
            self._levels.pop(prev, None)
        actions += self._cross(last_beat, self.stall(last_beat, now), now, ongoing=True)
        # A stall acted on always ends in a report (its beat was late by at least the miss), which
        # may come a tick after its new beat: keep its level until then, or for an hour at most.
        for prev in [b for b in self._levels if b < now - 3600.0]:
            del self._levels[prev]
        return actions

    def _cross(self, beat: float, took: float, now: float, ongoing: bool) -> list[str]:
        self.longest = max(self.longest, took)
        level = self._levels.get(beat, 0)
        actions = []
        for i, (name, limit) in enumerate(((MISS_ACTION, self.miss), (MEGA_ACTION, self.mega_miss)), 1):
            if level < i and took >= limit:
                self.stalls[name] += 1
                actions.append(name)
                level = i
                if name == MEGA_ACTION and ongoing and self._dump_due(now):
                    actions.append(DUMP_ACTION)
        if ongoing and self.kill_after > 0 and took >= self.kill_after and level < 3:
            actions.append(KILL_ACTION)
            level = 3
        if ongoing and level:
            self._levels[beat] = level
        return actions

    def _dump_due(self, now: float) -> bool:
        if self._last_dump is not None and now - self._last_dump < self.dump_every:
            return False
        self._last_dump = now
        return True

    @staticmethod
    def paused(asked: float, slept: float, cpu: float) -> bool:
        """Whether a sleep of `asked` seconds that took `slept` (wall) while the process used `cpu`
        seconds of CPU means the process was stopped: much later than asked, and hardly any CPU
        used meanwhile (a loop burning CPU under the GIL also delays the thread, but not this)."""
        over = slept - asked
        return over > PAUSE_SLACK and cpu < PAUSE_CPU_SHARE * slept


class Heartbeat:
    """The loop's side: a beat every `interval`, recording when it ran, and how late when it was a
    miss or worse (the thread reads both; each is one attribute store or deque append, safe across
    threads under the GIL)."""

    def __init__(self, interval: float = BEAT_INTERVAL, report_over: float = MISS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval, self.report_over, self.clock = interval, report_over, clock
        self.last = clock()
        self.ended: deque[tuple[float, float, float]] = deque(maxlen=256)
        self._handle: Any = None
        self._loop: Any = None

    def start(self, loop: Any) -> None:
        self._loop = loop
        self.last = self.clock()
        self._handle = loop.call_later(self.interval, self._beat)

    def _beat(self) -> None:
        now = self.clock()
        late = now - self.last - self.interval
        if late >= self.report_over:
            self.ended.append((self.last, now, late))
        self.last = now
        self._handle = self._loop.call_later(self.interval, self._beat)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def drain(self) -> list[tuple[float, float, float]]:
        out = []
        while self.ended:
            out.append(self.ended.popleft())
        return out


def loop_stack(thread_id: int) -> str:
    """The Python stack of thread `thread_id` now, innermost call last (what the loop is stuck in)."""
    frame = sys._current_frames().get(thread_id)
    return "".join(traceback.format_stack(frame)) if frame is not None else "(no Python frame)\n"


class Watchdog:
    """The thread that watches one event loop (see the module docstring). `start` on the loop, once
    start-up is done; `stop` before the loop closes."""

    def __init__(self, kill_after: float = 0.0, *, judge: Judge | None = None,
                 abort: Callable[[], None] = os.abort) -> None:
        self.judge = judge or Judge(kill_after=kill_after)
        self.heartbeat = Heartbeat(self.judge.interval, self.judge.miss)
        self.abort = abort
        # Held until `stop`: the thread's timed acquire is its sleep (half the CPU of Event.wait's,
        # which allocates a lock per call; each wake-up costs tens of µs of kernel time here).
        self._stop = threading.Lock()
        self._stop.acquire()
        self._thread: threading.Thread | None = None
        self._loop_thread = threading.get_ident()
        self._writer: threading.Thread | None = None

    def start(self, loop: Any) -> None:
        self._loop_thread = threading.get_ident()
        self.heartbeat.start(loop)
        self._thread = threading.Thread(target=self._run, name="ambit-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._stop.locked():
            self._stop.release()
        self.heartbeat.stop()

    def _run(self) -> None:
        clock, cpu = time.monotonic, time.process_time
        last, cpu_last = clock(), cpu()
        while not self._stop.acquire(timeout=TICK):
            now, cpu_now = clock(), cpu()
            # Measured from the previous wake-up, not from this wait's start: a stop that lands
            # while this thread is checking is then inside the span as well.
            if Judge.paused(TICK, now - last, cpu_now - cpu_last):
                self.judge.pause(last, now)
            ended = self.heartbeat.drain()      # before its last beat: a stall ending in between is reported next tick
            for action in self.judge.check(now, self.heartbeat.last, ended):
                self._act(action, now)
            last, cpu_last = now, cpu_now

    def _act(self, action: str, now: float) -> None:
        took = self.judge.stall(self.heartbeat.last, now)
        if action == DUMP_ACTION:
            if self._writer is None or not self._writer.is_alive():     # else the log is stuck: skip
                self._writer = self._write(logging.WARNING, "event loop stalled for %.1f s so far (mega-miss); "
                                           "the loop thread is in:\n%s", took, loop_stack(self._loop_thread))
        elif action == KILL_ACTION:
            writer = self._write(logging.CRITICAL, "event loop stalled for %.1f s (--watchdog-kill-after %g): "
                                 "aborting the process so it is restarted; the loop thread is in:\n%s",
                                 took, self.judge.kill_after, loop_stack(self._loop_thread))
            writer.join(ABORT_GRACE)
            self.abort()

    @staticmethod
    def _write(level: int, msg: str, *args: Any) -> threading.Thread:
        """Log from a thread of its own: the loop may be wedged inside a log call (stderr a pipe its
        reader stopped reading), holding the handler's lock, and this thread must never wait on it."""
        def write() -> None:
            log.log(level, msg, *args)
            for h in logging.getLogger().handlers:
                h.flush()

        t = threading.Thread(target=write, name="ambit-watchdog-log", daemon=True)
        t.start()
        return t

    def collect(self) -> Iterator[Metric]:
        """The Prometheus families (a Collector: register the watchdog on a registry)."""
        stalls = CounterMetricFamily("ambit_event_loop_stalls",
                                     "Event-loop stalls: 'miss' past 200 ms, 'mega_miss' past 1 s (a mega-miss is "
                                     "also a miss); a stopped process's time is not counted", labels=["severity"])
        for severity, n in self.judge.stalls.items():
            stalls.add_metric([severity], float(n))
        yield stalls
        yield GaugeMetricFamily("ambit_event_loop_longest_stall_seconds",
                                "The longest event-loop stall since the process started", value=self.judge.longest)


def start(kill_after: float) -> Watchdog:
    """A watchdog on the running loop (call from a coroutine, once start-up is done)."""
    import asyncio
    dog = Watchdog(kill_after)
    dog.start(asyncio.get_running_loop())
    return dog
