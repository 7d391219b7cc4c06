"""End to end: the daemon as a real subprocess, moto EC2 over HTTP, real local HTTP health endpoints."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from eipfailover.demo import DaemonProcess

from .conftest import REGION, Ec2World, HealthServer

pytestmark = pytest.mark.e2e
INTERVAL, TIMEOUT, FALL = 1.0, 0.5, 3
FAILBACK_DELAY = 0.5
POLICY = {"interval": INTERVAL, "timeout": TIMEOUT, "rise": 2, "fall": FALL, "cooldown": "2s", "failback": "manual",
          "failback_delay": FAILBACK_DELAY}
BOUND = (FALL - 1) * INTERVAL + TIMEOUT + 2.0  # (fall-1)*interval + timeout + 2 s


def write_config(path: Path, ec2: Ec2World, servers: list[HealthServer], eip: str | None = None,
                 **policy: Any) -> Path:
    config: dict[str, Any] = {
        "log": {"format": "json", "level": "info"},
        "api": {"listen": "127.0.0.1:0"},
        "providers": {"moto": {"type": "aws", "region": REGION, "endpoint_url": ec2.endpoint}},
        "groups": [{
            "name": "web", "provider": "moto", "eips": [eip or ec2.eip], "policy": {**POLICY, **policy},
            "targets": [
                {"name": "web-a", "binding": {"instance_id": ec2.instance_a},
                 "checks": [{"type": "http", "url": servers[0].url}, {"type": "instance"}]},
                {"name": "web-b", "binding": {"instance_id": ec2.instance_b},
                 "checks": [{"type": "http", "url": servers[1].url}]},
            ],
        }],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def daemon(config: Path, *options: str) -> DaemonProcess:
    return DaemonProcess(config, dict(os.environ), lambda at, event: None, *options)


def poll_holder(ec2: Ec2World, instance: str, timeout: float) -> float | None:
    """Poll moto until the EIP is on ``instance``; return when that was seen (monotonic), or None."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ec2.holder().get("InstanceId") == instance:
            return time.monotonic()
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_failover_restart_and_no_failback(ec2: Ec2World, health_servers: list[HealthServer],
                                                tmp_path: Path, loop: str) -> None:
    """On either event loop (uvloop: the 'fast' extra): a failover, a clean stop, a restart that moves nothing,
    a reload that fails back."""
    config = write_config(tmp_path / "c.yaml", ec2, health_servers)
    first = daemon(config, "--loop", loop)
    try:
        await first.start_and_settle("web-a", "web-b")
        assert next(e for _, e in first.events if e["event"] == "daemon_starting")["event_loop"] == loop
        assert first.count("failover_started") == 0

        stopped = time.monotonic()
        await health_servers[0].stop()
        detected = await first.wait_for("target_down", BOUND, after=stopped, target="web-a")
        seen = await asyncio.to_thread(poll_holder, ec2, ec2.instance_b, BOUND)
        assert seen is not None, "the EIP did not reach the standby in time"
        verified = await first.wait_for("failover_verified", 5, after=stopped)
        detection, moved = detected - stopped, seen - stopped
        print(f"\nE2E: detected after {detection:.2f}s, EIP on the standby in moto after {moved:.2f}s, "
              f"failover_verified logged after {verified - stopped:.2f}s (bound {BOUND:g}s)")
        assert moved <= BOUND
        started = next(e for _, e in first.events if e["event"] == "failover_started")
        assert (started["reason"], started["from_target"], started["target"]) == ("active_down", "web-a", "web-b")
    finally:
        assert await first.stop() == 0

    # A restart reconciles from the cloud: the EIP is on a healthy standby, so nothing moves.
    second = daemon(config, "--loop", loop)
    await second.start()
    try:
        await second.wait_for("daemon_ready", 30)
        located = next(e for _, e in second.events if e["event"] == "eips_located")
        assert (located["placement"], located["target"]) == ("on_target", "web-b")
        await second.wait_for("target_down", 10, target="web-a")
        await second.wait_for("target_up", 10, target="web-b")

        # The primary comes back; failback is manual, so the EIP stays where it is, well past the failback delay
        # (0.5 s) and the cooldown (2 s), which would have let an automatic failback happen by then ...
        restarted = time.monotonic()
        await health_servers[0].start()
        await second.wait_for("target_up", 10, after=restarted, target="web-a")
        await asyncio.sleep(FAILBACK_DELAY + 3 * INTERVAL)
        assert second.count("failover_started") == 0
        assert ec2.holder()["InstanceId"] == ec2.instance_b
        # ... as a reload to failback: auto then shows: the same setup fails back at once
        write_config(config, ec2, health_servers, failback="auto")
        assert second.proc is not None
        reloaded = time.monotonic()
        second.proc.send_signal(signal.SIGHUP)
        failback_at = await second.wait_for("failover_started", 10, after=reloaded)
        assert next(e for at, e in second.events if at == failback_at)["trigger"] == "failback"
        assert await asyncio.to_thread(poll_holder, ec2, ec2.instance_a, 5) is not None
    finally:
        assert await second.stop() == 0


async def test_an_eip_it_cannot_read_keeps_it_running_but_unready(ec2: Ec2World,
                                                                    health_servers: list[HealthServer],
                                                                    tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", ec2, health_servers, eip="eipalloc-00000000000000000")
    proc = daemon(config)
    await proc.start()
    try:
        await proc.wait_for("cloud_read_failed", 30, code="InvalidAllocationID.NotFound")
        await proc.wait_for("daemon_ready", 5)  # READY=1 goes out: a restart loop would help nobody ...
        address = next(e["address"] for _, e in proc.events if e["event"] == "api_listening")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{address}/readyz") as response:  # ... but it is not ready
                assert response.status == 503
                body = await response.json()
            async with session.get(f"http://{address}/healthz") as response:  # and it is alive
                assert response.status == 200
        (group,) = body["groups"]
        assert group["name"] == "web"
        assert group["reason"].startswith("no successful cloud read yet: EC2 DescribeAddresses in us-east-1: "
                                          "InvalidAllocationID.NotFound: ")
        await health_servers[0].stop()  # the primary dies: the daemon cannot know where the EIP is, so it waits
        await proc.wait_for("target_down", 10, target="web-a")
        decision = [e for _, e in proc.events if e["event"] == "decision"][-1]
        assert (decision["action"], decision["reason"]) == ("none", "cloud_unknown")
        assert proc.proc is not None
        assert proc.proc.returncode is None
        assert proc.count("cloud_read_failed") == 1  # reported when it starts, not every cycle
        assert proc.count("failover_started") == 0
    finally:
        assert await proc.stop() == 0
    assert not any("Traceback" in str(e) for _, e in proc.events)


async def test_startup_failure_is_clear(ec2: Ec2World, health_servers: list[HealthServer], tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", ec2, health_servers)
    data = yaml.safe_load(config.read_text())
    data["providers"]["moto"]["profile"] = "does-not-exist"
    config.write_text(yaml.safe_dump(data))
    proc = daemon(config)
    await proc.start()
    assert await proc.wait() == 2
    failed = [e for _, e in proc.events if e["event"] == "startup_failed"]
    assert failed
    assert "The config profile (does-not-exist) could not be found" in failed[0]["error"]


async def test_demo_runs() -> None:
    """The README's first command runs this: the demo must pass on its own."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "eipfailover", "demo",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "demo passed" in text
    assert "failovers in total: 1 (no flap)" in text
