"""On uvloop (``--loop uvloop``; found by the review of issue 12): the rate limiter and the aligned reads with a
timer of a millisecond's resolution."""

from __future__ import annotations

import asyncio

import pytest

from eipfailover.ratelimit import Limiter

uvloop = pytest.importorskip("uvloop")


def test_the_limiter_does_not_spin_on_uvloop() -> None:
    """Fixed: uvloop's call_later truncates a delay to whole milliseconds and its loop.time() is the cached
    millisecond clock of the iteration. ``Limiter._serve`` schedules itself for exactly the time the next token is
    due; on uvloop it fires a fraction of a millisecond early, finds no token, and re-arms a 0 ms timer, again and
    again until the millisecond ticks: a busy loop for every token. 50 requests at 100/s run ``_serve`` thousands of
    times (asyncio's loop: 50) - CPU burnt precisely while a mass failover waits for the limit, on the loop chosen
    to spend less CPU."""
    async def main() -> int:
        limiter = Limiter(100.0, 1)
        serves = 0
        real = limiter._serve

        def counted() -> None:
            nonlocal serves
            serves += 1
            real()

        limiter._serve = counted  # type: ignore[method-assign]
        await asyncio.gather(*(limiter.acquire() for _ in range(50)))
        return serves

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        serves = runner.run(main())
    assert serves <= 3 * 50, serves


def test_aligned_cloud_reads_are_one_an_interval_on_uvloop() -> None:
    """Fixed: ``run_every(aligned=True)`` (the groups' cloud reads) computes the next slot as
    ``(now // period + 1) * period``. On uvloop a timer fires up to a millisecond before its due time (delays are
    truncated to whole ms and loop.time() is the iteration's cached ms clock), so after a short tick ``now`` is still
    just below the slot and the "next" slot is the one that was just served: the read runs again at once, with a
    0 ms timer, until the millisecond ticks. A read answered (or refused) within a millisecond thus runs dozens of
    times a slot, a busy loop that breaks "one cloud read per provider per interval" and spends the read budget
    (asyncio's loop: one read a slot). The robust computation is from the slot just served (next_at), not from
    ``now``."""
    from eipfailover.engine import run_every
    from eipfailover.model import Binding

    from .fakes import FakeProvider

    async def main() -> tuple[int, float]:
        cloud = FakeProvider({"e1": Binding(instance_id="i-a")})
        # an answer within a millisecond: an endpoint on the host or in the VPC, or a read refused at once
        loop = asyncio.get_running_loop()
        stop, wake, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
        times: list[float] = []

        async def read() -> None:
            await cloud.describe(["e1"])
            times.append(loop.time())
            if len(times) >= 10:
                done.set()

        task = asyncio.create_task(run_every(lambda: 0.1, stop, wake, read, aligned=True, group="g", loop="cloud"))
        await asyncio.wait_for(done.wait(), 5)
        stop.set()
        wake.set()
        await task
        return len(times), times[9] - times[0]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        count, elapsed = runner.run(main())
    assert elapsed >= 8 * 0.1, (count, elapsed)  # ten reads take nine intervals: one read a slot
