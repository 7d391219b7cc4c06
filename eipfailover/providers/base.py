"""The contract of a provider driver.

A driver reads the cloud's truth about EIPs (:meth:`Provider.describe`), moves EIPs (:meth:`Provider.move`) and
reports an instance's state (:meth:`Provider.instance_state`). Every failure is a :class:`ProviderError` whose
``retryable`` tells the caller whether trying again may help; drivers do not retry beyond their SDK's own short
retries, the failover module owns retries and deadlines. Every cloud request is reported to ``on_request``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from eipfailover.config import RateLimitConfig
from eipfailover.errors import NotLeader, ProviderError
from eipfailover.model import Binding, EipState
from eipfailover.ratelimit import Limiter, Limits, Priority, Ticket, current_priority, prepaid, take

T = TypeVar("T")
V = TypeVar("V")
class _Calls:
    """The calls of one :func:`own_calls` block."""

    __slots__ = ("last_error", "sends")

    def __init__(self) -> None:
        self.last_error: ProviderError | None = None
        self.sends = 0
        """Mutating calls that went out or may still go out (one the fence refused did not)."""

    @property
    def sent(self) -> bool:
        return self.sends > 0


_CALLER: contextvars.ContextVar[_Calls | None] = contextvars.ContextVar("eipfailover_caller", default=None)


def last_error() -> ProviderError | None:
    """The last error a cloud call of the current :func:`own_calls` block got (a driver may retry some calls
    itself: when its caller's deadline cuts it short, this says what it was up against)."""
    calls = _CALLER.get()
    return calls.last_error if calls is not None else None


@contextlib.contextmanager
def own_calls() -> Iterator[_Calls]:
    """The mutating calls made inside (in this task and the tasks it starts) are its own, for
    :meth:`Provider.settle`; what it yields tells whether any went out."""
    calls = _Calls()
    token = _CALLER.set(calls)
    try:
        yield calls
    finally:
        _CALLER.reset(token)


StepRecorder = Callable[[str], Awaitable[Callable[[str, float], None]]]
"""Awaited with the operation before a mutating call is sent; returns what is called with ``(result, seconds)`` once
it is answered (the failover journal)."""
_STEPS: contextvars.ContextVar[StepRecorder | None] = contextvars.ContextVar("eipfailover_steps", default=None)


@contextlib.contextmanager
def recorded_steps(recorder: StepRecorder) -> Iterator[None]:
    """Every mutating call made inside (in this task and the tasks it starts) goes through ``recorder`` first."""
    token = _STEPS.set(recorder)
    try:
        yield
    finally:
        _STEPS.reset(token)


Fence = Callable[[str, float], Awaitable[Callable[[], bool]]]
"""Awaited with ``(operation, seconds the call may take)`` before a mutating call: raises
:class:`~eipfailover.errors.NotLeader` unless this daemon may send it; returns the re-check made at the instant the
call is sent (a leader frozen in between must not send it)."""
_FENCE: contextvars.ContextVar[Fence | None] = contextvars.ContextVar("eipfailover_fence", default=None)


@contextlib.contextmanager
def fenced(fence: Fence) -> Iterator[None]:
    """Every mutating call made inside (in this task and the tasks it starts) is proven by ``fence`` first."""
    token = _FENCE.set(fence)
    try:
        yield
    finally:
        _FENCE.reset(token)


RequestObserver = Callable[[str, str, str, float], None]
"""Called as ``(provider, operation, result, seconds)`` after every cloud request; ``result`` is ``ok``,
``throttled`` (the cloud refused it for its rate), ``retryable``, ``error``, ``timeout`` (no answer within the
driver's timeouts) or ``cancelled`` (abandoned by the caller: a failover deadline, shutdown): a bounded set, fit
for a metric label. The time spent waiting for the rate limit is not counted in ``seconds``."""


@dataclass(frozen=True, slots=True)
class InstanceState:
    running: bool
    detail: str
    exists: bool = True
    """False when the cloud says the instance (or ENI, or private IP) is not there at all."""


@dataclass(frozen=True, slots=True)
class Call:
    """One cloud request, as ``--dry-run`` prints it."""

    operation: str
    params: Mapping[str, str]

    def __str__(self) -> str:
        return " ".join([self.operation, *(f"{k}={v}" for k, v in self.params.items())])


@dataclass(frozen=True, slots=True)
class EipRecord:
    """One EIP of the account, for ``eip list``: ``status`` is the cloud's own word (AWS ``associated`` or
    ``available``; Alibaba ``Associating``, ``InUse``, ``Unassociating``, ``Available``, ``Releasing``)."""

    allocation_id: str
    public_ip: str
    status: str
    bound_to: Binding | None
    tags: Mapping[str, str] = field(default_factory=dict)


class Provider(ABC):
    kind: ClassVar[str] = ""
    """The config ``type`` this driver implements."""
    operations: ClassVar[tuple[str, ...]] = ()
    """Every cloud API operation the driver may call (for metrics' label sets and least-privilege policies)."""
    atomic_moves: bool = False
    """True if a move never detaches an EIP on the way (AWS's reassociation): no EIP can be left detached by it."""
    manual_operations: ClassVar[tuple[str, ...]] = ()
    """The operations only the ``eip`` commands call (the daemon never does): an optional policy statement."""
    mutating: ClassVar[frozenset[str]] = frozenset()
    """The operations that change the cloud. Once sent, such a call is never abandoned: a caller that gives up (a
    deadline, a stop) leaves it to finish, and :meth:`settle` waits for its answer, so that what it did is known
    before anyone looks at the cloud again."""
    attaching: ClassVar[frozenset[str]] = frozenset()
    """The mutating operations that attach and never detach: they wait for the rate limit at
    :attr:`~eipfailover.ratelimit.Priority.ATTACH`."""
    throttling: ClassVar[tuple[str, ...]] = ()
    """The error codes (or their prefixes) by which the cloud says a request exceeded its rate."""
    default_limits: ClassVar[tuple[tuple[float, int], tuple[float, int]]] = ((1e6, 10**6), (1e6, 10**6))
    """``((requests a second, burst) of reads, (requests a second, burst) of mutations)`` when the config sets
    none (the driver's: below the cloud's documented limits)."""

    def __init__(self, name: str, rate_limit: RateLimitConfig | None = None, slots: int | None = None) -> None:
        """``slots``: the most requests of each kind (reads, mutations) in flight at once."""
        self.name = name
        limits = rate_limit or RateLimitConfig()
        (read_rate, read_burst), (write_rate, write_burst) = self.default_limits
        self.limits = Limits(
            Limiter(limits.reads.requests_per_second or read_rate, limits.reads.burst or read_burst, slots),
            Limiter(limits.mutations.requests_per_second or write_rate, limits.mutations.burst or write_burst,
                    slots))
        """Shared by every call of this provider, every attempt included (see :mod:`eipfailover.ratelimit`)."""
        self._reads = Coalescer(self.read_eips, self.limits.reads)
        self.on_request: RequestObserver | None = None
        self.read_only = False
        """True under ``eipfailover run --dry-run``: a mutating request is refused before it is sent."""
        self.call_deadline = 30.0
        """The longest one mutating call can take before the driver gives it up (the lease must outlive it)."""
        self._in_flight: dict[asyncio.Future[Any], _Calls | None] = {}

    @classmethod
    @abstractmethod
    def from_config(cls, name: str, config: Any) -> Provider:
        """Build the driver from its config model; raise :class:`ProviderError` if that is impossible."""

    async def describe(self, eips: Sequence[str]) -> dict[str, EipState]:
        """The cloud's current view of each EIP, keyed by allocation ID, from a read sent after this call: every
        describe of this provider waiting at the same moment (every group's, every verification's) goes out as one
        batch (:meth:`read_eips`, through a :class:`Coalescer`). An EIP the cloud does not know is an error
        (:meth:`not_found`)."""
        found = await self._reads.read(eips)
        missing = [e for e in eips if e not in found]
        if missing:
            raise self.not_found(missing)
        return {e: found[e] for e in eips}

    @abstractmethod
    async def read_eips(self, eips: Sequence[str]) -> dict[str, EipState]:
        """The cloud's view of those of ``eips`` that exist, in as few calls as the API allows."""

    def not_found(self, missing: Sequence[str]) -> ProviderError:
        """The error for EIPs the cloud does not know."""
        return ProviderError(f"{self.name}: no EIP {', '.join(missing)}", retryable=False, code="NotFound")

    @abstractmethod
    async def move(self, eips: Sequence[str], to: Binding) -> None:
        """Ask the cloud to put every EIP on ``to``; it may return before the cloud has finished."""

    @abstractmethod
    async def instance_state(self, binding: Binding) -> InstanceState:
        """Whether the resource behind ``binding`` exists and runs."""

    async def close(self) -> None:  # noqa: B027 - optional hook: most drivers hold nothing to release
        """Release clients and threads."""

    async def validate(self, bindings: Mapping[str, Binding]) -> list[str]:
        """Problems with the resources the bindings name, as the cloud describes them (one line each, starting with
        the binding's key), for the start-up check. The default checks nothing."""
        return []

    async def request(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one cloud request, timing it and reporting it to ``on_request``. A :attr:`mutating` one runs to its
        answer even if the caller is cancelled (the cancellation reaches the caller at once)."""
        assert operation in self.operations + self.manual_operations, \
            f"{operation} is missing from {type(self).__name__}.operations"
        if operation not in self.mutating:
            limiter = self.limits.reads
            await take(limiter, operation)
            try:
                return await self._timed(operation, call, limiter)
            finally:
                limiter.release()
        if self.read_only:
            raise ProviderError(f"{operation} refused: the daemon runs with --dry-run", retryable=False,
                                code="DryRun")
        limiter = self.limits.mutations  # before the fence: the lease must cover the call, not this wait
        await take(limiter, operation, Priority.ATTACH if operation in self.attaching else None)
        fence = _FENCE.get()
        if fence is not None:  # proven in the sent task itself, right before the call
            call = _fenced_call(call, fence, operation, self.call_deadline)
        elif (calls := _CALLER.get()) is not None:
            calls.sends += 1
        recorder = _STEPS.get()
        try:
            answered = await recorder(operation) if recorder is not None else None
        except BaseException:
            limiter.release()
            raise
        sent: asyncio.Future[T] = asyncio.ensure_future(self._timed(operation, call, limiter, answered))
        sent.add_done_callback(lambda _: limiter.release())
        self._in_flight[sent] = _CALLER.get()
        sent.add_done_callback(_forget(self._in_flight))
        return await asyncio.shield(sent)

    async def settle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the mutating calls sent in the current :func:`own_calls` block (outside one,
        all of them) to get their answers; True if none is left."""
        caller = _CALLER.get()
        mine = {f for f, owner in self._in_flight.items() if caller is None or owner is caller}
        if not mine:
            return True
        _, pending = await asyncio.wait(mine, timeout=max(timeout, 0.001))
        return not pending

    async def _timed(self, operation: str, call: Callable[[], Awaitable[T]], limiter: Limiter,
                     answered: Callable[[str, float], None] | None = None) -> T:
        start = time.monotonic()
        result = "error"
        try:
            value = await call()
            result = "ok"
            return value
        except ProviderError as exc:
            result = "timeout" if exc.timed_out else "retryable" if exc.retryable else "error"
            if exc.code is not None and exc.code.startswith(self.throttling):
                result = "throttled"
                limiter.throttled()
            calls = _CALLER.get()
            if calls is not None:
                calls.last_error = exc
            raise
        except asyncio.CancelledError:  # the caller gave up: its deadline, or shutdown
            result = "cancelled"
            raise
        finally:
            seconds = time.monotonic() - start
            if self.on_request is not None:
                self.on_request(self.name, operation, result, seconds)
            if answered is not None:
                answered(result, seconds)


class Coalescer(Generic[V]):
    """Reads by key from every caller waiting at the same moment, made as one ``fetch`` of all their keys, always
    sent after each of them asked (a verification never takes an answer from before its move).

    A batch takes callers until its read may go: while ``limiter`` holds it back (at the priority of its most
    urgent caller), the callers that come meanwhile join it; the read then goes out on the token it waited for.
    Each caller gets the whole answer (or its error); a batch whose callers all gave up is not sent."""

    def __init__(self, fetch: Callable[[list[str]], Awaitable[dict[str, V]]], limiter: Limiter) -> None:
        self.fetch = fetch
        self.limiter = limiter
        self._open: _Batch[V] | None = None

    async def read(self, keys: Iterable[str]) -> dict[str, V]:
        batch = self._open
        if batch is None:
            batch = self._open = _Batch(Ticket(current_priority()))
            batch.task = asyncio.ensure_future(self._send(batch))
            batch.task.add_done_callback(consume)
        else:
            self.limiter.hurry(batch.ticket, current_priority())
        batch.keys.update(keys)
        batch.waiting += 1
        try:
            return await asyncio.shield(batch.task)
        except asyncio.CancelledError:
            if not batch.task.done() and batch.waiting == 1:  # the last one waiting gave up: nobody needs it
                batch.task.cancel()
                if self._open is batch:
                    self._open = None
            raise
        finally:
            batch.waiting -= 1

    async def _send(self, batch: _Batch[V]) -> dict[str, V]:
        await asyncio.sleep(0)  # the callers woken by the same event join first
        await self.limiter.acquire(ticket=batch.ticket)
        if self._open is batch:
            self._open = None
        with prepaid(self.limiter):  # the read's first request goes out on the token the batch waited for
            return await self.fetch(sorted(batch.keys))


class _Batch(Generic[V]):
    """The keys of the callers waiting for one read, and that read."""

    __slots__ = ("keys", "task", "ticket", "waiting")

    def __init__(self, ticket: Ticket) -> None:
        self.keys: set[str] = set()
        self.ticket = ticket
        self.task: asyncio.Future[dict[str, V]]
        self.waiting = 0


def _fenced_call(call: Callable[[], Awaitable[T]], fence: Fence, operation: str,
                 seconds: float) -> Callable[[], Awaitable[T]]:
    async def fenced_call() -> T:
        calls = _CALLER.get()
        if calls is not None:  # it may go out from now on (a proof, or an answer, may outlast the move's deadline)...
            calls.sends += 1
        try:
            still_leading = await fence(operation, seconds)
            token = _SEND_CHECK.set(still_leading)
            try:
                if not still_leading():  # a freeze since the proof: nothing is sent
                    raise NotLeader(f"{operation} not sent: the lease may have lapsed since leadership was proven")
                return await call()
            finally:
                _SEND_CHECK.reset(token)
        except NotLeader:  # ...unless it is refused: by the fence, at the instant of sending, or by the driver's own
            if calls is not None:  # check then (AWS: in its thread, after any wait for a free one)
                calls.sends -= 1
            raise
    return fenced_call


_SEND_CHECK: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("eipfailover_send_check",
                                                                                        default=None)


def send_check() -> Callable[[], bool] | None:
    """For a driver whose calls wait for a thread: the re-check to make in that thread at the instant the fenced
    call goes out (False: do not send it), or None when the call is not fenced."""
    return _SEND_CHECK.get()


async def hedged(call: Callable[[], Awaitable[T]], interval: float, accept: Callable[[T | Exception], bool], *,
                 at_most: int = 3) -> None:
    """Poll: start ``call`` every ``interval`` seconds without waiting for a slow answer (at most ``at_most`` in
    flight), and hand each outcome, a value or the exception it raised, to ``accept`` until it returns True. The
    calls still in flight are then cancelled (only read-only calls may be polled so). The caller bounds the time."""
    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Future[T]] = set()
    next_start = loop.time()
    try:
        while True:
            if loop.time() >= next_start and len(in_flight) < at_most:
                in_flight.add(asyncio.ensure_future(call()))
                next_start = loop.time() + interval
            wait = None if len(in_flight) >= at_most else max(next_start - loop.time(), 0.0)
            if not in_flight:
                await asyncio.sleep(wait or 0.0)
                continue
            done, in_flight = await asyncio.wait(in_flight, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            decided = False
            for future in done:  # each one's exception is retrieved, even after the deciding one
                failed = future.exception()
                if decided:
                    continue
                if failed is not None and not isinstance(failed, Exception):
                    raise failed
                decided = accept(failed if failed is not None else future.result())
            if decided:
                return
    finally:
        for future in in_flight:
            future.cancel()
        if in_flight:
            await asyncio.wait(in_flight)
            for future in in_flight:
                if not future.cancelled():
                    future.exception()


def consume(future: asyncio.Future[Any]) -> None:
    """A done-callback that retrieves an outcome nobody may be left to retrieve."""
    if not future.cancelled():
        future.exception()


def _forget(in_flight: dict[asyncio.Future[Any], _Calls | None]) -> Callable[[asyncio.Future[Any]], None]:
    """A done-callback that drops a finished call from ``in_flight`` and consumes its outcome (whoever was waiting
    for it may have given up: its error is reported through ``on_request``, not as a never-retrieved exception)."""
    def done(future: asyncio.Future[Any]) -> None:
        in_flight.pop(future, None)
        consume(future)

    return done


class EipAdmin(ABC):
    """The rest of an EIP's life, for the ``eip`` commands: list, disassociate, allocate, release, and the calls a
    move would make. Moves themselves go through :meth:`Provider.move` and the failover module, as the daemon's do.
    Each ``plan_*`` reads the cloud (never changes it) and returns the calls the operation would send."""

    @abstractmethod
    async def list_eips(self) -> list[EipRecord]:
        """Every EIP of the account in the region (all pages)."""

    @abstractmethod
    async def record(self, eip: str) -> EipRecord:
        """One EIP as :meth:`list_eips` shows it: its association as the cloud states it (an EIP in cut-through
        mode on its ENI, even while the ENI is on no instance)."""

    @abstractmethod
    async def plan_move(self, eip: str, to: Binding) -> list[Call]:
        """The calls :meth:`Provider.move` would send for ``eip`` now."""

    @abstractmethod
    async def home_of(self, to: Binding) -> Binding | None:
        """Where the resource that ``to`` names is now, if a move takes it along (an Alibaba cut-through ENI: the
        binding of the instance it is attached to); ``None`` otherwise. A failed move puts it back there."""

    @abstractmethod
    async def send_home(self, home: Binding) -> bool:
        """Put the resource back where :meth:`home_of` found it if it is now on nothing (a detached ENI is attached
        again, and waited for); True if it is there. The caller's deadline bounds this."""

    @abstractmethod
    async def disassociate(self, eip: str, *, dry_run: bool = False) -> list[Call]:
        """Detach ``eip`` from what holds it (nothing if it is not bound); returns the calls sent (or, with
        ``dry_run``, that would be sent). The caller verifies."""

    @abstractmethod
    async def allocate(self, tags: Mapping[str, str], *, dry_run: bool = False) -> tuple[EipRecord | None, list[Call]]:
        """A new EIP with ``tags`` (``None`` with ``dry_run``), and the calls."""

    @abstractmethod
    async def release(self, eip: str, *, dry_run: bool = False) -> list[Call]:
        """Release ``eip``: the caller has checked that it is bound to nothing."""
