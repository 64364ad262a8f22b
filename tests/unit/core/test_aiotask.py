"""`ambit.aiotask.cancel`: stopping a helper task must not swallow the caller's own cancellation."""

from __future__ import annotations

import asyncio

from ambit.aiotask import cancel


def test_cancel_waits_for_the_task_to_unwind_and_absorbs_its_cancellation() -> None:
    unwound: list[str] = []

    async def helper() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0)
            unwound.append("helper")

    async def main() -> None:
        t = asyncio.ensure_future(helper())
        await asyncio.sleep(0)
        await cancel(t)                     # no CancelledError here: the helper's is absorbed
        assert unwound == ["helper"] and t.cancelled()
        await cancel(None)
    asyncio.run(main())


def test_a_caller_cancelled_while_it_waits_in_cancel_is_still_cancelled() -> None:
    """The config client's stop() once hung: its run loop was cancelled while a `finally` (run for
    a refusal) awaited cancel(helper); the CancelledError was taken for the helper's, the refusal
    went on up, and the loop retried with nobody left to stop it."""
    async def slow_to_unwind() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.2)        # unwinding takes a while

    async def retry_loop(attempts: list[int]) -> None:
        while len(attempts) < 5:            # bounded, so that the test fails rather than hangs
            helper = asyncio.ensure_future(slow_to_unwind())
            try:
                try:
                    await asyncio.sleep(0.01)
                    raise ConnectionRefusedError("refused")
                finally:
                    await cancel(helper)
            except ConnectionRefusedError:
                attempts.append(1)

    async def main() -> None:
        attempts: list[int] = []
        runner = asyncio.ensure_future(retry_loop(attempts))
        await asyncio.sleep(0.1)            # inside the first attempt's cancel(helper)
        runner.cancel()
        await asyncio.wait({runner}, timeout=5)
        assert runner.cancelled(), f"the loop went on after it was cancelled ({len(attempts)} more attempts)"
        assert attempts == []
    asyncio.run(main())


def test_a_cancellation_a_library_took_earlier_is_not_taken_for_the_callers() -> None:
    """grpclib wakes a reader on a lost connection by cancelling its task and raising its own error,
    and never takes the cancellation back (`Task.cancelling()` stays above 0). A config client that
    then cancels a helper in a `finally` must not read that as its own cancellation: it would end
    its reconnect loop for good, with nobody having asked it to stop."""
    async def helper() -> None:
        await asyncio.sleep(60)

    async def attempt() -> str:
        me = asyncio.current_task()
        assert me is not None
        me.cancel()                         # as grpclib does to wake us ...
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            pass                            # ... and turns into an error of its own, no uncancel()
        assert me.cancelling() == 1
        h = asyncio.ensure_future(helper())
        await asyncio.sleep(0)
        await cancel(h)                     # must not raise: nobody cancelled us while we waited
        return "retrying"

    assert asyncio.run(attempt()) == "retrying"


def test_a_loop_woken_as_it_is_cancelled_still_stops() -> None:
    """Python 3.11's `asyncio.wait_for(event.wait(), t)` loses a cancellation that arrives in the
    same loop iteration as the event is set (gh-86296): the loop went on, and `cancel()` of it
    waited for ever. An ingress gateway never exited after SIGTERM that way (its status reporter,
    woken as it was stopped). `wait_set` keeps the cancellation."""
    from ambit.aiotask import wait_set

    async def loop(ev: asyncio.Event) -> None:
        while True:
            await wait_set(ev, 5)
            ev.clear()

    async def main() -> None:
        for _ in range(50):
            ev = asyncio.Event()
            t = asyncio.ensure_future(loop(ev))
            await asyncio.sleep(0)
            ev.set()
            await asyncio.wait_for(cancel(t), 2)    # the wake and the stop in one iteration
            assert t.cancelled()
        assert await wait_set(asyncio.Event(), 0.01) is False
        ev = asyncio.Event()
        ev.set()
        assert await wait_set(ev, 0.01) is True
    asyncio.run(main())


def test_the_status_reporter_stops_when_woken_as_it_is_stopped() -> None:
    from ambit.configclient import NodeInfo
    from ambit.configclient.report import StatusReporter

    async def main() -> None:
        r = StatusReporter("127.0.0.1:1", NodeInfo("ztunnel", "node-a"), dict, interval=30,
                           timeout=0.2)
        await r.start()
        await asyncio.sleep(0.5)         # its first report failed: it waits for the interval or a wake
        r.wake()
        await asyncio.wait_for(r.stop(), 5)
    asyncio.run(main())


def test_wait_set_times_out_in_a_task_a_library_cancelled_before() -> None:
    """grpclib cancels a call's task when the call hits its deadline or loses its connection and
    raises its own error, never taking the cancellation back. `asyncio.timeout` on 3.11 then turns
    its own expiry into a CancelledError, so a loop waiting between attempts ended for good."""
    from ambit.aiotask import wait_set

    async def main() -> bool:
        me = asyncio.current_task()
        assert me is not None
        me.cancel()                         # as grpclib's deadline does ...
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            pass                            # ... raising TimeoutError instead, no uncancel()
        assert me.cancelling() == 1
        return await wait_set(asyncio.Event(), 0.01)
    assert asyncio.run(main()) is False


def test_the_status_reporter_reports_again_after_a_report_hit_its_deadline() -> None:
    """A controller that takes the connection and does not answer (real grpclib, real socket): the
    report hits its deadline, and the reporter must try again at its next tick, not end."""
    import socket
    import time

    from ambit.configclient import NodeInfo
    from ambit.configclient.report import StatusReporter

    async def main() -> int:
        with socket.socket() as wedged:
            wedged.bind(("127.0.0.1", 0))
            wedged.listen(16)               # never accepted: the handshake completes, nothing answers
            r = StatusReporter(f"127.0.0.1:{wedged.getsockname()[1]}", NodeInfo("ztunnel", "node-a"), dict,
                               interval=0.05, timeout=0.1)
            attempts = 0
            real = r.send_once

            async def counted() -> None:
                nonlocal attempts
                attempts += 1
                await real()
            r.send_once = counted           # type: ignore[method-assign]
            await r.start()
            deadline = time.monotonic() + 10
            while attempts < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.wait_for(r.stop(), 5)
            return attempts
    assert asyncio.run(main()) >= 3


def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    """A library that takes our cancellation for its own wake-up keeps the task waiting: with
    `again_after`, cancel() repeats it until the task ends (the config client's stop() once waited
    out a test's 60 s on a stream reader)."""
    async def swallows_one() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            pass                            # "that was mine": keep reading
        await asyncio.sleep(60)

    async def main() -> None:
        t = asyncio.ensure_future(swallows_one())
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel(t, again_after=0.05), 5)
        assert t.cancelled()
        # without it, cancel() would wait as long as the task does
        t2 = asyncio.ensure_future(swallows_one())
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(cancel(t2))
        done, _ = await asyncio.wait({waiting}, timeout=0.3)
        assert not done
        t2.cancel()
        await waiting
    asyncio.run(main())
