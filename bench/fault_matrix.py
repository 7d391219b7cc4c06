"""The fault matrix: the daemon's move under injected cloud faults, on both clouds.

For each cloud (AWS: boto3 against a moto server; Alibaba: the official SDK against the fake VPC API, 0.5 s
transitions) and each fault kind of ``tests/fault_proxy.py`` injected with probability P on every call (``late``:
on every mutating call), M failovers back and forth between two instances, each the daemon's own move
(``failover.execute`` with the real driver: move, then verify with describe; deadline 60 s) through the proxy. The
drivers run with the production defaults except a 1 s connect and read timeout (a ``delay`` of 3 s is past it).

Per row: moves that succeeded; p50 and p95 move time; the EIP's detached window (Alibaba: from the fake's timeline,
the time between the EIP becoming Available and the association being accepted; AWS moves are atomic: 0) as p95 and
longest; EIPs detached after the runs (must be 0); double moves, association calls that reached the cloud for
another target than the one decided (must be 0); and duplicate sends, associations that reached the cloud twice
for the right target (harmless: a lost answer resent).

    .venv/bin/python bench/fault_matrix.py [--moves 50] [--p 0.3] [--clouds aws alibaba] [--faults none throttle ...]
    .venv/bin/python bench/fault_matrix.py --quick        # 5 moves per row
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eipfailover import failover
from eipfailover.config import AwsProviderConfig
from eipfailover.model import Binding
from eipfailover.providers.aws import AwsProvider
from eipfailover.providers.base import Provider
from tests.fake_aliyun import FakeAliyun, provider_for
from tests.fault_proxy import FaultProxy
from tests.test_lifecycle import world as two_instances

FAULTS = ("none", "throttle", "http503", "reset", "reset_after", "delay", "html", "late")
MUTATING = {"aws": ("AssociateAddress", "DisassociateAddress"),
            "alibaba": ("AssociateEipAddress", "UnassociateEipAddress", "AssociateEipAddressBatch")}
TRANSITION = 0.5
DEADLINE = 60.0


@dataclass
class Row:
    cloud: str
    fault: str
    moves: int
    ok: int
    p50: float
    p95: float
    detached_p95: float
    detached_max: float
    detached_at_end: int
    double_moves: int
    duplicate_sends: int
    errors: list[str]

    def line(self) -> str:
        return (f"| {self.cloud} | {self.fault} | {self.ok}/{self.moves} | {self.p50:.2f} | {self.p95:.2f} | "
                f"{self.detached_p95:.2f} | {self.detached_max:.2f} | {self.detached_at_end} | {self.double_moves} | "
                f"{self.duplicate_sends} |")


HEADER = ("| cloud | fault | moves ok | p50 s | p95 s | detached p95 s | detached max s | detached at end | "
          "double moves | duplicate sends |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


@dataclass
class World:
    provider: Provider
    eip: str
    ends: tuple[Binding, Binding]
    proxy: FaultProxy
    detached_window: Callable[[float, float], float]
    """The EIP's longest detached window between two monotonic times."""
    where: Callable[[], Awaitable[Binding | None]]
    """Where the EIP is, read directly from the cloud (not through the proxy)."""
    target_of: Callable[[dict[str, str]], str | None]
    """The instance an association call's parameters name."""


@asynccontextmanager
async def aws_world(seed: int) -> AsyncIterator[World]:
    from moto.server import ThreadedMotoServer

    from tests.conftest import ec2_client

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = ec2_client(f"http://{host}:{port}")
    reply = client.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2, InstanceType="t3.micro")
    a, b = (i["InstanceId"] for i in reply["Instances"])
    eip = client.allocate_address(Domain="vpc")["AllocationId"]
    client.associate_address(AllocationId=eip, InstanceId=a, AllowReassociation=True)
    proxy = FaultProxy(f"{host}:{port}", "ec2", seed=seed)
    await proxy.start()
    provider = AwsProvider("aws", AwsProviderConfig(type="aws", region="us-east-1", endpoint_url=proxy.url,
                                                    connect_timeout=1, read_timeout=1))

    async def where() -> Binding | None:
        address = (await asyncio.to_thread(client.describe_addresses, AllocationIds=[eip]))["Addresses"][0]
        return Binding(instance_id=address["InstanceId"]) if address.get("InstanceId") else None

    try:
        yield World(provider, eip, (Binding(instance_id=a), Binding(instance_id=b)), proxy, lambda t0, t1: 0.0,
                    where, lambda params: params.get("InstanceId"))
    finally:
        await provider.close()
        await proxy.stop()
        server.stop()


@asynccontextmanager
async def alibaba_world(seed: int) -> AsyncIterator[World]:
    fake = FakeAliyun(transition=TRANSITION)
    await fake.start()
    two_instances(fake, TRANSITION)  # eip-1 on i-a; i-b the standby
    proxy = FaultProxy(fake.endpoint, "aliyun", seed=seed)
    await proxy.start()
    with tempfile.TemporaryDirectory() as tmp:
        provider = provider_for(fake, Path(tmp), endpoint=proxy.endpoint, ecs_endpoint=proxy.endpoint,
                                poll_interval=0.5)

        def detached(t0: float, t1: float) -> float:
            fake.advance()
            longest, since = 0.0, None
            for at, _, status, _ in fake.timeline:
                if status == "Available" and t0 <= at <= t1:
                    since = at
                elif status == "Associating" and since is not None:
                    longest, since = max(longest, at - since), None
            return max(longest, t1 - since) if since is not None else longest

        async def where() -> Binding | None:
            fake.advance()
            e = fake.eips["eip-1"]
            return Binding(instance_id=e.instance_id, instance_type="EcsInstance") if e.status == "InUse" else None

        ends = (Binding(instance_id="i-a", instance_type="EcsInstance"),
                Binding(instance_id="i-b", instance_type="EcsInstance"))
        try:
            yield World(provider, "eip-1", ends, proxy, detached, where, lambda params: params.get("InstanceId"))
        finally:
            await proxy.stop()
            await fake.stop()


async def settle(world: World, timeout: float = 30) -> Binding | None:
    """Wait (without faults) until the requests the proxy holds back (``delay``) have reached the cloud and the EIP
    is attached somewhere, or ``timeout``: a move's abandoned call must not land in the middle of the next move."""
    end = time.monotonic() + timeout
    while True:
        held = [s for s in world.proxy.log if s.fault == "delay" and s.status is None]
        at = None if held else await world.where()
        if at is not None or time.monotonic() > end:
            return at
        await asyncio.sleep(0.1)


async def run_row(cloud: str, fault: str, moves: int, p: float, seed: int) -> Row:
    make = aws_world if cloud == "aws" else alibaba_world
    async with make(seed) as world:
        times: list[float] = []
        windows: list[float] = []
        errors: list[str] = []
        ok = double = duplicate = 0
        associate = MUTATING[cloud][0]
        for _ in range(moves):
            at = await settle(world)  # each move starts from a settled cloud, with no fault
            if at is None:
                errors.append("left detached")
            a, b = world.ends
            to, back = (b, a) if at is not None and at.matches(a) else (a, b)
            world.proxy.clear()
            if fault == "late":
                world.proxy.set_probability("late", p, MUTATING[cloud])
            elif fault != "none":
                world.proxy.set_probability(fault, p)  # type: ignore[arg-type]
            mark = len(world.proxy.log)
            t0 = time.monotonic()
            outcome = await failover.execute(world.provider, [world.eip], to, deadline=DEADLINE,
                                             fallback=[back])
            t1 = time.monotonic()
            world.proxy.clear()
            times.append(t1 - t0)
            windows.append(world.detached_window(t0, t1))
            if outcome.ok:
                ok += 1
            else:
                errors.append(outcome.error[:300])
            sent = [s for s in world.proxy.log[mark:] if s.operation == associate and s.forwarded]
            double += sum(1 for s in sent if world.target_of(s.params) != to.instance_id)
            duplicate += max(0, sum(1 for s in sent if world.target_of(s.params) == to.instance_id) - 1)
        detached_at_end = int(await settle(world, 10) is None)
    return Row(cloud, fault, moves, ok, statistics.median(times), pct(times, 0.95), pct(windows, 0.95),
               max(windows), detached_at_end, double, duplicate, errors)


async def main(args: argparse.Namespace) -> int:
    rows = []
    print(f"# fault matrix: p={args.p}, {args.moves} moves per row, Alibaba transitions {TRANSITION}s\n")
    print(HEADER, flush=True)
    for cloud in args.clouds:
        for fault in args.faults:
            row = await run_row(cloud, fault, args.moves, args.p, args.seed)
            rows.append(row)
            print(row.line(), flush=True)
    for row in rows:
        for error in sorted(set(row.errors)):
            print(f"  {row.cloud}/{row.fault}: {error}", file=sys.stderr)
    print(json.dumps({"fault_matrix": [asdict(r) for r in rows]}))
    bad = [r for r in rows if r.detached_at_end or r.double_moves]
    return 1 if bad else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=50)
    parser.add_argument("--p", type=float, default=0.3)
    parser.add_argument("--clouds", nargs="+", default=["aws", "alibaba"], choices=["aws", "alibaba"])
    parser.add_argument("--faults", nargs="+", default=list(FAULTS), choices=FAULTS)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="5 moves per row")
    args = parser.parse_args(argv)
    if args.quick:
        args.moves = 5
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
