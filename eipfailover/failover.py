"""One failover: move a group's EIPs to a binding, retrying within a deadline, then verify with the cloud.

Retries use jittered exponential backoff on ``asyncio.sleep``; only retryable :class:`ProviderError`\\ s are
retried. The move is done when ``describe`` reports every EIP on the binding (and settled), not when the API call
returns. If it fails, or is aborted (the daemon is stopping), on a cloud where a move is two steps (Alibaba), EIPs
may have been left detached: the *secure* step then waits for the calls already sent to be answered and for the
cloud to settle, and re-attaches every detached EIP to the first fallback binding that takes it. The failover is
still reported as failed, with what was done. (Where moves are atomic, AWS, nothing can be left detached.)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, replace

from eipfailover import ratelimit
from eipfailover.checks.base import describe_exception
from eipfailover.errors import ProviderError
from eipfailover.model import Binding, EipState
from eipfailover.providers.base import Provider, hedged, last_error, own_calls


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.25
    cap: float = 5.0

    def delay(self, attempt: int) -> float:
        """Equal jitter: half fixed, half random, doubling from ``base`` up to ``cap``."""
        ceiling: float = min(self.cap, self.base * 2.0**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    attempts: int
    error: str = ""
    states: Mapping[str, EipState] | None = None
    """The last describe seen (the verification's, on success)."""
    reattached_to: Binding | None = None
    """After a failure: where stray EIPs were put back."""
    code: str | None = None
    """The cloud's error code of the last failed call, if it sent one."""
    detached: tuple[str, ...] = ()
    """After a failure: the EIPs that may be left detached (found so, or not known to be attached)."""
    sent: bool = False
    """A mutating call went out (False: the move changed nothing, e.g. the fence refused its first call)."""


class _Aborted(Exception):
    pass


def _pending(eips: Sequence[str], to: Binding, states: Mapping[str, EipState] | None) -> list[str]:
    if states is None:
        return list(eips)
    return [e for e in eips if not _placed(states.get(e), to)]


def _placed(state: EipState | None, to: Binding) -> bool:
    return state is not None and not state.pending and state.bound_to is not None and to.matches(state.bound_to)


async def execute(
    provider: Provider,
    eips: Sequence[str],
    to: Binding,
    *,
    deadline: float,
    states: Mapping[str, EipState] | None = None,
    fallback: Sequence[Binding] = (),
    abort: asyncio.Event | None = None,
    resume_on_abort: bool = True,
    backoff: Backoff = Backoff(),
    verify_interval: float = 0.25,
) -> Outcome:
    """Move ``eips`` to ``to`` and verify, within ``deadline`` seconds. ``states`` is the latest describe, used to
    skip EIPs already in place.

    Setting ``abort`` stops the move at once (cloud calls it has sent still get their answer). After a failure, EIPs
    found detached are re-attached to the first binding of ``fallback`` that takes them; after an abort, to ``to``
    first (unless ``resume_on_abort`` is false: an operator's interrupt undoes), then to the fallback bindings.
    That takes at most another ``deadline``, which ``abort`` does not cut: the detached window is a critical
    section. Never raises, whatever the driver raises: failures come back in the outcome."""
    with own_calls() as calls:  # securing waits for this move's calls, not for other groups'
        outcome = await _execute(provider, eips, to, deadline, states, fallback, abort, resume_on_abort, backoff,
                                 verify_interval)
        return replace(outcome, sent=calls.sent)


async def _execute(provider: Provider, eips: Sequence[str], to: Binding, deadline: float,
                   states: Mapping[str, EipState] | None, fallback: Sequence[Binding], abort: asyncio.Event | None,
                   resume_on_abort: bool, backoff: Backoff, verify_interval: float) -> Outcome:
    # what may be left detached if the cloud cannot be read afterwards: any EIP, where a move detaches first;
    # otherwise only those that already were (a repair)
    exposed = tuple(e for e in eips if not provider.atomic_moves or states is None or e not in states
                    or states[e].bound_to is None or states[e].pending)
    try:
        outcome = await _abortable(_move_and_verify(provider, eips, to, deadline, states, backoff, verify_interval),
                                   abort)
    except _Aborted:  # cut short: an EIP it detached goes where it was going first, the move being decided
        outcome = Outcome(False, 0, "aborted: the daemon is stopping" if resume_on_abort else "interrupted", states)
        if resume_on_abort:
            fallback = [to, *(b for b in fallback if b != to)] if fallback else []
    if outcome.ok or not fallback or not exposed:  # nothing can have been left detached: nothing to secure
        return outcome
    try:
        with ratelimit.priority(ratelimit.Priority.REPAIR):  # a detached EIP is downtime, whatever the move was
            return await _secure(provider, eips, outcome, fallback, deadline, backoff, verify_interval, exposed)
    except Exception as exc:  # a driver bug in the secure step: report it, the engine's next read repairs
        return _failed(outcome, f"securing the EIPs failed: internal error: {describe_exception(exc)}", None,
                       exposed)


async def _abortable(work: Awaitable[Outcome], abort: asyncio.Event | None) -> Outcome:
    """``work``'s outcome, or :class:`_Aborted` once ``abort`` is set (``work`` is then cancelled and awaited)."""
    task = asyncio.ensure_future(work)
    if abort is None:
        return await task
    stop = asyncio.ensure_future(abort.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        stop.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.wait({task})
    raise _Aborted


async def _secure(provider: Provider, eips: Sequence[str], failed: Outcome, fallback: Sequence[Binding],
                  deadline: float, backoff: Backoff, verify_interval: float, exposed: tuple[str, ...]) -> Outcome:
    """Wait for the calls the move sent to get their answers, then until no EIP is in transition, then re-attach
    the detached ones, trying each fallback binding with an equal share of the time left. ``exposed``: the EIPs
    that may be detached if the cloud cannot tell."""
    end = time.monotonic() + deadline

    def remaining() -> float:
        return end - time.monotonic()

    if not await provider.settle(remaining()):
        return _failed(failed, f"calls to the cloud still unanswered after {deadline:g}s", None, exposed)
    states: Mapping[str, EipState] | None = None
    while True:
        try:
            async with asyncio.timeout(max(remaining(), 0.001)):
                states = await provider.describe(eips)
            if not any(s.pending for s in states.values()):
                break
            problem = "EIPs still in transition: " + ", ".join(e for e, s in states.items() if s.pending)
        except ProviderError as exc:
            if not exc.retryable:
                return _failed(failed, f"cannot check for detached EIPs: {exc}", states, exposed)
            problem = f"cannot check for detached EIPs: {exc}"
        except TimeoutError:
            problem = "cannot check for detached EIPs: no answer from the cloud"
        except Exception as exc:  # a driver bug: keep trying while there is time (it may be passing)
            problem = f"cannot check for detached EIPs: internal error: {describe_exception(exc)}"
        if remaining() <= verify_interval:
            return _failed(failed, f"{problem} after {deadline:g}s", states, exposed)
        await asyncio.sleep(verify_interval)
    stray = [e for e in eips if states[e].bound_to is None]
    if not stray:
        where = ", ".join(f"{e} on {states[e].bound_to}" for e in eips)
        return _failed(failed, f"none detached ({where})", states)
    errors = []
    for i, binding in enumerate(fallback):
        if i and not await provider.settle(remaining()):  # the last attempt's calls first: then the next binding
            break
        share = max(remaining() / (len(fallback) - i), 0.001)
        back = await _move_and_verify(provider, stray, binding, share, states, backoff, verify_interval)
        if back.ok:
            return Outcome(False, failed.attempts, f"{failed.error}; re-attached {', '.join(stray)} to {binding}",
                           back.states, reattached_to=binding, code=failed.code)
        errors.append(f"{binding}: {back.error}")
        states = back.states or states
    return _failed(failed, f"re-attaching {', '.join(stray)} failed: " + "; ".join(errors), states, tuple(stray))


def _failed(failed: Outcome, more: str, states: Mapping[str, EipState] | None,
            detached: tuple[str, ...] = ()) -> Outcome:
    error = f"{failed.error}; {more}" if more else failed.error
    return Outcome(False, failed.attempts, error, states, code=failed.code, detached=detached)


async def _move_and_verify(provider: Provider, eips: Sequence[str], to: Binding, deadline: float,
                           states: Mapping[str, EipState] | None, backoff: Backoff,
                           verify_interval: float) -> Outcome:
    end = time.monotonic() + deadline
    attempts = 0
    pending = _pending(eips, to, states) or list(eips)
    last: ProviderError | None = None
    moving: asyncio.Timeout | None = None
    admitted = False
    waiting = 0

    def remaining() -> float:
        return end - time.monotonic()

    def queue(entered: bool) -> None:
        """The move's calls wait for the rate limit: its deadline stops while the first one waits (a mass failover
        queues there), and runs from the moment it is let go."""
        nonlocal end, admitted, waiting
        waiting += 1 if entered else -1
        if admitted or moving is None:
            return
        if entered:
            moving.reschedule(None)
        elif waiting == 0:
            admitted = True
            end = time.monotonic() + deadline
            moving.reschedule(asyncio.get_running_loop().time() + deadline)

    def failure(text: str) -> Outcome:
        return Outcome(False, attempts, text, states, code=last.code if last is not None else None)

    def since_last() -> str:
        return f" (last error: {last})" if last is not None else ""

    while pending:
        attempts += 1
        try:
            async with asyncio.timeout(max(remaining(), 0.001)) as moving:
                with ratelimit.on_queue(queue):
                    await provider.move(pending, to)
            break
        except ProviderError as exc:
            last = exc
            delay = backoff.delay(attempts - 1)
            if not exc.retryable or remaining() <= delay:
                return failure(f"move failed: {exc}")
        except TimeoutError:
            last = last_error() or last
            return failure(f"move did not complete within the {deadline:g}s deadline{since_last()}")
        except Exception as exc:  # a driver bug: report it, and let the caller secure what it left
            return failure(f"move failed: internal error: {describe_exception(exc)}")
        await asyncio.sleep(delay)
        try:  # an attempt may have moved some EIPs before failing: move only the rest
            async with asyncio.timeout(max(remaining(), 0.001)):
                states = await provider.describe(eips)
            pending = _pending(eips, to, states)
        except Exception:  # unknown: retry them all; the verification below reports what is wrong
            pass

    last_seen = ""
    verified: Outcome | None = None

    def accept(answer: dict[str, EipState] | Exception) -> bool:
        """One describe's answer: True once it decides the verification."""
        nonlocal states, last, last_seen, verified
        if isinstance(answer, ProviderError):
            last = answer
            if not answer.retryable:
                verified = failure(f"verification failed: {answer}")
                return True
            last_seen = str(answer)
            return False
        if isinstance(answer, Exception):  # a driver bug
            verified = failure(f"verification failed: internal error: {describe_exception(answer)}")
            return True
        states = answer
        if not _pending(eips, to, states):
            verified = Outcome(True, attempts, "", states)
            return True
        last_seen = "; ".join(f"{e} on {states[e].bound_to or 'nothing'}" for e in _pending(eips, to, states))
        return False

    try:  # a slow describe does not hold the verification up: the next one goes out an interval later
        async with asyncio.timeout(max(remaining(), 0.001)):
            await hedged(lambda: provider.describe(eips), verify_interval, accept)
    except TimeoutError:
        pass
    return verified or failure(f"not verified within {deadline:g}s (last seen: {last_seen or 'no answer'})")
