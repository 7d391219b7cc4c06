"""The observer quorum, table-driven: what several daemons' views of a target add up to."""

from __future__ import annotations

import pytest

from eipfailover.model import Health, TargetState
from eipfailover.quorum import majority, tally, vote

UP, DOWN, UNKNOWN = TargetState.UP, TargetState.DOWN, TargetState.UNKNOWN


@pytest.mark.parametrize(("members", "needed"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)])
def test_majority(members: int, needed: int) -> None:
    assert majority(members) == needed


@pytest.mark.parametrize(("votes", "quorum", "verdict"), [
    ([DOWN, UP, UP], None, UP),                # one daemon cut off from the target: outvoted
    ([DOWN, DOWN, UP], None, DOWN),            # a majority sees it down
    ([DOWN, DOWN, DOWN], None, DOWN),
    ([DOWN, UNKNOWN, UNKNOWN], None, UNKNOWN),  # one DOWN is no quorum
    ([UP, UNKNOWN, UNKNOWN], None, UNKNOWN),   # a standby is UP only for a majority
    ([UP, UP, UNKNOWN], None, UP),
    ([DOWN, UP, UNKNOWN], None, UNKNOWN),
    ([DOWN], None, DOWN),                      # a cluster of one: its own view
    ([UP], None, UP),
    ([DOWN, UP], None, UNKNOWN),               # two daemons that disagree: nothing moves
    ([DOWN, DOWN, UP], 3, UNKNOWN),            # quorum 3: two DOWN votes are not enough; nor two UP a majority
    ([DOWN, UP, UP], 1, DOWN),                 # quorum 1: any daemon's DOWN counts (DOWN is looked at first)
    ([DOWN, DOWN], 3, UNKNOWN),                # quorum above the live members: never DOWN
])
def test_tally(votes: list[TargetState], quorum: int | None, verdict: TargetState) -> None:
    assert tally(votes, len(votes), quorum) is verdict


def test_a_member_without_a_view_counts_against_both_verdicts() -> None:
    """Three live members, one of which has published nothing for the target: two DOWN still make a majority, one
    UP and one DOWN make nothing."""
    assert tally([DOWN, DOWN], 3, None) is DOWN
    assert tally([UP, DOWN], 3, None) is UNKNOWN


@pytest.mark.parametrize(("states", "blind", "published"), [
    ({"a": UP, "b": UP}, False, {"a": UP, "b": UP}),
    ({"a": DOWN, "b": UP}, False, {"a": DOWN, "b": UP}),
    ({"a": DOWN, "b": DOWN}, False, {"a": UNKNOWN, "b": UNKNOWN}),  # everything dead: more likely cut off
    ({"a": UP, "b": DOWN}, True, {"a": UNKNOWN, "b": UNKNOWN}),     # cannot read the cloud
    ({"a": UNKNOWN, "b": DOWN}, False, {"a": UNKNOWN, "b": DOWN}),
])
def test_vote(states: dict[str, TargetState], blind: bool, published: dict[str, TargetState]) -> None:
    assert vote({name: Health(state) for name, state in states.items()}, blind) == published
