"""Hooks: programs run after each failover (``on_failover``) and when a target is confirmed down or up
(``on_target_down``, ``on_target_up``), serialized per group in event order, with a timeout, a fixed argv and no
shell. Placeholders (``{group} {from} {to} {result} {reason} {trigger} {failover_id}`` for a failover; ``{group}
{target} {state} {previous} {detail}`` for a target) are replaced in each argument; the same values come as
``EIPFAILOVER_GROUP``, ``EIPFAILOVER_FROM``, ... in a minimal environment (``PATH``, ``LANG``, those, and the hook's
``env``). ``before_failover``, the fencing hook, is run by the failover itself (see ``engine``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import structlog

from eipfailover.config import HooksConfig
from eipfailover.events import FailoverRecord, NullObserver
from eipfailover.model import CheckResult, Health, TargetState
from eipfailover.process import describe_status, run_program

log = structlog.get_logger("eipfailover.hooks")


def substitute(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """Replace each ``{key}`` in each argument; unknown placeholders stay as they are. No shell is involved."""
    out = []
    for arg in argv:
        for key, value in values.items():
            arg = arg.replace("{" + key + "}", value)
        out.append(arg)
    return out


def hook_values(record: FailoverRecord) -> dict[str, str]:
    return {
        "group": record.group, "from": record.from_target or "", "to": record.to_target,
        "result": record.result, "reason": record.reason, "trigger": record.trigger.value,
        "failover_id": record.id,
    }


def hook_environment(values: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """``EIPFAILOVER_<KEY>`` for each placeholder value, then the hook's own ``env``."""
    return {**{f"EIPFAILOVER_{key.upper()}": value for key, value in values.items()}, **extra}


async def run_hook(argv: list[str], timeout: float, env: Mapping[str, str], **context: str) -> bool:
    """Run one hook to completion within ``timeout`` (killed after it) and log the outcome; True if it exited 0."""
    ok, _ = await run_gate(argv, timeout, env, **context)
    return ok


async def run_gate(argv: list[str], timeout: float, env: Mapping[str, str], **context: str) -> tuple[bool, str]:
    """:func:`run_hook`, with what happened in words: ``exit status 1: <its last line>``, ``killed after 10s``."""
    try:
        async with asyncio.timeout(timeout):
            code, last_line = await run_program(argv, env)
    except TimeoutError:
        log.error("hook_failed", argv=argv, error=f"killed after {timeout:g}s", **context)
        return False, f"killed after {timeout:g}s"
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument or variable
        log.error("hook_failed", argv=argv, error=f"cannot run: {getattr(exc, 'strerror', None) or exc}", **context)
        return False, f"cannot run: {getattr(exc, 'strerror', None) or exc}"
    event = log.info if code == 0 else log.error
    event("hook_finished" if code == 0 else "hook_failed", argv=argv, status=describe_status(code),
          output=last_line, **context)
    return code == 0, describe_status(code) + (f": {last_line}" if last_line else "")


QUEUE_LIMIT = 100
"""Hooks waiting per group. Beyond it (a flapping target, a slow hook), target hooks are dropped (counted and logged),
never ``on_failover``: a backlog must not delay the failover's hook without end."""


@dataclass(frozen=True, slots=True)
class _Job:
    hook: Literal["on_failover", "on_target_down", "on_target_up"]
    values: Mapping[str, str]
    context: Mapping[str, str]


class HookObserver(NullObserver):
    """An engine observer that queues the event hooks per group and runs them one after another, in event order."""

    def __init__(self, hooks: Mapping[str, HooksConfig]) -> None:
        self.hooks: dict[str, HooksConfig] = {}
        self.configure(hooks)
        self.queues: dict[str, asyncio.Queue[_Job]] = {}
        self.workers: dict[str, asyncio.Task[None]] = {}
        self.dropped: dict[str, int] = {}
        """Target hooks dropped per group because the queue was full."""

    def configure(self, hooks: Mapping[str, HooksConfig]) -> None:
        """Set the hooks per group (at start and on reload; queued hooks of a group run with its new settings)."""
        self.hooks = {group: h for group, h in hooks.items() if h.on_failover or h.on_target_down or h.on_target_up}

    def on_failover_finished(self, record: FailoverRecord) -> None:
        if record.result not in ("skipped", "dry_run"):  # a move that was not made notifies nothing
            self._queue(record.group, _Job("on_failover", hook_values(record), {"failover_id": record.id}))

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None:
        if after.state is before.state or after.state is TargetState.UNKNOWN:
            return
        hook: Literal["on_target_down", "on_target_up"] = (
            "on_target_down" if after.state is TargetState.DOWN else "on_target_up")
        values = {"group": group, "target": target, "state": after.state.value, "previous": before.state.value,
                  "detail": cause.detail.replace("\x00", "")}  # a program's output: no argv or variable holds NUL
        self._queue(group, _Job(hook, values, {"target": target, "hook": hook}))

    def _queue(self, group: str, job: _Job) -> None:
        hooks = self.hooks.get(group)
        if hooks is None or getattr(hooks, job.hook) is None:
            return
        if group not in self.queues:
            self.queues[group] = asyncio.Queue()
            self.workers[group] = asyncio.create_task(self._work(group))
        if job.hook != "on_failover" and self.queues[group].qsize() >= QUEUE_LIMIT:
            self.dropped[group] = self.dropped.get(group, 0) + 1
            log.warning("hook_dropped", group=group, hook=job.hook, dropped=self.dropped[group],
                        detail=f"{QUEUE_LIMIT} hooks already waiting: the target flaps faster than its hooks run")
            return
        self.queues[group].put_nowait(job)

    async def _work(self, group: str) -> None:
        queue = self.queues[group]
        while True:
            job = await queue.get()
            hooks = self.hooks.get(group)
            argv = getattr(hooks, job.hook) if hooks is not None else None
            if hooks is None or argv is None:  # the group or its hook went away in a reload
                queue.task_done()
                continue
            try:
                await run_hook(substitute(argv, job.values), hooks.timeout, hook_environment(job.values, hooks.env),
                               group=group, **job.context)
            except Exception:  # a bug must not stop the group's later hooks
                log.exception("hook_crashed", group=group, **job.context)
            queue.task_done()

    async def drain(self, seconds: float) -> None:
        """Let queued hooks finish, for at most ``seconds``, then stop the workers."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.gather(*(q.join() for q in self.queues.values()))
        for worker in self.workers.values():
            worker.cancel()
        await asyncio.gather(*self.workers.values(), return_exceptions=True)
