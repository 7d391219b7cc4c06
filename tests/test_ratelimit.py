"""The client-side rate limit (eipfailover/ratelimit.py): the bucket's arithmetic, then the limiter's queue."""

from __future__ import annotations

import asyncio

import pytest

from eipfailover.ratelimit import Bucket, Limiter, Priority, priority


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = Bucket(rate=5.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.2)  # none left: the next in 1/rate
    assert bucket.take(0.1) == pytest.approx(0.1)  # half a token by now; none taken
    assert bucket.take(0.2) == 0.0
    assert bucket.take(10.0) == 0.0  # a long pause refills up to the burst, never more
    assert [bucket.take(10.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.2)]


def test_throttling_halves_the_rate_once_a_second_down_to_a_quarter_then_it_recovers() -> None:
    bucket = Bucket(rate=8.0, burst=1, now=0.0)
    bucket.throttled(0.0)
    assert bucket.current == 4.0
    bucket.throttled(0.5)  # the answers of requests that were in flight together: one decrease
    assert bucket.current == pytest.approx(4.4)  # (recovering already: 0.8 a second)
    bucket.throttled(1.0)
    bucket.throttled(2.0)
    bucket.throttled(3.0)
    assert bucket.current == 2.0  # never below a quarter of the configured rate
    bucket.take(4.0)
    assert bucket.current == pytest.approx(2.8)  # a tenth of the configured rate back each second
    bucket.take(20.0)
    assert bucket.current == 8.0  # and no more than configured


def test_tokens_in_hand_are_kept_when_throttled() -> None:
    """A repair that finds a token goes out at once; the rate is what slows down."""
    bucket = Bucket(rate=4.0, burst=5, now=0.0)
    bucket.throttled(0.0)
    assert [bucket.take(0.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(0.0) == pytest.approx(0.5)  # 1 / (4 / 2)


async def test_starved_requests_are_served_by_priority_then_in_order() -> None:
    limiter = Limiter(rate=50.0, burst=1)
    await limiter.acquire()  # the only token
    served: list[str] = []

    async def request(name: str, level: int) -> None:
        await limiter.acquire(level)
        served.append(name)

    tasks = [asyncio.create_task(request(name, level)) for name, level in
             [("failback", Priority.FAILBACK), ("move-1", Priority.FAILOVER), ("repair", Priority.REPAIR),
              ("move-2", Priority.FAILOVER)]]
    await asyncio.gather(*tasks)
    assert served == ["repair", "move-1", "move-2", "failback"]


async def test_the_priority_comes_from_the_context_by_default() -> None:
    limiter = Limiter(rate=50.0, burst=1)
    await limiter.acquire()
    served: list[str] = []

    async def request(name: str, level: int) -> None:
        with priority(level):
            await limiter.acquire()
        served.append(name)

    await asyncio.gather(request("failback", Priority.FAILBACK), request("repair", Priority.REPAIR))
    assert served == ["repair", "failback"]


async def test_requests_never_exceed_the_rate() -> None:
    limiter = Limiter(rate=40.0, burst=5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.gather(*(limiter.acquire() for _ in range(25)))
    assert loop.time() - start >= (25 - 5) / 40 - 0.01  # the burst at once, then 40 a second
    assert limiter.waited > 0


async def test_a_cancelled_waiter_takes_no_token_and_passes_its_turn() -> None:
    limiter = Limiter(rate=20.0, burst=1)
    await limiter.acquire()
    first = asyncio.create_task(limiter.acquire(Priority.REPAIR))
    second = asyncio.create_task(limiter.acquire(Priority.FAILBACK))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.wait_for(second, 1)  # served with the token the cancelled one would have had
    assert first.cancelled()
    bucket = limiter._state()
    assert bucket.tokens < 1.0  # exactly one token was taken for the two


async def test_a_refunded_token_is_there_for_the_next_request() -> None:
    limiter = Limiter(rate=0.5, burst=1)
    await limiter.acquire()
    limiter.refund()
    await asyncio.wait_for(limiter.acquire(), 0.5)  # at 0.5/s, without the refund this would take 2 s
