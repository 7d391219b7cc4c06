"""The durable journal: every failover (with each cloud step it sent) and the maintenance flags, in SQLite.

The database is ``journal.db`` under ``state_directory``, in WAL mode with ``synchronous=NORMAL``: a committed write
survives the daemon's crash or ``kill -9`` (only a power loss may take the last ones). One thread owns the
connection (stdlib ``sqlite3``: the writes are a few small statements, and one worker thread serialises them in the
order the engine made them, which is all ``aiosqlite`` would add). The engine awaits the writes that must be on disk
before a cloud call (a failover's start, a step about to be sent), up to :data:`WRITE_WAIT`; every other write is
queued behind them.

A journal that cannot be opened at start is a :class:`JournalError` (the daemon exits 2). At run time a write that
fails or does not finish in time puts it in *degraded* mode: logged (``journal_degraded``), shown by
``eipfailover_journal_up 0``, and it never blocks a failover: queued writes go on being tried,
and the first that succeeds ends it (``journal_recovered``). Reads that fail fall back to the history in memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import structlog

from eipfailover.errors import EipFailoverError
from eipfailover.events import FailoverRecord, GroupMemory, NullObserver, Step
from eipfailover.history import History
from eipfailover.model import Trigger

log = structlog.get_logger("eipfailover.journal")
T = TypeVar("T")

WRITE_WAIT = 0.5
"""How long a failover waits for a write that must precede a cloud call before going on without it (degraded)."""
READ_WAIT = 2.0
QUEUE_LIMIT = 10_000
"""Writes waiting for the database beyond this (it hangs) are dropped, and counted."""
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS failovers (
    id TEXT PRIMARY KEY, grp TEXT NOT NULL, trigger TEXT NOT NULL, reason TEXT NOT NULL, from_target TEXT,
    to_target TEXT NOT NULL, eips TEXT NOT NULL, started_at REAL NOT NULL, requested_by TEXT,
    result TEXT NOT NULL, error TEXT NOT NULL, finished_at REAL, attempts INTEGER NOT NULL,
    counted INTEGER NOT NULL, windowed INTEGER NOT NULL, pid INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS failovers_by_start ON failovers (started_at);
CREATE INDEX IF NOT EXISTS failovers_by_group ON failovers (grp, started_at);
CREATE INDEX IF NOT EXISTS failovers_by_result ON failovers (result);
CREATE TABLE IF NOT EXISTS steps (
    id TEXT PRIMARY KEY, failover_id TEXT NOT NULL, operation TEXT NOT NULL, sent_at REAL NOT NULL, seconds REAL,
    result TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS steps_by_failover ON steps (failover_id, sent_at);
CREATE TABLE IF NOT EXISTS maintenance (grp TEXT PRIMARY KEY, enabled INTEGER NOT NULL, changed_at REAL NOT NULL);
"""
_COLUMNS = ("id, grp, trigger, reason, from_target, to_target, eips, started_at, requested_by, result, error, "
            "finished_at, attempts")


class JournalError(EipFailoverError):
    """The journal cannot be opened (at start: the daemon exits 2)."""


@dataclass(slots=True)
class _State:
    degraded: str | None = None
    dropped: int = 0
    queued: int = 0
    listeners: list[Callable[[bool], None]] = field(default_factory=list)


class Journal(NullObserver):
    """The journal of one daemon. Use :meth:`open`; an observer of the engine (it records every started and finished
    failover and every maintenance change), and the source of ``/v1/history``."""

    def __init__(self, path: Path, connection: sqlite3.Connection, executor: concurrent.futures.Executor,
                 max_age: float, max_records: int) -> None:
        self.path = path
        self.max_age, self.max_records = max_age, max_records
        self.memory = History()
        """The same records in memory: what reads fall back to."""
        self._db = connection
        self._executor = executor
        self._state = _State()
        self._closed = False

    # --- life ---
    @classmethod
    def open(cls, directory: Path, *, max_age: float, max_records: int) -> Journal:
        """Open (or create) ``directory/journal.db`` and check it; :class:`JournalError` says what is wrong."""
        path = directory / "journal.db"
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        try:
            db = executor.submit(_connect, directory, path).result()
        except JournalError:
            executor.shutdown(wait=False)
            raise
        return cls(path, db, executor, max_age, max_records)

    async def close(self) -> None:
        """Wait for the queued writes (a hung disk: up to :data:`READ_WAIT`), then close the database."""
        if self._closed:
            return
        self._closed = True
        done = asyncio.wrap_future(self._executor.submit(self._db.close))
        try:
            await asyncio.wait_for(asyncio.shield(done), READ_WAIT)
        except Exception as exc:  # a hung or broken disk: what is queued is lost, and said so
            log.error("journal_close_failed", path=str(self.path), error=_describe(exc))
        self._executor.shutdown(wait=False)

    @property
    def degraded(self) -> str | None:
        """Why the journal is not recording (None when it is)."""
        return self._state.degraded

    def on_state(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(ok)`` now and whenever the journal degrades or recovers."""
        self._state.listeners.append(listener)
        listener(self._state.degraded is None)

    # --- writes ---
    async def begin(self, record: FailoverRecord, *, counted: bool, windowed: bool) -> None:
        """Record a failover about to make its first cloud call; returns once it is on disk, or after
        :data:`WRITE_WAIT` (degraded)."""
        self.memory.on_failover_started(record)
        await self._wait(self._submit(_insert, record, counted, windowed, os.getpid()))

    async def step(self, failover_id: str, operation: str) -> Callable[[str, float], None]:
        """Record a cloud call about to be sent (awaited like :meth:`begin`); returns what records its result."""
        step_id = uuid.uuid4().hex
        await self._wait(self._submit(_step_sent, step_id, failover_id, operation, time.time()))

        def answered(result: str, seconds: float) -> None:
            self._submit(_step_answered, step_id, result, seconds)
        return answered

    def on_failover_started(self, record: FailoverRecord) -> None:
        """Recorded by :meth:`begin` (awaited by the engine), not here."""

    def on_failover_finished(self, record: FailoverRecord) -> None:
        self.memory.on_failover_finished(record)
        self._submit(_finish, record, os.getpid())

    def on_maintenance(self, group: str, enabled: bool) -> None:
        self._submit(_maintenance, group, enabled)

    def finish_interrupted(self, record: FailoverRecord) -> None:
        """Record the outcome of a failover found unfinished at start (result ``interrupted``)."""
        self.on_failover_finished(record)

    # --- reads ---
    async def query(self, group: str | None = None, limit: int = 100) -> list[FailoverRecord]:
        """The newest records first, from the database (from memory if it cannot be read; while degraded, with what
        only memory has)."""
        try:
            stored = await self._read(_query, group, limit)
        except Exception as exc:
            log.warning("journal_read_failed", path=str(self.path), error=_describe(exc), fallback="memory")
            return self.memory.query(group, limit)
        if self._state.degraded is None:
            return stored
        ids = {r.id for r in stored}
        merged = stored + [r for r in self.memory.query(group, limit) if r.id not in ids]
        return sorted(merged, key=lambda r: r.started_at, reverse=True)[:limit]

    async def unfinished(self) -> list[FailoverRecord]:
        """The failovers that started and never finished (a crash, ``kill -9``), oldest first."""
        return await self._read(_unfinished)

    async def remember(self, windows: Mapping[str, float]) -> dict[str, GroupMemory]:
        """Each group's memory: maintenance flag, moves within its ``max_failovers`` window (``windows``), the last
        move (for the cooldown). Groups not in ``windows`` are ignored."""
        return await self._read(_remember, dict(windows))

    async def prune(self) -> int:
        """Delete finished failovers beyond ``max_age`` and ``max_records``; how many went."""
        return await self._read(_prune, self.max_age, self.max_records)

    async def prune_every(self, period: float) -> None:
        """Prune now and every ``period`` seconds (run as a task; failures are logged and retried)."""
        while True:
            try:
                pruned = await self.prune()
                if pruned:
                    log.info("journal_pruned", records=pruned)
            except Exception as exc:
                log.warning("journal_prune_failed", path=str(self.path), error=_describe(exc))
            await asyncio.sleep(period)

    # --- machinery ---
    def _submit(self, work: Callable[..., T], *args: Any) -> asyncio.Future[T] | None:
        if self._closed:
            return None
        if self._state.queued >= QUEUE_LIMIT:
            self._state.dropped += 1
            self._degrade(f"{self._state.queued} writes waiting for the database; dropped {self._state.dropped}")
            return None
        self._state.queued += 1
        future = asyncio.wrap_future(self._executor.submit(work, self._db, *args))
        future.add_done_callback(self._written)
        return future

    def _written(self, future: asyncio.Future[Any]) -> None:
        self._state.queued -= 1
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            self._degrade(_describe(exc))
        elif self._state.degraded is not None:
            log.warning("journal_recovered", path=str(self.path), was=self._state.degraded)
            self._state.degraded = None
            self._tell(True)

    async def _wait(self, future: asyncio.Future[T] | None) -> T | None:
        if future is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(future), WRITE_WAIT)
        except TimeoutError:
            self._degrade(f"a write took more than {WRITE_WAIT:g}s")
        except Exception:  # reported by _written
            pass
        return None

    async def _read(self, work: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise JournalError("the journal is closed")
        return await asyncio.wait_for(asyncio.wrap_future(self._executor.submit(work, self._db, *args)), READ_WAIT)

    def _degrade(self, why: str) -> None:
        first = self._state.degraded is None
        self._state.degraded = why
        if first:
            log.error("journal_degraded", path=str(self.path), error=why,
                      detail="failovers go on; history and state are not recorded until the journal recovers")
            self._tell(False)

    def _tell(self, ok: bool) -> None:
        for listener in self._state.listeners:
            listener(ok)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --- what runs in the journal's thread ---
def _connect(directory: Path, path: Path) -> sqlite3.Connection:
    try:
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(f"state_directory {directory}: cannot create it: {exc.strerror or exc}; set "
                           f"state_directory to a writable directory (or null to run without a journal)") from exc
    db = None
    try:
        db = sqlite3.connect(path, timeout=1.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(f"{path}: written by a newer eipfailover (schema {version}, this one knows "
                               f"{SCHEMA_VERSION}); move it aside or upgrade")
        problem = db.execute("PRAGMA quick_check").fetchone()[0]
        if problem != "ok":
            raise JournalError(f"{path}: the database is damaged ({problem}); move it aside to start with an empty "
                               f"journal")
        with _transaction(db):
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")  # also proves the WAL file can be written
        return db
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        hint = "move it aside to start with an empty journal" if isinstance(exc, sqlite3.DatabaseError) \
            and "not a database" in str(exc) else "check the file, its directory and their permissions"
        raise JournalError(f"{path}: cannot use it as the journal: {exc}; {hint}") from exc
    except JournalError:
        if db is not None:
            db.close()
        raise


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _insert(db: sqlite3.Connection, r: FailoverRecord, counted: bool, windowed: bool, pid: int) -> None:
    db.execute("INSERT OR REPLACE INTO failovers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
               (r.id, r.group, r.trigger.value, r.reason, r.from_target, r.to_target, json.dumps(list(r.eips)),
                r.started_at, r.requested_by, r.result, r.error, r.finished_at, r.attempts, int(counted),
                int(windowed), pid))


def _finish(db: sqlite3.Connection, r: FailoverRecord, pid: int) -> None:
    with _transaction(db):
        updated = db.execute("UPDATE failovers SET result=?, error=?, finished_at=?, attempts=? WHERE id=?",
                             (r.result, r.error, r.finished_at, r.attempts, r.id)).rowcount
        if not updated:  # never started (a refused request, a dry run whose start was not awaited)
            _insert(db, r, False, False, pid)


def _step_sent(db: sqlite3.Connection, step_id: str, failover_id: str, operation: str, sent_at: float) -> None:
    db.execute("INSERT INTO steps VALUES (?,?,?,?,NULL,'sent')", (step_id, failover_id, operation, sent_at))


def _step_answered(db: sqlite3.Connection, step_id: str, result: str, seconds: float) -> None:
    db.execute("UPDATE steps SET result=?, seconds=? WHERE id=?", (result, seconds, step_id))


def _maintenance(db: sqlite3.Connection, group: str, enabled: bool) -> None:
    db.execute("INSERT OR REPLACE INTO maintenance VALUES (?,?,?)", (group, int(enabled), time.time()))


def _records(db: sqlite3.Connection, where: str, args: tuple[Any, ...], order: str, limit: int) -> list[FailoverRecord]:
    rows = db.execute(f"SELECT {_COLUMNS} FROM failovers {where} ORDER BY {order} LIMIT ?", (*args, limit)).fetchall()
    steps: dict[str, list[Step]] = {}
    if rows:
        ids = [row[0] for row in rows]
        marks = ",".join("?" * len(ids))
        for fid, operation, sent_at, seconds, result in db.execute(
                f"SELECT failover_id, operation, sent_at, seconds, result FROM steps WHERE failover_id IN ({marks}) "
                f"ORDER BY failover_id, sent_at, rowid", ids):
            steps.setdefault(fid, []).append(Step(operation, sent_at, seconds, result))
    return [FailoverRecord(id=row[0], group=row[1], trigger=Trigger(row[2]), reason=row[3], from_target=row[4],
                           to_target=row[5], eips=tuple(json.loads(row[6])), started_at=row[7], requested_by=row[8],
                           result=row[9], error=row[10], finished_at=row[11], attempts=row[12],
                           steps=tuple(steps.get(row[0], ())))
            for row in rows]


def _query(db: sqlite3.Connection, group: str | None, limit: int) -> list[FailoverRecord]:
    if group is None:
        return _records(db, "", (), "started_at DESC, rowid DESC", limit)
    return _records(db, "WHERE grp=?", (group,), "started_at DESC, rowid DESC", limit)


def _unfinished(db: sqlite3.Connection) -> list[FailoverRecord]:
    return _records(db, "WHERE result='running'", (), "started_at, rowid", 1_000_000)


def _remember(db: sqlite3.Connection, windows: dict[str, float]) -> dict[str, GroupMemory]:
    now = time.time()
    memory = {group: GroupMemory() for group in windows}
    for group, enabled in db.execute("SELECT grp, enabled FROM maintenance"):
        if group in memory:
            memory[group] = replace(memory[group], maintenance=bool(enabled))
    for group, window in windows.items():
        starts = tuple(t for (t,) in db.execute(
            "SELECT started_at FROM failovers WHERE grp=? AND windowed=1 AND started_at>? ORDER BY started_at",
            (group, now - window)))
        last = db.execute("SELECT MAX(COALESCE(finished_at, started_at)) FROM failovers WHERE grp=? AND counted=1",
                          (group,)).fetchone()[0]
        memory[group] = replace(memory[group], window_starts=starts, last_move_at=last)
    return memory


def _prune(db: sqlite3.Connection, max_age: float, max_records: int) -> int:
    with _transaction(db):
        gone = db.execute("DELETE FROM failovers WHERE result!='running' AND started_at<?",
                          (time.time() - max_age,)).rowcount
        gone += db.execute("DELETE FROM failovers WHERE id IN (SELECT id FROM failovers WHERE result!='running' "
                           "ORDER BY started_at DESC, rowid DESC LIMIT -1 OFFSET ?)", (max_records,)).rowcount
        db.execute("DELETE FROM steps WHERE failover_id NOT IN (SELECT id FROM failovers)")
    return gone
