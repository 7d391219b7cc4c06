"""How long the AWS driver takes to move an EIP and verify it, against a moto EC2 server over HTTP on loopback.

Each round moves N EIPs (together) from one instance to the other with the real failover action (associate, then
describe until the cloud reports the target) and prints the distribution. moto answers at once, so this measures
the daemon's own overhead plus boto3 and HTTP, not AWS's propagation time.

    .venv/bin/python bench/failover_latency.py [--rounds 50] [--eips 1 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import time

import boto3
from moto.server import ThreadedMotoServer

from eipfailover import failover
from eipfailover.config import AwsProviderConfig
from eipfailover.model import Binding
from eipfailover.providers.aws import AwsProvider


async def rounds(endpoint: str, eips: int, count: int) -> list[float]:
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="bench", aws_secret_access_key="bench")
    reply = ec2.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2)
    a, b = (Binding(instance_id=i["InstanceId"]) for i in reply["Instances"])
    ids = [ec2.allocate_address(Domain="vpc")["AllocationId"] for _ in range(eips)]
    provider = AwsProvider("bench", AwsProviderConfig(type="aws", region="us-east-1", endpoint_url=endpoint))
    times = []
    try:
        for n in range(count + 2):
            to = a if n % 2 == 0 else b
            start = time.perf_counter()
            outcome = await failover.execute(provider, ids, to, deadline=30)
            if not outcome.ok:
                raise SystemExit(f"failover failed: {outcome.error}")
            if n >= 2:  # two warm-up rounds
                times.append(time.perf_counter() - start)
    finally:
        await provider.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--eips", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_EC2_METADATA_DISABLED": "true"})
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print("| EIPs | rounds | p50 ms | p90 ms | max ms |")
    print("|---:|---:|---:|---:|---:|")
    try:
        for eips in args.eips:
            times = sorted(asyncio.run(rounds(f"http://{host}:{port}", eips, args.rounds)))
            print(f"| {eips} | {len(times)} | {1000 * statistics.median(times):.1f} | "
                  f"{1000 * times[int(len(times) * 0.9) - 1]:.1f} | {1000 * times[-1]:.1f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
