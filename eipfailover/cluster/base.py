"""The coordination contract: which daemon acts, what the others see, and proof of leadership before each move.

A :class:`Coordinator` is the engine's one view of the other daemons. ``none`` (:mod:`.solo`) is a daemon alone: it
always acts, on its own checks. ``etcd`` (:mod:`.etcd`) elects one leader on a lease, shares every daemon's view of
every target, and fences each cloud mutation with a transaction. The engine asks three things: may I act now
(:meth:`Coordinator.acting`), what is a target's state (:meth:`Coordinator.verdict`), and, right before a mutating
cloud call, :meth:`Coordinator.fence`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from eipfailover.events import GroupMemory
from eipfailover.model import TargetState


@dataclass(frozen=True, slots=True)
class Member:
    node: str
    api: str | None
    leader: bool
    last_seen: float | None
    """Wall-clock time of its last published view."""


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """``GET /v1/cluster``."""

    node: str
    leader: str | None
    leader_api: str | None
    term: int | None
    members: tuple[Member, ...]
    coordination: str
    """``ok`` or ``lost``."""
    acting: bool


Views = Mapping[str, Mapping[str, TargetState]]
"""One daemon's published view: group -> target -> state."""


class Coordinator(ABC):
    """What the engine knows of the other daemons. Every method but the async ones is cheap and never blocks."""

    node: str
    on_change: Callable[[], None] | None = None
    """Called when anything the engine reads here changed (views, maintenance, leadership, coordination)."""

    @abstractmethod
    def acting(self) -> bool:
        """True while this daemon may decide and move: it leads, and its lease cannot expire within the margin."""

    @abstractmethod
    def available(self) -> bool:
        """True while the coordination store is reachable and this daemon's lease alive."""

    @abstractmethod
    def verdict(self, group: str, target: str, local: TargetState) -> TargetState:
        """The state to decide on for a target this daemon sees as ``local``."""

    @abstractmethod
    def publish(self, group: str, views: Mapping[str, TargetState]) -> None:
        """This daemon's view of a group's targets (sent in the background)."""

    @abstractmethod
    def forget(self, group: str) -> None:
        """``group`` is no longer configured here: stop publishing a view of it."""

    @abstractmethod
    def observers(self, group: str) -> dict[str, dict[str, str]]:
        """Each live member's published view of ``group`` (node -> target -> state); empty for a daemon alone."""

    @abstractmethod
    def maintenance(self, group: str) -> bool | None:
        """The shared maintenance switch of ``group`` (None: this daemon alone decides it)."""

    @abstractmethod
    async def set_maintenance(self, group: str, enabled: bool) -> None:
        """Store the switch for every daemon; raises :class:`CoordinationError` if the store is unreachable."""

    @abstractmethod
    def memory(self, group: str) -> GroupMemory | None:
        """The cluster's memory of ``group``'s moves (the window and cooldown of the leaders before), if any."""

    @abstractmethod
    def share_memory(self, group: str, memory: GroupMemory, *, proof_of: str | None = None) -> None:
        """Store this leader's memory of ``group``'s moves for the next leader: in the background, or, ``proof_of`` a
        failover id (its start), only with that failover's first fencing proof (a move the fence refuses before
        sending anything is not remembered)."""

    @abstractmethod
    def term(self) -> int | None:
        """The term this daemon leads in (None: it does not lead, or a daemon alone: there are no terms)."""

    @abstractmethod
    async def fence(self, group: str, failover_id: str, operation: str, seconds: float,
                    term: int | None = None) -> Callable[[], bool]:
        """Prove, right before a mutating cloud call that may take ``seconds``, that this daemon still leads, in
        ``term`` if given (the term the action was decided in: a later term decides anew), and that its lease
        outlives the call; the intent is written in the same step. Raises :class:`NotLeader` otherwise. Returns a
        cheap re-check for the instant before the call is sent (False: the lease may have lapsed since)."""

    @abstractmethod
    def status(self) -> ClusterStatus: ...

    @abstractmethod
    async def run(self) -> None:
        """Keep the lease, the election and the shared views current until cancelled."""

    def problem(self) -> str | None:
        """Why this daemon cannot take part now (for ``/readyz``), or None."""
        return None if self.available() else "the coordination store cannot be reached"

    @abstractmethod
    async def close(self, release: bool = True) -> None:
        """Give up leadership and the lease at once (a clean stop hands over without waiting for the TTL); not
        ``release``: a cloud call may still be under way, keep them until they expire."""


class CoordinationError(Exception):
    """The coordination store cannot be used now."""
