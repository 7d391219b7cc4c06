"""Rise/fall hysteresis: fold one round of check results into a target's health. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from eipfailover.model import CheckResult, CheckStatus, Health, TargetState


def combine(results: Iterable[CheckResult]) -> CheckResult:
    """A target passes a round only if every one of its checks passed. Otherwise the first failure stands; with no
    failure, the first ``unknown`` (a check that could not tell) makes the round unknown."""
    results = list(results)
    latency = max((r.latency for r in results), default=0.0)
    failed = next((r for r in results if not r.ok and r.status is not CheckStatus.UNKNOWN), None)
    unknown = next((r for r in results if r.status is CheckStatus.UNKNOWN), None)
    return failed or unknown or CheckResult(CheckStatus.OK, latency, "")


def apply(health: Health, result: CheckResult, *, rise: int, fall: int, now: float) -> Health:
    """The next health: UP after ``rise`` consecutive passes, DOWN after ``fall`` consecutive failures.

    A target starts UNKNOWN and leaves that state only through the same thresholds. An ``unknown`` result (the
    check could not tell) changes nothing: it is neither a pass nor a failure.
    """
    if result.status is CheckStatus.UNKNOWN:
        return health
    if result.ok:
        successes, failures = health.successes + 1, 0
        state = TargetState.UP if successes >= rise else health.state
    else:
        successes, failures = 0, health.failures + 1
        state = TargetState.DOWN if failures >= fall else health.state
    since = now if state is not health.state else health.since
    return Health(state=state, successes=successes, failures=failures, since=since)
