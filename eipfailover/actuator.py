"""The one running move of a group: the before_failover gate, the record in the store, leadership proof, the cloud
calls.

The :class:`Actuator` turns a started :class:`~eipfailover.events.FailoverRecord` into a finished one. It owns no
group state: the runner decides, hands it the move, and folds the outcome back into its own state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import structlog

from eipfailover import failover, ratelimit
from eipfailover.checks.base import describe_exception
from eipfailover.cluster.base import Coordinator
from eipfailover.config import GroupConfig
from eipfailover.events import FailoverRecord, StateStore
from eipfailover.hooks import hook_environment, hook_values, run_gate, substitute
from eipfailover.model import Binding, EipState, Reason
from eipfailover.providers.base import Provider, fenced, recorded_steps
from eipfailover.ratelimit import Priority

log = structlog.get_logger("eipfailover.engine")

_PRIORITY = {Reason.REPAIR: Priority.REPAIR, Reason.ACTIVE_DOWN: Priority.REPAIR, Reason.FAILBACK: Priority.FAILBACK}
"""The rate limit's order for a move's calls (the others: :attr:`Priority.FAILOVER`): a mass failover ends the
downtime first."""


class Actuator:
    def __init__(self, config: GroupConfig, provider: Provider, bindings: Mapping[str, Binding],
                 store: StateStore, coordinator: Coordinator | None, abort: asyncio.Event) -> None:
        self.config = config
        self.provider = provider
        self.bindings = bindings
        self.store = store
        self.coordinator = coordinator
        """None for a daemon alone: nothing to prove before a call."""
        self.abort = abort

    async def execute(self, record: FailoverRecord, states: Mapping[str, EipState] | None, fallback: list[Binding],
                      reason: Reason, sources: Sequence[str], *, counted: bool, windowed: bool,
                      term: int | None = None) -> tuple[FailoverRecord, failover.Outcome]:
        """Run the move of ``record`` (``sources``: the targets it takes EIPs off; ``term``: the cluster term it was
        decided in, whose end stops its calls); the finished record and the outcome. Never raises: a bug below is
        recorded as the failover's error."""
        try:
            # recorded before any cloud call (the journal: on disk, or degraded: it never blocks)
            await self.store.begin(record, counted=counted, windowed=windowed)
            if self.config.dry_run:  # decided and reported, not made: no fencing, no cloud call
                outcome = failover.Outcome(False, 0, f"would move {', '.join(record.eips)} from "
                                                     f"{record.from_target or 'where they are'} to "
                                                     f"{record.to_target}; no cloud call made")
            else:
                veto = await self._gate(record, reason, sources)
                with self.journaled(record), self._fenced(record, term), ratelimit.priority(_PRIORITY.get(
                        reason, Priority.FAILOVER)):
                    outcome = failover.Outcome(False, 0, veto) if veto is not None else await failover.execute(
                        self.provider, record.eips, self.bindings[record.to_target],
                        deadline=self.config.policy.failover_deadline, states=states, fallback=fallback,
                        abort=self.abort,
                    )
        except Exception as exc:  # a bug below must not poison the group: record it and go on
            log.exception("failover_crashed", group=self.config.name, failover_id=record.id)
            outcome = failover.Outcome(False, 0, f"internal error: {describe_exception(exc)}")
        result = "dry_run" if self.config.dry_run else "success" if outcome.ok else "failure"
        return replace(record, result=result, error=outcome.error, attempts=outcome.attempts), outcome

    def journaled(self, record: FailoverRecord) -> contextlib.AbstractContextManager[None]:
        """Each cloud call of the failover recorded in the store before it is sent."""
        return recorded_steps(functools.partial(self.store.step, record.id))

    def _fenced(self, record: FailoverRecord, term: int | None) -> contextlib.AbstractContextManager[None]:
        """Each cloud call of the failover proven, right before it is sent, to come from the cluster's leader in the
        term the failover was decided in."""
        coordinator = self.coordinator
        if coordinator is None:
            return contextlib.nullcontext()

        async def fence(operation: str, seconds: float) -> Callable[[], bool]:
            return await coordinator.fence(self.config.name, record.id, operation, seconds, term)
        return fenced(fence)

    async def _gate(self, record: FailoverRecord, reason: Reason, sources: Sequence[str]) -> str | None:
        """Run ``hooks.before_failover`` before a move that takes EIPs off a target; why the move must not go ahead,
        or None. ``{from}`` is the target they are taken off (several: comma-separated; the cloud unreadable: the
        last active target). An abort (the daemon stopping past ``stop_timeout``) kills it and cancels the move:
        nothing was moved yet."""
        hooks = self.config.hooks
        if hooks.before_failover is None or reason is Reason.REPAIR or not sources:
            return None
        values = {**hook_values(record), "from": ",".join(sources)}
        argv = substitute(hooks.before_failover, values)
        gate = asyncio.ensure_future(run_gate(argv, hooks.before_failover_timeout, hook_environment(values, hooks.env),
                                              group=self.config.name, failover_id=record.id, hook="before_failover"))
        stop = asyncio.ensure_future(self.abort.wait())
        try:
            await asyncio.wait({gate, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not gate.done():
            gate.cancel()
            await asyncio.wait({gate})
            return "aborted before the move (the daemon is stopping): the before_failover hook was killed"
        ok, detail = gate.result()
        if ok:
            return None
        if not hooks.before_failover_required:
            log.warning("fence_ignored", group=self.config.name, failover_id=record.id, detail=detail,
                        reason="before_failover_required is false")
            return None
        return f"vetoed by the before_failover hook ({detail}): no cloud call made"
