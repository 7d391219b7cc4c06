"""Flapping: a primary that is up 1 s and down 1 s, for 10 minutes, against ``max_failovers``.

The daemon runs as a subprocess on a moto server (AWS), one group of two instances with HTTP health endpoints
(interval 250 ms, timeout 200 ms, rise 2, fall 2), automatic failback with no delay and no cooldown, so that
``max_failovers`` is all that holds the EIP back: without it the EIP would follow every flap. The primary's
endpoint answers 200 for 1 s, then 503 for 1 s, and so on; the standby is healthy throughout. The moves are read
from the daemon's history at the end: in every window of ``max_failovers.window`` (sliding over the moves' start
times) there must be at most ``max_failovers.count`` automatic moves.

    .venv/bin/python bench/flapping.py [--minutes 10] [--count 3] [--window 60]
    .venv/bin/python bench/flapping.py --quick       # 40 s, at most 2 moves per 20 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eipfailover.demo import DaemonProcess
from tests.conftest import HealthServer, ec2_client

CLOCK_SLACK = 0.1
"""A record's wall-clock start trails the monotonic instant the daemon counted by a few ms: a move exactly one window
after another (allowed) must not look like one inside it."""


def most_in_a_window(starts: list[float], window: float) -> int:
    """The most start times that fall in any half-open window ``[t, t + window - CLOCK_SLACK)``."""
    starts = sorted(starts)
    best = 0
    for i, t in enumerate(starts):
        best = max(best, sum(1 for u in starts[i:] if u - t < window - CLOCK_SLACK))
    return best


async def flap(server: HealthServer, period: float, stop: asyncio.Event) -> int:
    """Alternate the endpoint between 200 and 503 every ``period`` seconds until ``stop``; the number of flips."""
    flips = 0
    while not stop.is_set():
        server.status = 503 if server.status == 200 else 200
        flips += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)
    server.status = 200
    return flips


async def run(seconds: float, count: int, window: float, echo: bool = True) -> dict[str, Any]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = ec2_client(endpoint)
    a, b = (i["InstanceId"] for i in client.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2,
                                                          InstanceType="t3.micro")["Instances"])
    eip = client.allocate_address(Domain="vpc")["AllocationId"]
    client.associate_address(AllocationId=eip, InstanceId=a, AllowReassociation=True)
    servers = [HealthServer(), HealthServer()]
    for server in servers:
        await server.start()
    stop = asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="eipfailover-flapping-") as tmp:
        data = {
            "log": {"format": "json"}, "api": {"listen": "127.0.0.1:0"}, "state_directory": f"{tmp}/state",
            "providers": {"moto": {"type": "aws", "region": "us-east-1", "endpoint_url": endpoint}},
            "groups": [{"name": "web", "provider": "moto", "eips": [eip],
                        "policy": {"interval": "250ms", "timeout": "200ms", "rise": 2, "fall": 2,
                                   "failback": "auto", "failback_delay": 0, "cooldown": 0,
                                   "max_failovers": {"count": count, "window": window}},
                        "targets": [{"name": f"web-{x}", "binding": {"instance_id": iid},
                                     "checks": [{"type": "http", "url": server.url}]}
                                    for x, iid, server in (("a", a, servers[0]), ("b", b, servers[1]))]}],
        }
        path = Path(tmp) / "eipfailover.yaml"
        path.write_text(yaml.safe_dump(data))
        proc = DaemonProcess(path, dict(os.environ), lambda at, event: None)
        try:
            await proc.start_and_settle("web-a", "web-b")
            began = time.monotonic()
            flipper = asyncio.create_task(flap(servers[0], 1.0, stop))
            await asyncio.sleep(seconds)
            stop.set()
            flips = await flipper
            address = next(e["address"] for _, e in proc.events if e["event"] == "api_listening")
            async with aiohttp.ClientSession() as session, \
                    session.get(f"http://{address}/v1/history?limit=1000") as reply:
                records = (await reply.json())["failovers"]
            decisions = Counter(e.get("reason") for t, e in proc.events
                                if e.get("event") == "decision" and t >= began)
        finally:
            stop.set()
            code = await proc.stop()
            for server in servers:
                await server.stop()
            moto.stop()
    moves = [r for r in records if r["trigger"] in ("auto", "failback") and r["result"] != "skipped"]
    result = {
        "seconds": seconds, "flips": flips, "max_failovers": {"count": count, "window": window},
        "moves": len(moves), "results": dict(Counter(r["result"] for r in moves)),
        "most_in_a_window": most_in_a_window([r["started_at"] for r in moves], window),
        "rate_limited_decisions": decisions.get("rate_limited", 0), "exit_code": code,
    }
    if echo:
        print(f"{flips} flips in {seconds:g}s; {len(moves)} moves ({result['results']}); at most "
              f"{result['most_in_a_window']} in any {window:g}s window (max_failovers.count {count}); "
              f"{result['rate_limited_decisions']} decisions held back as rate_limited")
    return result


async def main(args: argparse.Namespace) -> int:
    result = await run(args.minutes * 60, args.count, args.window)
    print(json.dumps({"flapping": result}))
    return 0 if result["most_in_a_window"] <= args.count and result["exit_code"] == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--window", type=float, default=60)
    parser.add_argument("--quick", action="store_true", help="40 s, at most 2 moves per 20 s")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.minutes, arguments.count, arguments.window = 40 / 60, 2, 20
    sys.exit(asyncio.run(main(arguments)))
