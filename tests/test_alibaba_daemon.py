"""The daemon with the Alibaba provider against the fake VPC API: start-up reconciliation, and the end-to-end
failover of the core issue repeated with the daemon as a subprocess."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from structlog.testing import capture_logs

from eipfailover.config import parse_config
from eipfailover.daemon import Daemon
from eipfailover.demo import DaemonProcess

from .conftest import HealthServer, eventually
from .fake_aliyun import FakeAliyun, key_file

REGION = "cn-hangzhou"
TRANSITION = 0.3  # the fake fixture's
INTERVAL, TIMEOUT, FALL = 1.0, 0.5, 3


def world(fake: FakeAliyun) -> FakeAliyun:
    fake.add_eip("eip-1", "47.1.1.1")
    fake.add_resource("i-a")
    fake.add_resource("i-b")
    return fake


def config_data(fake: FakeAliyun, servers: list[HealthServer], tmp_path: Path) -> dict[str, Any]:
    keys = key_file(tmp_path)
    endpoint = fake.endpoint
    return {
        "log": {"format": "json"},
        "api": {"listen": "127.0.0.1:0"},
        "providers": {"ali": {"type": "alibaba", "region": REGION, "endpoint": endpoint, "ecs_endpoint": endpoint,
                              "protocol": "http", "access_key_file": str(keys), "poll_interval": "100ms"}},
        "groups": [{
            "name": "web", "provider": "ali", "eips": ["eip-1"],
            "policy": {"interval": INTERVAL, "timeout": TIMEOUT, "rise": 2, "fall": FALL, "cooldown": "5s"},
            "targets": [
                {"name": "web-a", "binding": {"instance_id": "i-a", "instance_type": "EcsInstance"},
                 "checks": [{"type": "http", "url": servers[0].url}, {"type": "instance"}]},
                {"name": "web-b", "binding": {"instance_id": "i-b"},
                 "checks": [{"type": "http", "url": servers[1].url}]},
            ],
        }],
    }


@pytest.mark.parametrize("status", ["Unassociating", "Available"])
async def test_started_with_a_detached_or_detaching_eip_reconciles(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path, status: str) -> None:
    world(fake)
    if status == "Unassociating":  # still detaching when the targets are confirmed UP (rise 2 at 1 s)
        fake.transition = 3.0
        fake.bind("eip-1", "i-b", status="Unassociating")
    daemon = Daemon(parse_config(config_data(fake, health_servers, tmp_path)))
    with capture_logs() as logs:
        task = asyncio.create_task(daemon.run(install_signals=False))
        try:
            await eventually(lambda: fake.eips["eip-1"].status == "InUse", timeout=15)
            assert fake.eips["eip-1"].instance_id == "i-a"  # the most preferred healthy target
            assert daemon.engine is not None
            runner = daemon.engine.runners["web"]
            await eventually(lambda: runner.state.last_failover is not None)
            done = runner.state.last_failover
            assert done is not None
            assert (done.reason, done.result) == ("repair_detached", "success")
        finally:
            assert daemon.engine is not None
            daemon.engine.request_stop()
            assert await asyncio.wait_for(task, 30) == 0
    if status == "Unassociating":  # the policy waited for the cloud: no decision to move while it was detaching
        events = [e for e in logs if e["event"] in ("decision", "failover_started", "eips_located", "target_up")]
        started = next(i for i, e in enumerate(events) if e["event"] == "failover_started")
        up = max(i for i, e in enumerate(events) if e["event"] == "target_up")
        assert up < started
        waited = [e for e in events[:started] if e["event"] == "decision" and e["reason"] == "eip_in_transition"]
        assert waited, events
        settled = [e for e in events[:started] if e["event"] == "eips_located"]
        assert settled[-1]["placement"] == "detached"  # decided on the settled state, not the transition


async def test_a_manual_failover_while_an_eip_is_in_transition_needs_force(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    world(fake)
    fake.transition = 6.0  # someone (or something) is moving the EIP, slowly
    fake.bind("eip-1", "i-a", status="Associating")
    token = tmp_path / "token"
    token.write_text("t0k3n")
    data = config_data(fake, health_servers, tmp_path)
    data["api"]["token_file"] = str(token)
    daemon = Daemon(parse_config(data))
    task = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await asyncio.wait_for(daemon.serving.wait(), 30)
        assert daemon.engine is not None
        runner = daemon.engine.runners["web"]
        await eventually(lambda: all(t.health.state == "up" for t in runner.targets.values()))
        url = f"http://127.0.0.1:{daemon.api_port}/v1/groups/web/failover"
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer t0k3n"}) as session:
            async with session.post(url, json={"to": "web-b"}) as response:
                assert response.status == 409
                assert (await response.json())["error"] == "in_transition"
            assert "UnassociateEipAddress" not in fake.actions()
            async with session.post(url, json={"to": "web-b", "force": True}) as response:
                assert response.status == 202  # forced: the move waits for the transition, then goes
        assert runner.state.current is not None
    finally:
        assert daemon.engine is not None
        daemon.engine.request_stop()
        daemon.engine.abort()
        assert await asyncio.wait_for(task, 60) == 0


@pytest.mark.e2e
async def test_end_to_end_failover_with_the_alibaba_provider(
        fake: FakeAliyun, health_servers: list[HealthServer], tmp_path: Path) -> None:
    world(fake).bind("eip-1", "i-a")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(config_data(fake, health_servers, tmp_path)))
    env = {**os.environ, "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true"}
    daemon = DaemonProcess(config, env, lambda at, event: None)
    try:
        await daemon.start_and_settle("web-a", "web-b")
        assert daemon.count("failover_started") == 0

        stopped = time.monotonic()
        fake.log.clear()
        await health_servers[0].stop()
        bound = (FALL - 1) * INTERVAL + TIMEOUT + 2.0 + 2 * TRANSITION
        await eventually(lambda: (fake.eips["eip-1"].instance_id, fake.eips["eip-1"].status) == ("i-b", "InUse"),
                         timeout=bound)
        moved = time.monotonic() - stopped
        verified = await daemon.wait_for("failover_verified", 5, after=stopped)
        detected = await daemon.wait_for("target_down", 1, after=stopped, target="web-a")
        sequence = [e.action for e in fake.log if e.action != "DescribeInstanceStatus"]
        folded = fake.sequence(skip=("DescribeInstanceStatus",))
        print(f"\nALIBABA E2E: detected after {detected - stopped:.2f}s, InUse on the standby after {moved:.2f}s, "
              f"failover_verified after {verified - stopped:.2f}s (transition {TRANSITION}s, bound {bound:g}s)")
        print("ALIBABA E2E requests from the primary's stop:", ", ".join(folded))
        assert moved <= bound
        assert "UnassociateEipAddress" in sequence
        assert sequence.index("UnassociateEipAddress") < sequence.index("AssociateEipAddress")
    finally:
        assert await daemon.stop() == 0
