"""Rise/fall hysteresis: fold one round of check results into a target's health. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from eipfailover.model import CheckResult, CheckStatus, Health, TargetState


def combine(results: Iterable[CheckResult]) -> CheckResult:
    """A target passes a round only if every one of its checks passed. Otherwise the first failure stands; with no
    failure, the first ``unknown`` (a check that could not tell) makes the round unknown."""
    unknown: CheckResult | None = None
    passed: CheckResult | None = None  # the slowest pass (its latency is the round's)
    for result in results:  # one pass, no copy: this runs for every target at every round
        status = result.status
        if status is CheckStatus.OK:
            if passed is None or result.latency > passed.latency:
                passed = result
        elif status is CheckStatus.UNKNOWN:
            if unknown is None:
                unknown = result
        else:
            return result
    if unknown is not None:
        return unknown
    if passed is None:
        return _NOTHING
    return passed if not passed.detail else CheckResult(CheckStatus.OK, passed.latency, "")


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


_NOTHING = CheckResult(CheckStatus.OK, 0.0, "")
"""The result of a round without checks."""
