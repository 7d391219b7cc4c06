"""The journal when things go wrong: a full or hung disk (nothing lost, nothing held up), a wall clock that jumped,
two daemons on one directory, a group gone since the crash, a group in dry run, a hung disk at exit, a signal during
the start-up recovery. Real parts: the journal on disk, GroupRunner with the in-memory cloud, recovery, the daemon
on moto and on the fake Alibaba API."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from eipfailover import journal as journal_module
from eipfailover import recovery
from eipfailover.config import parse_config
from eipfailover.engine import GroupRunner
from eipfailover.events import FailoverRecord, Observers
from eipfailover.journal import Journal, JournalError
from eipfailover.model import Binding, CheckStatus, Trigger

from .api_daemon import running_daemon
from .conftest import Ec2World, HealthServer, eventually
from .fake_aliyun import FakeAliyun
from .fakes import FakeProvider, ScriptedCheck
from .test_lifecycle import config_data, start, world, write

A, B = Binding(instance_id="i-a"), Binding(instance_id="i-b")


def record(fid: str, group: str = "web", started_at: float | None = None, **more: Any) -> FailoverRecord:
    return FailoverRecord(id=fid, group=group, trigger=Trigger.AUTO, reason="active_down", from_target="web-a",
                          to_target="web-b", eips=("eip-1",), started_at=time.time() if started_at is None
                          else started_at, **more)


def finished(r: FailoverRecord, result: str = "success") -> FailoverRecord:
    fields = {name: getattr(r, name) for name in r.__dataclass_fields__}
    return FailoverRecord(**{**fields, "result": result, "finished_at": time.time(), "attempts": 1})


def group(**more: Any) -> Any:
    policy = {"interval": 0.1, "timeout": 0.05, "rise": 1, "fall": 1, "cooldown": "2s",
              "max_failovers": {"count": 100, "window": "1h"}}
    return parse_config({
        "providers": {"p": {"type": "aws", "region": "us-east-1"}},
        "groups": [{"name": "web", "provider": "p", "eips": ["eip-1"], "policy": policy, **more,
                    "targets": [{"name": n, "binding": {"instance_id": i},
                                 "checks": [{"type": "tcp", "host": "127.0.0.1", "port": 1}]}
                                for n, i in (("web-a", "i-a"), ("web-b", "i-b"))]}],
    }).groups[0]


class _DiskFull:
    """A journal write function that fails (``sqlite3.OperationalError: database or disk is full``) while armed."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.armed = True

    def __call__(self, *args: Any) -> Any:
        if self.armed:
            raise sqlite3.OperationalError("database or disk is full")
        return self.real(*args)


async def test_the_end_of_a_failover_written_while_degraded_is_not_lost_once_the_journal_recovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failover that finished (success) while the disk was full is shown as finished once the journal
    recovers, and is not found unfinished at the next start (it would be 'reconciled' and recorded 'interrupted',
    fire the interrupted alert and the on_failover hook again)."""
    j = Journal.open(tmp_path / "state", max_age=3600, max_records=100)
    try:
        r = record("f1")
        await j.begin(r, counted=True, windowed=True)
        full = _DiskFull(journal_module._finish)
        monkeypatch.setattr(journal_module, "_finish", full)
        j.on_failover_finished(finished(r))
        await eventually(lambda: j.degraded is not None)
        full.armed = False  # space again
        await j.begin(record("f2"), counted=True, windowed=True)  # the next write succeeds: recovered
        await eventually(lambda: j.degraded is None)
        f1 = next(x for x in await j.query() if x.id == "f1")
        assert f1.result == "success", f"after recovery the history shows f1 as {f1.result!r}"
        assert "f1" not in [x.id for x in await j.unfinished()], "the next start would mark f1 interrupted"
    finally:
        await j.close()


async def test_history_while_degraded_shows_the_newest_state_of_a_failover(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the journal is degraded, /v1/history (Journal.query) shows what memory knows is newer: the
    failover finished with success."""
    j = Journal.open(tmp_path / "state", max_age=3600, max_records=100)
    try:
        r = record("f1")
        await j.begin(r, counted=True, windowed=True)
        monkeypatch.setattr(journal_module, "_finish", _DiskFull(journal_module._finish))
        j.on_failover_finished(finished(r))
        await eventually(lambda: j.degraded is not None)
        (shown,) = await j.query()
        assert shown.result == "success", f"degraded history shows {shown.result!r}"
    finally:
        await j.close()


async def test_an_unfinished_failover_of_a_removed_group_is_closed_at_start(
        ec2: Ec2World, health_servers: list[HealthServer], tmp_path: Path, state_directory: Path) -> None:
    """At start, a failover the journal shows unfinished for a group that is no longer configured is
    recorded as interrupted ('not reconciled'), as README says of every unfinished failover."""
    j = Journal.open(state_directory, max_age=3600, max_records=100)
    await j.begin(record("gone-1", group="renamed-away"), counted=True, windowed=True)
    await j.close()
    async with running_daemon(ec2, health_servers, tmp_path) as running:
        journal = running.daemon.journal
        assert journal is not None
        await eventually(lambda: running.daemon.engine is not None and running.daemon.engine.ready.is_set())
        (shown,) = [r for r in await journal.query() if r.id == "gone-1"]
        assert shown.result == "interrupted", f"the removed group's failover is still {shown.result!r}"
        assert await journal.unfinished() == []


async def test_a_journal_time_in_the_future_does_not_hold_the_cooldown_for_ever(tmp_path: Path) -> None:
    """After a restart, the cooldown (2 s here) runs at most ``cooldown`` from now, whatever wall-clock
    time the journal holds: a clock stepped back by NTP after the last move (or a journal from a host whose clock
    was ahead) must not stop automatic failover."""
    j = Journal.open(tmp_path / "state", max_age=3600, max_records=100)
    day_ahead = time.time() + 86400
    r = record("future", started_at=day_ahead)
    await j.begin(r, counted=True, windowed=True)
    j.on_failover_finished(FailoverRecord(**{**{n: getattr(r, n) for n in r.__dataclass_fields__},
                                             "result": "success", "finished_at": day_ahead + 1}))
    cloud = FakeProvider({"eip-1": A})
    runner = GroupRunner(group(), cloud, {"web-a": [ScriptedCheck(status=CheckStatus.FAIL)],
                                          "web-b": [ScriptedCheck()]}, Observers([j]), j)
    runner.remember((await j.remember({"web": 3600.0}))["web"])
    task = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: runner.decision is not None)
        try:
            await eventually(lambda: cloud.placement["eip-1"] == B, timeout=8)
        except AssertionError:
            raise AssertionError(f"no failover 8 s after a restart with a 2 s cooldown; decision: "
                                 f"{runner.decision and runner.decision.reason.value}") from None
    finally:
        runner.request_stop()
        await task
        await runner.wait_idle()
        await j.close()


async def test_recovery_makes_no_cloud_call_for_a_group_in_dry_run(tmp_path: Path) -> None:
    """A group with ``dry_run: true`` makes no mutating cloud call, ever ("everything runs and is decided
    and reported, and no mutating cloud call is made"), also when the journal holds an unfinished failover of it
    (the operator switched the group to dry run after a crash, or keepalived moved the EIP meanwhile) — recovery
    reports what it would do."""
    j = Journal.open(tmp_path / "state", max_age=3600, max_records=100)
    await j.begin(record("cut"), counted=True, windowed=True)
    cloud = FakeProvider({"eip-1": None})  # detached: Alibaba's two steps cut by kill -9, or someone else's move
    runner = GroupRunner(group(dry_run=True), cloud, {"web-a": [ScriptedCheck()], "web-b": [ScriptedCheck()]},
                         Observers([j]), j)
    try:
        (done,) = await recovery.recover(await j.unfinished(), {"web": runner})
        assert cloud.moves() == [], f"recovery moved EIPs of a dry-run group: {cloud.moves()} ({done.error})"
    finally:
        await j.close()


async def test_a_hung_disk_holds_a_failover_up_by_the_write_wait_once_not_per_cloud_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the journal is degraded because a write hangs, the next writes are not waited for."""
    monkeypatch.setattr(journal_module, "WRITE_WAIT", 0.2)
    j = Journal.open(tmp_path / "state", max_age=3600, max_records=100)
    release = threading.Event()
    j._executor.submit(release.wait)  # the journal's thread is stuck in a write (a hung disk)
    try:
        started = time.monotonic()
        await j.begin(record("f1"), counted=True, windowed=True)
        for _ in range(8):
            (await j.step("f1", "AssociateEipAddress"))("retryable", 0.01)
        waited = time.monotonic() - started
        assert waited < 0.6, f"the failover's cloud calls were held up {waited:.1f}s by a hung journal"
    finally:
        release.set()
        await j.close()


def test_a_hung_journal_write_does_not_keep_the_process_from_exiting(tmp_path: Path) -> None:
    """``Journal.close`` waits at most READ_WAIT for a hung disk and says so ("what is queued is lost"),
    and the process then exits (SIGTERM under systemd must not turn into a SIGKILL after TimeoutStopSec)."""
    script = textwrap.dedent(f"""
        import asyncio, threading
        from pathlib import Path
        from eipfailover.journal import Journal

        async def main():
            j = Journal.open(Path({str(tmp_path / 'state')!r}), max_age=3600, max_records=100)
            j._executor.submit(threading.Event().wait)  # a write that never returns (NFS, a dying disk)
            await j.close()
            print("closed", flush=True)

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the process did not exit 15 s after the journal was closed (printed {out!r})") \
            from None
    assert proc.returncode == 0


async def test_a_second_daemon_cannot_open_a_journal_in_use(tmp_path: Path) -> None:
    """A journal another live daemon uses (two units or a test run sharing a state_directory) is refused
    at start (JournalError, exit 2): otherwise the second daemon finds the first one's running failover
    'unfinished', reconciles it concurrently and records it as interrupted while it is still under way."""
    first = Journal.open(tmp_path / "state", max_age=3600, max_records=100)
    await first.begin(record("live"), counted=True, windowed=True)  # under way in the first daemon
    second: Journal | None = None
    try:
        try:
            second = Journal.open(tmp_path / "state", max_age=3600, max_records=100)
        except JournalError:
            return
        live = [r.id for r in await second.unfinished()]
        raise AssertionError(f"the second daemon opened it and would reconcile {live}")
    finally:
        if second is not None:
            await second.close()
        await first.close()


async def test_a_reload_signal_during_start_up_recovery_does_not_kill_the_daemon(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path, state_directory: Path) -> None:
    """SIGHUP (``systemctl reload``, a logrotate postrotate) while the daemon reconciles an unfinished
    failover at start is a reload (or is ignored until the engine runs), never the death of the daemon in the
    middle of re-attaching an EIP."""
    world(fake, transition=4.0)
    fake.bind("eip-1", "i-a", status="Unassociating")  # the dead daemon's unassociate, still settling
    j = Journal.open(state_directory, max_age=3600, max_records=100)
    await j.begin(record("cut"), counted=True, windowed=True)
    await j.close()
    proc = start(write(tmp_path / "c.yaml", config_data(fake, health_servers, tmp_path)))
    await proc.start()
    try:
        await proc.wait_for("journal_opened", 20)
        # reconciling: the preflight's describe, then recovery's polls while the EIP settles
        await eventually(lambda: fake.actions().count("DescribeEipAddresses") >= 4, timeout=20)
        assert fake.eips["eip-1"].status == "Unassociating"
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        ready = asyncio.create_task(proc.wait_for("daemon_ready", 30))
        died = asyncio.create_task(proc.proc.wait())
        await asyncio.wait({ready, died}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        died.cancel()
        if proc.proc.returncode is not None:
            raise AssertionError(f"SIGHUP during the start-up recovery ended the daemon: exit status "
                                 f"{proc.proc.returncode}; events: {[e['event'] for _, e in proc.events][-5:]}")
    finally:
        code = await proc.stop() if proc.proc is not None and proc.proc.returncode is None else None
    assert code == 0, f"the daemon ended with {code} (SIGHUP during recovery)"
