"""How long a two-step Alibaba move takes against the fake VPC API, by its transition delay.

Each round moves N EIPs between two ECS instances (``ecs``: N=1) or two NAT gateways (``nat``: N=3, one batch
associate) with the real failover action and the real SDK: describe, unassociate, poll until Available, associate,
poll until InUse; or (``eni``) moves a cut-through ENI with its EIP between two instances: detach, poll until the
ENI is Available, attach, poll until InUse. The fake applies each transition after T seconds, so a move costs about
2T plus the polling and the calls.

    .venv/bin/python bench/alibaba_move.py [--rounds 20] [--transitions 0.1 0.5 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eipfailover import failover
from eipfailover.model import Binding
from tests.fake_aliyun import FakeAliyun, provider_for

MODES = {"ecs": "1 EIP, ECS to ECS", "nat": "3 EIPs, NAT to NAT (batch)", "eni": "cut-through ENI, ECS to ECS"}


def world(fake: FakeAliyun, mode: str) -> tuple[list[str], list[Binding]]:
    """The EIPs and the two ends of a move, on ``ends[0]``."""
    if mode == "eni":
        ends = [Binding(instance_id=f"i-{x}", network_interface_id="eni-x", instance_type="EcsInstance",
                        mode="BINDED") for x in ("a", "b")]
        for end in ends:
            fake.add_resource(end.instance_id or "")
        fake.add_eni("eni-x", "10.0.0.50", attached_to="i-a")
        fake.add_eip("eip-0", "47.0.0.0")
        fake.bind("eip-0", "eni-x", status="InUse", private_ip="10.0.0.50", mode="BINDED")
        return ["eip-0"], ends
    kind = "EcsInstance" if mode == "ecs" else "Nat"
    ends = [Binding(instance_id=f"{kind}-{x}", instance_type=kind) for x in ("a", "b")]
    for end in ends:
        fake.add_resource(end.instance_id or "", kind)
    ids = [f"eip-{n}" for n in range(1 if mode == "ecs" else 3)]
    for n, eip in enumerate(ids):
        fake.add_eip(eip, f"47.0.0.{n}")
        fake.bind(eip, ends[0].instance_id or "", status="InUse")
    return ids, ends


async def rounds(transition: float, mode: str, count: int, poll: float) -> tuple[list[float], list[str]]:
    fake = FakeAliyun(transition=transition)
    await fake.start()
    ids, ends = world(fake, mode)
    times, sequence = [], []
    with tempfile.TemporaryDirectory() as tmp:
        provider = provider_for(fake, Path(tmp), poll_interval=poll)
        for n in range(count):
            fake.log.clear()
            start = time.perf_counter()
            outcome = await failover.execute(provider, ids, ends[(n + 1) % 2], deadline=60, verify_interval=poll)
            if not outcome.ok:
                raise SystemExit(f"move failed: {outcome.error}")
            times.append(time.perf_counter() - start)
            sequence = fake.sequence()
    await fake.stop()
    return times, sequence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--transitions", type=float, nargs="+", default=[0.1, 0.5, 1.0])
    parser.add_argument("--poll", type=float, default=0.1, help="the driver's poll_interval (and verify interval)")
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["ecs", "nat", "eni"])
    args = parser.parse_args()
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(var, None)
    print(f"poll interval {args.poll}s")
    print("| move | transition s | rounds | p50 s | p90 s | max s |")
    print("|---|---:|---:|---:|---:|---:|")
    sequences = {}
    for mode in args.modes:
        for transition in args.transitions:
            times, sequences[mode] = asyncio.run(rounds(transition, mode, args.rounds, args.poll))
            times.sort()
            print(f"| {MODES[mode]} | {transition:g} | {len(times)} | {statistics.median(times):.3f} | "
                  f"{times[int(len(times) * 0.9) - 1]:.3f} | {times[-1]:.3f} |")
    for mode, sequence in sequences.items():
        print(f"\nrequests of one move ({MODES[mode]}): {', '.join(sequence)}")


if __name__ == "__main__":
    main()
