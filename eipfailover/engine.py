"""The loop: per group, checks and cloud reads on their own schedules, a decision after each, at most one failover.

Each group has a :class:`GroupRunner` with two loops on a fixed schedule of ``policy.interval`` (a slow round skips
slots, it does not shift the schedule): *check rounds* run every check of every target concurrently and fold the
results into rise/fall health; *cloud reads* ``describe`` the EIPs and place them relative to the targets. Neither
waits for the other, so a slow or hanging cloud never delays detection; the decision
(:func:`eipfailover.policy.decide`) uses the freshest cloud view there is, and none after a failed read (it then
waits). It is taken after every round, every read and at once on an operator's request: it is pure and cheap, so
the API never makes the engine do I/O.

A failover runs as its own task while the loops go on; the decision sees it in progress and does nothing else.
Reads that were under way when a failover started or finished are discarded, so a stale view never triggers a
second move. Observers (logs, metrics, hooks) are told of every transition. What a group knows and intends is one
value (:class:`eipfailover.groupstate.GroupState`) that the runner replaces through pure transitions; the runner
itself does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import structlog

from eipfailover import groupstate, health, policy, quorum
from eipfailover.actuator import Actuator
from eipfailover.checks.base import Check, describe_exception
from eipfailover.cluster.base import Coordinator
from eipfailover.config import BindingConfig, GroupConfig
from eipfailover.errors import ProviderError
from eipfailover.events import FailoverRecord, GroupMemory, Observer, StateStore
from eipfailover.groupstate import GroupState
from eipfailover.history import MemoryStore
from eipfailover.model import (
    Action,
    Binding,
    CheckResult,
    CheckStatus,
    Decision,
    EipState,
    Health,
    ManualRequest,
    Placement,
    Reason,
    Snapshot,
    TargetState,
    Trigger,
)
from eipfailover.providers.base import Provider
from eipfailover.status import GroupStatus, TargetStatus

log = structlog.get_logger("eipfailover.engine")

_DESCRIBE_TIMEOUT = 30.0
"""A safety net around one ``describe``; the driver's own connect/read timeouts normally end it far sooner."""
STALE_INTERVALS = 3
"""A group whose last completed check round, or last successful cloud read, is older than this many intervals is
stalled, or blind."""


@dataclass(slots=True)
class TargetRuntime:
    name: str
    binding: Binding
    checks: Sequence[Check]
    health: Health = field(default_factory=Health)
    last_results: dict[str, CheckResult] = field(default_factory=dict)
    settling: bool = False
    """Its state is changing, and its last round was a pass or a failure: re-probe at the fast interval."""


class GroupRunner:
    """Runs one failover group. The cloud's association is re-read every interval: memory is never trusted alone."""

    def __init__(self, config: GroupConfig, provider: Provider, checks: Mapping[str, Sequence[Check]],
                 observers: Observer, store: StateStore | None = None,
                 coordinator: Coordinator | None = None) -> None:
        self.config = config
        self.provider = provider
        self.observers = observers
        self.store: StateStore = store if store is not None else MemoryStore()
        """Where failovers are recorded and the group's memory is kept (default: memory only)."""
        self.targets = {
            t.name: TargetRuntime(t.name, binding_of(t.binding, provider.kind), checks[t.name]) for t in config.targets
        }
        self.bindings = {name: t.binding for name, t in self.targets.items()}
        self.state = GroupState()
        """What the group knows and intends (replaced by the transitions of :mod:`eipfailover.groupstate`)."""
        self.decision: Decision | None = None
        self.ticks = 0
        self.last_tick_at: float | None = None
        self.started_at: float | None = None
        self.reconciled = asyncio.Event()
        """Set once a check round and a cloud read (successful or not) have completed."""
        self._epoch = 0  # bumped when a failover starts and ends: reads that straddle it are discarded
        self._read_done = False
        self._task: asyncio.Task[None] | None = None
        self._check_wake = asyncio.Event()
        self._read_wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._abort = asyncio.Event()
        self.coordinator = coordinator
        """The other daemons of a cluster (None: this daemon acts alone, on its own checks)."""
        self._verdicts: dict[str, Health] = {}
        self.actuator = Actuator(config, provider, self.bindings, self.store, coordinator, self._abort)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def in_progress(self) -> bool:
        return self.state.moving

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # --- intents, recorded here and decided on at once ---
    def request_failover(self, request: ManualRequest) -> None:
        """Record an operator's request and decide on it now."""
        self.state = replace(self.state, manual=request)
        self._decide(time.monotonic())

    def set_maintenance(self, enabled: bool) -> None:
        if enabled != self.state.maintenance:
            self.state = replace(self.state, maintenance=enabled)
            self.observers.on_maintenance(self.name, enabled)
        self._decide(time.monotonic())

    def remember(self, memory: GroupMemory) -> None:
        """Take what the store remembers of this group from before a restart (or a reload that removed it):
        maintenance, the automatic moves still within the ``max_failovers`` window, the end of the last move (the
        cooldown runs from it)."""
        starts, last = _monotonic(memory)
        self.state = groupstate.remembered(self.state, maintenance=memory.maintenance, starts=starts, last=last)
        if memory.maintenance:
            self.observers.on_maintenance(self.name, True)

    def adopt(self, shared: GroupMemory) -> None:
        """Add the cluster's memory of this group's moves (the previous leaders') to this daemon's own: the
        ``max_failovers`` window and the cooldown hold across a change of leader."""
        self.state = groupstate.adopted(self.state, *_monotonic(shared))

    def memory(self) -> GroupMemory:
        """What this group remembers of its moves, in wall-clock time (for the cluster)."""
        ago = time.time() - time.monotonic()
        s = self.state
        return GroupMemory(s.maintenance, tuple(t + ago for t in s.recent_moves),
                           None if s.last_move_at is None else s.last_move_at + ago)

    # --- the loops ---
    async def run(self, phase: float = 0.0) -> None:
        """Run the check and cloud loops until :meth:`request_stop`; the first check round comes after ``phase`` s,
        the first cloud read at once, and the next ones on the provider's grid (see :func:`run_every`)."""
        self.started_at = time.monotonic()
        interval = self.config.policy.interval
        await asyncio.gather(
            run_every(self.check_interval, self._stop, self._check_wake, self.check_round, phase,
                      group=self.name, loop="checks"),
            run_every(lambda: interval, self._stop, self._read_wake, self.read_cloud, aligned=True,
                      group=self.name, loop="cloud"),
        )

    def check_interval(self) -> float:
        """Until the next check round: ``fast_interval`` while a target's state is changing (and its last round
        told something: checks that cannot tell, a throttled cloud API, are not re-asked faster), else
        ``interval``."""
        p = self.config.policy
        return p.fast if any(t.settling for t in self.targets.values()) else p.interval

    def request_stop(self) -> None:
        """Stop the loops and take no new action (a running failover goes on: see :meth:`wait_idle`)."""
        self._stop.set()
        self._check_wake.set()
        self._read_wake.set()

    def abort(self) -> None:
        """Cut a running failover short: it re-attaches what it detached, then ends (used when stopping)."""
        self._abort.set()

    def carry_over(self, old: GroupRunner) -> None:
        """Take over the state of the runner this one replaces (after a reload: see :func:`groupstate.carried`) and
        the health of every target whose binding and checks are unchanged."""
        self.state = groupstate.carried(
            old.state, same_cloud=old.config.eips == self.config.eips and old.provider is self.provider,
            bindings=self.bindings, adopt_foreign=self.config.adopt_foreign)
        old_targets = {t.name: t for t in old.config.targets}
        for target in self.config.targets:
            before = old_targets.get(target.name)
            if before is not None and before == target:
                self.targets[target.name].health = old.targets[target.name].health
                self.targets[target.name].last_results = dict(old.targets[target.name].last_results)

    async def check_round(self) -> None:
        """Run every check of every target concurrently, fold the results into health, then decide."""
        async def run_target(target: TargetRuntime) -> list[CheckResult]:
            return list(await asyncio.gather(*(check.run() for check in target.checks)))

        results = await asyncio.gather(*(run_target(t) for t in self.targets.values()))
        now = time.monotonic()
        for target, round_results in zip(self.targets.values(), results, strict=True):
            self._fold(target, round_results, now)
        self.ticks += 1
        self.last_tick_at = now
        self._publish(now)
        self._decide(now)
        self._maybe_reconciled()

    async def read_cloud(self) -> None:
        """Describe the EIPs, place them, then decide. An answer that straddles a failover is discarded."""
        epoch = self._epoch
        try:
            async with asyncio.timeout(_DESCRIBE_TIMEOUT):
                answer: Mapping[str, EipState] | ProviderError = await self.provider.describe(self.config.eips)
        except ProviderError as exc:
            answer = exc
        except TimeoutError:
            answer = ProviderError(f"describe gave no answer within {_DESCRIBE_TIMEOUT:g}s", retryable=True)
        except Exception as exc:  # a driver bug: the cloud is unreadable, and the trace is worth a log line
            if self.state.cloud.error is None:
                log.exception("describe_crashed", group=self.name)
            answer = ProviderError(f"describe failed: internal error: {describe_exception(exc)}", retryable=True)
        if epoch != self._epoch:
            return
        now = time.monotonic()
        error = self.state.cloud.error
        if isinstance(answer, ProviderError):
            if error is None or str(error) != str(answer):
                self.observers.on_cloud_error(self.name, answer)
            self.state = groupstate.read_failed(self.state, answer)
        else:
            if error is not None:
                self.observers.on_cloud_error(self.name, None)
            self._see(answer, at=now)
        self._read_done = True
        self._publish(now)
        self._decide(now)
        self._maybe_reconciled()

    def _publish(self, now: float) -> None:
        """Tell the other daemons how this one sees the targets (``unknown`` for all while it cannot see the cloud,
        or sees every target down)."""
        if self.coordinator is not None:
            local = {name: t.health for name, t in self.targets.items()}
            self.coordinator.publish(self.name, quorum.vote(local, blind=self.cloud_problem(now) is not None))

    def health(self, now: float) -> dict[str, Health]:
        """The health the decision uses: this daemon's own, or in a cluster, each target's state as the observers'
        quorum sees it (``since``: when that verdict last changed)."""
        local = {name: t.health for name, t in self.targets.items()}
        if self.coordinator is None:
            return local
        merged = {}
        for name, own in local.items():
            state = self.coordinator.verdict(self.name, name, own.state)
            before = self._verdicts.get(name)
            if before is None or before.state is not state:
                before = self._verdicts[name] = Health(state, since=own.since if before is None else now)
            merged[name] = replace(own, state=state, since=before.since)
        return merged

    def invalidate(self) -> None:
        """Forget the cloud's view and read it again before any decision (a daemon that has just become leader
        reconciles from the cloud's actual state)."""
        self.state = groupstate.stale(self.state)
        self._epoch += 1
        self._read_wake.set()

    def poke(self) -> None:
        """Decide again now (the cluster's views or leadership changed)."""
        if not self._stop.is_set():
            self._decide(time.monotonic())

    def _maybe_reconciled(self) -> None:
        if self._read_done and self.ticks:
            self.reconciled.set()

    def _fold(self, target: TargetRuntime, results: list[CheckResult], now: float) -> None:
        for check, result in zip(target.checks, results, strict=True):
            target.last_results[check.name] = result
            self.observers.on_check(self.name, target.name, check.name, result)
        combined = health.combine(results)
        before = target.health
        p = self.config.policy
        target.health = health.apply(before, combined, rise=p.rise, fall=p.fall, now=now)
        target.settling = target.health.changing and combined.status is not CheckStatus.UNKNOWN
        if target.health.state is not before.state:
            self.observers.on_health(self.name, target.name, before, target.health, combined)

    def _see(self, states: Mapping[str, EipState], at: float | None = None) -> None:
        """Take ``states`` as the cloud's current view (see :func:`groupstate.seen`), and tell the observers if the
        EIPs are somewhere new."""
        before = self.state.cloud
        self.state = groupstate.seen(self.state, states, self.bindings, adopt_foreign=self.config.adopt_foreign, at=at)
        if (self.state.cloud.location, _bindings(states)) != (before.location, _bindings(before.states)):
            self.observers.on_placement(self.name, self.state.cloud.location, states)

    def cloud_problem(self, now: float) -> str | None:
        """Why this group cannot see the cloud now (None if it can): no successful read yet, or the last one older
        than 3 intervals."""
        cloud = self.state.cloud
        error = f": {cloud.error}" if cloud.error is not None else ""
        if cloud.read_ok_at is None:
            return "no successful cloud read yet" + (error or " (waiting for the first answer)")
        age = now - cloud.read_ok_at
        if age > STALE_INTERVALS * self.config.policy.interval:
            return f"last successful cloud read {age:.1f}s ago (over {STALE_INTERVALS} intervals){error}"
        return None

    def status(self, now: float) -> GroupStatus:
        """A frozen view of the group for the API and systemd."""
        verdicts = self.health(now)
        views = self.coordinator.observers(self.name) if self.coordinator is not None else {}
        s, cloud = self.state, self.state.cloud
        return GroupStatus(
            name=self.name, provider=self.config.provider, policy=self.config.policy,
            adopt_foreign=self.config.adopt_foreign, active=cloud.active, placement=cloud.placement,
            location=cloud.managed, foreign=cloud.location.foreign, eip_states=cloud.states,
            maintenance=s.maintenance, reconciled=self.reconciled.is_set(),
            cloud_error=None if cloud.error is None else str(cloud.error),
            cloud_read_age=None if cloud.read_ok_at is None else now - cloud.read_ok_at,
            cloud_problem=self.cloud_problem(now),
            started=cloud.read_ok_at is not None or cloud.error is not None,
            decision=self.decision, current=s.current, last_failover=s.last_failover,
            last_tick_age=None if self.last_tick_at is None else now - self.last_tick_at,
            targets=tuple(
                TargetStatus(t.name, t.binding, t.health, verdicts[t.name], dict(t.last_results),
                             {node: view.get(t.name, "unknown") for node, view in views.items()})
                for t in self.targets.values()),
        )

    def snapshot(self) -> Snapshot:
        s, cloud = self.state, self.state.cloud
        known = cloud.placement is not Placement.UNKNOWN
        return Snapshot(
            targets=tuple(self.targets),
            health=self.health(time.monotonic()),
            placement=cloud.managed.placement if known else Placement.UNKNOWN,
            active=cloud.active,
            holders=cloud.managed.holders if known else (),
            last_active=s.last_active,
            adopt_foreign=self.config.adopt_foreign,
            foreign=bool(cloud.location.foreign) if known else False,
            repair_hold_until=s.repair_hold_until,
            maintenance=s.maintenance,
            in_progress=s.moving,
            last_move_at=s.last_move_at,
            recent_moves=s.recent_moves,
            manual=s.manual,
        )

    def movable(self, force: bool = False) -> tuple[str, ...]:
        """The EIPs a move takes: all but those on a resource outside the group, unless ``adopt_foreign`` (or a
        forced manual request) says to take those too."""
        if force or self.config.adopt_foreign:
            return tuple(self.config.eips)
        return tuple(e for e in self.config.eips if e not in self.state.cloud.location.foreign)

    def plan(self, snapshot: Snapshot, now: float) -> tuple[Decision, tuple[str, ...]]:
        """The decision on ``snapshot`` (:func:`eipfailover.policy.decide`) with what only the runner knows: no action
        while stopping, and the EIPs the move would take (none left: no move)."""
        decision = policy.decide(snapshot, now, self.config.policy)
        eips = self.movable(snapshot.manual is not None and snapshot.manual.force)
        if decision.action is not Action.NONE and self._stop.is_set():
            decision = Decision(Action.NONE, Reason.STOPPING, decision.target)
        hold = self.state.fence_hold_until
        if decision.action is not Action.NONE and hold is not None and now < hold:  # the fence refused a move
            decision = Decision(Action.NONE, Reason.COORDINATION_LOST, decision.target)  # just now: wait an interval
        if self.coordinator is not None and not self.coordinator.available():
            decision = Decision(Action.NONE, Reason.COORDINATION_LOST, decision.target)  # nobody acts without it
        elif decision.action is not Action.NONE and self.coordinator is not None and not self.coordinator.acting():
            decision = Decision(Action.NONE, Reason.NOT_LEADER, decision.target)
        if decision.action is not Action.NONE and not eips:
            decision = Decision(Action.NONE, Reason.FOREIGN, decision.target)
        return decision, eips

    def _decide(self, now: float) -> None:
        snapshot = self.snapshot()
        decision, eips = self.plan(snapshot, now)
        request = snapshot.manual if not snapshot.in_progress else None
        if request is not None:
            self.state = replace(self.state, manual=None)  # served, whether carried out or refused
        if decision != self.decision:
            self.observers.on_decision(self.name, decision)
            self.decision = decision
        if decision.action is not Action.NONE:
            self._start_failover(decision, now, request, eips)
        elif request is not None:
            self.refuse(request, decision)

    def refuse(self, request: ManualRequest, decision: Decision) -> None:
        """Record an operator's request that is not carried out (in the history, the log and the metrics)."""
        refused = self._record(decision.target or request.to or "", Trigger.MANUAL, request,
                               self.movable(request.force))
        self.observers.on_failover_finished(replace(
            refused, result="skipped", error=f"refused: {decision.reason.value}", finished_at=time.time()))

    def _record(self, to: str, trigger: Trigger, request: ManualRequest | None, eips: tuple[str, ...],
                reason: str = "") -> FailoverRecord:
        return FailoverRecord(
            id=request.id if request is not None and request.id else uuid.uuid4().hex[:12], group=self.name,
            trigger=trigger, reason=request.reason if request is not None and request.reason else reason,
            from_target=self.state.cloud.active, to_target=to, eips=eips, started_at=time.time(),
            requested_by=request.requested_by if request is not None else None,
        )

    def _start_failover(self, decision: Decision, now: float, request: ManualRequest | None,
                        eips: tuple[str, ...]) -> None:
        assert decision.target is not None
        assert decision.trigger is not None
        counted = decision.reason is not Reason.REPAIR  # a repair neither waits for the holds nor arms them
        windowed = counted and decision.trigger is not Trigger.MANUAL
        record = self._record(decision.target, decision.trigger, request, eips, decision.reason.value)
        self.state = groupstate.move_started(self.state, record, now, counted=counted, windowed=windowed,
                                             window=self.config.policy.max_failovers.window)
        term = self.coordinator.term() if self.coordinator is not None else None  # its calls go out in this one
        if counted and self.coordinator is not None:  # stored with the first fencing proof, before any cloud call
            self.coordinator.share_memory(self.name, self.memory(), proof_of=record.id)
        self._epoch += 1
        self.observers.on_failover_started(record)
        cloud = self.state.cloud
        states = cloud.states if cloud.fresh and cloud.error is None else None
        self._task = asyncio.create_task(self._failover(record, states, self._fallback(record),
                                                        decision.reason, counted, windowed, term),
                                         name=f"failover-{self.name}-{record.id}")

    def _fallback(self, record: FailoverRecord) -> list[Binding]:
        """Where detached EIPs go if the move fails half-way: where they were if that target is healthy, every other
        healthy target in preference order, where they were anyway, and the intended target last."""
        up = [n for n, h in self.health(time.monotonic()).items()
              if h.state is TargetState.UP and n != record.to_target]
        order = sorted(up, key=lambda n: n != record.from_target)  # stable: the previous target first
        if record.from_target is not None and record.from_target not in order:
            order.append(record.from_target)
        return [self.bindings[n] for n in (*order, record.to_target)]

    async def _failover(self, record: FailoverRecord, states: Mapping[str, EipState] | None,
                        fallback: list[Binding], reason: Reason, counted: bool, windowed: bool,
                        term: int | None) -> None:
        done, outcome = await self.actuator.execute(record, states, fallback, reason, self._sources(record.to_target),
                                                    counted=counted, windowed=windowed, term=term)
        done = replace(done, finished_at=time.time())
        repair, fenced_out = reason is Reason.REPAIR, outcome.code == "NotLeader"
        self.state = groupstate.move_finished(self.state, done, time.monotonic(), ok=outcome.ok, repair=repair,
                                              detached=outcome.detached, fenced_out=fenced_out,
                                              sent=outcome.sent, interval=self.config.policy.interval)
        if groupstate.gives_back(repair=repair, fenced_out=fenced_out, sent=outcome.sent):
            self.store.uncount(record.id)  # it changed nothing: not after a restart either
        if not repair and self.coordinator is not None:  # the next leader holds the same cooldown and window
            self.coordinator.share_memory(self.name, self.memory())
        self._epoch += 1
        self.observers.on_failover_finished(done)
        same_term = self.coordinator is None or self.coordinator.term() == term
        if outcome.ok and outcome.states is not None and same_term:  # the verification's: the freshest view there is
            self._see({**self.state.cloud.states, **outcome.states})  # (of the EIPs it moved: the others as seen)
            self._decide(time.monotonic())
            if not set(self.config.eips) <= set(outcome.states):
                self._read_wake.set()  # the EIPs it did not move: read them now
        else:
            self.state = groupstate.stale(self.state)  # wait for a new read before deciding anything
            self._read_wake.set()

    def journaled(self, record: FailoverRecord) -> contextlib.AbstractContextManager[None]:
        """Each cloud call made inside recorded in the store before it is sent (see :class:`Actuator`)."""
        return self.actuator.journaled(record)

    def _sources(self, to: str) -> list[str]:
        """The targets a move to ``to`` takes EIPs off: those holding any (where the cloud cannot be read, the last
        active target)."""
        s = self.state
        if s.cloud.placement is Placement.UNKNOWN:
            return [s.last_active] if s.last_active is not None and s.last_active != to else []
        return [holder for holder in s.cloud.location.holders if holder != to]

    async def wait_idle(self) -> None:
        """Wait for the running failover, if any, to finish."""
        if self._task is not None:
            await asyncio.shield(self._task)


async def run_every(interval: Callable[[], float], stop: asyncio.Event, wake: asyncio.Event,
                    tick: Callable[[], Awaitable[None]], phase: float = 0.0, *, aligned: bool = False,
                    **context: str) -> None:
    """Call ``tick`` on a fixed schedule until ``stop`` is set; ``interval()`` is the time to the next tick, asked
    after each one. A tick that ends late is followed by the next at once (one, never a burst of catching up), and
    the schedule goes on from there.

    With ``aligned``, the first tick is at once and the next ones on multiples of the interval on the loop's clock
    (each on a later one than the last, whatever the timer's resolution): every loop of one interval ticks at the
    same instants (the groups' cloud reads then make one batch). Setting ``wake`` starts the next tick at once. A
    tick that raises is logged and the schedule goes on.
    """
    loop = asyncio.get_running_loop()
    next_at = loop.time() + phase
    slot = math.floor(next_at / interval()) if aligned else 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(phase):
            await wake.wait()
    while not stop.is_set():
        wake.clear()
        try:
            await tick()
        except Exception:  # a bug in one tick must not end the monitoring
            log.exception("tick_failed", **context)
        period = interval()
        now = loop.time()
        if aligned:
            slot = max(math.floor(now / period) + 1, slot + 1)
            next_at = slot * period
        else:
            next_at = max(next_at + period, now)
        if not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_at):  # absolute: a pause since ``now`` must not shift it
                    await wake.wait()


def binding_of(config: BindingConfig, provider_type: str) -> Binding:
    """The model :class:`Binding` of a config binding (Alibaba's instance type defaults to ``EcsInstance``)."""
    instance_type, mode = config.instance_type, config.mode
    if provider_type == "alibaba" and instance_type is None:
        instance_type = "EcsInstance"
    if provider_type == "alibaba" and config.network_interface_id is not None:
        mode = "BINDED"  # an ENI that moves between instances with its EIP
    return Binding(instance_id=config.instance_id, network_interface_id=config.network_interface_id,
                   private_ip=config.private_ip, instance_type=instance_type, mode=mode)


def _monotonic(memory: GroupMemory) -> tuple[list[float], float | None]:
    """A memory's wall-clock window starts and last move, as monotonic times. A time ahead of now (the clock was
    stepped back since, or the memory comes from a host ahead) counts as now: it holds the group for one cooldown
    or window at most, never for as long as the clock was off."""
    now = time.monotonic()
    ago = time.time() - now
    starts = [min(t - ago, now) for t in memory.window_starts]
    return starts, None if memory.last_move_at is None else min(memory.last_move_at - ago, now)


def _bindings(states: Mapping[str, EipState]) -> dict[str, Binding | None]:
    return {eip: s.bound_to for eip, s in states.items()}


class Engine:
    """All the groups. ``ready`` is set once every group has completed its first check round and cloud read. Groups
    can be replaced, added and removed while it runs (a reload) without any group waiting for another."""

    def __init__(self, runners: Iterable[GroupRunner], on_removed: Callable[[str], None] | None = None,
                 coordinator: Coordinator | None = None) -> None:
        self.runners = {r.name: r for r in runners}
        self.coordinator = coordinator
        """The cluster (None: this daemon acts alone)."""
        self.on_removed = on_removed
        """Called with a group's name once a removed group has finished its last failover."""
        self.ready = asyncio.Event()
        self.stop = asyncio.Event()
        self._loops: dict[GroupRunner, asyncio.Task[None]] = {}
        self._handovers: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()

    def _start(self, runner: GroupRunner, phase: float = 0.0) -> None:
        self.runners[runner.name] = runner
        self._loops[runner] = asyncio.create_task(runner.run(phase), name=f"group-{runner.name}")
        self._changed.set()

    def _retire(self, runner: GroupRunner) -> None:
        """Stop a runner's loops now: a check round or a cloud read under way is abandoned (both only read)."""
        runner.request_stop()
        loop = self._loops.pop(runner, None)
        if loop is not None:
            loop.cancel()

    async def run(self) -> None:
        """Run every group until :meth:`request_stop`; then let running failovers finish (the caller bounds that
        wait, and may :meth:`abort` them). Check rounds and cloud reads under way are abandoned at once."""
        # groups start spread over their interval, so that their checks do not all fire at the same instant
        count = len(self.runners)
        for i, runner in enumerate(list(self.runners.values())):
            self._start(runner, phase=runner.config.policy.interval * i / count)
        watcher = asyncio.create_task(self._watch_ready())
        try:
            await self.stop.wait()
        finally:
            watcher.cancel()
            for handover in self._handovers.values():
                handover.cancel()
            loops = list(self._loops.values())
            for runner in list(self._loops):
                self._retire(runner)
            await asyncio.gather(*loops, return_exceptions=True)
        await asyncio.gather(*(r.wait_idle() for r in self.runners.values()))

    def apply(self, changes: Mapping[str, GroupRunner | None]) -> None:
        """A reload: replace each named group with its new runner (None: remove it), carrying its state over. Every
        old runner stops at once; one that is moving EIPs stays (visible, with its failover) until the move ends,
        then hands over. A runner whose EIPs some stopping group is still moving (a rename, or an EIP given to
        another group) starts once that move ends. No other group waits."""
        for name in changes:
            pending = self._handovers.pop(name, None)
            if pending is not None:
                pending.cancel()
            if name in self.runners:
                self._retire(self.runners[name])
        for name, runner in changes.items():
            old = self.runners.get(name)
            eips = set(runner.config.eips) if runner is not None else set()
            moving = [r for r in self.runners.values()
                      if r.in_progress and (r is old or (r.stopping and eips & set(r.config.eips)))]
            if not moving:
                self._hand_over(name, old, runner)
                continue
            if runner is not None:
                log.info("group_waiting", group=name, detail="starts once a move of its EIPs ends",
                         waiting_for=[r.name for r in moving])
            self._handovers[name] = asyncio.create_task(self._hand_over_when_idle(name, old, runner, moving))

    async def _hand_over_when_idle(self, name: str, old: GroupRunner | None, runner: GroupRunner | None,
                                   moving: list[GroupRunner]) -> None:
        await asyncio.gather(*(r.wait_idle() for r in moving))
        self._handovers.pop(name, None)
        self._hand_over(name, old, runner)

    def _hand_over(self, name: str, old: GroupRunner | None, runner: GroupRunner | None) -> None:
        if self.stop.is_set():
            return
        if old is not None and self.runners.get(name) is old:
            del self.runners[name]
        if runner is not None:
            if old is not None:
                runner.carry_over(old)
            elif self.coordinator is not None and (shared := self.coordinator.memory(name)) is not None:
                runner.adopt(shared)  # a group added back: the cluster's memory of its moves
            self._start(runner)
        else:
            if self.coordinator is not None:  # gone: it no longer votes
                self.coordinator.forget(name)
            if self.on_removed is not None:  # (also a group that was still waiting to start)
                self.on_removed(name)
        self._changed.set()

    async def _watch_ready(self) -> None:
        """Set ``ready`` once every group that runs has reconciled (groups replaced meanwhile included)."""
        while True:
            waiting = [r for r in self.runners.values() if not r.stopping and not r.reconciled.is_set()]
            if not waiting:
                self.ready.set()
                return
            self._changed.clear()
            events = [asyncio.ensure_future(e.wait()) for e in (*(r.reconciled for r in waiting), self._changed)]
            try:
                await asyncio.wait(events, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for event in events:
                    event.cancel()

    def stalled(self, now: float, *, strict: bool = False) -> list[str]:
        """The groups whose last completed check round is older than 3 intervals (a wedged loop). Before its first
        round a group counts from its start, or, if ``strict``, as stalled. Groups being replaced do not count."""
        def since(r: GroupRunner) -> float | None:
            return r.last_tick_at if strict else (r.last_tick_at or r.started_at or now)

        def late(r: GroupRunner) -> bool:
            last = since(r)
            return last is None or now - last > STALE_INTERVALS * r.config.policy.interval

        return [r.name for r in self.runners.values() if not r.stopping and late(r)]

    def blind(self, now: float) -> dict[str, str]:
        """The groups that cannot see the cloud now, and why (see :meth:`GroupRunner.cloud_problem`)."""
        problems = {r.name: r.cloud_problem(now) for r in self.runners.values() if not r.stopping}
        return {name: problem for name, problem in problems.items() if problem is not None}

    def at_risk(self) -> dict[str, list[str]]:
        """The EIPs that may be detached if the process ends now: those of every failover still running (where a
        move detaches first; otherwise those it is repairing), and those a finished one could not secure."""
        risky = {}
        for r in self.runners.values():
            current = r.state.current
            moving = current.eips if current is not None else ()
            if r.provider.atomic_moves and current is not None and current.from_target is not None:
                moving = ()  # an atomic move of attached EIPs cannot leave them detached
            eips = sorted({*moving, *r.state.left_detached})
            if eips:
                risky[r.name] = eips
        return risky

    def cluster_changed(self) -> None:
        """The cluster's views, maintenance switches or leadership changed: take the switches, decide again."""
        for runner in list(self.runners.values()):
            if runner.stopping:
                continue
            shared = self.coordinator.maintenance(runner.name) if self.coordinator is not None else None
            if shared is not None and shared != runner.state.maintenance:
                runner.set_maintenance(shared)
            else:
                runner.poke()

    def leading(self) -> None:
        """This daemon has just become the leader: every group takes the cluster's memory of its moves, and
        re-reads the cloud before it decides anything."""
        for runner in self.runners.values():
            shared = self.coordinator.memory(runner.name) if self.coordinator is not None else None
            if shared is not None:
                runner.adopt(shared)
            runner.invalidate()

    def abort(self) -> None:
        """Cut every running failover short (each re-attaches what it detached)."""
        for runner in self.runners.values():
            runner.abort()

    def request_stop(self) -> None:
        self.stop.set()
        for runner in self.runners.values():
            runner.request_stop()
