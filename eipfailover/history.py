"""The state store of a daemon without a journal (``state_directory: null``): everything in memory, for the life of
the process. Also the journal's in-memory mirror, which its reads fall back to."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from eipfailover.events import FailoverRecord, GroupMemory, NullObserver


def _unrecorded(result: str, seconds: float) -> None:
    pass


class MemoryStore(NullObserver):
    """The most recent failover records (started, finished or refused), the maintenance switches and which moves
    count against the holds: a :class:`~eipfailover.events.StateStore` that a restart forgets."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.records: OrderedDict[str, FailoverRecord] = OrderedDict()
        self.maintenance: dict[str, bool] = {}
        self._holds: dict[str, tuple[bool, bool]] = {}
        """failover id -> (counted, windowed), as :meth:`begin` was told."""

    def _put(self, record: FailoverRecord) -> None:
        self.records[record.id] = record
        while len(self.records) > self.limit:
            gone, _ = self.records.popitem(last=False)
            self._holds.pop(gone, None)

    def on_failover_started(self, record: FailoverRecord) -> None:
        self._put(record)

    def on_failover_finished(self, record: FailoverRecord) -> None:
        self._put(record)

    def on_maintenance(self, group: str, enabled: bool) -> None:
        self.maintenance[group] = enabled

    async def begin(self, record: FailoverRecord, *, counted: bool, windowed: bool) -> None:
        self._holds[record.id] = (counted, windowed)

    async def step(self, failover_id: str, operation: str) -> Callable[[str, float], None]:
        return _unrecorded

    def uncount(self, failover_id: str) -> None:
        if failover_id in self._holds:
            self._holds[failover_id] = (False, False)

    async def remember(self, windows: Mapping[str, float]) -> dict[str, GroupMemory]:
        memory = {}
        for group, window in windows.items():
            mine = [r for r in self.records.values() if r.group == group and r.id in self._holds]
            starts = tuple(r.started_at for r in mine if self._holds[r.id][1] and time.time() - r.started_at < window)
            ends = [r.finished_at or r.started_at for r in mine if self._holds[r.id][0]]
            memory[group] = GroupMemory(self.maintenance.get(group, False), starts, max(ends, default=None))
        return memory

    def recent(self, group: str | None = None, limit: int = 100) -> list[FailoverRecord]:
        """The newest records first."""
        out = []
        for record in reversed(self.records.values()):
            if group is None or record.group == group:
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    async def query(self, group: str | None = None, limit: int = 100) -> list[FailoverRecord]:
        return self.recent(group, limit)

    def get(self, failover_id: str) -> FailoverRecord | None:
        return self.records.get(failover_id)
