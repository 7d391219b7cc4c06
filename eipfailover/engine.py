"""The loop: per group, run the checks, fold health, read the cloud, decide, and run at most one failover.

Each group has a :class:`GroupRunner` ticking every ``policy.interval`` on a fixed schedule (a slow tick skips
slots, it does not shift the schedule). A tick runs every check of every target and ``describe`` concurrently,
folds the results into rise/fall health, places the EIPs from the cloud's answer and asks
:func:`eipfailover.policy.decide`. A failover runs as its own task while the ticks go on; the next tick sees it
in progress and decides nothing. Observers (logs, metrics, hooks) are told of every transition through
:class:`Observer`; an observer that raises is logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog

from eipfailover import failover, health, policy
from eipfailover.checks.base import Check
from eipfailover.config import BindingConfig, GroupConfig
from eipfailover.errors import ProviderError
from eipfailover.model import (
    Action,
    Binding,
    CheckResult,
    Decision,
    EipState,
    Health,
    ManualRequest,
    Placement,
    Snapshot,
    TargetState,
    Trigger,
    locate,
)
from eipfailover.providers.base import Provider

log = structlog.get_logger("eipfailover.engine")

_DESCRIBE_TIMEOUT = 30.0
"""A safety net around one ``describe``; the driver's own connect/read timeouts normally end it far sooner."""


@dataclass(frozen=True, slots=True)
class FailoverRecord:
    """One failover, as started and then as finished. Times are wall-clock seconds since the epoch."""

    id: str
    group: str
    trigger: Trigger
    reason: str
    from_target: str | None
    to_target: str
    eips: tuple[str, ...]
    started_at: float
    requested_by: str | None = None
    result: str = "running"  # running | success | failure | skipped (a manual request refused)
    error: str = ""
    finished_at: float | None = None
    attempts: int = 0

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at


class Observer(Protocol):
    """What the engine tells the outside world. Every method is called from the event loop and must not block."""

    def on_check(self, group: str, target: str, check: str, result: CheckResult) -> None: ...

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None: ...

    def on_placement(self, group: str, placement: Placement, active: str | None,
                     eips: Mapping[str, EipState]) -> None: ...

    def on_cloud_error(self, group: str, error: ProviderError | None) -> None: ...

    def on_decision(self, group: str, decision: Decision) -> None: ...

    def on_failover_started(self, record: FailoverRecord) -> None: ...

    def on_failover_finished(self, record: FailoverRecord) -> None: ...

    def on_maintenance(self, group: str, enabled: bool) -> None: ...


class NullObserver:
    """An observer that ignores everything: subclass it and override the events of interest."""

    def on_check(self, group: str, target: str, check: str, result: CheckResult) -> None:
        pass

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None:
        pass

    def on_placement(self, group: str, placement: Placement, active: str | None,
                     eips: Mapping[str, EipState]) -> None:
        pass

    def on_cloud_error(self, group: str, error: ProviderError | None) -> None:
        pass

    def on_decision(self, group: str, decision: Decision) -> None:
        pass

    def on_failover_started(self, record: FailoverRecord) -> None:
        pass

    def on_failover_finished(self, record: FailoverRecord) -> None:
        pass

    def on_maintenance(self, group: str, enabled: bool) -> None:
        pass


class Observers:
    """Fans each event out to several observers, isolating the engine from their failures."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = list(observers)

    def emit(self, method: str, *args: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, method)(*args)
            except Exception:
                log.exception("observer_failed", observer=type(observer).__name__, event=method)


@dataclass(slots=True)
class TargetRuntime:
    name: str
    binding: Binding
    checks: Sequence[Check]
    health: Health = field(default_factory=Health)
    last_results: dict[str, CheckResult] = field(default_factory=dict)


class GroupRunner:
    """Runs one failover group. The cloud's association is re-read every tick: memory is never trusted alone."""

    def __init__(self, config: GroupConfig, provider: Provider, checks: Mapping[str, Sequence[Check]],
                 observers: Observers) -> None:
        self.config = config
        self.provider = provider
        self.observers = observers
        self.targets = {
            t.name: TargetRuntime(t.name, binding_of(t.binding, provider.kind), checks[t.name]) for t in config.targets
        }
        self.bindings = {name: t.binding for name, t in self.targets.items()}
        self.placement = Placement.UNKNOWN
        self.active: str | None = None
        self.eip_states: Mapping[str, EipState] = {}
        self.cloud_error: ProviderError | None = None
        self.maintenance = False
        self.manual: ManualRequest | None = None
        self.last_move_at: float | None = None
        self.recent_moves: list[float] = []
        self.decision: Decision | None = None
        self.current: FailoverRecord | None = None
        self.last_failover: FailoverRecord | None = None
        self.ticks = 0
        self.last_tick_at: float | None = None
        self.started_at: float | None = None
        self.reconciled = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()

    @property
    def name(self) -> str:
        return self.config.name

    # --- intents, recorded here and carried out by the loop ---
    def request_failover(self, request: ManualRequest) -> None:
        """Record an operator's request; the next tick (started at once) decides and acts on it."""
        self.manual = request
        self.wake()

    def set_maintenance(self, enabled: bool) -> None:
        if enabled != self.maintenance:
            self.maintenance = enabled
            self.observers.emit("on_maintenance", self.name, enabled)
        self.wake()

    # --- the loop ---
    async def run(self, phase: float = 0.0) -> None:
        """Tick every interval until :meth:`request_stop`; the first tick comes after ``phase`` seconds."""
        self.started_at = time.monotonic()
        await run_every(self.config.policy.interval, self._stop, self._wake, self.tick, phase, group=self.name)

    def request_stop(self) -> None:
        """Stop ticking (a running failover goes on: see :meth:`wait_idle`)."""
        self._stop.set()
        self._wake.set()

    def carry_over(self, old: GroupRunner) -> None:
        """Take over the state of the runner this one replaces (after a reload): maintenance, move history,
        the last failover, and the health of every target whose binding and checks are unchanged."""
        self.maintenance = old.maintenance
        self.last_move_at, self.recent_moves = old.last_move_at, list(old.recent_moves)
        self.last_failover = old.last_failover
        old_targets = {t.name: t for t in old.config.targets}
        for target in self.config.targets:
            before = old_targets.get(target.name)
            if before is not None and before == target:
                self.targets[target.name].health = old.targets[target.name].health
                self.targets[target.name].last_results = dict(old.targets[target.name].last_results)

    def wake(self) -> None:
        """Start the next tick now (after a request, at the end of a failover, or to stop)."""
        self._wake.set()

    async def tick(self) -> None:
        """One cycle: checks and describe concurrently, then health, placement and the decision."""
        results, cloud = await asyncio.gather(self._run_checks(), self._read_cloud())
        now = time.monotonic()
        for target, round_results in zip(self.targets.values(), results, strict=True):
            self._fold(target, round_results, now)
        self._place(cloud)
        self._decide(now)
        self.ticks += 1
        self.last_tick_at = now
        self.reconciled.set()

    async def _run_checks(self) -> list[list[CheckResult]]:
        async def run_target(target: TargetRuntime) -> list[CheckResult]:
            return list(await asyncio.gather(*(check.run() for check in target.checks)))

        return list(await asyncio.gather(*(run_target(t) for t in self.targets.values())))

    async def _read_cloud(self) -> Mapping[str, EipState] | ProviderError:
        try:
            async with asyncio.timeout(_DESCRIBE_TIMEOUT):
                return await self.provider.describe(self.config.eips)
        except ProviderError as exc:
            return exc
        except TimeoutError:
            return ProviderError(f"describe gave no answer within {_DESCRIBE_TIMEOUT:g}s", retryable=True)

    def _fold(self, target: TargetRuntime, results: list[CheckResult], now: float) -> None:
        for check, result in zip(target.checks, results, strict=True):
            target.last_results[check.name] = result
            self.observers.emit("on_check", self.name, target.name, check.name, result)
        combined = health.combine(results)
        before = target.health
        p = self.config.policy
        target.health = health.apply(before, combined, rise=p.rise, fall=p.fall, now=now)
        if target.health.state is not before.state:
            self.observers.emit("on_health", self.name, target.name, before, target.health, combined)

    def _place(self, cloud: Mapping[str, EipState] | ProviderError) -> None:
        if isinstance(cloud, ProviderError):
            if self.cloud_error is None or str(self.cloud_error) != str(cloud):
                self.observers.emit("on_cloud_error", self.name, cloud)
            self.cloud_error = cloud
            self.placement, self.active = Placement.UNKNOWN, None
            return
        if self.cloud_error is not None:
            self.observers.emit("on_cloud_error", self.name, None)
            self.cloud_error = None
        placement, active = locate(cloud, self.bindings)
        changed = (placement, active) != (self.placement, self.active) or _bindings(cloud) != _bindings(
            self.eip_states
        )
        self.placement, self.active, self.eip_states = placement, active, cloud
        if changed:
            self.observers.emit("on_placement", self.name, placement, active, cloud)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            targets=tuple(self.targets),
            health={name: t.health for name, t in self.targets.items()},
            placement=self.placement,
            active=self.active,
            maintenance=self.maintenance,
            in_progress=self._task is not None and not self._task.done(),
            last_move_at=self.last_move_at,
            recent_moves=tuple(self.recent_moves),
            manual=self.manual,
        )

    def _decide(self, now: float) -> None:
        snapshot = self.snapshot()
        decision = policy.decide(snapshot, now, self.config.policy)
        request = snapshot.manual if not snapshot.in_progress else None
        if request is not None:
            self.manual = None  # served, whether carried out or refused
        if decision != self.decision:
            self.observers.emit("on_decision", self.name, decision)
            self.decision = decision
        if decision.action is not Action.NONE:
            self._start_failover(decision, now, request)
        elif request is not None:
            refused = self._record(decision.target or request.to or "", Trigger.MANUAL, request)
            self.observers.emit("on_failover_finished", replace(
                refused, result="skipped", error=f"refused: {decision.reason.value}", finished_at=time.time()))

    def _record(self, to: str, trigger: Trigger, request: ManualRequest | None, reason: str = "") -> FailoverRecord:
        return FailoverRecord(
            id=request.id if request is not None and request.id else uuid.uuid4().hex[:12], group=self.name,
            trigger=trigger, reason=request.reason if request is not None and request.reason else reason,
            from_target=self.active, to_target=to, eips=tuple(self.config.eips), started_at=time.time(),
            requested_by=request.requested_by if request is not None else None,
        )

    def _start_failover(self, decision: Decision, now: float, request: ManualRequest | None) -> None:
        assert decision.target is not None
        assert decision.trigger is not None
        self.last_move_at = now
        if decision.trigger is not Trigger.MANUAL:
            window = self.config.policy.max_failovers.window
            self.recent_moves = [t for t in self.recent_moves if now - t < window] + [now]
        record = self._record(decision.target, decision.trigger, request, decision.reason.value)
        self.current = record
        self.observers.emit("on_failover_started", record)
        self._task = asyncio.create_task(self._failover(record), name=f"failover-{self.name}-{record.id}")

    def _fallback(self, to: str) -> list[Binding]:
        """Where EIPs go if a move to ``to`` fails half-way: the current target if healthy, then every other
        healthy target in preference order."""
        healthy = [t for t in self.targets.values() if t.name != to and t.health.state is TargetState.UP]
        healthy.sort(key=lambda t: t.name != self.active)  # stable: the current target first, then preference
        return [t.binding for t in healthy]

    async def _failover(self, record: FailoverRecord) -> None:
        binding = self.bindings[record.to_target]
        outcome = await failover.execute(
            self.provider, record.eips, binding, deadline=self.config.policy.failover_deadline,
            states=self.eip_states, fallback=self._fallback(record.to_target),
        )
        done = replace(record, result="success" if outcome.ok else "failure", error=outcome.error,
                       finished_at=time.time(), attempts=outcome.attempts)
        self.last_move_at = time.monotonic()  # the cooldown runs from the end of the move
        self.current, self.last_failover = None, done
        self.observers.emit("on_failover_finished", done)
        self.wake()  # re-read the cloud now rather than at the next slot

    async def wait_idle(self) -> None:
        """Wait for the running failover, if any, to finish."""
        if self._task is not None:
            await asyncio.shield(self._task)


async def run_every(interval: float, stop: asyncio.Event, wake: asyncio.Event, tick: Callable[[], Awaitable[None]],
                    phase: float = 0.0, **context: str) -> None:
    """Call ``tick`` on a fixed schedule (a slow tick skips slots, it never shifts or bursts) until ``stop`` is set.

    Setting ``wake`` starts the next tick at once. A tick that raises is logged and the schedule goes on.
    """
    loop = asyncio.get_running_loop()
    next_at = loop.time() + phase
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(phase):
            await wake.wait()
    while not stop.is_set():
        wake.clear()
        try:
            await tick()
        except Exception:  # a bug in one tick must not end the monitoring
            log.exception("tick_failed", **context)
        next_at += interval
        now = loop.time()
        if next_at <= now:
            next_at = now + interval - (now - next_at) % interval
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(next_at - now):
                    await wake.wait()


def binding_of(config: BindingConfig, provider_type: str) -> Binding:
    """The model :class:`Binding` of a config binding (Alibaba's instance type defaults to ``EcsInstance``)."""
    instance_type = config.instance_type
    if provider_type == "alibaba" and instance_type is None:
        instance_type = "EcsInstance"
    return Binding(instance_id=config.instance_id, network_interface_id=config.network_interface_id,
                   private_ip=config.private_ip, instance_type=instance_type, mode=config.mode)


def _bindings(states: Mapping[str, EipState]) -> dict[str, Binding | None]:
    return {eip: s.bound_to for eip, s in states.items()}


class Engine:
    """All the groups. ``ready`` is set once every group has completed its first reconcile. Groups can be
    replaced, added and removed while it runs (a reload)."""

    def __init__(self, runners: Iterable[GroupRunner]) -> None:
        self.runners = {r.name: r for r in runners}
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def _start(self, runner: GroupRunner, phase: float = 0.0) -> None:
        self.runners[runner.name] = runner
        self.tasks[runner.name] = asyncio.create_task(runner.run(phase), name=f"group-{runner.name}")

    async def run(self) -> None:
        """Run every group until :meth:`request_stop`; then let running failovers finish (the caller bounds
        that wait)."""
        # groups start spread over their interval, so that their checks do not all fire at the same instant
        count = len(self.runners)
        for i, runner in enumerate(list(self.runners.values())):
            self._start(runner, phase=runner.config.policy.interval * i / count)
        watcher = asyncio.create_task(self._watch_ready())
        try:
            await self.stop.wait()
            for runner in self.runners.values():
                runner.request_stop()
            await asyncio.gather(*self.tasks.values())
        finally:
            watcher.cancel()
            for task in self.tasks.values():
                task.cancel()
        await asyncio.gather(*(r.wait_idle() for r in self.runners.values()))

    async def replace(self, name: str, runner: GroupRunner | None) -> None:
        """Stop group ``name`` (if it runs), letting a running failover finish, then start ``runner`` instead
        (with the old runner's state carried over when it has the same name), or nothing."""
        old = self.runners.pop(name, None)
        if old is not None:
            old.request_stop()
            await self.tasks.pop(name)
            await old.wait_idle()
            if runner is not None:
                runner.carry_over(old)
        if runner is not None:
            self._start(runner)

    async def _watch_ready(self) -> None:
        await asyncio.gather(*(r.reconciled.wait() for r in list(self.runners.values())))
        self.ready.set()

    def stalled(self, now: float, *, strict: bool = False) -> list[str]:
        """The groups whose last completed check round is older than 3 intervals (a wedged loop or cloud call).
        Before its first round a group counts from its start, or, if ``strict``, as stalled."""
        def since(r: GroupRunner) -> float | None:
            return r.last_tick_at if strict else (r.last_tick_at or r.started_at or now)

        return [
            r.name for r in self.runners.values()
            if (last := since(r)) is None or now - last > 3 * r.config.policy.interval
        ]

    def request_stop(self) -> None:
        self.stop.set()
        for runner in self.runners.values():
            runner.wake()
