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
from collections.abc import Callable, Iterator
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
        if self.tokens >= 1.0 - 1e-9:  # (a token earned to the nanosecond: rounding must not cost a wait)
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


class Ticket:
    """A place in a :class:`Limiter`'s queue, whose priority can be raised while it waits (:meth:`Limiter.hurry`)."""

    __slots__ = ("future", "level", "order")

    def __init__(self, level: int) -> None:
        self.level = level
        self.order = 0
        self.future: asyncio.Future[None] | None = None


class Limiter:
    """One bucket, with at most ``slots`` requests in flight (None: no bound), and a queue of waiters served by
    priority (see the module's docstring). A request holds its slot from its token to :meth:`release`: the token is
    taken when the request can go out, so requests that wait for a slot never pile up tokens to send in a burst."""

    def __init__(self, rate: float, burst: float, slots: int | None = None) -> None:
        self.rate, self.burst = rate, burst
        self._free = slots
        self._bucket: Bucket | None = None
        self._waiters: list[tuple[int, int, asyncio.Future[None], bool, bool]] = []
        """(priority, order, future, wants a token, wants a slot)"""
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
        """The refill rate in force now (recovering since the last throttling answer, request or not)."""
        if self._bucket is None:
            return self.rate
        elapsed = max(self._now() - self._bucket.now, 0.0)
        return min(self.rate, self._bucket.current + self.rate * RECOVERY_PER_SECOND * elapsed)

    async def acquire(self, level: int | None = None, ticket: Ticket | None = None, *, token: bool = True,
                      slot: bool = True) -> None:
        """Wait for a token and a slot (at ``level``, default: the current :func:`priority`; or as ``ticket``, whose
        priority may be raised meanwhile); only for the one or the other if ``slot`` or ``token`` is false. A
        waiter cancelled once served gives them back."""
        ticket = ticket or Ticket(current_priority() if level is None else level)
        if not self._waiters and self._grant(token, slot):
            return
        start = self._now()
        future = ticket.future = asyncio.get_running_loop().create_future()
        ticket.order = next(self._order)
        heapq.heappush(self._waiters, (ticket.level, ticket.order, future, token, slot))
        self._schedule(0.0)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # served, then cancelled before it could go
                if token:
                    self.refund()
                if slot:
                    self.release()
            self._schedule(0.0)  # its turn may have been next: pass it on
            raise
        finally:
            ticket.future = None
            self.waited += self._now() - start

    def _grant(self, token: bool, slot: bool) -> bool:
        """Take what a request needs if it is there now."""
        if slot and self._free == 0:
            return False
        if token and self._state().take(self._now()) > 0.0:
            return False
        if slot and self._free is not None:
            self._free -= 1
        return True

    def hurry(self, ticket: Ticket, level: int) -> None:
        """Raise a waiting ticket's priority to ``level`` (if it is lower)."""
        if level >= ticket.level:
            return
        ticket.level = level
        if ticket.future is not None and not ticket.future.done():
            entry = next(w for w in self._waiters if w[2] is ticket.future)
            heapq.heappush(self._waiters, (level, *entry[1:]))  # the old entry is skipped once done
            self._schedule(0.0)

    def release(self) -> None:
        """A request that held a slot has its answer (or was given up)."""
        if self._free is not None:
            self._free += 1
            if self._waiters:
                self._schedule(0.0)

    def refund(self) -> None:
        """Give back a token taken by :meth:`acquire` and not used."""
        bucket = self._state()
        bucket.tokens = min(bucket.burst, bucket.tokens + 1.0)
        if self._waiters:
            self._schedule(0.0)

    def throttled(self) -> None:
        """The cloud answered a request "throttled"."""
        self._state().throttled(self._now())

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        # a millisecond more: loops whose timers have a millisecond's resolution (uvloop) fire a little early, and
        # would find no token yet and spin until there is one
        self._timer = asyncio.get_running_loop().call_later(delay + 0.001 if delay else 0.0, self._serve)

    def _serve(self) -> None:
        self._timer = None
        bucket = self._state()
        while self._waiters:
            _, _, future, token, slot = self._waiters[0]
            if future.done():  # cancelled while waiting, or a ticket served at a raised priority
                heapq.heappop(self._waiters)
                continue
            if slot and self._free == 0:
                return  # release() serves the next one
            wait = bucket.take(self._now()) if token else 0.0
            if wait > 0.0:
                self._schedule(wait)
                return
            if slot and self._free is not None:
                self._free -= 1
            heapq.heappop(self._waiters)
            future.set_result(None)


class Prepaid:
    """A token (and a slot, unless ``slot`` is false) taken ahead by a caller for a request made further down (see
    :func:`prepaid`)."""

    __slots__ = ("limiter", "operations", "outer", "slot")

    def __init__(self, limiter: Limiter, operations: frozenset[str] | None, slot: bool) -> None:
        self.limiter: Limiter | None = limiter
        self.operations = operations
        self.slot = slot
        self.outer = _PREPAID.get()
        """The token taken further up, if any (tried after this one)."""

    def use(self, limiter: Limiter, operation: str) -> bool:
        """True (once) if ``operation`` on ``limiter`` is the request this token was taken for."""
        if self.limiter is not limiter or (self.operations is not None and operation not in self.operations):
            return False
        self.limiter = None
        return True


_PREPAID: contextvars.ContextVar[Prepaid | None] = contextvars.ContextVar("eipfailover_prepaid", default=None)


@contextlib.contextmanager
def prepaid(limiter: Limiter, operations: frozenset[str] | None = None, *, slot: bool = True) -> Iterator[Prepaid]:
    """The caller holds a token of ``limiter`` (and a slot, unless ``slot`` is false): the first request inside
    on it (of ``operations``, if given) uses them instead of waiting its turn (for a slot still, if none is held).
    Unused, they are given back on exit."""
    ticket = Prepaid(limiter, operations, slot)
    token = _PREPAID.set(ticket)
    try:
        yield ticket
    finally:
        _PREPAID.reset(token)
        if ticket.limiter is not None:
            limiter.refund()
            if slot:
                limiter.release()


async def take(limiter: Limiter, operation: str, level: int | None = None) -> None:
    """What a request on ``limiter`` needs before it goes: a token and a slot, or what the context holds for it
    (:func:`prepaid`) and the rest (the wait is reported to :func:`on_queue`'s callback, if any)."""
    queued = _QUEUED.get()
    if queued is not None:
        queued(True)
    try:
        ticket = _PREPAID.get()
        while ticket is not None:
            if ticket.use(limiter, operation):
                if not ticket.slot:
                    await limiter.acquire(level, token=False)
                return
            ticket = ticket.outer
        await limiter.acquire(level)
    finally:
        if queued is not None:
            queued(False)


_QUEUED: contextvars.ContextVar[Callable[[bool], None] | None] = contextvars.ContextVar("eipfailover_queued",
                                                                                        default=None)


@contextlib.contextmanager
def on_queue(callback: Callable[[bool], None]) -> Iterator[None]:
    """``callback(True)`` is called when a request made inside (in this task and the tasks it starts) starts
    waiting for its limiter, ``callback(False)`` when it stops (let go, or given up)."""
    token = _QUEUED.set(callback)
    try:
        yield
    finally:
        _QUEUED.reset(token)


@dataclass(frozen=True, slots=True)
class Limits:
    """A provider's two limiters: describes and other reads, and mutating calls."""

    reads: Limiter
    mutations: Limiter

    def of(self, mutating: bool) -> Limiter:
        return self.mutations if mutating else self.reads
