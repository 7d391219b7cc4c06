"""The kill -9 campaign: SIGKILL the daemon at random points of failovers, restart it, and check what it finds.

The daemon runs as a subprocess on the fake Alibaba VPC API (two-step moves, 0.5 s transitions; interval 500 ms,
timeout 250 ms, rise 2, fall 2), one group whose EIP sits on one of two ECS instances, each with its own HTTP
health endpoint, and a 0.4 s fencing hook (``before_failover``). Each round: the active target's endpoint stops, the
daemon starts a failover (in 3 rounds out of 10 the association is throttled 4 times, so the EIP sits detached a
while), and at a random moment within the next 2 s (in the fencing hook before any cloud call, while the EIP is
unassociating, detached between the two steps, associating, or after the move) the daemon gets SIGKILL. It is
restarted at once, with the dead target still dead.

Per round it checks: the EIP ends attached to the healthy target, and how long that took from the restart (and from
the restarted daemon's first log line, against the bound of 2 intervals plus the fencing hook plus one fault-free
move); the journal
(``/v1/history``) shows the killed failover, as ``interrupted`` if the kill cut it; and no association was ever
made towards the dead target (a double move). Then the dead target comes back and the next round goes the other way.

    .venv/bin/python bench/kill_campaign.py [--kills 50] [--seed 1]
    .venv/bin/python bench/kill_campaign.py --quick    # 5 kills
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eipfailover.demo import DaemonProcess
from tests.conftest import HealthServer
from tests.fake_aliyun import FakeAliyun, Fault, key_file
from tests.test_lifecycle import world as two_instances

INTERVAL, TRANSITION, KILL_WINDOW = 0.5, 0.5, 2.0
FENCE = 0.4
"""Seconds the ``before_failover`` hook takes (a fencing script): a kill then falls before any cloud call."""
MOVE_SECONDS = 1.1
"""One fault-free move on this fake (bench/fault_matrix.py, row "none": p50 1.01 s), rounded up."""
BOUND = 2 * INTERVAL + FENCE + MOVE_SECONDS
PHASES = {"InUse@dead": "not started", "Unassociating@dead": "first step", "Available": "between the steps",
          "Associating@alive": "second step", "InUse@alive": "moved"}


@dataclass
class Round:
    phase: str
    """Where the kill fell, from the EIP's status then: ``not started`` (on the dead target), ``first step``
    (unassociating), ``between the steps`` (detached), ``second step`` (associating), ``moved`` (on the healthy
    target)."""
    cloud_calls_before_kill: int
    attached_after_restart: float
    attached_after_first_log: float
    journal: str
    """The killed failover's result in the restarted daemon's history (``missing`` if it has none)."""
    double_moves: int
    ended_on: str


@dataclass
class Report:
    rounds: list[Round] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        for n, r in enumerate(self.rounds):
            if r.double_moves:
                out.append(f"round {n}: {r.double_moves} association(s) towards the dead target")
            if r.cloud_calls_before_kill and r.journal not in ("interrupted", "success"):
                out.append(f"round {n}: the killed failover had made cloud calls; the journal says {r.journal}")
            if r.attached_after_first_log > BOUND:
                out.append(f"round {n}: attached {r.attached_after_first_log:.2f}s after start (bound {BOUND:.2f}s)")
        return out


def config(fake: FakeAliyun, servers: list[HealthServer], directory: Path) -> Path:
    data = {
        "log": {"format": "json"}, "api": {"listen": "127.0.0.1:0"}, "state_directory": str(directory / "state"),
        "providers": {"ali": {"type": "alibaba", "region": fake.region, "endpoint": fake.endpoint,
                              "protocol": "http", "access_key_file": str(key_file(directory))}},
        "groups": [{"name": "web", "provider": "ali", "eips": ["eip-1"],
                    "policy": {"interval": f"{INTERVAL}s", "timeout": f"{INTERVAL / 2}s", "rise": 2, "fall": 2,
                               "cooldown": 0, "max_failovers": {"count": 1000, "window": "1h"}},
                    "hooks": {"before_failover": [sys.executable, "-c", f"import time; time.sleep({FENCE})"]},
                    "targets": [{"name": f"web-{x}", "binding": {"instance_id": f"i-{x}"},
                                 "checks": [{"type": "http", "url": server.url}]}
                                for x, server in zip("ab", servers, strict=True)]}],
    }
    path = directory / "eipfailover.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def status(fake: FakeAliyun) -> str:
    fake.advance()
    eip = fake.eips["eip-1"]
    return f"{eip.status}@{eip.instance_id}" if eip.instance_id else eip.status


async def history(proc: DaemonProcess) -> list[dict[str, Any]]:
    address = next(e["address"] for _, e in proc.events if e["event"] == "api_listening")
    async with aiohttp.ClientSession() as session, session.get(f"http://{address}/v1/history?limit=1000") as reply:
        failovers: list[dict[str, Any]] = (await reply.json())["failovers"]
        return failovers


async def campaign(kills: int, seed: int, echo: bool = True) -> Report:
    rng = random.Random(seed)
    fake = FakeAliyun(transition=TRANSITION)
    await fake.start()
    two_instances(fake, TRANSITION)  # eip-1 on i-a; i-b the standby
    servers = [HealthServer(), HealthServer()]
    for server in servers:
        await server.start()
    report = Report()
    instance = {"web-a": "i-a", "web-b": "i-b"}
    with tempfile.TemporaryDirectory(prefix="eipfailover-kills-") as tmp:
        path = config(fake, servers, Path(tmp))
        proc = DaemonProcess(path, dict(os.environ), lambda at, event: None)
        await proc.start_and_settle("web-a", "web-b")
        active, standby = 0, 1
        try:
            for n in range(kills):
                dead, alive = f"web-{'ab'[active]}", f"web-{'ab'[standby]}"
                since = time.monotonic()
                mark = len(fake.timeline)
                calls_mark = len(fake.log)
                if rng.random() < 0.3:  # the association throttled a few times: the EIP sits detached meanwhile
                    fake.faults["AssociateEipAddress"] = [Fault() for _ in range(4)]
                await servers[active].stop()
                started = await proc.wait_for("failover_started", 30, after=since)
                failover_id = next(e["failover_id"] for t, e in proc.events if t == started)
                await asyncio.sleep(rng.uniform(0.0, KILL_WINDOW))
                phase = PHASES.get(status(fake).replace(instance[dead], "dead").replace(instance[alive], "alive"),
                                   status(fake))
                assert proc.proc is not None
                proc.proc.send_signal(signal.SIGKILL)
                await proc.wait(10)
                fake.faults.clear()
                calls = sum(1 for entry in fake.log[calls_mark:] if entry.action in (
                    "UnassociateEipAddress", "AssociateEipAddress"))
                restart = time.monotonic()
                proc = DaemonProcess(path, dict(os.environ), lambda at, event: None)
                await proc.start()
                while status(fake) != f"InUse@{instance[alive]}":
                    if time.monotonic() - restart > 60:
                        raise RuntimeError(f"round {n}: the EIP is {status(fake)} 60 s after the restart")
                    await asyncio.sleep(0.01)
                attached = time.monotonic()
                first_log = proc.events[0][0] if proc.events else attached
                await proc.wait_for("daemon_ready", 30)
                record = next((r for r in await history(proc) if r["id"] == failover_id), None)
                double = sum(1 for _, eip, st, iid in fake.timeline[mark:]
                             if eip == "eip-1" and st == "Associating" and iid == instance[dead])
                report.rounds.append(Round(phase, calls, attached - restart, max(attached - first_log, 0.0),
                                           record["result"] if record else "missing", double, alive))
                if echo:
                    r = report.rounds[-1]
                    print(f"round {n:2}: killed at {phase:17} ({calls} cloud calls made) -> {r.journal:11} "
                          f"attached to {alive} {r.attached_after_restart:.2f}s after the restart "
                          f"({r.attached_after_first_log:.2f}s after its first log line); double moves {double}",
                          flush=True)
                await servers[active].start()  # the dead target comes back: the next round goes the other way
                await proc.wait_for("target_up", 30, after=attached, target=dead)
                active, standby = standby, active
        finally:
            await proc.stop()
            for server in servers:
                await server.stop()
            await fake.stop()
    return report


def summary(report: Report) -> dict[str, Any]:
    restart = [r.attached_after_restart for r in report.rounds]
    start = [r.attached_after_first_log for r in report.rounds]
    return {
        "kills": len(report.rounds),
        "phases": dict(Counter(r.phase for r in report.rounds)),
        "journal": dict(Counter(r.journal for r in report.rounds)),
        "attached_after_restart_p50": statistics.median(restart), "attached_after_restart_max": max(restart),
        "attached_after_start_p50": statistics.median(start), "attached_after_start_max": max(start),
        "bound": BOUND,
        "double_moves": sum(r.double_moves for r in report.rounds),
        "problems": report.problems(),
    }


async def main(args: argparse.Namespace) -> int:
    report = await campaign(args.kills, args.seed)
    result = summary(report)
    print(f"\n{result['kills']} kills; where they fell: {result['phases']}; the journal after restart: "
          f"{result['journal']}")
    print(f"EIP attached to the healthy target after the restart: p50 {result['attached_after_restart_p50']:.2f}s, "
          f"max {result['attached_after_restart_max']:.2f}s; after the daemon's first log line: p50 "
          f"{result['attached_after_start_p50']:.2f}s, max {result['attached_after_start_max']:.2f}s "
          f"(bound: 2 intervals + the fencing hook + one move = {BOUND:.2f}s)")
    print(f"double moves: {result['double_moves']}; problems: {result['problems'] or 'none'}")
    print(json.dumps({"kill_campaign": result, "rounds": [asdict(r) for r in report.rounds]}))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="5 kills")
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.kills = 5
    sys.exit(asyncio.run(main(arguments)))
