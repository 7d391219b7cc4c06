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
import fcntl
import functools
import json
import os
import queue
import sqlite3
import threading
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
from eipfailover.history import MemoryStore
from eipfailover.model import Trigger

log = structlog.get_logger("eipfailover.journal")
T = TypeVar("T")

WRITE_WAIT = 0.5
"""How long a failover waits for a write that must precede a cloud call before going on without it (degraded)."""
READ_WAIT = 2.0
QUEUE_LIMIT = 10_000
"""Writes kept for a degraded journal beyond this are dropped, the oldest first, and counted."""
RETRY_EVERY = 1.0
"""Seconds between attempts to write the backlog of a degraded journal."""
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


class _Writer:
    """One daemon thread that owns the connection and runs jobs in the order they came (a daemon thread: a job hung
    on a dead disk never keeps the process from exiting)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]
                                      | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="journal", daemon=True).start()

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((future, fn, args))
        return future

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)


@dataclass(slots=True)
class _State:
    degraded: str | None = None
    backlog: list[tuple[int, Callable[..., Any], tuple[Any, ...]]] = field(default_factory=list)
    """The writes not on disk since the journal degraded, with their sequence numbers: tried again, in order."""
    seq: int = 0
    dropped: int = 0
    last: asyncio.Future[Any] | None = None
    """The last write handed to the thread."""
    flushing: asyncio.Task[None] | None = None
    listeners: list[Callable[[bool], None]] = field(default_factory=list)


class Journal(NullObserver):
    """The journal of one daemon. Use :meth:`open`; an observer of the engine (it records every started and finished
    failover and every maintenance change), and the source of ``/v1/history``."""

    def __init__(self, path: Path, connection: sqlite3.Connection, writer: _Writer, lock: int,
                 max_age: float, max_records: int) -> None:
        self.path = path
        self.max_age, self.max_records = max_age, max_records
        self.memory = MemoryStore()
        """The same records in memory: what reads fall back to."""
        self._db = connection
        self._executor = writer
        self._lock = lock
        self._state = _State()
        self._closed = False

    # --- life ---
    @classmethod
    def open(cls, directory: Path, *, max_age: float, max_records: int) -> Journal:
        """Open (or create) ``directory/journal.db``, check it and lock it for this process; :class:`JournalError`
        says what is wrong (another daemon holding it, too)."""
        path = directory / "journal.db"
        writer = _Writer()
        try:
            lock = _lock(directory, path)
            try:
                db = writer.submit(_connect, path).result()
            except JournalError:
                os.close(lock)
                raise
        except JournalError:
            writer.stop()
            raise
        return cls(path, db, writer, lock, max_age, max_records)

    async def close(self) -> None:
        """Wait for the queued writes (a hung disk: up to :data:`READ_WAIT`), then close the database."""
        if self._closed:
            return
        if self._state.flushing is not None:
            self._state.flushing.cancel()
        self._closed = True
        done = asyncio.wrap_future(self._executor.submit(self._db.close))
        try:
            await asyncio.wait_for(asyncio.shield(done), READ_WAIT)
        except Exception as exc:  # a hung or broken disk: what is queued is lost, and said so
            log.error("journal_close_failed", path=str(self.path), error=_describe(exc),
                      unwritten=len(self._state.backlog))
        if self._state.backlog:
            log.error("journal_unwritten", path=str(self.path), writes=len(self._state.backlog))
        self._executor.stop()
        os.close(self._lock)

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
        :data:`WRITE_WAIT` (degraded: then at once)."""
        self.memory.on_failover_started(record)
        await self._write(_insert, (record, counted, windowed, os.getpid()), wait=True)

    async def step(self, failover_id: str, operation: str) -> Callable[[str, float], None]:
        """Record a cloud call about to be sent (awaited like :meth:`begin`); returns what records its result."""
        step_id = uuid.uuid4().hex
        await self._write(_step_sent, (step_id, failover_id, operation, time.time()), wait=True)

        def answered(result: str, seconds: float) -> None:
            self._queue(_step_answered, (step_id, result, seconds))
        return answered

    def uncount(self, failover_id: str) -> None:
        self._queue(_uncount, (failover_id,))

    def on_failover_started(self, record: FailoverRecord) -> None:
        """Recorded by :meth:`begin` (awaited by the engine), not here."""

    def on_failover_finished(self, record: FailoverRecord) -> None:
        self.memory.on_failover_finished(record)
        self._queue(_finish, (record, os.getpid()))

    def on_maintenance(self, group: str, enabled: bool) -> None:
        self._queue(_maintenance, (group, enabled, time.time()))

    # --- reads ---
    async def query(self, group: str | None = None, limit: int = 100) -> list[FailoverRecord]:
        """The newest records first, from the database (from memory if it cannot be read; while writes wait, with
        memory's newer versions of the records)."""
        try:
            stored = await self._read(_query, group, limit)
        except Exception as exc:
            log.warning("journal_read_failed", path=str(self.path), error=_describe(exc), fallback="memory")
            return self.memory.recent(group, limit)
        if self._state.degraded is None and not self._state.backlog:
            return stored
        newer = {r.id: r for r in self.memory.recent(group, limit)}
        merged = {r.id: newer.get(r.id, r) for r in stored}
        merged.update({i: r for i, r in newer.items() if i not in merged})
        return sorted(merged.values(), key=lambda r: r.started_at, reverse=True)[:limit]

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
    def _queue(self, work: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any] | None:
        """Hand a write to the thread; while degraded, add it to the backlog instead (None)."""
        if self._closed:
            return None
        self._state.seq += 1
        if self._state.degraded is not None:
            self._backlog(self._state.seq, work, args)
            return None
        future = asyncio.wrap_future(self._executor.submit(work, self._db, *args))
        future.add_done_callback(functools.partial(self._written, self._state.seq, work, args))
        self._state.last = future
        return future

    async def _write(self, work: Callable[..., Any], args: tuple[Any, ...], *, wait: bool) -> None:
        future = self._queue(work, args)
        if future is None or not wait:
            return
        try:
            await asyncio.wait_for(asyncio.shield(future), WRITE_WAIT)
        except TimeoutError:
            self._degrade(f"a write took more than {WRITE_WAIT:g}s")
        except Exception:  # a failed write is in the backlog (see _written)
            pass

    def _written(self, seq: int, work: Callable[..., Any], args: tuple[Any, ...], future: asyncio.Future[Any]) -> None:
        exc = None if future.cancelled() else future.exception()
        if exc is not None and not self._closed:
            self._backlog(seq, work, args)
            self._degrade(_describe(exc))

    def _backlog(self, seq: int, work: Callable[..., Any], args: tuple[Any, ...]) -> None:
        backlog = self._state.backlog
        backlog.append((seq, work, args))
        backlog.sort(key=lambda job: job[0])
        if len(backlog) > QUEUE_LIMIT:  # a dead disk for hours: keep the newest
            del backlog[0]
            self._state.dropped += 1

    async def _flush(self) -> None:
        """While degraded: once the writes handed to the thread are done, write the backlog in order, every
        :data:`RETRY_EVERY` seconds until it is all on disk."""
        while self._state.backlog or self._state.degraded is not None:
            last = self._state.last
            if last is not None and not last.done():
                await asyncio.wait({last})  # a hung disk: wait for the thread, which holds the order
                await asyncio.sleep(0)  # and for its done-callback, which may add it to the backlog
            jobs, self._state.backlog = self._state.backlog, []
            try:
                done = await asyncio.wrap_future(self._executor.submit(_replay, self._db, jobs))
            except Exception:
                done = 0
            self._state.backlog = jobs[done:] + self._state.backlog
            if not self._state.backlog:
                log.warning("journal_recovered", path=str(self.path), was=self._state.degraded,
                            dropped=self._state.dropped)
                self._state.degraded = None
                self._tell(True)
                return
            await asyncio.sleep(RETRY_EVERY)

    async def _read(self, work: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise JournalError("the journal is closed")
        return await asyncio.wait_for(asyncio.wrap_future(self._executor.submit(work, self._db, *args)), READ_WAIT)

    def _degrade(self, why: str) -> None:
        first = self._state.degraded is None
        self._state.degraded = why
        if self._state.flushing is None or self._state.flushing.done():
            self._state.flushing = asyncio.ensure_future(self._flush())
        if first:
            log.error("journal_degraded", path=str(self.path), error=why,
                      detail="failovers go on; history and state are kept in memory and written once the journal "
                             "recovers")
            self._tell(False)

    def _tell(self, ok: bool) -> None:
        for listener in self._state.listeners:
            listener(ok)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --- what runs in the journal's thread ---
def _lock(directory: Path, path: Path) -> int:
    """Create the directory and take ``journal.lock`` (held while the process lives: a second daemon on the same
    directory is refused)."""
    try:
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(f"state_directory {directory}: cannot create it: {exc.strerror or exc}; set "
                           f"state_directory to a writable directory (or null to run without a journal)") from exc
    lock_path = directory / "journal.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise JournalError(f"{lock_path}: cannot open it: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise JournalError(f"{path}: in use by another eipfailover (pid {holder}); each daemon needs its own "
                           f"state_directory") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _connect(path: Path) -> sqlite3.Connection:
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


def _uncount(db: sqlite3.Connection, failover_id: str) -> None:
    with _transaction(db):
        db.execute("UPDATE failovers SET counted=0, windowed=0 WHERE id=?", (failover_id,))


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


def _maintenance(db: sqlite3.Connection, group: str, enabled: bool, changed_at: float) -> None:
    db.execute("INSERT OR REPLACE INTO maintenance VALUES (?,?,?)", (group, int(enabled), changed_at))


def _replay(db: sqlite3.Connection, jobs: list[tuple[int, Callable[..., Any], tuple[Any, ...]]]) -> int:
    """Run backlogged writes in order; how many succeeded before the first failure."""
    for done, (_, work, args) in enumerate(jobs):
        try:
            work(db, *args)
        except Exception:
            return done
    return len(jobs)


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
