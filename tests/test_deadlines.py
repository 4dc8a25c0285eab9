"""Attempt deadlines without a timer per attempt (``gateway.delivery.deadlines``): a task past its
deadline is cancelled and told it timed out; anyone else's cancellation stays a cancellation."""

from __future__ import annotations

import asyncio

from gateway.delivery.deadlines import Deadlines


async def _attempt(deadlines: Deadlines, seconds: float, started: asyncio.Event) -> str:
    """What ``Sender.post`` does around a request: watch, wait, tell a timeout from a cancel."""
    task = asyncio.current_task()
    assert task is not None
    cancelling = deadlines.watch(task, task.get_loop().time() + seconds)
    try:
        started.set()
        await asyncio.Event().wait()  # a subscriber that never answers
        return "answered"
    except asyncio.CancelledError:
        if deadlines.expired(task, cancelling):
            return "timed out"
        raise
    finally:
        deadlines.unwatch(task)


async def test_an_attempt_past_its_deadline_times_out_and_goes_on() -> None:
    deadlines = Deadlines(tick=0.01)
    started = asyncio.Event()
    task = asyncio.create_task(_attempt(deadlines, 0.02, started))
    assert await task == "timed out"
    assert not task.cancelled() and task.cancelling() == 0  # uncancelled: the task goes on
    assert len(deadlines) == 0


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(tick=0.01)
    started = asyncio.Event()
    task = asyncio.create_task(_attempt(deadlines, 3600, started))
    await started.wait()
    task.cancel()  # a stopping worker, say
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert len(deadlines) == 0


async def test_a_cancellation_racing_the_deadline_is_not_swallowed() -> None:
    deadlines = Deadlines(tick=3600)  # swept by hand below
    started = asyncio.Event()
    task = asyncio.create_task(_attempt(deadlines, 0.0, started))
    await started.wait()
    deadlines._sweep()  # the deadline cancels it...
    task.cancel()  # ...and a stopping worker too, before it runs again
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert len(deadlines) == 0


async def test_a_task_no_longer_watched_is_left_alone() -> None:
    deadlines = Deadlines(tick=0.01)
    task = asyncio.current_task()
    assert task is not None
    loop = task.get_loop()
    cancelling = deadlines.watch(task, loop.time() + 0.01)
    deadlines.unwatch(task)
    other = asyncio.Event()
    # Another attempt keeps the sweep going, and is cancelled at its own deadline.
    late = asyncio.create_task(_attempt(deadlines, 0.03, other))
    assert await late == "timed out"
    assert task.cancelling() == cancelling == 0


async def test_a_deadline_can_be_extended() -> None:
    deadlines = Deadlines(tick=3600)  # swept by hand below
    started = asyncio.Event()
    task = asyncio.create_task(_attempt(deadlines, 0.0, started))  # due at once
    await started.wait()
    deadlines.extend(task, task.get_loop().time() + 3600)
    deadlines._sweep()
    await asyncio.sleep(0)
    assert not task.done()  # past its first deadline, within the new one
    deadlines.extend(task, task.get_loop().time() - 1)
    deadlines._sweep()
    assert await task == "timed out"
