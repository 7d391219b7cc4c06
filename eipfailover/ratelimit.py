"""Client-side rate limits: a token bucket per provider and kind of call, with priorities and AIMD.

A :class:`Bucket` holds up to ``burst`` tokens and gains ``rate`` tokens a second; a request takes one. When the
cloud answers "throttled" anyway (other clients share the account's limits), the refill rate is halved, at most once
a second (multiplicative decrease, down to a quarter of the configured rate); it then grows back by a tenth of the
configured rate each second (additive increase). The tokens in hand are kept: a repair that finds one goes out at
once, and the throttled requests drain the bucket soon enough. :class:`Bucket` is pure arithmetic on times the
caller passes in.

A :class:`Limiter` queues the requests that find no token by priority (lower first; first come, first served within
one), so that in a mass failover the moves that end downtime go out before the failbacks. Waiting is cancellable:
a cancelled waiter takes no token.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

MIN_RATE_FACTOR = 1 / 4
"""The rate never falls below this share of the configured one."""
RECOVERY_PER_SECOND = 0.1
"""The share of the configured rate regained each second without a throttling answer."""
DECREASE_SPACING = 1.0
"""Throttling answers within this many seconds of the last decrease count as the same one (they were in flight)."""


class Priority:
    """What a request is for, in the order a starved limiter serves them."""

    ATTACH = -1
    """A call that attaches (the second step of a two-step move): it ends a detached EIP's downtime, and goes
    before the first step of any other move."""
    REPAIR = 0
    """Re-attaching detached EIPs, and moves off a target confirmed DOWN: downtime until done."""
    FAILOVER = 1
    """Other moves an operator or the policy asked for (adoptions, manual moves)."""
    READ = 2
    """Describes, instance states."""
    FAILBACK = 3
    """Moves back to a preferred target that nothing forces."""


_PRIORITY: contextvars.ContextVar[int] = contextvars.ContextVar("eipfailover_priority", default=Priority.READ)


@contextlib.contextmanager
def priority(level: int) -> Iterator[None]:
    """Every cloud request made inside (in this task and the tasks it starts) waits for its token at ``level``."""
    token = _PRIORITY.set(level)
    try:
        yield
    finally:
        _PRIORITY.reset(token)


def current_priority() -> int:
    return _PRIORITY.get()


@dataclass(slots=True)
class Bucket:
    """A token bucket whose rate adapts to throttling answers (AIMD). Times are the caller's monotonic seconds."""

    rate: float
    """The configured refill rate (tokens a second)."""
    burst: float
    now: float
    tokens: float = -1.0
    current: float = -1.0
    """The refill rate in force (below ``rate`` after throttling)."""
    last_decrease: float | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst
        if self.current < 0:
            self.current = self.rate

    def _advance(self, now: float) -> None:
        elapsed = max(now - self.now, 0.0)
        self.now = max(now, self.now)
        # the rate recovers over the elapsed time; the tokens earned at the average of the two rates
        recovered = min(self.rate, self.current + self.rate * RECOVERY_PER_SECOND * elapsed)
        self.tokens = min(self.burst, self.tokens + elapsed * (self.current + recovered) / 2)
        self.current = recovered

    def take(self, now: float) -> float:
        """Take a token: 0.0 if one was taken, else the seconds until one will be there (none is taken)."""
        self._advance(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.current

    def throttled(self, now: float) -> None:
        """The cloud refused a request for its rate: halve the refill rate (once per :data:`DECREASE_SPACING`)."""
        self._advance(now)
        if self.last_decrease is not None and now - self.last_decrease < DECREASE_SPACING:
            return
        self.last_decrease = now
        self.current = max(self.current / 2, self.rate * MIN_RATE_FACTOR)


class Limiter:
    """One bucket, with a queue of waiters served by priority (see the module's docstring)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._bucket: Bucket | None = None
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self.waited = 0.0
        """Seconds requests have spent waiting for a token, in all."""

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _state(self) -> Bucket:
        if self._bucket is None:  # made on first use: on the running loop's clock
            self._bucket = Bucket(self.rate, self.burst, self._now())
        return self._bucket

    @property
    def current_rate(self) -> float:
        return self._state().current if self._bucket is not None else self.rate

    async def acquire(self, level: int | None = None) -> None:
        """Wait for a token (at ``level``, default: the current :func:`priority`)."""
        bucket = self._state()
        if not self._waiters and bucket.take(self._now()) == 0.0:
            return
        start = self._now()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (current_priority() if level is None else level, next(self._order), future))
        self._schedule(0.0)
        try:
            await future
        finally:
            self.waited += self._now() - start
            if future.cancelled():  # its turn may have been next: pass it on
                self._schedule(0.0)

    def refund(self) -> None:
        """Give back a token taken by :meth:`acquire` and not used."""
        bucket = self._state()
        bucket.tokens = min(bucket.burst, bucket.tokens + 1.0)

    def throttled(self) -> None:
        """The cloud answered a request "throttled"."""
        self._state().throttled(self._now())

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, self._serve)

    def _serve(self) -> None:
        self._timer = None
        bucket = self._state()
        while self._waiters:
            if self._waiters[0][2].done():  # cancelled while waiting
                heapq.heappop(self._waiters)
                continue
            wait = bucket.take(self._now())
            if wait > 0.0:
                self._schedule(wait)
                return
            heapq.heappop(self._waiters)[2].set_result(None)


@dataclass(frozen=True, slots=True)
class Limits:
    """A provider's two limiters: describes and other reads, and mutating calls."""

    reads: Limiter
    mutations: Limiter

    def of(self, mutating: bool) -> Limiter:
        return self.mutations if mutating else self.reads
