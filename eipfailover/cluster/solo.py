"""``cluster`` absent: one daemon, which always acts on its own checks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from eipfailover.cluster.base import ClusterStatus, Coordinator, Member
from eipfailover.events import GroupMemory
from eipfailover.model import TargetState


def _always() -> bool:
    return True


class Solo(Coordinator):
    def __init__(self, node: str = "local") -> None:
        self.node = node

    def acting(self) -> bool:
        return True

    def available(self) -> bool:
        return True

    def verdict(self, group: str, target: str, local: TargetState) -> TargetState:
        return local

    def publish(self, group: str, views: Mapping[str, TargetState]) -> None:
        pass

    def forget(self, group: str) -> None:
        pass

    def observers(self, group: str) -> dict[str, dict[str, str]]:
        return {}

    def maintenance(self, group: str) -> bool | None:
        return None

    async def set_maintenance(self, group: str, enabled: bool) -> None:
        pass

    def memory(self, group: str) -> GroupMemory | None:
        return None

    def share_memory(self, group: str, memory: GroupMemory, *, proof_of: str | None = None) -> None:
        pass

    def term(self) -> int | None:
        return None

    async def fence(self, group: str, failover_id: str, operation: str, seconds: float,
                    term: int | None = None) -> Callable[[], bool]:
        return _always

    def status(self) -> ClusterStatus:
        return ClusterStatus(self.node, self.node, None, None, (Member(self.node, None, True, None),), "ok", True)

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def close(self, release: bool = True) -> None:
        pass
