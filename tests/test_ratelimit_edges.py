"""The rate limiter at its edges: a waiter served then cancelled, the rate gauge between requests (found by
the review of issue 12)."""

from __future__ import annotations

import asyncio

import pytest

from eipfailover.ratelimit import Limiter

from .conftest import eventually


async def test_a_waiter_cancelled_after_it_was_served_gives_its_token_back() -> None:
    """Fixed: the module promises "a cancelled waiter takes no token", but ``_serve`` takes the token and resolves
    the waiter's future; if the waiting task is cancelled before it resumes (its asyncio.timeout, a hedged poll
    cancelled once another answered, a stop: all land in the same loop iteration as the timer), ``acquire`` raises
    CancelledError and the token is lost (``finally`` only re-serves when the *future* was cancelled). At a tiny
    rate (0.001/s) the next request then waits ~1000 s for nothing."""
    limiter = Limiter(0.001, 1)
    await limiter.acquire()  # the only token for 1000 s
    waiter = asyncio.create_task(limiter.acquire())
    await eventually(lambda: len(limiter._waiters) == 1)
    limiter._state().tokens = 1.0  # a token is earned (as after 1000 s)
    limiter._serve()  # the timer fires: the waiter is served...
    waiter.cancel()  # ...and, in the same loop iteration, its caller gives up
    with pytest.raises(asyncio.CancelledError):
        await waiter
    # the token the cancelled waiter never used must still be there
    await asyncio.wait_for(limiter.acquire(), 1.0)


async def test_the_rate_gauge_recovers_without_new_requests() -> None:
    """Fixed (metrics): ``Limiter.current_rate`` (the eipfailover_provider_rate_limit gauge, "the requests a second
    the limit allows now") is the rate computed at the last take/throttle: after a throttling answer and no further
    call on that bucket (mutations: typically until the next failover, days later) the gauge shows the halved rate
    forever, although AIMD has long restored the configured rate."""
    limiter = Limiter(10.0, 10)
    clock = [1000.0]
    limiter._now = lambda: clock[0]  # type: ignore[method-assign]
    await limiter.acquire()
    limiter.throttled()
    assert limiter.current_rate == pytest.approx(5.0)
    clock[0] += 3600.0  # an hour without a request on this bucket
    assert limiter.current_rate == pytest.approx(10.0)
