"""Hedged polls (``providers.base.hedged``): every call's outcome is retrieved, the deciding one's and the rest."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from eipfailover.errors import ProviderError
from eipfailover.providers.base import hedged


async def test_hedged_retrieves_the_outcome_of_every_call_that_finished_with_the_deciding_one() -> None:
    """when several polled calls finish in the same turn of the loop and the first one handed to
    ``accept`` decides the poll (as ``AlibabaProvider._poll`` does for a permanent error, and the verification loop
    for a non-retryable one), the other finished calls' exceptions are retrieved too: no "Task exception was never
    retrieved" reports."""
    loop = asyncio.get_running_loop()
    reports: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reports.append(context))
    answer = asyncio.Event()
    three_in_flight = asyncio.Event()
    started = 0

    async def describe() -> dict[str, Any]:
        nonlocal started
        started += 1
        if started == 3:
            three_in_flight.set()
        await answer.wait()  # the three describes in flight are answered together (one slow endpoint recovers)
        raise ProviderError("Alibaba DescribeEipAddresses: Forbidden.RAM", retryable=False, code="Forbidden.RAM")

    async def release() -> None:
        await three_in_flight.wait()
        answer.set()

    releasing = asyncio.create_task(release())
    try:
        await asyncio.wait_for(hedged(describe, 0.01, lambda outcome: isinstance(outcome, Exception)), 5)
        await releasing
        gc.collect()
        await asyncio.sleep(0)
        never_retrieved = [r["message"] for r in reports if "never retrieved" in r.get("message", "")]
        assert never_retrieved == [], never_retrieved
    finally:
        loop.set_exception_handler(previous)
