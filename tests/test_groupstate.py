"""The group's state value and its pure transitions (``eipfailover.groupstate``): each one on its own, no loop, no
clock, no cloud."""

from __future__ import annotations

from dataclasses import replace

import pytest

from eipfailover import groupstate
from eipfailover.errors import ProviderError
from eipfailover.events import FailoverRecord
from eipfailover.groupstate import REPAIR_BACKOFF_CAP, GroupState
from eipfailover.model import Binding, EipState, ManualRequest, Placement, Trigger

A, B, OTHER = Binding(instance_id="i-a"), Binding(instance_id="i-b"), Binding(instance_id="i-x")
TARGETS = {"a": A, "b": B}
RECORD = FailoverRecord(id="f1", group="g", trigger=Trigger.AUTO, reason="active_down", from_target="a",
                        to_target="b", eips=("e1", "e2"), started_at=1000.0)


def eips(**bound: Binding | None) -> dict[str, EipState]:
    return {e: EipState(e, f"192.0.2.{i}", b) for i, (e, b) in enumerate(bound.items())}


def see(state: GroupState, adopt_foreign: bool = False, at: float | None = 5.0, **bound: Binding | None) -> GroupState:
    return groupstate.seen(state, eips(**bound), TARGETS, adopt_foreign=adopt_foreign, at=at)


def test_a_successful_read_places_the_eips_clears_the_error_and_remembers_the_active_target() -> None:
    failed = groupstate.read_failed(GroupState(), ProviderError("boom", retryable=True))
    assert failed.cloud.placement is Placement.UNKNOWN  # no view to rely on yet
    state = see(failed, e1=A, e2=A)
    assert (state.cloud.placement, state.cloud.active, state.last_active) == (Placement.ON_TARGET, "a", "a")
    assert (state.cloud.error, state.cloud.read_ok_at, state.cloud.fresh) == (None, 5.0, True)


def test_a_failed_read_keeps_the_last_view_but_no_decision_may_rely_on_it() -> None:
    state = groupstate.read_failed(see(GroupState(), e1=A), ProviderError("throttled", retryable=True))
    assert state.cloud.location.active == "a"  # kept, for the status and for where a move takes EIPs from
    assert (state.cloud.placement, state.cloud.active) == (Placement.UNKNOWN, None)
    assert state.last_active == "a"
    assert state.cloud.read_ok_at == 5.0


def test_a_view_from_elsewhere_leaves_the_read_time_and_error_as_they_were() -> None:
    failed = groupstate.read_failed(see(GroupState(), e1=A), ProviderError("boom", retryable=True))
    state = see(failed, at=None, e1=B)  # a verification's describe
    assert state.cloud.location.active == "b"
    assert state.cloud.read_ok_at == 5.0
    assert state.cloud.error is not None


def test_foreign_eips_are_left_out_of_what_the_group_acts_on_unless_adopted() -> None:
    state = see(GroupState(), e1=A, e2=OTHER)
    assert state.cloud.location.placement is Placement.FOREIGN
    assert (state.cloud.managed.placement, state.cloud.active) == (Placement.ON_TARGET, "a")
    adopted = see(GroupState(), adopt_foreign=True, e1=A, e2=OTHER)
    assert (adopted.cloud.managed.placement, adopted.cloud.active) == (Placement.FOREIGN, None)
    all_foreign = see(GroupState(), e1=OTHER)  # nothing else to act on: the whole view
    assert all_foreign.cloud.managed.placement is Placement.FOREIGN


def test_eips_leave_the_at_risk_list_once_a_read_shows_them_attached() -> None:
    state = replace(GroupState(), left_detached=("e1", "e2", "e3"))
    after = groupstate.seen(state, {**eips(e1=B, e2=None), "e3": EipState("e3", "192.0.2.9", B, pending=True)},
                            TARGETS, adopt_foreign=False, at=1.0)
    assert after.left_detached == ("e2", "e3")  # detached, and still being associated


@pytest.mark.parametrize(("bound", "reset"), [({"e1": A}, True), ({"e1": OTHER}, True), ({"e1": None}, False)])
def test_the_repair_backoff_is_reset_once_the_eips_are_attached_again(bound: dict[str, Binding | None],
                                                                      reset: bool) -> None:
    state = replace(GroupState(), repair_failures=3, repair_hold_until=99.0)
    after = groupstate.seen(state, eips(**bound), TARGETS, adopt_foreign=False, at=1.0)
    assert (after.repair_failures, after.repair_hold_until) == ((0, None) if reset else (3, 99.0))


def test_a_stale_view_is_kept_but_not_decided_on() -> None:
    state = groupstate.stale(see(GroupState(), e1=A))
    assert (state.cloud.placement, state.cloud.location.active) == (Placement.UNKNOWN, "a")


@pytest.mark.parametrize(("counted", "windowed", "last", "window"), [
    (True, True, 50.0, (45.0, 50.0)),  # automatic: cooldown and window (the start older than 10 s dropped)
    (True, False, 50.0, (30.0, 45.0)),  # manual: the cooldown only
    (False, False, 20.0, (30.0, 45.0)),  # a repair: neither
])
def test_a_move_start_arms_what_its_kind_arms(counted: bool, windowed: bool, last: float,
                                               window: tuple[float, ...]) -> None:
    state = replace(GroupState(), last_move_at=20.0, recent_moves=(30.0, 45.0))
    after = groupstate.move_started(state, RECORD, 50.0, counted=counted, windowed=windowed, window=10.0)
    assert (after.current, after.moving) == (RECORD, True)
    assert (after.last_move_at, after.recent_moves) == (last, window if windowed else (30.0, 45.0))


def test_the_cooldown_runs_from_the_end_of_a_move() -> None:
    moving = groupstate.move_started(GroupState(), RECORD, 50.0, counted=True, windowed=True, window=60.0)
    done = replace(RECORD, result="failure")
    after = groupstate.move_finished(moving, done, 58.0, ok=False, repair=False, detached=("e2",), fenced_out=False,
                                     sent=True, interval=1.0)
    assert (after.current, after.last_failover, after.left_detached) == (None, done, ("e2",))
    assert (after.last_move_at, after.recent_moves, after.repair_failures) == (58.0, (50.0,), 0)


def finish_repair(state: GroupState, ok: bool, now: float = 100.0, fenced_out: bool = False) -> GroupState:
    return groupstate.move_finished(state, RECORD, now, ok=ok, repair=True, detached=(), fenced_out=fenced_out,
                                    sent=not fenced_out, interval=2.0)


def test_failed_repairs_hold_the_next_one_back_doubling_from_an_interval_up_to_the_cap() -> None:
    state, holds = GroupState(last_move_at=7.0), []
    for _ in range(8):
        state = finish_repair(state, ok=False)
        holds.append(state.repair_hold_until)
    assert holds == [102.0, 104.0, 108.0, 116.0, 100 + REPAIR_BACKOFF_CAP, 130.0, 130.0, 130.0]
    assert state.last_move_at == 7.0  # a repair does not start a cooldown
    many = replace(state, repair_failures=10_000)  # no overflow, however many
    assert finish_repair(many, ok=False).repair_hold_until == 100 + REPAIR_BACKOFF_CAP
    assert (finish_repair(state, ok=True).repair_failures, finish_repair(state, ok=True).repair_hold_until) == (0, None)


def test_a_repair_the_fence_refused_does_not_hold_the_next_one_back() -> None:
    state = finish_repair(GroupState(), ok=False, fenced_out=True)
    assert (state.repair_failures, state.repair_hold_until, state.last_failover) == (0, None, RECORD)


@pytest.mark.parametrize(("fenced_out", "sent", "last", "window"), [
    (True, False, 20.0, (30.0,)),  # refused by the fence before any call: as if it never started
    (True, True, 58.0, (30.0, 50.0)),  # a call went out first: it counts
    (False, False, 58.0, (30.0, 50.0)),  # vetoed by the before_failover hook: it counts (the hook is not hammered)
])
def test_a_move_the_fence_refused_before_sending_anything_takes_back_its_cooldown_and_window(
        fenced_out: bool, sent: bool, last: float, window: tuple[float, ...]) -> None:
    state = GroupState(last_move_at=20.0, recent_moves=(30.0,))
    moving = groupstate.move_started(state, RECORD, 50.0, counted=True, windowed=True, window=600.0)
    after = groupstate.move_finished(moving, RECORD, 58.0, ok=False, repair=False, detached=(), fenced_out=fenced_out,
                                     sent=sent, interval=1.0)
    assert (after.last_move_at, after.recent_moves, after.armed) == (last, window, None)


def test_a_refused_move_keeps_what_the_cluster_added_while_it_ran() -> None:
    moving = groupstate.move_started(GroupState(last_move_at=20.0), RECORD, 50.0, counted=True, windowed=True,
                                     window=600.0)
    adopted = groupstate.adopted(moving, [40.0], last=55.0)  # a previous leader's move, learnt meanwhile
    after = groupstate.move_finished(adopted, RECORD, 58.0, ok=False, repair=False, detached=(), fenced_out=True,
                                     sent=False, interval=1.0)
    assert (after.last_move_at, after.recent_moves) == (55.0, (40.0,))


def test_memory_from_the_store_replaces_the_groups_own() -> None:
    state = groupstate.remembered(GroupState(recent_moves=(1.0,)), maintenance=True, starts=[5.0, 6.0], last=6.5)
    assert (state.maintenance, state.recent_moves, state.last_move_at) == (True, (5.0, 6.0), 6.5)


def test_the_clusters_memory_adds_to_the_groups_own_each_move_once() -> None:
    own = GroupState(recent_moves=(10.0, 20.0), last_move_at=21.0)
    after = groupstate.adopted(own, [10.0 + 1e-5, 15.0, 20.4], last=16.0)  # 10 and 20 are the same moves, jittered
    assert after.recent_moves == (10.0, 15.0, 20.0)
    assert after.last_move_at == 21.0  # the later end holds
    assert groupstate.adopted(own, [], last=30.0).last_move_at == 30.0
    assert groupstate.adopted(GroupState(), [3.0], last=None) == GroupState(recent_moves=(3.0,))


def test_a_reload_carries_memory_intents_risk_and_backoff_but_not_a_move_or_a_request() -> None:
    old = replace(see(GroupState(), e1=A), maintenance=True, manual=ManualRequest(to="b"), last_move_at=3.0,
                  recent_moves=(2.0,), current=RECORD, last_failover=RECORD, left_detached=("e2",),
                  repair_failures=2, repair_hold_until=9.0)
    new = groupstate.carried(old, same_cloud=True, bindings=TARGETS, adopt_foreign=False)
    assert (new.maintenance, new.last_move_at, new.recent_moves, new.last_failover) == (True, 3.0, (2.0,), RECORD)
    assert (new.left_detached, new.repair_failures, new.repair_hold_until) == (("e2",), 2, 9.0)
    assert (new.manual, new.current) == (None, None)  # the old runner's move is its own; a request is decided there
    assert (new.cloud.active, new.cloud.read_ok_at) == ("a", 5.0)


def test_a_reload_places_the_carried_view_against_the_new_targets() -> None:
    old = see(GroupState(), e1=A)
    new = groupstate.carried(old, same_cloud=True, bindings={"b": B, "x": OTHER}, adopt_foreign=False)
    assert (new.cloud.placement, new.cloud.active, new.last_active) == (Placement.FOREIGN, None, "a")
    moved = groupstate.carried(old, same_cloud=True, bindings={"b": B, "a2": A}, adopt_foreign=False)
    assert (moved.cloud.active, moved.last_active) == ("a2", "a2")


def test_a_reload_with_other_eips_or_another_provider_starts_without_a_view() -> None:
    old = see(GroupState(last_active="a"), e1=A)
    new = groupstate.carried(old, same_cloud=False, bindings=TARGETS, adopt_foreign=False)
    assert (new.cloud, new.last_active) == (groupstate.CloudView(), "a")


def test_a_carried_stale_view_stays_stale() -> None:
    old = groupstate.stale(see(GroupState(), e1=A))
    new = groupstate.carried(old, same_cloud=True, bindings=TARGETS, adopt_foreign=False)
    assert (new.cloud.location.active, new.cloud.placement) == ("a", Placement.UNKNOWN)
    never_read = groupstate.carried(GroupState(), same_cloud=True, bindings=TARGETS, adopt_foreign=False)
    assert never_read.cloud == groupstate.CloudView()


def test_a_refused_move_takes_back_its_cooldown_after_its_own_start_came_back_from_the_cluster() -> None:
    """A move starts at 50.0 and its memory goes to the cluster; the same daemon, elected in a new term,
    adopts it back (its own start, a microsecond off); the fence then refuses the move. It takes back its cooldown:
    ``last_move_at`` is what it was before (20.0).

    Before the fix: only an exact ``last_move_at == start`` was restored."""
    moving = groupstate.move_started(GroupState(last_move_at=20.0), RECORD, 50.0, counted=True, windowed=True,
                                     window=600.0)
    echoed = groupstate.adopted(moving, [50.000001], last=50.000001)  # its own memory, back from etcd
    assert echoed.recent_moves == (50.0,)  # the same move (within SAME_MOVE)
    after = groupstate.move_finished(echoed, replace(RECORD, result="failure"), 58.0, ok=False, repair=False,
                                     detached=(), fenced_out=True, sent=False, interval=1.0)
    assert (after.last_move_at, after.recent_moves) == (20.0, ()), after


@pytest.mark.parametrize(("repair", "fenced_out", "hold"), [
    (False, True, 59.0), (True, True, 59.0), (False, False, None), (True, False, None)])
def test_a_move_the_fence_refused_holds_the_next_one_for_an_interval(repair: bool, fenced_out: bool,
                                                                    hold: float | None) -> None:
    moving = groupstate.move_started(GroupState(), RECORD, 50.0, counted=not repair, windowed=not repair, window=60.0)
    after = groupstate.move_finished(moving, RECORD, 58.0, ok=False, repair=repair, detached=(),
                                     fenced_out=fenced_out, sent=False, interval=1.0)
    assert after.fence_hold_until == hold
