"""The harness of the property-based fuzz modules (tests/unit/*/test_*_fuzz.py).

Each module fuzzes with up to three budgets:
- the unit suite: at most a few hundred hypothesis examples per property (`unit_budget`);
- `-m fuzz`: `AMBIT_FUZZ_EXAMPLES` examples per property, else the module's own default, bounded
  so that CI runs it too (`fuzz_examples`, `fuzz_budget`);
- a long local run, `python -m tests.unit.<package>.<module> --cases N [--seed S]` (`main`,
  `long_run`): random mutations of valid input without hypothesis, so no shrinking but many more
  cases a second; it reports every crash with its input and goes on.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from hypothesis import HealthCheck, settings

EXAMPLES_ENV = "AMBIT_FUZZ_EXAMPLES"

T = TypeVar("T")
# One mutation of a byte string in place, at an offset drawn for it.
Mutation = Callable[[random.Random, bytearray, int], None]


# --- hypothesis budgets -------------------------------------------------------------------------------

def fuzz_examples(default: int) -> int:
    """How many examples each `-m fuzz` property runs: `AMBIT_FUZZ_EXAMPLES`, else the module's
    `default` (what one example costs differs widely between modules)."""
    return int(os.environ.get(EXAMPLES_ENV, str(default)))


def unit_budget(examples: int, *, too_slow_ok: bool = True) -> settings:
    """A property's settings in the unit suite. No deadline: a loaded machine is no finding (the
    checks bound each step's time themselves). Most strategies build whole messages, slowly by
    hypothesis's measure: `too_slow_ok=False` keeps that health check where they do not."""
    if not too_slow_ok:
        return settings(max_examples=examples, deadline=None)
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fuzz_budget(examples: int, *, health_checks: bool = False) -> settings:
    """A `-m fuzz` property's settings: no deadline and, unless `health_checks`, none of
    hypothesis's health checks (larger inputs than the unit suite's, by design)."""
    if health_checks:
        return settings(max_examples=examples, deadline=None)
    return settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))


# --- inputs -------------------------------------------------------------------------------------------

def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at `cuts` (each taken modulo one past its length) into the non-empty reads a
    peer's bytes may arrive in."""
    out, pos = [], 0
    for c in sorted({c % (len(data) + 1) for c in cuts}):
        out.append(data[pos:c])
        pos = c
    out.append(data[pos:])
    return [b for b in out if b]


def anywhere(rng: random.Random, b: bytearray) -> int:
    """An offset in `b`, its end included."""
    return rng.randrange(len(b) + 1)


def mutate_bytes(rng: random.Random, data: bytes, mutations: Sequence[Mutation], most: int,
                 at: Callable[[random.Random, bytearray], int] = anywhere) -> bytes:
    """`data` after 1 to `most` rounds, each one of `mutations` (drawn first) at an offset `at`
    draws. A mutation that does not apply there (nothing to delete) leaves the bytes as they are.
    `rng` is drawn in that fixed order, so that a seed replays a case."""
    b = bytearray(data)
    for _ in range(rng.randint(1, most)):
        op = rng.randrange(len(mutations))
        mutations[op](rng, b, at(rng, b))
    return bytes(b)


def set_byte(rng: random.Random, b: bytearray, pos: int) -> None:
    """The byte at `pos` (the last one, at the end) set to any value."""
    if b:
        b[min(pos, len(b) - 1)] = rng.randrange(256)


def flip_bit(rng: random.Random, b: bytearray, pos: int) -> None:
    """One bit flipped in the byte at `pos` (the last one, at the end)."""
    if b:
        b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)


def insert_random(most: int) -> Mutation:
    """1 to `most` random bytes inserted."""
    def mutation(rng: random.Random, b: bytearray, pos: int) -> None:
        b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, most)))
    return mutation


def delete(most: int) -> Mutation:
    """1 to `most` bytes deleted from `pos` on (near the end: the input truncated)."""
    def mutation(rng: random.Random, b: bytearray, pos: int) -> None:
        if b:
            del b[pos:pos + rng.randint(1, most)]
    return mutation


def splice(most: int, *, longer_than: int, start: int = 0) -> Mutation:
    """A piece of itself (1 to `most` bytes from `start` on) inserted again: a repeated field or
    frame. Only in input longer than `longer_than`."""
    def mutation(rng: random.Random, b: bytearray, pos: int) -> None:
        if len(b) > longer_than:
            i = rng.randrange(start, len(b))
            b[pos:pos] = b[i:i + rng.randint(1, most)]
    return mutation


def before_end(mutation: Mutation) -> Mutation:
    """`mutation`, skipped when drawn at the end of the input (none of its bytes there)."""
    def skipping(rng: random.Random, b: bytearray, pos: int) -> None:
        if pos < len(b):
            mutation(rng, b, pos)
    return skipping


# --- the log ------------------------------------------------------------------------------------------

class LogCatcher(logging.Handler):
    """Every message logged through it, for the properties about what a peer's input makes of
    the log (only printable lines, of bounded length)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# --- the long local run -------------------------------------------------------------------------------

def _rate(n: int, seconds: float) -> str:
    per_second = n / max(seconds, 1e-9)
    return f"{per_second:.0f}" if per_second >= 100 else f"{per_second:.1f}"


def long_run(cases: int, seed: int, generate: Callable[[random.Random], Iterator[T]],
             check: Callable[[T], object], *, describe: Callable[[T], str] = repr,
             progress_every: int = 100_000, max_crashes: int | None = None) -> int:
    """Check `cases` cases drawn from `generate(random.Random(seed))`; the number of crashes.

    Any exception out of `check` is a crash: the case (as `describe` writes it) and the traceback
    go to stderr, and the run goes on, to `max_crashes` if given (where a checker that fails the
    same way every time would bury the first report). Progress every `progress_every` cases on
    stderr; a summary line with the seed on stdout."""
    stream = generate(random.Random(seed))
    crashes = done = 0
    t0 = time.monotonic()
    for i in range(cases):
        try:
            case = next(stream)
        except StopIteration:   # a finite generator (a sweep that has gone through once) ends the run
            break
        done = i + 1
        try:
            check(case)
        except Exception:   # noqa: BLE001 - every exception is a finding
            crashes += 1
            print(f"case {i} (seed {seed}): CRASH on {describe(case)}", file=sys.stderr)
            traceback.print_exc()
            if max_crashes is not None and crashes >= max_crashes:
                break
        if i and i % progress_every == 0:
            print(f"{i} cases, {crashes} crashes, {_rate(i, time.monotonic() - t0)}/s", file=sys.stderr)
    dt = time.monotonic() - t0
    print(f"{done} cases in {dt:.1f}s ({_rate(done, dt)}/s), {crashes} crashes, seed {seed}")
    return crashes


def main(run: Callable[[int, int], int], cases: int, *, seed: int | None = 1,
         setup: Callable[[], object] | None = None, argv: list[str] | None = None,
         parents: Sequence[argparse.ArgumentParser] = ()) -> int:
    """`python -m <module> --cases N --seed S`: `run(N, S)`; the exit status, 1 on any crash.

    `cases` and `seed` are the defaults; a `seed` of None draws one (the summary line names it).
    `setup` runs first, for what only the long run wants (a quieter log, a socket timeout).
    `parents`: a module's own options (`add_help=False` parsers it reads itself), so that `--help`
    lists them and they are not refused here."""
    module = sys.modules.get(run.__module__)
    ap = argparse.ArgumentParser(description=(module.__doc__ or "").split("\n")[0] if module else None,
                                 parents=list(parents))
    ap.add_argument("--cases", type=int, default=cases, help=f"how many cases (default {cases})")
    ap.add_argument("--seed", type=int, default=seed,
                    help=f"the random seed (default {seed if seed is not None else 'a new one each run'})")
    args = ap.parse_args(argv)
    if setup is not None:
        setup()
    chosen = args.seed if args.seed is not None else random.randrange(1 << 30)
    return 1 if run(args.cases, chosen) else 0
