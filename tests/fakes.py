"""Fakes that implement the real base classes (never patches of the objects under test)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from eipfailover.checks.base import Check
from eipfailover.model import Binding, CheckStatus, EipState
from eipfailover.providers.base import InstanceState, Provider


class FakeProvider(Provider):
    """An in-memory cloud. ``faults[operation]`` is a list of exceptions raised by the next calls (not only
    :class:`ProviderError`: a driver may have bugs); ``lag`` is how many describes still show the old association
    after a move (an eventually consistent cloud)."""

    def __init__(self, placement: dict[str, Binding | None], *, lag: int = 0, two_step: bool = False) -> None:
        super().__init__("fake")
        self.placement = dict(placement)
        self.faults: dict[str, list[Exception]] = {}
        self.lag = lag
        self.calls: list[tuple[str, tuple[str, ...], Binding | None]] = []
        self.running: dict[str, bool] = {}
        self._pending: dict[str, tuple[Binding, int]] = {}
        self.move_delay = 0.0
        self.two_step = two_step
        """Moves detach first, then wait ``move_delay``, then attach (like Alibaba); otherwise they are atomic."""
        self.atomic_moves = not two_step
        self.describe_delay = 0.0
        self.hold: asyncio.Event | None = None
        """The next describe answers what it saw only once this event is set."""

    @classmethod
    def from_config(cls, name: str, config: object) -> FakeProvider:
        raise NotImplementedError

    def _fault(self, operation: str) -> None:
        queue = self.faults.get(operation)
        if queue:
            raise queue.pop(0)

    async def read_eips(self, eips: Sequence[str]) -> dict[str, EipState]:
        """(Called with the EIPs of every describe waiting at that moment, sorted.)"""
        self.calls.append(("describe", tuple(eips), None))
        self._fault("describe")
        for eip, (binding, left) in list(self._pending.items()):
            if left <= 0:
                self.placement[eip] = binding
                del self._pending[eip]
            else:
                self._pending[eip] = (binding, left - 1)
        seen = {e: EipState(e, f"192.0.2.{i}", self.placement[e]) for i, e in enumerate(eips) if e in self.placement}
        hold, self.hold = self.hold, None
        if hold is not None:
            await hold.wait()
        if self.describe_delay:
            await asyncio.sleep(self.describe_delay)
        return seen

    async def move(self, eips: Sequence[str], to: Binding) -> None:
        self.calls.append(("move", tuple(eips), to))
        if self.two_step:
            for eip in eips:
                self.placement[eip] = None
        if self.move_delay:
            await asyncio.sleep(self.move_delay)
        self._fault("move")
        for eip in eips:
            if self.lag:
                self._pending[eip] = (to, self.lag)
            else:
                self.placement[eip] = to

    async def instance_state(self, binding: Binding) -> InstanceState:
        self._fault("instance_state")
        running = self.running.get(str(binding), True)
        return InstanceState(running, f"{binding} is {'running' if running else 'stopped'}")

    def moves(self) -> list[tuple[tuple[str, ...], Binding | None]]:
        return [(eips, to) for op, eips, to in self.calls if op == "move"]


class ScriptedCheck(Check):
    """A check whose next results are set by the test (the default result holds when the script is empty)."""

    def __init__(self, name: str = "scripted", status: CheckStatus = CheckStatus.OK) -> None:
        super().__init__(name, 1.0)
        self.status = status
        self.script: list[CheckStatus] = []

    @classmethod
    def from_config(cls, config: object, name: str, timeout: float, ctx: object) -> ScriptedCheck:
        raise NotImplementedError

    async def probe(self) -> tuple[CheckStatus, str]:
        status = self.script.pop(0) if self.script else self.status
        return status, "" if status is CheckStatus.OK else f"scripted {status}"


class SwallowingCheck(ScriptedCheck):
    """A buggy check plugin: it swallows its timeout's cancellation and hangs until ``release``, wedging the check
    loop (what the liveness probes and the watchdog are there to catch)."""

    def __init__(self, release: asyncio.Event) -> None:
        super().__init__("buggy")
        self.release = release

    async def probe(self) -> tuple[CheckStatus, str]:
        while not self.release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.release.wait()
        return CheckStatus.OK, ""
