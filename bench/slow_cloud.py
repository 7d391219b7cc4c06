"""Detection and failover time against a slow cloud: the engine with a describe that takes D seconds.

A group of two targets (interval 1 s, timeout 500 ms, rise 2, fall 3: the documented detection bound is
(fall-1)*interval + timeout = 2.5 s) on an in-memory cloud whose describe answers after D seconds; the primary's
check starts failing at a random moment. Prints, per D, the time from that moment to the confirmed DOWN and to the
move (the in-memory move is instant), over R rounds.

    .venv/bin/python bench/slow_cloud.py [--rounds 10] [--delays 0 1 4]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eipfailover.config import parse_config
from eipfailover.engine import GroupRunner
from eipfailover.events import Observers
from eipfailover.model import Binding, CheckStatus, TargetState
from tests.fakes import FakeProvider, ScriptedCheck

A, B = Binding(instance_id="i-a"), Binding(instance_id="i-b")


def state(runner: GroupRunner) -> TargetState:
    return runner.targets["a"].health.state


async def one_round(delay: float) -> tuple[float, float]:
    config = parse_config({"providers": {"p": {"type": "aws", "region": "r"}}, "groups": [{
        "name": "g", "provider": "p", "eips": ["e1"], "policy": {"interval": 1, "timeout": 0.5, "rise": 2,
                                                                  "fall": 3, "cooldown": 0},
        "targets": [{"name": n, "binding": {"instance_id": f"i-{n}"},
                     "checks": [{"type": "tcp", "host": "h", "port": 1}]} for n in "ab"]}]}).groups[0]
    cloud = FakeProvider({"e1": A})
    checks = {"a": ScriptedCheck(), "b": ScriptedCheck()}
    runner = GroupRunner(config, cloud, {n: [c] for n, c in checks.items()}, Observers([]))
    task = asyncio.create_task(runner.run())
    while True:  # settled: a is UP and holds the EIP
        if state(runner) is TargetState.UP and runner.state.cloud.active == "a":
            break
        await asyncio.sleep(0.01)
    cloud.describe_delay = delay
    await asyncio.sleep(random.uniform(0, 1))
    died = time.monotonic()
    checks["a"].status = CheckStatus.FAIL
    down = moved = None
    while moved is None:
        now = time.monotonic()
        if down is None and state(runner) is TargetState.DOWN:
            down = now - died
        if cloud.placement["e1"] == B:
            moved = now - died
        await asyncio.sleep(0.005)
    runner.request_stop()
    task.cancel()
    assert down is not None
    return down, moved


async def main(rounds: int, delays: list[float]) -> None:
    print("| describe takes s | rounds | DOWN p50 s | DOWN max s | moved p50 s | moved max s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for delay in delays:
        results = [await one_round(delay) for _ in range(rounds)]
        downs, moves = [d for d, _ in results], [m for _, m in results]
        print(f"| {delay:g} | {rounds} | {statistics.median(downs):.2f} | {max(downs):.2f} "
              f"| {statistics.median(moves):.2f} | {max(moves):.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 1.0, 4.0])
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.delays))
