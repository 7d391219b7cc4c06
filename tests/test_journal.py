"""The durable journal: SQLite on disk under ``state_directory``. What it records and returns, what it remembers for
a restart, pruning, a clear error for a database it cannot use, a degraded mode (a full or hung disk) that never
blocks a failover, and, with the daemon as a subprocess killed with SIGKILL, history, maintenance and unfinished
failovers that survive it."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from eipfailover import journal as journal_module
from eipfailover.config import parse_config
from eipfailover.engine import GroupRunner
from eipfailover.events import FailoverRecord, Observers
from eipfailover.journal import Journal, JournalError
from eipfailover.model import Binding, CheckStatus, TargetState, Trigger

from .cli_run import run_cli
from .conftest import HealthServer, eventually
from .fake_aliyun import FakeAliyun
from .fakes import FakeProvider, ScriptedCheck
from .test_lifecycle import config_data, failing_over, start, world, write

A, B = Binding(instance_id="i-a"), Binding(instance_id="i-b")


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = Journal.open(tmp_path / "state", max_age=3600, max_records=100)
    yield j
    await j.close()


def record(fid: str, group: str = "web", started_at: float | None = None, **more: Any) -> FailoverRecord:
    return FailoverRecord(id=fid, group=group, trigger=Trigger.AUTO, reason="active_down", from_target="web-a",
                          to_target="web-b", eips=("eip-1",), started_at=time.time() if started_at is None
                          else started_at, **more)


async def on_thread(j: Journal, sql: str) -> Any:
    """Run ``sql`` on the journal's own connection, in its thread (a test's way into the database)."""
    return await asyncio.wrap_future(j._executor.submit(lambda: j._db.execute(sql).fetchall()))


async def test_a_failover_is_recorded_with_each_step_before_and_after_it(journal: Journal) -> None:
    r = record("f1")
    await journal.begin(r, counted=True, windowed=True)
    assert [x.result for x in await journal.unfinished()] == ["running"]
    answered = await journal.step("f1", "UnassociateEipAddress")
    (sent,) = (await journal.query())[0].steps
    assert (sent.operation, sent.result, sent.seconds) == ("UnassociateEipAddress", "sent", None)
    answered("ok", 0.25)
    (await journal.step("f1", "AssociateEipAddress"))("retryable", 0.5)
    journal.on_failover_finished(FailoverRecord(**{**_fields(r), "result": "success", "finished_at": time.time(),
                                                   "attempts": 2}))
    await journal.prune()  # a read: after the queued writes
    (done,) = await journal.query()
    assert (done.result, done.attempts) == ("success", 2)
    assert [(s.operation, s.result, s.seconds) for s in done.steps] == [
        ("UnassociateEipAddress", "ok", 0.25), ("AssociateEipAddress", "retryable", 0.5)]
    assert await journal.unfinished() == []


def _fields(r: FailoverRecord) -> dict[str, Any]:
    return {name: getattr(r, name) for name in r.__dataclass_fields__}


async def test_history_is_newest_first_per_group_and_a_refusal_is_recorded_without_a_start(journal: Journal) -> None:
    for n, group in enumerate(["web", "api", "web"]):
        await journal.begin(record(f"f{n}", group, started_at=1000.0 + n), counted=True, windowed=True)
    journal.on_failover_finished(record("refused", "web", started_at=2000.0, result="skipped", error="refused: x",
                                        finished_at=2000.0))
    assert [r.id for r in await journal.query()] == ["refused", "f2", "f1", "f0"]
    assert [r.id for r in await journal.query("web", 2)] == ["refused", "f2"]


async def test_maintenance_the_max_failovers_window_and_the_cooldown_are_remembered(journal: Journal) -> None:
    now = time.time()
    await journal.begin(record("old", started_at=now - 7200), counted=True, windowed=True)
    await journal.begin(record("auto", started_at=now - 60), counted=True, windowed=True)
    await journal.begin(record("manual", started_at=now - 30), counted=True, windowed=False)
    await journal.begin(record("repair", started_at=now - 10), counted=False, windowed=False)
    journal.on_failover_finished(record("manual", started_at=now - 30, result="success", finished_at=now - 29))
    journal.on_maintenance("web", True)
    journal.on_maintenance("api", True)
    journal.on_maintenance("api", False)
    memory = await journal.remember({"web": 3600.0, "api": 3600.0, "new": 60.0})
    assert memory["web"].maintenance
    assert not memory["api"].maintenance
    assert memory["web"].window_starts == (now - 60,)  # the old one is out of the window, manual ones never count
    assert memory["web"].last_move_at == now - 29  # the end of the last move that arms the cooldown, not a repair
    assert memory["new"].window_starts == ()
    assert memory["new"].last_move_at is None


async def test_a_restarted_group_counts_the_moves_it_made_before(tmp_path: Path) -> None:
    """The max_failovers window survives a restart: a group that used its moves before it does not make another."""
    config = parse_config({
        "providers": {"p": {"type": "aws", "region": "us-east-1"}},
        "groups": [{"name": "web", "provider": "p", "eips": ["eip-1"],
                    "policy": {"interval": 0.1, "timeout": 0.05, "rise": 1, "fall": 1, "cooldown": 0,
                               "max_failovers": {"count": 1, "window": "1h"}},
                    "targets": [{"name": n, "binding": {"instance_id": i},
                                 "checks": [{"type": "tcp", "host": "127.0.0.1", "port": 1}]}
                                for n, i in (("web-a", "i-a"), ("web-b", "i-b"))]}],
    }).groups[0]
    j = Journal.open(tmp_path / "state", max_age=3600, max_records=100)
    cloud = FakeProvider({"eip-1": A})
    first = GroupRunner(config, cloud, {"web-a": [ScriptedCheck(status=CheckStatus.FAIL)],
                                        "web-b": [ScriptedCheck()]}, Observers([j]), j)
    task = asyncio.create_task(first.run())
    await eventually(lambda: cloud.placement["eip-1"] == B)
    first.request_stop()
    await task
    await first.wait_idle()
    await j.close()

    j = Journal.open(tmp_path / "state", max_age=3600, max_records=100)
    second = GroupRunner(config, cloud, {"web-a": [ScriptedCheck()], "web-b": [ScriptedCheck(status=CheckStatus.FAIL)]},
                         Observers([j]), j)  # now web-b fails and web-a is healthy
    second.remember((await j.remember({"web": 3600.0}))["web"])
    assert len(second.state.recent_moves) == 1
    task = asyncio.create_task(second.run())
    await eventually(lambda: second.targets["web-b"].health.state is TargetState.DOWN
                     and second.decision is not None)
    await eventually(lambda: second.decision is not None and second.decision.reason.value == "rate_limited")
    second.request_stop()
    await task
    assert cloud.placement["eip-1"] == B
    assert cloud.moves() == [(("eip-1",), B)]
    await j.close()


async def test_pruning_keeps_the_newest_within_age_and_count_and_never_an_unfinished_one(tmp_path: Path) -> None:
    j = Journal.open(tmp_path / "state", max_age=3600, max_records=3)
    now = time.time()
    await j.begin(record("ancient-running", started_at=now - 9000), counted=True, windowed=True)
    for n in range(6):
        started = now - 7200 if n == 0 else now - 100 + n
        await j.begin(record(f"f{n}", started_at=started), counted=True, windowed=True)
        (await j.step(f"f{n}", "AssociateAddress"))("ok", 0.1)
        j.on_failover_finished(record(f"f{n}", started_at=started, result="success", finished_at=started + 1))
    assert await j.prune() == 3  # f0 by age, f1 and f2 by count
    assert [r.id for r in await j.query()] == ["f5", "f4", "f3", "ancient-running"]
    orphans = await on_thread(j, "SELECT COUNT(*) FROM steps WHERE failover_id IN ('f0','f1','f2')")
    assert orphans == [(0,)]
    await j.close()


def test_a_database_it_cannot_use_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "journal.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match=r"journal.db: cannot use it as the journal: file is not a database; "
                                           r"move it aside to start with an empty journal"):
        Journal.open(state, max_age=1, max_records=1)
    (tmp_path / "file").write_text("")
    with pytest.raises(JournalError, match=r"state_directory .*file/state: cannot create it: Not a directory"):
        Journal.open(tmp_path / "file" / "state", max_age=1, max_records=1)
    newer = tmp_path / "newer"
    newer.mkdir()
    with sqlite3.connect(newer / "journal.db") as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(JournalError, match=r"written by a newer eipfailover \(schema 99"):
        Journal.open(newer, max_age=1, max_records=1)


async def test_the_daemon_refuses_to_start_on_a_corrupt_journal(tmp_path: Path, state_directory: Path) -> None:
    state_directory.mkdir()  # noqa: ASYNC240 - a test's set-up
    (state_directory / "journal.db").write_bytes(b"\x00garbage" * 1000)
    config = write(tmp_path / "c.yaml", {
        "providers": {"p": {"type": "aws", "region": "us-east-1", "endpoint_url": "http://127.0.0.1:9"}},
        "groups": [{"name": "web", "provider": "p", "eips": ["eipalloc-1"],
                    "targets": [{"name": n, "binding": {"instance_id": f"i-{n}"},
                                 "checks": [{"type": "tcp", "host": "127.0.0.1", "port": 9}]} for n in "ab"]}]})
    result = await run_cli("run", "-c", str(config))
    assert result.code == 2
    assert "Traceback" not in result.err
    assert "journal.db: cannot use it as the journal: file is not a database" in result.out + result.err


async def test_a_full_disk_degrades_the_journal_and_never_blocks_a_failover(journal: Journal) -> None:
    states: list[bool] = []
    journal.on_state(states.append)
    pages = (await on_thread(journal, "PRAGMA page_count"))[0][0]
    await on_thread(journal, f"PRAGMA max_page_count={pages}")  # the disk is full
    for n in range(50):  # enough rows to need a new page
        await journal.begin(record(f"f{n}", error="x" * 500), counted=True, windowed=True)
    assert states == [True, False]
    assert journal.degraded is not None
    assert "full" in journal.degraded
    assert len(await journal.query()) == 50  # while degraded, reads add what only memory has
    await on_thread(journal, "PRAGMA max_page_count=1000000")  # space again: the next write ends it
    await journal.begin(record("after"), counted=True, windowed=True)
    await eventually(lambda: journal.degraded is None)
    assert states == [True, False, True]


async def test_a_hung_disk_delays_a_failover_by_at_most_the_write_wait(journal: Journal,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "WRITE_WAIT", 0.2)
    release = threading.Event()
    journal._executor.submit(release.wait)  # the journal's thread is stuck in a write
    try:
        started = time.monotonic()
        await journal.begin(record("f1"), counted=True, windowed=True)
        answered = await journal.step("f1", "AssociateAddress")
        answered("ok", 0.1)
        waited = time.monotonic() - started
        assert waited < 1.0, waited
        assert journal.degraded == "a write took more than 0.2s"
    finally:
        release.set()
    await eventually(lambda: journal.degraded is None)  # the queued writes went through: recovered
    (done,) = await journal.query()
    assert [(s.operation, s.result) for s in done.steps] == [("AssociateAddress", "ok")]


def detached(fake: FakeAliyun) -> bool:
    fake.advance()
    return fake.eips["eip-1"].status == "Available"


async def api_get(address: str, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(f"http://{address}{path}") as response:
        return await response.json()


async def test_sigkill_between_the_two_steps_is_reconciled_at_the_next_start(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    """Killed with SIGKILL while the EIP is detached (between Alibaba's two steps): the next start finds the
    failover unfinished in the journal, re-attaches the EIP where the move was going before the engine runs, and
    records it as interrupted with its steps; the history of before the kill is still there."""
    world(fake, transition=1.5)
    config = write(tmp_path / "c.yaml", config_data(fake, health_servers, tmp_path))
    proc = start(config)
    await failing_over(proc, health_servers)
    await eventually(lambda: fake.eips["eip-1"].status == "Unassociating")
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGKILL)
    assert await proc.wait(10) == -signal.SIGKILL
    await eventually(lambda: detached(fake), timeout=10)
    associations = fake.actions().count("AssociateEipAddress")

    again = start(config)
    try:
        await again.start()
        await again.wait_for("daemon_ready", 30)
        assert (fake.eips["eip-1"].status, fake.eips["eip-1"].instance_id) == ("InUse", "i-b")
        assert fake.actions().count("AssociateEipAddress") == associations + 1  # moved once
        address = next(e["address"] for _, e in again.events if e["event"] == "api_listening")
        (interrupted,) = (await api_get(address, "/v1/history"))["failovers"]
        assert interrupted["result"] == "interrupted"
        assert interrupted["error"] == ("the daemon stopped during this failover; found eip-1 on nothing; "
                                        "re-attached eip-1 to web-b")
        assert [(s["operation"], s["result"]) for s in interrupted["steps"]] == [
            ("UnassociateEipAddress", "ok"), ("AssociateEipAddress", "ok")]  # the second: the next start's
        assert not [e for _, e in again.events if e["event"] == "failover_started"]
    finally:
        assert await again.stop() == 0


async def test_history_and_maintenance_survive_sigkill(fake: FakeAliyun, health_servers: list[HealthServer],
                                                       tmp_path: Path) -> None:
    world(fake, transition=0.2)
    token = tmp_path / "token"
    token.write_text("s3cret-token-for-tests")
    data = config_data(fake, health_servers, tmp_path)
    data["api"]["token_file"] = str(token)
    config = write(tmp_path / "c.yaml", data)
    proc = start(config)
    await proc.start_and_settle("web-a", "web-b")
    address = next(e["address"] for _, e in proc.events if e["event"] == "api_listening")
    headers = {"Authorization": "Bearer s3cret-token-for-tests"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"http://{address}/v1/groups/web/failover", json={"to": "web-b"}) as response:
            assert response.status == 202, await response.text()
        await proc.wait_for("failover_verified", 20)
        async with session.post(f"http://{address}/v1/groups/web/maintenance", json={"enabled": True}) as response:
            assert response.status == 200
    before = (await api_get(address, "/v1/history"))["failovers"]
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGKILL)
    await proc.wait(10)

    again = start(config)
    try:
        await again.start()
        await again.wait_for("daemon_ready", 30)
        address = next(e["address"] for _, e in again.events if e["event"] == "api_listening")
        after = (await api_get(address, "/v1/history"))["failovers"]
        assert [(r["id"], r["result"]) for r in after] == [(r["id"], "success") for r in before]
        assert [s["operation"] for s in after[0]["steps"]] == ["UnassociateEipAddress", "AssociateEipAddress"]
        assert (await api_get(address, "/v1/groups/web"))["maintenance"] is True
    finally:
        assert await again.stop() == 0
    assert json.loads(json.dumps(after))  # JSON all the way
