"""The event-loop watchdog's judge (ambit/dataplane/watchdog.py), with readings given by hand: what a
stall of the loop is worth (miss, mega-miss, a logged stack, an abort), counted once per stall,
and a stopped process's time never counted as a stall."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from ambit.dataplane.watchdog import DUMP_ACTION, KILL_ACTION, MEGA_ACTION, MISS_ACTION, Judge, Watchdog

STEP = 0.1  # the heartbeat interval: a beat at 0 is due at 0.1


def test_a_loop_that_beats_on_time_is_never_judged() -> None:
    j = Judge(kill_after=2.0)
    for k in range(100):
        assert j.check(k * STEP + 0.15, k * STEP) == []
    assert j.stalls == {MISS_ACTION: 0, MEGA_ACTION: 0}


def test_a_stall_is_a_miss_then_a_mega_miss_with_its_stack_then_an_abort_each_once() -> None:
    j = Judge(kill_after=2.0)
    assert j.check(0.25, 0.0) == []                          # 150 ms late: under the 200 ms miss
    assert j.check(0.35, 0.0) == [MISS_ACTION]
    assert j.check(0.45, 0.0) == []
    assert j.check(1.15, 0.0) == [MEGA_ACTION, DUMP_ACTION]
    assert j.check(1.5, 0.0) == []
    assert j.check(2.1, 0.0) == [KILL_ACTION]
    assert j.check(2.2, 0.0) == []
    assert j.stalls == {MISS_ACTION: 1, MEGA_ACTION: 1}
    assert j.longest >= 2.0


def test_without_kill_after_a_stall_of_any_length_only_counts() -> None:
    j = Judge(kill_after=0.0)
    seen = [a for t in range(1, 10_000) for a in j.check(t * 0.1, 0.0)]
    assert KILL_ACTION not in seen and seen.count(MEGA_ACTION) == 1


def test_a_stopped_process_is_not_a_stalled_loop() -> None:
    """SIGSTOP at 0.05, SIGCONT at 10.05: the thread slept through it too (`pause`); neither its
    check nor the loop's report of the late beat counts anything, and nothing is aborted."""
    j = Judge(kill_after=2.0)
    j.pause(0.0, 10.06)
    assert j.check(10.06, 0.0) == []
    assert j.check(10.2, 10.1, [(0.0, 10.1, 10.0)]) == []
    assert j.stalls == {MISS_ACTION: 0, MEGA_ACTION: 0} and j.longest < 0.2


def test_a_stall_that_overlaps_a_stop_counts_only_its_own_time() -> None:
    j = Judge(kill_after=2.0)
    j.pause(1.0, 11.0)                                       # stalled from 0.1, stopped 1..11
    assert j.check(11.05, 0.0) == [MISS_ACTION]              # 0.9 + 0.05 s of its own
    assert j.check(11.15, 0.0) == [MEGA_ACTION, DUMP_ACTION]  # 0.9 + 0.15 s
    assert j.check(12.2, 0.0) == [KILL_ACTION]               # 2.1 s of its own


def test_a_stall_shorter_than_a_tick_is_counted_from_the_loops_report() -> None:
    j = Judge()
    assert j.check(0.5, 0.45, [(0.0, 0.45, 0.35)]) == [MISS_ACTION]
    assert j.stalls[MISS_ACTION] == 1


def test_a_stall_seen_while_it_lasted_is_not_counted_again_when_it_is_reported() -> None:
    j = Judge()
    assert j.check(1.2, 0.0) == [MISS_ACTION, MEGA_ACTION, DUMP_ACTION]
    # its new beat is read before its report arrives (the thread's reads straddle the beat)
    assert j.check(1.4, 1.3) == []
    assert j.check(1.5, 1.3, [(0.0, 1.3, 1.2)]) == []
    assert j.stalls == {MISS_ACTION: 1, MEGA_ACTION: 1}


def test_a_mega_miss_stack_is_logged_at_most_once_a_minute() -> None:
    j = Judge(dump_every=60.0)
    assert DUMP_ACTION in j.check(1.2, 0.0)
    assert j.check(11.2, 10.0) == [MISS_ACTION, MEGA_ACTION]     # a second stall 10 s later: counted, no stack
    assert DUMP_ACTION in j.check(71.2, 70.0)
    assert j.stalls[MEGA_ACTION] == 3


def test_a_late_wake_up_is_a_stop_only_when_the_process_used_no_cpu_meanwhile() -> None:
    assert Judge.paused(0.1, 5.0, 0.01)              # SIGSTOP: nothing ran
    assert not Judge.paused(0.1, 5.0, 4.9)           # the loop held the GIL, burning CPU: a stall
    assert not Judge.paused(0.1, 0.15, 0.0)          # scheduling jitter


def test_the_families_a_scrape_shows() -> None:
    dog = Watchdog(judge=Judge())
    dog.judge.check(1.2, 0.0)
    reg = CollectorRegistry()
    reg.register(dog)
    text = generate_latest(reg).decode()
    assert 'ambit_event_loop_stalls_total{severity="miss"} 1.0' in text
    assert 'ambit_event_loop_stalls_total{severity="mega_miss"} 1.0' in text
    assert "ambit_event_loop_longest_stall_seconds 1.09" in text
