"""The batched read and the read limit's queue: a batch waits at the priority of its most urgent caller, and
goes out on the token it waited for (found by the review of issue 12)."""

from __future__ import annotations

import asyncio

from eipfailover.model import Binding
from eipfailover.ratelimit import Priority, priority

from .conftest import eventually
from .test_batch_reads import LimitedCloud

A = Binding(instance_id="i-a")


async def test_a_repair_verification_joining_a_failback_batch_is_not_held_behind_plain_reads() -> None:
    """Fixed (priority inversion): the batch's read waits for its token at the priority of whoever created the
    batch (the context copied into ``_send``'s task), not of the most urgent caller that joined it. A failback's
    verification that opens the batch makes a repair's verification that joins it wait at FAILBACK, behind every
    READ-priority request of the provider (instance states, other reads) queued meanwhile."""
    cloud = LimitedCloud({"e1": A, "e2": A}, rate=4.0, burst=1)
    await cloud.describe(["e1"])  # the only token: what follows queues
    done: list[str] = []

    async def read(name: str) -> None:
        await cloud.limits.reads.acquire(Priority.READ)
        done.append(name)

    async def verify(name: str, level: int, eip: str) -> None:
        with priority(level):
            await cloud.describe([eip])
        done.append(name)

    failback = asyncio.create_task(verify("failback", Priority.FAILBACK, "e1"))
    await eventually(lambda: cloud._reads._open is not None and len(cloud.limits.reads._waiters) == 1)
    others = [asyncio.create_task(read(f"read{i}")) for i in range(4)]
    repair = asyncio.create_task(verify("repair", Priority.REPAIR, "e2"))
    await asyncio.gather(failback, repair, *others)
    assert done.index("repair") < done.index("read0"), done


async def test_a_batch_that_got_its_turn_is_not_queued_again_behind_later_reads() -> None:
    """Fixed: ``_send`` waits for a token in the queue, gives it back (refund), closes the batch, then the read's
    own ``request`` queues a second time, behind every request that came meanwhile. The describe waits twice for its
    turn (FIFO broken: reads queued after it go first), and describes that come during that second wait no longer
    join it (the batch is closed) although the read is still held back by the limit."""
    cloud = LimitedCloud({"e1": A, "e2": A}, rate=4.0, burst=1)
    await cloud.describe(["e1"])  # the only token
    done: list[str] = []

    async def read(name: str) -> None:
        await cloud.limits.reads.acquire(Priority.READ)
        done.append(name)

    async def describe(name: str, eip: str) -> None:
        await cloud.describe([eip])
        done.append(name)

    first = asyncio.create_task(describe("describe", "e1"))
    await eventually(lambda: len(cloud.limits.reads._waiters) == 1)  # the batch waits for its token, first in line
    others = [asyncio.create_task(read(f"read{i}")) for i in range(3)]
    await asyncio.gather(first, *others)
    assert done[0] == "describe", done  # it queued first, at the same priority
