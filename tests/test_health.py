"""Rise/fall hysteresis, table-driven: every transition of every state."""

from __future__ import annotations

import pytest

from eipfailover.health import apply, combine
from eipfailover.model import CheckResult, CheckStatus, Health, TargetState

OK = CheckResult(CheckStatus.OK, 0.01)
FAIL = CheckResult(CheckStatus.FAIL, 0.01, "refused")
TIMEOUT = CheckResult(CheckStatus.TIMEOUT, 0.5, "no answer")
UNSURE = CheckResult(CheckStatus.UNKNOWN, 0.5, "throttled")
U, UP, DOWN = TargetState.UNKNOWN, TargetState.UP, TargetState.DOWN


def run(results: str, rise: int = 2, fall: int = 3, start: Health | None = None) -> list[TargetState]:
    health = start or Health()
    states = []
    for i, ch in enumerate(results):
        result = {"+": OK, "-": FAIL, "?": UNSURE}[ch]
        health = apply(health, result, rise=rise, fall=fall, now=float(i))
        states.append(health.state)
    return states


@pytest.mark.parametrize(("results", "rise", "fall", "expected"), [
    ("+", 2, 3, [U]),  # one pass is not enough to rise
    ("++", 2, 3, [U, UP]),  # rise reached
    ("+", 1, 3, [UP]),  # rise 1: the first pass decides
    ("--", 2, 3, [U, U]),  # below fall from UNKNOWN
    ("---", 2, 3, [U, U, DOWN]),  # fall reached from UNKNOWN
    ("++--", 2, 3, [U, UP, UP, UP]),  # two failures do not bring an UP target down with fall 3
    ("++---", 2, 3, [U, UP, UP, UP, DOWN]),  # the third does
    ("++-+--", 2, 3, [U, UP, UP, UP, UP, UP]),  # a pass resets the failure count
    ("---+", 2, 3, [U, U, DOWN, DOWN]),  # one pass does not raise a DOWN target with rise 2
    ("---++", 2, 3, [U, U, DOWN, DOWN, UP]),  # two do
    ("---+-++", 2, 3, [U, U, DOWN, DOWN, DOWN, DOWN, UP]),  # a failure resets the success count
    ("-", 1, 1, [DOWN]),  # fall 1: the first failure decides
    ("+-+-", 1, 1, [UP, DOWN, UP, DOWN]),  # no hysteresis at 1/1: it flaps, which is why defaults are 3/3
    # unknown (the check could not tell, e.g. a throttled cloud API) is neither a pass nor a failure
    ("++??????", 2, 3, [U, UP, UP, UP, UP, UP, UP, UP]),
    ("++--?-", 2, 3, [U, UP, UP, UP, UP, DOWN]),  # it does not reset the failure count either
    ("?" * 5, 2, 3, [U] * 5),
    ("+?+", 2, 3, [U, U, UP]),
])
def test_rise_fall(results: str, rise: int, fall: int, expected: list[TargetState]) -> None:
    assert run(results, rise, fall) == expected


def test_since_moves_only_on_state_change() -> None:
    h = Health()
    h = apply(h, OK, rise=2, fall=2, now=1.0)
    assert h.since == 0.0
    h = apply(h, OK, rise=2, fall=2, now=2.0)
    assert (h.state, h.since) == (UP, 2.0)
    h = apply(h, OK, rise=2, fall=2, now=3.0)
    assert (h.since, h.successes) == (2.0, 3)
    h = apply(h, FAIL, rise=2, fall=2, now=4.0)
    assert (h.state, h.since, h.failures, h.successes) == (UP, 2.0, 1, 0)


def test_combine_requires_every_check() -> None:
    assert combine([OK, OK]).ok
    assert combine([OK, TIMEOUT, FAIL]) is TIMEOUT  # the first failure stands, with its detail
    assert combine([UNSURE, FAIL]) is FAIL  # a real failure beats an unknown
    assert combine([OK, UNSURE]) is UNSURE
    assert combine([]).ok
    assert combine([CheckResult(CheckStatus.OK, 0.2), CheckResult(CheckStatus.OK, 0.3)]).latency == 0.3
