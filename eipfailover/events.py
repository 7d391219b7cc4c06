"""What the engine tells the outside world: the failover record and the typed observer interface.

Observers (logs, metrics, history, hooks, systemd) implement :class:`Observer`, usually by subclassing
:class:`NullObserver`; :class:`Observers` fans each event out to all of them, and an observer that raises is
logged and ignored, never allowed to break the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from eipfailover.errors import ProviderError
from eipfailover.model import CheckResult, Decision, EipState, Health, Location, Trigger

log = structlog.get_logger("eipfailover.engine")


@dataclass(frozen=True, slots=True)
class Step:
    """One mutating cloud call of a failover, as the journal recorded it (``result`` ``sent`` until answered)."""

    operation: str
    sent_at: float
    seconds: float | None
    result: str


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
    result: str = "running"
    """running | success | failure | skipped (a manual request refused) | dry_run | interrupted (the daemon died
    during it: reconciled at the next start)"""
    error: str = ""
    finished_at: float | None = None
    attempts: int = 0
    steps: tuple[Step, ...] = ()
    """The cloud calls it sent (from the journal; empty in memory)."""

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at


@dataclass(frozen=True, slots=True)
class GroupMemory:
    """What a group remembers across a restart (from the journal)."""

    maintenance: bool = False
    window_starts: tuple[float, ...] = ()
    """Wall-clock starts of the automatic moves that count against ``max_failovers``, within its window."""
    last_move_at: float | None = None
    """Wall-clock end of the last move that arms the cooldown."""


class Observer(Protocol):
    """What the engine tells the outside world. Every method is called from the event loop and must not block."""

    def on_check(self, group: str, target: str, check: str, result: CheckResult) -> None: ...

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None: ...

    def on_placement(self, group: str, location: Location, eips: Mapping[str, EipState]) -> None: ...

    def on_cloud_error(self, group: str, error: ProviderError | None) -> None: ...

    def on_decision(self, group: str, decision: Decision) -> None: ...

    def on_failover_started(self, record: FailoverRecord) -> None: ...

    def on_failover_finished(self, record: FailoverRecord) -> None: ...

    def on_maintenance(self, group: str, enabled: bool) -> None: ...


class StateStore(Observer, Protocol):
    """What a daemon remembers of its groups and their failovers: the SQLite journal
    (:class:`eipfailover.journal.Journal`), or memory (:class:`eipfailover.history.MemoryStore`) when there is none.
    It is also an :class:`Observer`: it records every started and finished failover and every maintenance change.
    (In a cluster, the intents every daemon must share, the maintenance switch and the leader's fencing intent, live
    in the coordination store: see :mod:`eipfailover.cluster`.)"""

    async def begin(self, record: FailoverRecord, *, counted: bool, windowed: bool) -> None:
        """Record the start before any cloud call; ``counted``: it arms the cooldown; ``windowed``: it counts
        against max_failovers."""

    async def step(self, failover_id: str, operation: str) -> Callable[[str, float], None]:
        """Record a call about to be sent; returns what records its ``(result, seconds)``."""

    def uncount(self, failover_id: str) -> None:
        """The failover changed nothing (the fence refused it before any call went out): it neither arms the
        cooldown nor counts against max_failovers."""

    async def remember(self, windows: Mapping[str, float]) -> dict[str, GroupMemory]:
        """Each group's memory (its ``max_failovers`` window in ``windows``): maintenance, moves within the window,
        the end of the last move."""

    async def query(self, group: str | None = None, limit: int = 100) -> list[FailoverRecord]:
        """The newest records first (``/v1/history``)."""


class NullObserver:
    """An observer that ignores everything: subclass it and override the events of interest."""

    def on_check(self, group: str, target: str, check: str, result: CheckResult) -> None:
        pass

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None:
        pass

    def on_placement(self, group: str, location: Location, eips: Mapping[str, EipState]) -> None:
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

    def _fan(self, event: str, call: Callable[[Observer], None]) -> None:
        for observer in list(self.observers):
            try:
                call(observer)
            except Exception:
                log.exception("observer_failed", observer=type(observer).__name__, event=event)

    def on_check(self, group: str, target: str, check: str, result: CheckResult) -> None:
        self._fan("on_check", lambda o: o.on_check(group, target, check, result))

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None:
        self._fan("on_health", lambda o: o.on_health(group, target, before, after, cause))

    def on_placement(self, group: str, location: Location, eips: Mapping[str, EipState]) -> None:
        self._fan("on_placement", lambda o: o.on_placement(group, location, eips))

    def on_cloud_error(self, group: str, error: ProviderError | None) -> None:
        self._fan("on_cloud_error", lambda o: o.on_cloud_error(group, error))

    def on_decision(self, group: str, decision: Decision) -> None:
        self._fan("on_decision", lambda o: o.on_decision(group, decision))

    def on_failover_started(self, record: FailoverRecord) -> None:
        self._fan("on_failover_started", lambda o: o.on_failover_started(record))

    def on_failover_finished(self, record: FailoverRecord) -> None:
        self._fan("on_failover_finished", lambda o: o.on_failover_finished(record))

    def on_maintenance(self, group: str, enabled: bool) -> None:
        self._fan("on_maintenance", lambda o: o.on_maintenance(group, enabled))
