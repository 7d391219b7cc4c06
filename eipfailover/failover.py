"""One failover: move a group's EIPs to a binding, retrying within a deadline, then verify with the cloud.

Retries use jittered exponential backoff on ``asyncio.sleep``; only retryable :class:`ProviderError`\\ s are
retried. The move is done when ``describe`` reports every EIP on the binding (and settled), not when the API call
returns. If it fails on a cloud where a move is two steps (Alibaba), EIPs may be left detached: they are then
re-attached to the first fallback binding that takes them, and the failover is still reported as failed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eipfailover.errors import ProviderError
from eipfailover.model import Binding, EipState
from eipfailover.providers.base import Provider


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
    reattached_to: Binding | None = None
    """After a failure: where stray EIPs were put back."""


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
    backoff: Backoff = Backoff(),
    verify_interval: float = 0.25,
) -> Outcome:
    """Move ``eips`` to ``to`` and verify, within ``deadline`` seconds. ``states`` is the latest describe, used to
    skip EIPs already in place. On failure, EIPs found detached or mid-transition are moved to the first binding of
    ``fallback`` that takes them (another ``deadline`` each). Never raises a :class:`ProviderError`: failures come
    back in the outcome."""
    outcome = await _move_and_verify(provider, eips, to, deadline, states, backoff, verify_interval)
    if outcome.ok or not fallback:
        return outcome
    return await _reattach(provider, eips, outcome, fallback, deadline, backoff, verify_interval)


async def _reattach(provider: Provider, eips: Sequence[str], failed: Outcome, fallback: Sequence[Binding],
                    deadline: float, backoff: Backoff, verify_interval: float) -> Outcome:
    try:
        async with asyncio.timeout(deadline):
            states = await provider.describe(eips)
    except (ProviderError, TimeoutError) as exc:
        return Outcome(False, failed.attempts, f"{failed.error}; cannot check for detached EIPs: {exc}", failed.states)
    stray = [e for e, s in states.items() if s.bound_to is None or s.pending]
    if not stray:
        return Outcome(False, failed.attempts, failed.error, states)
    errors = []
    for binding in fallback:
        back = await _move_and_verify(provider, stray, binding, deadline, states, backoff, verify_interval)
        if back.ok:
            return Outcome(False, failed.attempts, f"{failed.error}; re-attached {', '.join(stray)} to {binding}",
                           back.states, reattached_to=binding)
        errors.append(f"{binding}: {back.error}")
    return Outcome(False, failed.attempts, f"{failed.error}; re-attaching {', '.join(stray)} failed: "
                                           + "; ".join(errors), states)


async def _move_and_verify(provider: Provider, eips: Sequence[str], to: Binding, deadline: float,
                           states: Mapping[str, EipState] | None, backoff: Backoff,
                           verify_interval: float) -> Outcome:
    end = time.monotonic() + deadline
    attempts = 0
    pending = _pending(eips, to, states) or list(eips)

    def remaining() -> float:
        return end - time.monotonic()

    while pending:
        attempts += 1
        try:
            async with asyncio.timeout(max(remaining(), 0.001)):
                await provider.move(pending, to)
            break
        except ProviderError as exc:
            delay = backoff.delay(attempts - 1)
            if not exc.retryable or remaining() <= delay:
                return Outcome(False, attempts, f"move failed: {exc}", states)
        except TimeoutError:
            return Outcome(False, attempts, f"move did not complete within the {deadline:g}s deadline", states)
        await asyncio.sleep(delay)
        try:  # an attempt may have moved some EIPs before failing: move only the rest
            async with asyncio.timeout(max(remaining(), 0.001)):
                states = await provider.describe(eips)
            pending = _pending(eips, to, states)
        except (ProviderError, TimeoutError):
            pass

    last_error = ""
    while True:
        try:
            async with asyncio.timeout(max(remaining(), 0.001)):
                states = await provider.describe(eips)
            if not _pending(eips, to, states):
                return Outcome(True, attempts, "", states)
            last_error = "; ".join(
                f"{e} on {states[e].bound_to or 'nothing'}" for e in _pending(eips, to, states)
            )
        except ProviderError as exc:
            if not exc.retryable:
                return Outcome(False, attempts, f"verification failed: {exc}", states)
            last_error = str(exc)
        except TimeoutError:
            pass
        if remaining() <= verify_interval:
            return Outcome(False, attempts, f"not verified within {deadline:g}s (last seen: {last_error})", states)
        await asyncio.sleep(verify_interval)
