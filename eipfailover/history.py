"""The failover history: the most recent records, started, finished or refused, newest first."""

from __future__ import annotations

from collections import OrderedDict

from eipfailover.events import FailoverRecord, NullObserver


class History(NullObserver):
    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.records: OrderedDict[str, FailoverRecord] = OrderedDict()

    def _put(self, record: FailoverRecord) -> None:
        self.records[record.id] = record
        while len(self.records) > self.limit:
            self.records.popitem(last=False)

    def on_failover_started(self, record: FailoverRecord) -> None:
        self._put(record)

    def on_failover_finished(self, record: FailoverRecord) -> None:
        self._put(record)

    def query(self, group: str | None = None, limit: int = 100) -> list[FailoverRecord]:
        out = []
        for record in reversed(self.records.values()):
            if group is None or record.group == group:
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    def get(self, failover_id: str) -> FailoverRecord | None:
        return self.records.get(failover_id)
