"""Many groups whose primaries die at once, against moto behind a fake enforcing EC2's request-token buckets
(tests/ec2_buckets.py): every EIP ends on its standby, each moved once, nothing throttled, and the reads stay one a
round. The full-size figures (100 and 500 groups against EC2's own buckets): bench/mass_failover.py."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from eipfailover.config import parse_config
from eipfailover.daemon import build_checks
from eipfailover.engine import Engine, GroupRunner
from eipfailover.events import NullObserver, Observers
from eipfailover.providers.aws import AwsProvider

from .conftest import REGION, Ec2World, HealthServer, eventually
from .ec2_buckets import Ec2Buckets, Limit
from .fault_proxy import FaultProxy

GROUPS = 40


def config(endpoint: str, eips: list[str], ec2: Ec2World, primary: HealthServer, standby: HealthServer) -> Any:
    def target(name: str, instance: str, server: HealthServer) -> dict[str, Any]:
        return {"name": name, "binding": {"instance_id": instance},
                "checks": [{"type": "http", "url": f"http://127.0.0.1:{server.port}/{name}"}]}

    return parse_config({
        "providers": {"aws": {"type": "aws", "region": REGION, "endpoint_url": endpoint, "connect_timeout": 1,
                              "read_timeout": 2,
                              # 10% under the fake's buckets, as the defaults are under EC2's
                              "rate_limit": {"mutations": {"requests_per_second": 9, "burst": 9}}}},
        "groups": [{"name": f"g{i}", "provider": "aws", "eips": [eip],
                    "policy": {"interval": "500ms", "timeout": "250ms", "rise": 1, "fall": 2, "cooldown": "0s",
                               "failover_deadline": "60s"},
                    "targets": [target("a", ec2.instance_a, primary), target("b", ec2.instance_b, standby)]}
                   for i, eip in enumerate(eips)],
    })


async def test_a_mass_failover_moves_every_eip_once_within_the_buckets(ec2: Ec2World) -> None:
    eips = [ec2.new_eip(on_instance=ec2.instance_a) for _ in range(GROUPS)]
    # the shape of EC2's mutating bucket (burst, then a steady rate), scaled down to keep the test short
    buckets = Ec2Buckets(categories={"mutating": Limit(10, 10)})
    primary, standby = HealthServer(), HealthServer()
    await primary.start()
    await standby.start()
    async with FaultProxy(ec2.endpoint, "ec2", buckets=buckets) as proxy, aiohttp.ClientSession() as http:
        cfg = config(proxy.url, eips, ec2, primary, standby)
        provider = AwsProvider("aws", cfg.providers["aws"])
        engine = Engine(GroupRunner(g, provider, build_checks(g, provider, http), Observers([NullObserver()]))
                        for g in cfg.groups)
        task = asyncio.create_task(engine.run())
        try:
            await asyncio.wait_for(engine.ready.wait(), 30)
            loop = asyncio.get_running_loop()
            died = loop.time()
            await primary.stop()  # every primary dies at once

            def all_on_b() -> bool:
                return all(r.state.last_failover is not None and r.state.last_failover.result == "success"
                           for r in engine.runners.values())
            await eventually(all_on_b, timeout=60)
            took = loop.time() - died
        finally:
            engine.request_stop()
            await asyncio.wait_for(task, 30)
            await provider.close()
            await standby.stop()
        moved = [seen.params.get("AllocationId", "") for seen in proxy.calls("AssociateAddress", forwarded=True)]
        throttled = [seen for seen in proxy.log if seen.limited]
    assert sorted(moved) == sorted(eips)  # each EIP moved exactly once
    assert throttled == []  # the client-side limit kept every call, describes included, inside the buckets
    on_b = ec2.client.describe_addresses(AllocationIds=eips)["Addresses"]
    assert {a["InstanceId"] for a in on_b} == {ec2.instance_b}  # nothing detached, nothing left behind
    # the floor our limit sets: detection (250 ms + one 250 ms re-probe), then a burst of 9 and 9 a second;
    # generous here (a loaded CI machine): bench/mass_failover.py measures the ratio
    floor = 0.5 + (GROUPS - 9) / 9
    assert took < 3 * floor, took
