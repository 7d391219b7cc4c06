"""The failover decision: ``decide(snapshot, now, policy) -> Decision``. Pure; every outcome carries a reason.

Rules, in order:
1. A failover in progress blocks everything else.
2. Without the cloud's view (describe failed), or while the cloud is still moving an EIP, nothing moves, not even
   on an operator's request unless it is forced.
3. An operator's request is served first: it ignores cooldown, rate limit and maintenance, never its target's
   health unless forced.
4. In maintenance nothing moves automatically.
5. A detached EIP is repaired at once (no cooldown, no ``max_failovers``): every second detached is downtime. Only
   a repair that failed makes the next one wait, an interval doubling up to 30 s, so that a cloud that refuses it
   is not hammered.
6. EIPs on a resource outside the group are left alone and reported, unless the group sets ``adopt_foreign``;
   EIPs split across targets (or foreign ones, with ``adopt_foreign``) are adopted.
7. A confirmed-DOWN active target fails over to the most preferred healthy standby.
8. With ``failback: auto``, a more preferred target that has been UP for ``failback_delay`` takes the EIPs back.
Repairs and adoptions go to the healthy target that already holds the group's other EIPs, else to where the group
was last active, and only then by preference: they never cause a failback. Automatic moves other than repairs
wait out the cooldown after the last move and the ``max_failovers`` window.
"""

from __future__ import annotations

from collections.abc import Mapping

from eipfailover.config import PolicyConfig
from eipfailover.model import (
    Action,
    Decision,
    Health,
    ManualRequest,
    Placement,
    Reason,
    Snapshot,
    TargetState,
    Trigger,
)


def _healthy(s: Snapshot, exclude: str | None = None) -> list[str]:
    return [t for t in s.targets if t != exclude and s.health[t].state is TargetState.UP]


def _hold(s: Snapshot, now: float, policy: PolicyConfig) -> Reason | None:
    if s.last_move_at is not None and now - s.last_move_at < policy.cooldown:
        return Reason.COOLDOWN
    recent = [t for t in s.recent_moves if now - t < policy.max_failovers.window]
    if len(recent) >= policy.max_failovers.count:
        return Reason.RATE_LIMITED
    return None


def _automatic(action: Action, reason: Reason, target: str, trigger: Trigger, s: Snapshot, now: float,
               policy: PolicyConfig) -> Decision:
    held = _hold(s, now, policy)
    if held is not None:
        return Decision(Action.NONE, held, target)
    return Decision(action, reason, target, trigger)


def _adoptive(s: Snapshot) -> str | None:
    """Where stray EIPs go: the healthy target holding the most of the group's EIPs, else the healthy target where
    the group was last active, else the most preferred healthy target."""
    healthy = _healthy(s)
    for candidate in (*s.holders, s.last_active):
        if candidate in healthy:
            return candidate
    return healthy[0] if healthy else None


def manual(s: Snapshot, request: ManualRequest) -> Decision:
    """The decision on an operator's request: it ignores cooldown, rate limit and maintenance, never its target's
    health unless forced, and never an unknown or moving cloud unless forced."""
    if not request.force and s.placement is Placement.UNKNOWN:
        return Decision(Action.NONE, Reason.CLOUD_UNKNOWN, request.to)
    if not request.force and s.placement is Placement.IN_TRANSITION:
        return Decision(Action.NONE, Reason.IN_TRANSITION, request.to)
    if request.to is not None:
        target: str | None = request.to
    else:
        candidates = _healthy(s, exclude=s.active) or (
            [t for t in s.targets if t != s.active] if request.force else []
        )
        target = candidates[0] if candidates else None
    if target is None:
        return Decision(Action.NONE, Reason.MANUAL_TARGET_UNHEALTHY)
    if target == s.active and s.placement is Placement.ON_TARGET and not (request.force and s.foreign):
        return Decision(Action.NONE, Reason.MANUAL_ALREADY_ACTIVE, target)
    if s.health[target].state is not TargetState.UP and not request.force:
        return Decision(Action.NONE, Reason.MANUAL_TARGET_UNHEALTHY, target)
    return Decision(Action.FAILOVER, Reason.MANUAL, target, Trigger.MANUAL)


def decide(s: Snapshot, now: float, policy: PolicyConfig) -> Decision:
    """What to do with one group now (monotonic seconds), and why."""
    if s.in_progress:
        return Decision(Action.NONE, Reason.IN_PROGRESS)
    if s.manual is not None:
        return manual(s, s.manual)
    if s.placement is Placement.UNKNOWN:
        return Decision(Action.NONE, Reason.CLOUD_UNKNOWN)
    if s.placement is Placement.IN_TRANSITION:
        return Decision(Action.NONE, Reason.IN_TRANSITION)
    if s.maintenance:
        return Decision(Action.NONE, Reason.MAINTENANCE)

    if s.placement is not Placement.ON_TARGET or s.active is None:
        target = _adoptive(s)
        if s.placement is Placement.FOREIGN and not s.adopt_foreign:
            return Decision(Action.NONE, Reason.FOREIGN)
        if target is None:
            return Decision(Action.NONE, Reason.NO_HEALTHY_TARGET)
        if s.placement is Placement.DETACHED:
            if s.repair_hold_until is not None and now < s.repair_hold_until:
                return Decision(Action.NONE, Reason.REPAIR_BACKOFF, target)
            return Decision(Action.ADOPT, Reason.REPAIR, target, Trigger.AUTO)
        return _automatic(Action.ADOPT, Reason.ADOPT, target, Trigger.AUTO, s, now, policy)

    active_state = s.health[s.active].state
    if active_state is TargetState.DOWN:
        standbys = _healthy(s, exclude=s.active)
        if not standbys:
            return Decision(Action.NONE, Reason.NO_HEALTHY_STANDBY)
        return _automatic(Action.FAILOVER, Reason.ACTIVE_DOWN, standbys[0], Trigger.AUTO, s, now, policy)

    if policy.failback == "auto":
        preferred = s.targets[: s.targets.index(s.active)]
        better = next((t for t in preferred if s.health[t].state is TargetState.UP), None)
        if better is not None:
            if now - s.health[better].since < policy.failback_delay:
                return Decision(Action.NONE, Reason.FAILBACK_PENDING, better)
            return _automatic(Action.FAILBACK, Reason.FAILBACK, better, Trigger.FAILBACK, s, now, policy)

    reason = Reason.ACTIVE_HEALTHY if active_state is TargetState.UP else Reason.ACTIVE_UNKNOWN
    return Decision(Action.NONE, reason, s.active)


def havip_takeover(master: str, members: tuple[str, ...], health: Mapping[str, Health], now: float,
                   last_takeover_at: float | None, cooldown: float) -> Decision:
    """Whether to force a HaVip's master off (``target`` = the member expected to take over), and why.

    Only when the master is one of ``members``, is confirmed DOWN, and another member is confirmed UP; never twice
    within ``cooldown``. Without a master, keepalived is electing one: wait.
    """
    if not master:
        return Decision(Action.NONE, Reason.HAVIP_NO_MASTER)
    if master not in members:
        return Decision(Action.NONE, Reason.HAVIP_MASTER_NOT_MEMBER, master)
    if health[master].state is not TargetState.DOWN:
        return Decision(Action.NONE, Reason.HAVIP_MASTER_HEALTHY, master)
    standby = next((m for m in members if m != master and health[m].state is TargetState.UP), None)
    if standby is None:
        return Decision(Action.NONE, Reason.NO_HEALTHY_STANDBY)
    if last_takeover_at is not None and now - last_takeover_at < cooldown:
        return Decision(Action.NONE, Reason.COOLDOWN, standby)
    return Decision(Action.TAKEOVER, Reason.HAVIP_MASTER_DOWN, standby, Trigger.AUTO)
