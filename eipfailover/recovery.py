"""Crash recovery: the failovers the journal shows unfinished (the daemon died during them) are reconciled against
the cloud before the engine starts, and recorded as ``interrupted`` with what was found and done.

The EIPs such a failover left detached (Alibaba's two steps, cut between them) are re-attached where the move was
going, which was decided on health seconds before, else to the group's other targets (the one they came from first).
EIPs found attached stay where they are: the engine decides on them from fresh health, so nothing is moved twice
because of the crash.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import replace

import structlog

from eipfailover import failover
from eipfailover.checks.base import describe_exception
from eipfailover.engine import GroupRunner
from eipfailover.events import FailoverRecord
from eipfailover.model import Binding, EipState

log = structlog.get_logger("eipfailover.recovery")


async def recover(unfinished: list[FailoverRecord], runners: Mapping[str, GroupRunner]) -> list[FailoverRecord]:
    """Reconcile every unfinished failover (groups concurrently, a group's in order); the records as finished,
    each also reported to its group's observers (journal, log, metrics, hooks) if the group is still configured
    (the caller records the others). A group in dry run makes no cloud call: what would be done is recorded."""
    by_group: dict[str, list[FailoverRecord]] = {}
    for record in unfinished:
        by_group.setdefault(record.group, []).append(record)

    async def group(records: list[FailoverRecord]) -> list[FailoverRecord]:
        return [await _recover(record, runners.get(record.group)) for record in records]

    done = await asyncio.gather(*(group(records) for records in by_group.values()))
    return [record for records in done for record in records]


async def _recover(record: FailoverRecord, runner: GroupRunner | None) -> FailoverRecord:
    prefix = "the daemon stopped during this failover"
    if runner is None:
        text = f"{prefix}; the group is no longer configured: not reconciled"
        log.warning("failover_interrupted", group=record.group, failover_id=record.id, detail=text)
        return _finish(record, text)
    text = f"{prefix}; " + await _reconcile(record, runner)
    done = _finish(record, text)
    runner.state = replace(runner.state, last_failover=done)
    runner.observers.on_failover_finished(done)
    return done


def _finish(record: FailoverRecord, text: str) -> FailoverRecord:
    return replace(record, result="interrupted", error=text, finished_at=time.time())


async def _reconcile(record: FailoverRecord, runner: GroupRunner) -> str:
    eips = [e for e in record.eips if e in runner.config.eips]
    if not eips:
        return "its EIPs are no longer in the group: not reconciled"
    deadline = runner.config.policy.failover_deadline
    try:
        states = await _settled(runner, eips, deadline)
    except Exception as exc:
        return f"could not read the cloud ({describe_exception(exc)}): the engine repairs any EIP left detached"
    found = _where(states, runner.bindings)
    detached = [e for e in eips if states[e].bound_to is None]
    if not detached:
        return f"found {found}"
    if runner.config.dry_run:
        return f"found {found}; dry run: would re-attach {', '.join(detached)}; no cloud call made"
    if runner.coordinator is not None:  # only the leader moves EIPs: its engine repairs what is left detached
        return f"found {found}; in a cluster the leader re-attaches {', '.join(detached)}: no cloud call made here"
    to = runner.bindings.get(record.to_target)
    order = [n for n in runner.bindings if n != record.to_target]
    order.sort(key=lambda n: n != record.from_target)
    fallback = [runner.bindings[n] for n in order]
    if to is None:
        to, fallback = (fallback[0], fallback[1:]) if fallback else (None, [])
    if to is None:
        return f"found {found}; no target to re-attach {', '.join(detached)} to"
    with runner.journaled(record):
        outcome = await failover.execute(runner.provider, detached, to, deadline=deadline, states=states,
                                         fallback=fallback)
    if outcome.ok:
        return f"found {found}; re-attached {', '.join(detached)} to {_name(to, runner.bindings)}"
    return f"found {found}; re-attaching {', '.join(detached)} failed: {outcome.error}"


async def _settled(runner: GroupRunner, eips: list[str], deadline: float) -> Mapping[str, EipState]:
    """The cloud's view once no EIP is in transition (a call the dead daemon sent may still be under way), or the
    last view after ``deadline``."""
    end = time.monotonic() + deadline
    while True:
        async with asyncio.timeout(max(end - time.monotonic(), 0.001)):
            states = await runner.provider.describe(eips)
        if not any(s.pending for s in states.values()) or time.monotonic() >= end:
            return states
        await asyncio.sleep(min(runner.config.policy.interval / 4, 0.5))


def _where(states: Mapping[str, EipState], bindings: Mapping[str, Binding]) -> str:
    return ", ".join(f"{e} on {_name(s.bound_to, bindings) if s.bound_to is not None else 'nothing'}"
                     for e, s in states.items())


def _name(binding: Binding, bindings: Mapping[str, Binding]) -> str:
    return next((n for n, b in bindings.items() if b.matches(binding)), str(binding))
