"""Hooks run one at a time per group, in event order, with a fixed argv, no shell and a timeout."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from eipfailover.checks.exec import ExecCheck
from eipfailover.config import HooksConfig
from eipfailover.events import FailoverRecord
from eipfailover.hooks import QUEUE_LIMIT, HookObserver, hook_values, substitute
from eipfailover.model import CheckResult, CheckStatus, Health, TargetState, Trigger


def record(n: int, group: str = "web") -> FailoverRecord:
    return FailoverRecord(id=f"f{n}", group=group, trigger=Trigger.AUTO, reason="active_down", from_target="a",
                          to_target="b", eips=("e1",), started_at=time.time(), result="success")


def test_render_argv_substitutes_without_a_shell() -> None:
    argv = substitute(["notify", "{group}:{from}->{to}", "{result}", "$(rm -rf /)", "{unknown}"],
                      hook_values(record(1)))
    assert argv == ["notify", "web:a->b", "success", "$(rm -rf /)", "{unknown}"]


async def test_hooks_are_serialized_in_event_order(tmp_path: Path) -> None:
    log = tmp_path / "log"
    # each hook sleeps a little, then appends: a parallel or reordered run would interleave or reorder the lines
    script = ("import sys, time; time.sleep(0.05 * (3 - int(sys.argv[1][1:]))); "
              f"open({str(log)!r}, 'a').write(sys.argv[1] + ' ' + sys.argv[2] + '\\n')")
    hooks = HookObserver({"web": HooksConfig(on_failover=[sys.executable, "-c", script, "{failover_id}", "{to}"])})
    for n in range(3):
        hooks.on_failover_finished(record(n))
    await hooks.drain(10)
    assert log.read_text().splitlines() == ["f0 b", "f1 b", "f2 b"]


async def test_a_hanging_hook_is_killed_and_the_next_one_runs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    script = ("import sys, time\n"
              f"if sys.argv[1] == 'f0': time.sleep(60)\n"
              f"open({str(marker)!r}, 'w').write(sys.argv[1])\n")
    hooks = HookObserver({"web": HooksConfig(on_failover=[sys.executable, "-c", script, "{failover_id}"],
                                             timeout=0.3)})
    with capture_logs() as logs:
        start = time.monotonic()
        hooks.on_failover_finished(record(0))
        hooks.on_failover_finished(record(1))
        await hooks.drain(10)
    assert time.monotonic() - start < 3
    assert marker.read_text() == "f1"
    assert [(e["event"], e["failover_id"]) for e in logs] == [("hook_failed", "f0"), ("hook_finished", "f1")]
    assert logs[0]["error"] == "killed after 0.3s"


@pytest.mark.parametrize(("argv", "error"), [
    (["/nonexistent/hook"], "cannot run: No such file or directory"),
    ([sys.executable, "-c", "print('bad'); raise SystemExit(4)"], None),
])
async def test_failing_hooks_are_logged(argv: list[str], error: str | None) -> None:
    hooks = HookObserver({"web": HooksConfig(on_failover=argv)})
    with capture_logs() as logs:
        hooks.on_failover_finished(record(1))
        await hooks.drain(10)
    assert logs[0]["event"] == "hook_failed"
    if error:
        assert logs[0]["error"] == error
    else:
        assert (logs[0]["status"], logs[0]["output"]) == ("exit status 4", "bad")


async def test_groups_without_hooks_are_ignored() -> None:
    hooks = HookObserver({"web": HooksConfig()})
    hooks.on_failover_finished(record(1))
    assert hooks.queues == {}


async def test_hooks_get_a_minimal_environment_with_the_failover(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/eipfailover.service")
    monkeypatch.setenv("LANG", "C.UTF-8")
    out = tmp_path / "env.json"
    script = f"import json, os; json.dump(dict(os.environ), open({str(out)!r}, 'w'))"
    hooks = HookObserver({"web": HooksConfig(on_failover=[sys.executable, "-c", script],
                                             env={"PAGER_ROUTE": "db-team"})})
    hooks.on_failover_finished(record(7))
    await hooks.drain(10)
    env = json.loads(out.read_text())
    env.pop("LC_CTYPE", None)  # Python may add it for the C locale
    assert env == {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", "PAGER_ROUTE": "db-team",
                   "EIPFAILOVER_GROUP": "web", "EIPFAILOVER_FROM": "a", "EIPFAILOVER_TO": "b",
                   "EIPFAILOVER_RESULT": "success", "EIPFAILOVER_REASON": "active_down",
                   "EIPFAILOVER_TRIGGER": "auto", "EIPFAILOVER_FAILOVER_ID": "f7"}


async def test_a_hook_whose_child_leaves_the_process_group_still_times_out(tmp_path: Path) -> None:
    pidfile = tmp_path / "escaped.pid"
    # the hook starts a child in a session of its own that keeps the hook's output open, then hangs
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
              "start_new_session=True)\n"
              f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
              "time.sleep(60)\n")
    hooks = HookObserver({"web": HooksConfig(on_failover=[sys.executable, "-c", script], timeout=0.5)})
    try:
        with capture_logs() as logs:
            start = time.monotonic()
            hooks.on_failover_finished(record(1))
            await hooks.drain(10)
        assert time.monotonic() - start < 3
        assert [(e["event"], e["error"]) for e in logs] == [("hook_failed", "killed after 0.5s")]
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


async def test_target_hooks_run_on_confirmed_state_changes_in_order_with_the_failover_hooks(tmp_path: Path) -> None:
    """``on_target_down`` and ``on_target_up`` run when a target's confirmed state changes (also from unknown, at
    start), with their placeholders and variables, in one queue with ``on_failover``: in event order."""
    log = tmp_path / "log"
    script = ("import os, sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + ' '"
              " + os.environ.get('EIPFAILOVER_TARGET', '-') + '\\n')")
    hooks = HookObserver({"web": HooksConfig(
        on_failover=[sys.executable, "-c", script, str(log), "failover", "{failover_id}", "{from}", "{to}"],
        on_target_down=[sys.executable, "-c", script, str(log), "down", "{target}", "{previous}", "{detail}"],
        on_target_up=[sys.executable, "-c", script, str(log), "up", "{target}", "{state}", "{previous}"])})
    unknown, up, down = Health(), Health(TargetState.UP), Health(TargetState.DOWN)
    fail, ok = CheckResult(CheckStatus.FAIL, 0.01, "connection refused"), CheckResult(CheckStatus.OK, 0.01)
    hooks.on_health("web", "a", unknown, up, ok)
    hooks.on_health("web", "a", up, up, ok)  # no change: nothing
    hooks.on_health("web", "a", up, down, fail)
    hooks.on_failover_finished(record(1))
    hooks.on_health("web", "a", down, up, ok)
    hooks.on_health("api", "x", up, down, fail)  # a group without hooks
    await hooks.drain(20)
    assert log.read_text().splitlines() == [
        "up a up unknown a",
        "down a up connection refused a",
        "failover f1 a b -",
        "up a up down a",
    ]


async def test_a_target_hook_that_cannot_start_does_not_stop_the_groups_later_hooks(tmp_path: Path) -> None:
    """An exec check that prints a NUL byte makes the detail of the target's DOWN event; the on_target_down hook
    (which gets it as ``EIPFAILOVER_DETAIL``) cannot be started: that is logged, and the group's on_failover hook
    still runs."""
    check = ExecCheck("x", 5.0, [sys.executable, "-c", "import sys; print('bad\\x00output'); sys.exit(1)"], {})
    status, detail = await check.probe()
    assert status is CheckStatus.FAIL
    assert "\x00" in detail
    marker = tmp_path / "on_failover"
    hooks = HookObserver({"web": HooksConfig(
        on_target_down=[sys.executable, "-c", "pass"],
        on_failover=[sys.executable, "-c", f"open({str(marker)!r}, 'w').write('ran')"])})
    cause = await check.run()
    hooks.on_health("web", "web-a", Health(TargetState.UP), Health(TargetState.DOWN), cause)
    hooks.on_failover_finished(record(1))
    await hooks.drain(10)
    assert marker.exists(), "on_failover never ran: the group's hook worker died on the NUL byte"


async def test_a_flapping_target_cannot_queue_target_hooks_without_end(tmp_path: Path) -> None:
    """Beyond ``QUEUE_LIMIT`` waiting hooks, target hooks are dropped and logged; ``on_failover`` is still queued
    and runs."""
    marker = tmp_path / "on_failover"
    hooks = HookObserver({"web": HooksConfig(
        on_target_down=[sys.executable, "-c", "import time; time.sleep(0.01)"],
        on_target_up=[sys.executable, "-c", "import time; time.sleep(0.01)"],
        on_failover=[sys.executable, "-c", f"open({str(marker)!r}, 'w').write('ran')"])})
    up, down = Health(TargetState.UP), Health(TargetState.DOWN)
    fail, ok = CheckResult(CheckStatus.FAIL, 0.01, "refused"), CheckResult(CheckStatus.OK, 0.01)
    with capture_logs() as logs:
        for _ in range(QUEUE_LIMIT):
            hooks.on_health("web", "a", up, down, fail)
            hooks.on_health("web", "a", down, up, ok)
        hooks.on_failover_finished(record(1))
    assert hooks.queues["web"].qsize() <= QUEUE_LIMIT + 2  # the worker may have taken one; on_failover queued
    assert hooks.dropped["web"] >= QUEUE_LIMIT - 2
    assert {e["event"] for e in logs} == {"hook_dropped"}
    await hooks.drain(60)
    assert marker.read_text() == "ran"
