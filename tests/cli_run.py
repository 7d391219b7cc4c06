"""The CLI as an operator runs it: a subprocess, while the test's event loop keeps serving the fakes."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .conftest import eventually


@dataclass
class Result:
    code: int
    out: str
    err: str


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "eipfailover", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def finish(proc: asyncio.subprocess.Process, timeout: float) -> Result:
    """Its exit status and output; killed if it outlives ``timeout`` (or the test gives up)."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def run_cli(*args: str, timeout: float = 120) -> Result:
    """``eipfailover ARGS`` to its end."""
    return await finish(await start(*args), timeout)


async def interrupted(sent: Callable[[], bool], signal_number: int, *args: str, timeout: float = 90) -> Result:
    """``eipfailover ARGS``, sent ``signal_number`` once ``sent()`` says the call to interrupt is on the wire."""
    proc = await start(*args)
    try:
        await eventually(sent, timeout=60)
        proc.send_signal(signal_number)
    except BaseException:  # it never got there: do not leave it running
        proc.kill()
        await proc.wait()
        raise
    return await finish(proc, timeout)
