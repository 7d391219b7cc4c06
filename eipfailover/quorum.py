"""Observer quorum: what several daemons' views of a target add up to. Pure: no I/O, no clock.

Every daemon of a cluster checks every target and publishes its view (``up``, ``down`` or ``unknown``). The leader
counts a target DOWN only when ``quorum`` observers see it DOWN, and UP only when a majority of the live members see
it UP; anything in between is UNKNOWN, on which the policy does not act. A daemon that cannot see the cloud, or that
sees every target of a group DOWN (it is more likely cut off than they all dead), votes ``unknown``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from eipfailover.model import Health, TargetState


def majority(members: int) -> int:
    return members // 2 + 1


def vote(health: Mapping[str, Health], blind: bool) -> dict[str, TargetState]:
    """This daemon's view of a group's targets, as it publishes it."""
    if blind or (health and all(h.state is TargetState.DOWN for h in health.values())):
        return dict.fromkeys(health, TargetState.UNKNOWN)
    return {name: h.state for name, h in health.items()}


def tally(votes: Iterable[TargetState], members: int, quorum: int | None) -> TargetState:
    """The cluster's verdict on one target from the ``votes`` of its ``members`` live daemons (a member that has
    published no view of it counts as ``unknown``): DOWN if at least ``quorum`` (default: a majority) say DOWN, UP if
    a majority say UP, else UNKNOWN."""
    counted = list(votes)
    needed_down = quorum if quorum is not None else majority(members)
    if counted.count(TargetState.DOWN) >= needed_down:
        return TargetState.DOWN
    if counted.count(TargetState.UP) >= majority(members):
        return TargetState.UP
    return TargetState.UNKNOWN
