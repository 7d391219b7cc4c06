"""Running a program without a shell, in a minimal environment, killing its process group when the caller gives up.

The program's output goes to an anonymous temporary file, not a pipe: a child that leaves the process group (a
daemonising script, ``setsid``) and keeps the output open can then never hold us past the program's own exit or
its timeout. Programs get ``PATH``, ``LANG`` and the variables they are given, never the daemon's environment (which
may hold cloud credentials, ``CREDENTIALS_DIRECTORY`` or ``NOTIFY_SOCKET``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import Mapping, Sequence

_OUTPUT_LIMIT = 4096
_REAP_TIMEOUT = 2.0
"""After SIGKILL, how long to wait for the program's exit status before giving up on it."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def child_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """``PATH`` and ``LANG`` from the daemon (a standard ``PATH`` if it has none), then ``extra``."""
    env = {"PATH": os.environ.get("PATH") or DEFAULT_PATH}
    if os.environ.get("LANG"):
        env["LANG"] = os.environ["LANG"]
    env.update(extra)
    return env


async def run_program(argv: Sequence[str], env: Mapping[str, str]) -> tuple[int, str]:
    """Run ``argv`` with ``child_environment(env)`` until it exits; return its exit status (negative: killed by that
    signal) and the last line it printed. Raises ``OSError`` if it cannot start. If the caller is cancelled (e.g. by
    ``asyncio.timeout``), the program's process group is killed and reaped (for at most 2 s) before the cancellation
    propagates; children that left the group are not waited for."""
    with tempfile.TemporaryFile() as output:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, env=child_environment(env),
        )
        try:
            code = await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_REAP_TIMEOUT):
                    await proc.wait()
            raise
        size = output.seek(0, os.SEEK_END)
        output.seek(max(0, size - _OUTPUT_LIMIT))
        tail = output.read(_OUTPUT_LIMIT)
    lines = tail.decode("utf-8", "replace").strip().splitlines()
    return code, lines[-1] if lines else ""


def describe_status(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"
