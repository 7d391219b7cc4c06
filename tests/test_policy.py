"""The failover decision, table-driven: each rule, its reason, and the guards around it."""

from __future__ import annotations

import pytest

from eipfailover.config import PolicyConfig
from eipfailover.model import (
    Action,
    Binding,
    EipState,
    Health,
    Location,
    ManualRequest,
    Placement,
    Reason,
    Snapshot,
    TargetState,
    Trigger,
    locate,
)
from eipfailover.policy import decide

U, UP, DOWN = TargetState.UNKNOWN, TargetState.UP, TargetState.DOWN
NOW = 1000.0
POLICY = PolicyConfig(interval=1, timeout=0.5, cooldown=30, failback_delay=60)
AUTO = PolicyConfig(interval=1, timeout=0.5, cooldown=30, failback="auto", failback_delay=60)


def snap(a: TargetState, b: TargetState, c: TargetState = DOWN, *, active: str | None = "a",
         placement: Placement = Placement.ON_TARGET, since: float = 0.0, **kw: object) -> Snapshot:
    health = {n: Health(state=s, since=since) for n, s in zip("abc", (a, b, c), strict=True)}
    return Snapshot(targets=("a", "b", "c"), health=health, placement=placement, active=active, **kw)  # type: ignore[arg-type]


CASES = [
    # (id, snapshot, policy, action, reason, target)
    ("active up stays", snap(UP, UP), POLICY, Action.NONE, Reason.ACTIVE_HEALTHY, "a"),
    ("active unknown at start waits", snap(U, UP), POLICY, Action.NONE, Reason.ACTIVE_UNKNOWN, "a"),
    ("active down fails over", snap(DOWN, UP), POLICY, Action.FAILOVER, Reason.ACTIVE_DOWN, "b"),
    ("skips an unhealthy standby", snap(DOWN, DOWN, UP), POLICY, Action.FAILOVER, Reason.ACTIVE_DOWN, "c"),
    ("prefers the earlier standby", snap(UP, UP, UP, active="c", placement=Placement.ON_TARGET), POLICY,
     Action.NONE, Reason.ACTIVE_HEALTHY, "c"),
    ("standby down too: stay", snap(DOWN, DOWN), POLICY, Action.NONE, Reason.NO_HEALTHY_STANDBY, None),
    ("standby unknown is not healthy", snap(DOWN, U), POLICY, Action.NONE, Reason.NO_HEALTHY_STANDBY, None),
    ("cooldown holds a failover", snap(DOWN, UP, last_move_at=NOW - 10), POLICY,
     Action.NONE, Reason.COOLDOWN, "b"),
    ("cooldown over", snap(DOWN, UP, last_move_at=NOW - 31), POLICY, Action.FAILOVER, Reason.ACTIVE_DOWN, "b"),
    ("rate limit holds", snap(DOWN, UP, recent_moves=(NOW - 100, NOW - 200, NOW - 300)), POLICY,
     Action.NONE, Reason.RATE_LIMITED, "b"),
    ("old moves leave the window", snap(DOWN, UP, recent_moves=(NOW - 4000, NOW - 200, NOW - 300)), POLICY,
     Action.FAILOVER, Reason.ACTIVE_DOWN, "b"),
    ("maintenance holds", snap(DOWN, UP, maintenance=True), POLICY, Action.NONE, Reason.MAINTENANCE, None),
    ("in progress holds", snap(DOWN, UP, in_progress=True), POLICY, Action.NONE, Reason.IN_PROGRESS, None),
    ("cloud unreadable holds", snap(DOWN, UP, placement=Placement.UNKNOWN, active=None), POLICY,
     Action.NONE, Reason.CLOUD_UNKNOWN, None),
    # EIPs already on the standby at start: no move back while failback is manual
    ("on standby at start, manual", snap(UP, UP, active="b"), POLICY, Action.NONE, Reason.ACTIVE_HEALTHY, "b"),
    ("on standby at start, unknown", snap(U, U, active="b"), POLICY, Action.NONE, Reason.ACTIVE_UNKNOWN, "b"),
    # failback
    ("failback manual never moves", snap(UP, UP, active="b"), POLICY, Action.NONE, Reason.ACTIVE_HEALTHY, "b"),
    ("failback auto waits for the delay", snap(UP, UP, active="b", since=NOW - 30), AUTO,
     Action.NONE, Reason.FAILBACK_PENDING, "a"),
    ("failback auto after the delay", snap(UP, UP, active="b", since=NOW - 61), AUTO,
     Action.FAILBACK, Reason.FAILBACK, "a"),
    ("failback auto respects cooldown", snap(UP, UP, active="b", since=NOW - 61, last_move_at=NOW - 5), AUTO,
     Action.NONE, Reason.COOLDOWN, "a"),
    ("failback auto, primary down", snap(DOWN, UP, active="b"), AUTO, Action.NONE, Reason.ACTIVE_HEALTHY, "b"),
    ("failback auto to the better of two", snap(DOWN, UP, UP, active="c", since=NOW - 61), AUTO,
     Action.FAILBACK, Reason.FAILBACK, "b"),
    ("failback auto not in maintenance", snap(UP, UP, active="b", since=NOW - 61, maintenance=True), AUTO,
     Action.NONE, Reason.MAINTENANCE, None),
    ("active down beats failback", snap(UP, DOWN, active="b", since=NOW - 61), AUTO,
     Action.FAILOVER, Reason.ACTIVE_DOWN, "a"),
    ("cloud still moving an EIP holds", snap(DOWN, UP, placement=Placement.IN_TRANSITION, active=None), POLICY,
     Action.NONE, Reason.IN_TRANSITION, None),
    # repair and adopt
    ("detached: repair to the best healthy", snap(DOWN, UP, UP, active=None, placement=Placement.DETACHED), POLICY,
     Action.ADOPT, Reason.REPAIR, "b"),
    ("detached: repair to the holder of the others", snap(UP, UP, UP, active=None, placement=Placement.DETACHED,
                                                          holders=("c",)), POLICY, Action.ADOPT, Reason.REPAIR, "c"),
    ("detached: an unhealthy holder is skipped", snap(UP, DOWN, UP, active=None, placement=Placement.DETACHED,
                                                      holders=("b",)), POLICY, Action.ADOPT, Reason.REPAIR, "a"),
    ("detached: where the group was last active", snap(UP, UP, active=None, placement=Placement.DETACHED,
                                                       last_active="b"), POLICY, Action.ADOPT, Reason.REPAIR, "b"),
    ("repair ignores cooldown", snap(UP, UP, active=None, placement=Placement.DETACHED, last_move_at=NOW - 1),
     POLICY, Action.ADOPT, Reason.REPAIR, "a"),
    ("repair ignores the rate limit", snap(UP, UP, active=None, placement=Placement.DETACHED,
                                           recent_moves=(NOW - 1, NOW - 2, NOW - 3)),
     POLICY, Action.ADOPT, Reason.REPAIR, "a"),
    ("detached, nothing healthy", snap(U, DOWN, active=None, placement=Placement.DETACHED), POLICY,
     Action.NONE, Reason.NO_HEALTHY_TARGET, None),
    ("repair not in maintenance", snap(UP, UP, active=None, placement=Placement.DETACHED, maintenance=True),
     POLICY, Action.NONE, Reason.MAINTENANCE, None),
    ("foreign: left alone", snap(UP, UP, active=None, placement=Placement.FOREIGN), POLICY,
     Action.NONE, Reason.FOREIGN, None),
    ("foreign with adopt_foreign: adopt", snap(UP, UP, active=None, placement=Placement.FOREIGN,
                                               adopt_foreign=True), POLICY, Action.ADOPT, Reason.ADOPT, "a"),
    ("split: adopt by the holder of the most", snap(UP, UP, active=None, placement=Placement.SPLIT,
                                                    holders=("b", "a")), POLICY, Action.ADOPT, Reason.ADOPT, "b"),
    ("adopt waits out cooldown", snap(UP, UP, active=None, placement=Placement.SPLIT, holders=("a", "b"),
                                      last_move_at=NOW - 1), POLICY, Action.NONE, Reason.COOLDOWN, "a"),
    # manual
    ("manual to a healthy target", snap(UP, UP, manual=ManualRequest(to="b")), POLICY,
     Action.FAILOVER, Reason.MANUAL, "b"),
    ("manual default target", snap(UP, DOWN, UP, manual=ManualRequest()), POLICY,
     Action.FAILOVER, Reason.MANUAL, "c"),
    ("manual to an unhealthy target", snap(UP, DOWN, manual=ManualRequest(to="b")), POLICY,
     Action.NONE, Reason.MANUAL_TARGET_UNHEALTHY, "b"),
    ("manual forced to an unhealthy target", snap(UP, DOWN, manual=ManualRequest(to="b", force=True)), POLICY,
     Action.FAILOVER, Reason.MANUAL, "b"),
    ("manual, no healthy standby", snap(UP, DOWN, DOWN, manual=ManualRequest()), POLICY,
     Action.NONE, Reason.MANUAL_TARGET_UNHEALTHY, None),
    ("manual forced, no healthy standby", snap(UP, DOWN, DOWN, manual=ManualRequest(force=True)), POLICY,
     Action.FAILOVER, Reason.MANUAL, "b"),
    ("manual to the active", snap(UP, UP, manual=ManualRequest(to="a")), POLICY,
     Action.NONE, Reason.MANUAL_ALREADY_ACTIVE, "a"),
    ("manual ignores cooldown and maintenance",
     snap(UP, UP, manual=ManualRequest(to="b"), maintenance=True, last_move_at=NOW - 1), POLICY,
     Action.FAILOVER, Reason.MANUAL, "b"),
    ("manual waits for a running failover", snap(UP, UP, manual=ManualRequest(to="b"), in_progress=True), POLICY,
     Action.NONE, Reason.IN_PROGRESS, None),
    ("manual refused while the cloud is unreadable", snap(UP, UP, manual=ManualRequest(to="b"), active=None,
                                                          placement=Placement.UNKNOWN), POLICY,
     Action.NONE, Reason.CLOUD_UNKNOWN, "b"),
    ("manual forced while the cloud is unreadable", snap(UP, UP, manual=ManualRequest(to="b", force=True),
                                                         active=None, placement=Placement.UNKNOWN), POLICY,
     Action.FAILOVER, Reason.MANUAL, "b"),
    ("manual refused while an EIP is in transition", snap(UP, UP, manual=ManualRequest(to="b"), active=None,
                                                          placement=Placement.IN_TRANSITION), POLICY,
     Action.NONE, Reason.IN_TRANSITION, "b"),
    ("manual forced while an EIP is in transition", snap(UP, UP, manual=ManualRequest(to="b", force=True),
                                                         active=None, placement=Placement.IN_TRANSITION), POLICY,
     Action.FAILOVER, Reason.MANUAL, "b"),
]


@pytest.mark.parametrize(("snapshot", "policy", "action", "reason", "target"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(snapshot: Snapshot, policy: PolicyConfig, action: Action, reason: Reason, target: str | None) -> None:
    decision = decide(snapshot, NOW, policy)
    assert (decision.action, decision.reason, decision.target) == (action, reason, target)


@pytest.mark.parametrize(("snapshot", "policy", "trigger"), [
    (snap(DOWN, UP), POLICY, Trigger.AUTO),
    (snap(UP, UP, active=None, placement=Placement.DETACHED), POLICY, Trigger.AUTO),
    (snap(UP, UP, active=None, placement=Placement.SPLIT), POLICY, Trigger.AUTO),
    (snap(UP, UP, active="b", since=NOW - 61), AUTO, Trigger.FAILBACK),
    (snap(UP, UP, manual=ManualRequest(to="b")), POLICY, Trigger.MANUAL),
])
def test_trigger(snapshot: Snapshot, policy: PolicyConfig, trigger: Trigger) -> None:
    assert decide(snapshot, NOW, policy).trigger is trigger


A, B = Binding(instance_id="i-a"), Binding(network_interface_id="eni-b", private_ip="10.0.0.9")


OTHER = Binding(instance_id="i-other")


@pytest.mark.parametrize(("bound", "expected"), [
    ({"e1": Binding(instance_id="i-a", network_interface_id="eni-a1", private_ip="10.0.0.4"),
      "e2": Binding(instance_id="i-a")}, Location(Placement.ON_TARGET, "a", ("a",))),
    ({"e1": Binding(network_interface_id="eni-b", private_ip="10.0.0.9")}, Location(Placement.ON_TARGET, "b", ("b",))),
    ({"e1": Binding(network_interface_id="eni-b", private_ip="10.0.0.8")}, Location(Placement.FOREIGN,
                                                                                    foreign=("e1",))),
    ({"e1": A, "e2": None}, Location(Placement.DETACHED, holders=("a",), detached=("e2",))),
    ({"e1": OTHER}, Location(Placement.FOREIGN, foreign=("e1",))),
    ({"e1": OTHER, "e2": None, "e3": B}, Location(Placement.DETACHED, holders=("b",), detached=("e2",),
                                                  foreign=("e1",))),
    ({"e1": A, "e2": B}, Location(Placement.SPLIT, holders=("a", "b"))),
    ({"e1": A, "e2": B, "e3": B}, Location(Placement.SPLIT, holders=("b", "a"))),  # the holder of the most first
    ({"e1": A, "e2": "pending"}, Location(Placement.IN_TRANSITION, holders=("a",), pending=("e2",))),
    ({"e1": None, "e2": "pending"}, Location(Placement.IN_TRANSITION, detached=("e1",), pending=("e2",))),
    # an exact comparison: i-a is not found inside i-ab (resource-agents#1625)
    ({"e1": Binding(instance_id="i-ab")}, Location(Placement.FOREIGN, foreign=("e1",))),
])
def test_locate(bound: dict[str, Binding | str | None], expected: Location) -> None:
    states = {eip: EipState(eip, "192.0.2.1", A, pending=True) if b == "pending" else
              EipState(eip, "192.0.2.1", b if isinstance(b, Binding) else None) for eip, b in bound.items()}
    assert locate(states, {"a": A, "b": B}) == expected
