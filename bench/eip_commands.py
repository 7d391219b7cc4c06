"""What the ``eip`` commands cost, run as an operator runs them (a subprocess, its imports included).

``list``: against the fake VPC API holding N EIPs (pages of 100, every tenth EIP on a cut-through ENI, which adds
one DescribeNetworkInterfaces per 100 ENIs). ``associate``: one EIP between two ECS instances, on the fake (two
steps, transitions of T seconds) and on a moto EC2 server (one atomic call); wall time of the command and the
"verified in" time it prints.

    .venv/bin/python bench/eip_commands.py [--eips 100 1000] [--rounds 5] [--transition 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fake_aliyun import FakeAliyun, key_file


async def command(config: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "eipfailover", "eip", *args, "-c", str(config),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"eip {' '.join(args)} failed: {err.decode()}")
    return time.perf_counter() - start, out.decode()


def verified(out: str) -> float:
    match = re.search(r"verified in ([0-9.]+)s", out)
    assert match is not None, out
    return float(match.group(1))


def write(tmp: Path, data: dict[str, Any]) -> Path:
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def alibaba(tmp: Path, eips: list[int], rounds: int, transition: float) -> list[str]:
    rows = []
    for count in eips:
        fake = FakeAliyun(transition=transition)
        await fake.start()
        for rid in ("i-a", "i-b"):
            fake.add_resource(rid)
        for n in range(count):
            fake.add_eip(f"eip-{n:05}", f"47.{n // 65000}.{n // 250 % 250}.{n % 250 + 1}")
            if n % 10 == 0:
                fake.add_eni(f"eni-{n:05}", f"10.{n // 65000}.{n // 250 % 250}.{n % 250 + 1}")
                fake.bind(f"eip-{n:05}", f"eni-{n:05}", mode="BINDED",
                          private_ip=fake.resources[f"eni-{n:05}"].private_ips[0])
        fake.bind("eip-00001", "i-a")
        config = write(tmp, {"providers": {"ali": {
            "type": "alibaba", "region": fake.region, "endpoint": fake.endpoint, "ecs_endpoint": fake.endpoint,
            "protocol": "http", "access_key_file": str(key_file(tmp)), "poll_interval": "100ms"}},
            "groups": [{"name": "g", "provider": "ali", "eips": ["eip-00001"], "targets": [
                {"name": "a", "binding": {"instance_id": "i-a"}, "checks": [{"type": "instance"}]},
                {"name": "b", "binding": {"instance_id": "i-b"}, "checks": [{"type": "instance"}]}]}]})
        times = []
        for _ in range(rounds):
            fake.log.clear()
            took, _ = await command(config, "list", "--json")
            times.append(took)
        calls = ", ".join(fake.sequence())
        rows.append(f"| alibaba `list --json` | {count} EIPs | {statistics.median(times):.2f} | - | {calls} |")
        if count == eips[0]:
            walls, moves = [], []
            for n in range(rounds):
                fake.log.clear()
                took, out = await command(config, "associate", "eip-00001", "--target",
                                          f"g/{'b' if n % 2 == 0 else 'a'}", "--force")
                walls.append(took)
                moves.append(verified(out))
            rows.append(f"| alibaba `associate` | transition {transition:g}s | {statistics.median(walls):.2f} | "
                        f"{statistics.median(moves):.2f} | {', '.join(fake.sequence())} |")
        await fake.stop()
    return rows


async def aws(tmp: Path, rounds: int) -> list[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    a, b = ec2.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2)["Instances"]
    eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=eip, InstanceId=a["InstanceId"])
    config = write(tmp, {"providers": {"moto": {"type": "aws", "region": "us-east-1", "endpoint_url": endpoint}},
                         "groups": [{"name": "g", "provider": "moto", "eips": [eip], "targets": [
                             {"name": "a", "binding": {"instance_id": a["InstanceId"]},
                              "checks": [{"type": "instance"}]},
                             {"name": "b", "binding": {"instance_id": b["InstanceId"]},
                              "checks": [{"type": "instance"}]}]}]})
    walls, moves = [], []
    for n in range(rounds):
        took, out = await command(config, "associate", eip, "--target", f"g/{'b' if n % 2 == 0 else 'a'}", "--force")
        walls.append(took)
        moves.append(verified(out))
    server.stop()
    return [f"| aws `associate` | moto | {statistics.median(walls):.2f} | {statistics.median(moves):.2f} | "
            f"(moto logs none) |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eips", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--transition", type=float, default=0.5)
    args = parser.parse_args()
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(var, None)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_EC2_METADATA_DISABLED": "true", "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true"})
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(alibaba(Path(tmp), args.eips, args.rounds, args.transition))
        rows += asyncio.run(aws(Path(tmp), args.rounds))
    print(f"medians of {args.rounds} runs")
    print("| command | world | wall s | verified in s | requests of the last run |")
    print("|---|---|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
