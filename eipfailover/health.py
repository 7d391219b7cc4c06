"""Rise/fall hysteresis: fold one round of check results into a target's health. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from eipfailover.model import CheckResult, CheckStatus, Health, TargetState


def combine(results: Iterable[CheckResult]) -> CheckResult:
    """A target passes a round only if every one of its checks passed; otherwise the first failure stands."""
    results = list(results)
    latency = max((r.latency for r in results), default=0.0)
    failed = next((r for r in results if not r.ok), None)
    if failed is not None:
        return failed
    return CheckResult(CheckStatus.OK, latency, "")


def apply(health: Health, result: CheckResult, *, rise: int, fall: int, now: float) -> Health:
    """The next health: UP after ``rise`` consecutive passes, DOWN after ``fall`` consecutive failures.

    A target starts UNKNOWN and leaves that state only through the same thresholds.
    """
    if result.ok:
        successes, failures = health.successes + 1, 0
        state = TargetState.UP if successes >= rise else health.state
    else:
        successes, failures = 0, health.failures + 1
        state = TargetState.DOWN if failures >= fall else health.state
    since = now if state is not health.state else health.since
    return Health(state=state, successes=successes, failures=failures, since=since)
