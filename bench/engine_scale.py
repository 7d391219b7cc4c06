"""How much CPU and tick time the engine needs for many groups.

Runs the real engine (GroupRunner, checks, health, policy) for G groups of 2 targets, each target with one tcp and
one http check against a loopback HTTP server (in its own process), and an in-memory provider, for D seconds at a
1 s interval. Prints the daemon's CPU use, the check rounds per second and their durations.

    .venv/bin/python bench/engine_scale.py [--groups 10 100 500] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import statistics
import time
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from eipfailover.config import parse_config
from eipfailover.daemon import build_checks
from eipfailover.engine import Engine, GroupRunner
from eipfailover.events import NullObserver, Observers
from eipfailover.model import Binding, EipState
from eipfailover.providers.base import InstanceState, Provider


class StaticCloud(Provider):
    """Every EIP sits on its group's first target; describe answers from memory."""

    @classmethod
    def from_config(cls, name: str, config: object) -> StaticCloud:
        return cls(name)

    async def read_eips(self, eips: Sequence[str]) -> dict[str, EipState]:
        return {e: EipState(e, "192.0.2.1", Binding(instance_id=f"i-{e}-a")) for e in eips}

    async def move(self, eips: Sequence[str], to: Binding) -> None:
        raise AssertionError("nothing should move in this benchmark")

    async def instance_state(self, binding: Binding) -> InstanceState:
        return InstanceState(True, "running")


class TimedRunner(GroupRunner):
    durations: list[float] = []

    async def check_round(self) -> None:
        start = time.perf_counter()
        await super().check_round()
        TimedRunner.durations.append(time.perf_counter() - start)


def serve(port: multiprocessing.SimpleQueue) -> None:  # type: ignore[type-arg]
    """The probed endpoint, in a process of its own so that its CPU is not counted as the daemon's."""

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/healthz", ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
        port.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


async def run(groups: int, seconds: float, port: int) -> None:
    data = {
        "providers": {"static": {"type": "aws", "region": "r"}},
        "groups": [{
            "name": f"g{i}", "provider": "static", "eips": [f"e{i}"],
            "policy": {"interval": "1s", "timeout": "900ms", "rise": 2, "fall": 3},
            "targets": [{"name": t, "binding": {"instance_id": f"i-e{i}-{t}"}, "checks": [
                {"type": "tcp", "host": "127.0.0.1", "port": port},
                {"type": "http", "url": f"http://127.0.0.1:{port}/healthz"},
            ]} for t in ("a", "b")],
        } for i in range(groups)],
    }
    config = parse_config(data)
    cloud = StaticCloud("static")
    TimedRunner.durations = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0)) as http:
        engine = Engine(TimedRunner(g, cloud, build_checks(g, cloud, http), Observers([NullObserver()]))
                        for g in config.groups)
        task = asyncio.create_task(engine.run())
        await asyncio.sleep(1.0)  # warm-up
        TimedRunner.durations.clear()
        cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        await asyncio.sleep(seconds)
        cpu1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        engine.request_stop()
        await task
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    ticks = sorted(TimedRunner.durations)
    p99 = ticks[int(len(ticks) * 0.99) - 1]
    ups = sum(1 for r in engine.runners.values() for t in r.targets.values() if t.health.state == "up")
    wall = wall1 - wall0
    print(f"| {groups:5d} | {groups * 4:6d} | {len(ticks) / wall:7.1f} | {100 * cpu / wall:6.1f}% "
          f"| {1000 * statistics.median(ticks):7.1f} | {1000 * p99:7.1f} | {ups}/{groups * 2} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    queue: multiprocessing.SimpleQueue = multiprocessing.SimpleQueue()  # type: ignore[type-arg]
    server = multiprocessing.Process(target=serve, args=(queue,), daemon=True)
    server.start()
    port = queue.get()
    print("| groups | checks | ticks/s | daemon CPU (one core = 100%) | tick p50 ms | tick p99 ms | targets up |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    try:
        for groups in args.groups:
            asyncio.run(run(groups, args.seconds, port))
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
