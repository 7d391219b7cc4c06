"""Short versions of two reliability benches (bench/kill_campaign.py and bench/flapping.py run the long ones): the
daemon killed with SIGKILL mid-failover and restarted, and a flapping primary against ``max_failovers``."""

from __future__ import annotations

from bench.flapping import run as flapping
from bench.kill_campaign import BOUND, campaign


async def test_sigkill_at_random_points_of_failovers_loses_nothing() -> None:
    """Each restart ends with the EIP on the healthy target (in time: the bench holds it to the bound, this loaded
    CI run to twice that), the killed failover in the journal, and no association towards the dead target."""
    report = await campaign(kills=4, seed=11, echo=False)
    assert [p for p in report.problems() if "bound" not in p] == []
    assert all(r.attached_after_first_log <= 2 * BOUND for r in report.rounds)
    assert [r.ended_on for r in report.rounds] == ["web-b", "web-a", "web-b", "web-a"]
    assert all(r.journal in ("interrupted", "success") for r in report.rounds if r.cloud_calls_before_kill)


async def test_a_flapping_primary_never_moves_the_eip_more_than_max_failovers_allows() -> None:
    result = await flapping(24, count=2, window=20, echo=False)
    assert result["flips"] >= 20
    assert result["moves"] >= 2  # it did fail over and back: the limit, not a dead check, held it
    assert result["most_in_a_window"] <= 2
    assert result["rate_limited_decisions"] > 0
    assert result["exit_code"] == 0
