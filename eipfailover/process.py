"""Running a program without a shell, killing its whole process group when the caller gives up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence

_OUTPUT_LIMIT = 4096


def child_environment() -> dict[str, str]:
    """The environment for programs we start: ours, without systemd's notify socket."""
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    return env


async def run_program(argv: Sequence[str]) -> tuple[int, str]:
    """Run ``argv`` to completion; return its exit status (negative: killed by that signal) and the last line it
    printed. Raises ``OSError`` if it cannot start. If the caller is cancelled (e.g. by ``asyncio.timeout``), the
    program's process group is killed and reaped before the cancellation propagates."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        env=child_environment(),
    )
    try:
        assert proc.stdout is not None
        output = b""
        while chunk := await proc.stdout.read(65536):
            output = (output + chunk)[-_OUTPUT_LIMIT:]  # drain the pipe, keep the tail
        code = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    lines = output.decode("utf-8", "replace").strip().splitlines()
    return code, lines[-1] if lines else ""


def describe_status(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"
