"""A group's state as one value, and the pure transitions that make the next one from it.

:class:`eipfailover.engine.GroupRunner` holds a :class:`GroupState` and replaces it with what these functions return;
the runner does the I/O (checks, cloud reads, the move, the clock) and tells the observers. Nothing here reads a
clock or calls anything: every time is passed in (monotonic seconds), so each transition is tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from eipfailover.errors import ProviderError
from eipfailover.events import FailoverRecord
from eipfailover.model import UNKNOWN_LOCATION, Binding, EipState, Location, ManualRequest, Placement, locate

REPAIR_BACKOFF_CAP = 30.0
"""After failed repairs, the longest wait before the next one (it starts at one interval and doubles)."""
SAME_MOVE = 0.5
"""Seconds within which two recorded starts of a group's moves are the same move."""


@dataclass(frozen=True, slots=True)
class CloudView:
    """What the cloud last said of the group's EIPs."""

    states: Mapping[str, EipState] = field(default_factory=dict)
    location: Location = UNKNOWN_LOCATION
    """Where the EIPs were last seen (kept while the cloud cannot be read)."""
    managed: Location = UNKNOWN_LOCATION
    """The same for the EIPs the group acts on: all of them, or, when foreign ones are left alone, the others."""
    fresh: bool = False
    """The view is current: no failover has ended since it was read, and no new leader has yet to re-read it."""
    error: ProviderError | None = None
    """Why the last read failed (None: it did not)."""
    read_ok_at: float | None = None
    """When the last successful read ended."""

    @property
    def placement(self) -> Placement:
        """Where the EIPs are, as far as a decision may rely on it (``UNKNOWN`` while the view is not current)."""
        return self.location.placement if self.fresh and self.error is None else Placement.UNKNOWN

    @property
    def active(self) -> str | None:
        """The target holding the EIPs the group acts on (None while the view is not current)."""
        return self.managed.active if self.placement is not Placement.UNKNOWN else None


@dataclass(frozen=True, slots=True)
class GroupState:
    """Everything a group knows and intends, apart from its targets' health."""

    cloud: CloudView = CloudView()
    maintenance: bool = False
    manual: ManualRequest | None = None
    """An operator's request not yet decided on."""
    last_active: str | None = None
    """The last target seen holding the EIPs (where a move takes them from while the cloud cannot be read)."""
    last_move_at: float | None = None
    """When the last counted move started, then ended (the cooldown runs from it)."""
    recent_moves: tuple[float, ...] = ()
    """When the automatic moves within the ``max_failovers`` window started."""
    current: FailoverRecord | None = None
    """The move under way."""
    armed: tuple[float, float | None] | None = None
    """For a move under way that armed the cooldown: its start, and the cooldown's start before it (both restored
    if the move changes nothing: the fence refused it)."""
    last_failover: FailoverRecord | None = None
    left_detached: tuple[str, ...] = ()
    """The EIPs the last failover may have left detached (it could not re-attach them, or not tell), until a cloud
    read shows them attached."""
    repair_failures: int = 0
    repair_hold_until: float | None = None
    """No repair before this time (after failed ones)."""
    fence_hold_until: float | None = None
    """No move before this time: the fence refused the last one (etcd did not answer the proof, or the term ended).
    One interval: a leader cut off from etcd tries again on the group's schedule, not in a loop."""

    @property
    def moving(self) -> bool:
        return self.current is not None


def seen(state: GroupState, states: Mapping[str, EipState], bindings: Mapping[str, Binding], *,
         adopt_foreign: bool, at: float | None = None) -> GroupState:
    """Take ``states`` as the cloud's current view of the EIPs (``at``: the time of a successful read, which also
    clears its error; None: a view from elsewhere, a verification's or a carried one).

    The EIPs no longer detached leave ``left_detached``; an active target is remembered; once the managed EIPs are
    attached again, the repair backoff is reset (the next repair is a new one)."""
    location = locate(states, bindings)
    managed = location
    if location.foreign and not adopt_foreign:
        others = {e: s for e, s in states.items() if e not in location.foreign}
        managed = locate(others, bindings) if others else location
    cloud = state.cloud
    attached = managed.placement not in (Placement.DETACHED, Placement.IN_TRANSITION)
    return replace(
        state,
        cloud=replace(cloud, states=states, location=location, managed=managed, fresh=True,
                      error=cloud.error if at is None else None, read_ok_at=cloud.read_ok_at if at is None else at),
        left_detached=tuple(e for e in state.left_detached
                            if e not in states or states[e].bound_to is None or states[e].pending),
        last_active=managed.active or state.last_active,
        repair_failures=0 if attached else state.repair_failures,
        repair_hold_until=None if attached else state.repair_hold_until)


def read_failed(state: GroupState, error: ProviderError) -> GroupState:
    """A cloud read failed: the last view is kept, but no decision relies on it (see :attr:`CloudView.placement`)."""
    return replace(state, cloud=replace(state.cloud, error=error))


def stale(state: GroupState) -> GroupState:
    """The view is no longer current (a move ended without verifying it, or this daemon has just become leader):
    nothing is decided on it until the next read."""
    return replace(state, cloud=replace(state.cloud, fresh=False))


def move_started(state: GroupState, record: FailoverRecord, now: float, *, counted: bool, windowed: bool,
                 window: float) -> GroupState:
    """A move starts: a ``counted`` one (not a repair) starts the cooldown, a ``windowed`` one (automatic) takes a
    place in the ``max_failovers`` window (dropping the starts older than ``window``)."""
    after = replace(state, current=record, armed=None)
    if counted:
        after = replace(after, last_move_at=now, armed=(now, state.last_move_at))
    if windowed:
        after = replace(after, recent_moves=(*(t for t in state.recent_moves if now - t < window), now))
    return after


def gives_back(*, repair: bool, fenced_out: bool, sent: bool) -> bool:
    """Whether a finished move takes back its place in the cooldown and the ``max_failovers`` window: a counted move
    (not a repair) that the fence refused before it sent anything changed nothing."""
    return not repair and fenced_out and not sent


def move_finished(state: GroupState, done: FailoverRecord, now: float, *, ok: bool, repair: bool,
                  detached: tuple[str, ...], fenced_out: bool, sent: bool, interval: float) -> GroupState:
    """A move ended. A move's cooldown runs from its end, unless the fence refused it (``fenced_out``: this daemon
    could not prove it leads) before it ``sent`` anything: it changed nothing, so it takes back its place in the
    cooldown and the ``max_failovers`` window (its own start, echoed back by the cluster within :data:`SAME_MOVE`,
    included). Any move the fence refused holds the next one for one ``interval``. A failed repair holds the next one
    back, from one ``interval`` doubling up to :data:`REPAIR_BACKOFF_CAP`; a repair the fence refused does not, since
    the next leader should repair at once. The view is left as it is: the caller takes the verification's, or marks
    it :func:`stale`."""
    after = replace(state, current=None, armed=None, last_failover=done, left_detached=detached,
                    fence_hold_until=now + interval if fenced_out else None)
    if gives_back(repair=repair, fenced_out=fenced_out, sent=sent) and state.armed is not None:
        start, before = state.armed
        last = state.last_move_at
        return replace(after, recent_moves=tuple(t for t in state.recent_moves if abs(t - start) > SAME_MOVE),
                       last_move_at=before if last is not None and abs(last - start) <= SAME_MOVE else last)
    if not repair:
        return replace(after, last_move_at=now)
    if fenced_out:
        return after
    failures = 0 if ok else state.repair_failures + 1
    if not failures:
        return replace(after, repair_failures=0, repair_hold_until=None)
    doublings = min(failures - 1, 16)  # past the cap anyway; and never a float overflow
    return replace(after, repair_failures=failures,
                   repair_hold_until=now + min(interval * 2**doublings, REPAIR_BACKOFF_CAP))


def remembered(state: GroupState, *, maintenance: bool, starts: Iterable[float], last: float | None) -> GroupState:
    """Take what the store remembers of the group from before a restart: the maintenance switch, the starts of the
    moves still within the window, the end of the last move."""
    return replace(state, maintenance=maintenance, recent_moves=tuple(starts), last_move_at=last)


def adopted(state: GroupState, starts: Iterable[float], last: float | None) -> GroupState:
    """Add the cluster's memory of the group's moves (the previous leaders') to this daemon's own. The same move may
    be in both (this daemon led before): starts within :data:`SAME_MOVE` of a known one are that one (the round
    trip through wall-clock time shifts them by microseconds)."""
    known = state.recent_moves
    merged = tuple(sorted([*known, *(t for t in starts if all(abs(t - k) > SAME_MOVE for k in known))]))
    if last is not None and (state.last_move_at is None or last > state.last_move_at):
        return replace(state, recent_moves=merged, last_move_at=last)
    return replace(state, recent_moves=merged)


def carried(old: GroupState, *, same_cloud: bool, bindings: Mapping[str, Binding],
            adopt_foreign: bool) -> GroupState:
    """The state a reloaded group starts from: maintenance, the memory of moves, the last failover and active
    target, the EIPs at risk and the repair backoff; and the cloud's view if its EIPs and provider are the same
    (placed again against the new targets)."""
    state = GroupState(maintenance=old.maintenance, last_active=old.last_active, last_move_at=old.last_move_at,
                       recent_moves=old.recent_moves, last_failover=old.last_failover)
    if same_cloud:
        cloud = old.cloud
        if cloud.states:
            state = seen(state, cloud.states, bindings, adopt_foreign=adopt_foreign)
        state = replace(state, cloud=replace(state.cloud, error=cloud.error, read_ok_at=cloud.read_ok_at,
                                             fresh=cloud.fresh and bool(cloud.states)))
    # after seen(): the carried view is no news about them
    return replace(state, left_detached=old.left_detached, repair_failures=old.repair_failures,
                   repair_hold_until=old.repair_hold_until)
