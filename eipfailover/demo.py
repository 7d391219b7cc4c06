"""``eipfailover demo``: a real failover with no cloud account.

It starts a moto EC2 server on loopback with two instances and an EIP on the first, two local HTTP servers playing
the instances' health endpoints, and the real daemon as a subprocess with a generated config. It then stops the
primary's server, shows the EIP moving to the standby with a timeline, brings the primary back and shows that the
EIP stays put (``failback: manual``). Exit 0 if everything happened as it should.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import yaml
from aiohttp import web

POLICY = {"interval": "1s", "timeout": "500ms", "rise": 2, "fall": 3, "cooldown": "10s", "failback": "manual"}


class LocalInstance:
    """A health endpoint on 127.0.0.1 that can be stopped (connection refused) and started again on its port."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"instance": self.name, "ok": True})

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class DaemonProcess:
    """The daemon as a subprocess; its JSON log lines are parsed into ``events`` as they arrive."""

    def __init__(self, config_path: Path, env: dict[str, str], echo: Callable[[float, dict[str, Any]], None],
                 *options: str) -> None:
        """``options``: more arguments of ``eipfailover run`` (e.g. ``--dry-run``)."""
        self.options = options
        self.config_path = config_path
        self.env = env
        self.echo = echo
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._new = asyncio.Event()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "eipfailover", "run", "-c", str(self.config_path), *self.options,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env,
        )
        self._reader = asyncio.create_task(self._read())

    async def start_and_settle(self, *targets: str, timeout: float = 60) -> None:
        """Start, then wait until the daemon is ready and each of ``targets`` is confirmed UP."""
        await self.start()
        await self.wait_for("daemon_ready", timeout)
        for target in targets:
            await self.wait_for("target_up", timeout, target=target)

    async def _read(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                event = {"event": "output", "text": raw.decode(errors="replace").rstrip()}
            now = time.monotonic()
            self.events.append((now, event))
            self.echo(now, event)
            self._new.set()

    async def wait_for(self, name: str, timeout: float, after: float = 0.0, **fields: Any) -> float:
        """Wait for an event named ``name`` (with these fields) logged after ``after``; return its arrival time."""
        async with asyncio.timeout(timeout):
            while True:
                for at, event in self.events:
                    if at >= after and event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
                        return at
                self._new.clear()
                await self._new.wait()

    def count(self, name: str) -> int:
        return sum(1 for _, e in self.events if e.get("event") == name)

    async def wait(self, timeout: float = 30) -> int:
        """Wait for the daemon to exit by itself; return its exit status."""
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def stop(self) -> int:
        """SIGTERM, then wait for the exit status."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait()


def _fmt(event: dict[str, Any]) -> str | None:
    name = event.get("event")
    if name == "target_down":
        return f"target_down      {event['target']}: {event.get('detail', '')}"
    if name == "target_up":
        return f"target_up        {event['target']}"
    if name == "decision":
        return f"decision         {event['action']} ({event['reason']}) target={event.get('target')}"
    if name == "failover_started":
        return f"failover_started {event['from_target']} -> {event['target']} ({event['trigger']}, {event['reason']})"
    if name == "failover_verified":
        return f"failover_verified on {event['target']} in {event['duration_seconds']}s"
    if name == "failover_failed":
        return f"failover_failed  {event.get('error')}"
    if name == "eips_located":
        return f"eips_located     {event['placement']} target={event.get('target')}"
    if name in {"daemon_ready", "daemon_stopped"} or event.get("level") in {"error", "critical"}:
        return f"{name} {({k: v for k, v in event.items() if k not in {'event', 'timestamp', 'logger'}})}"
    return None


SHOWN_METRICS = ("eipfailover_active_target", "eipfailover_target_up", "eipfailover_eip_attached",
                 "eipfailover_failover_duration_seconds_count", "eipfailover_failover_duration_seconds_sum")


async def _show_status_and_metrics(api: str) -> None:
    """What an operator sees now: ``eipfailover status`` and an excerpt of the Prometheus scrape."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "eipfailover", "status", "--api", api,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    print(f"\n$ eipfailover status --api {api}\n{out.decode().rstrip()}")
    async with aiohttp.ClientSession() as session, session.get(f"{api}/metrics") as response:
        text = await response.text()
    lines = [line for line in text.splitlines()
             if line.startswith(SHOWN_METRICS) or (line.startswith("eipfailover_failovers_total") and
                                                    not line.endswith(" 0.0"))]
    print(f"\n$ curl -s {api}/metrics   (excerpt)\n" + "\n".join(lines))


CREDENTIALS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1"}


class MotoWorld:
    """A moto EC2 server on loopback with two instances, ``web-a`` and ``web-b``, and one EIP on ``web-a``."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.ec2 = boto3.client("ec2", endpoint_url=self.endpoint, region_name="us-east-1",
                                aws_access_key_id="demo", aws_secret_access_key="demo")
        instances = self.ec2.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2, InstanceType="t3.micro")
        self.id_a, self.id_b = (i["InstanceId"] for i in instances["Instances"])
        self.eip = self.ec2.allocate_address(Domain="vpc")
        self.ec2.associate_address(AllocationId=self.eip["AllocationId"], InstanceId=self.id_a,
                                   AllowReassociation=True)

    def holder(self) -> str:
        address = self.ec2.describe_addresses(AllocationIds=[self.eip["AllocationId"]])["Addresses"][0]
        return {self.id_a: "web-a", self.id_b: "web-b"}.get(address.get("InstanceId", ""), "nothing")

    def targets(self, web_a: LocalInstance, web_b: LocalInstance) -> list[dict[str, Any]]:
        """The group's targets in a config, each checked on its local health endpoint."""
        return [{"name": name, "binding": {"instance_id": iid},
                 "checks": [{"type": "http", "url": f"http://127.0.0.1:{server.port}/healthz"}]}
                for name, iid, server in (("web-a", self.id_a, web_a), ("web-b", self.id_b, web_b))]

    def stop(self) -> None:
        self.server.stop()


async def _demo(workdir: Path) -> int:
    world = MotoWorld()
    endpoint, eip, holder = world.endpoint, world.eip, world.holder
    id_a, id_b = world.id_a, world.id_b
    web_a, web_b = LocalInstance("web-a"), LocalInstance("web-b")
    await web_a.start()
    await web_b.start()
    config = {
        "log": {"format": "json", "level": "info"},
        "api": {"listen": "127.0.0.1:0"},
        "state_directory": str(workdir / "state"),
        "providers": {"moto": {"type": "aws", "region": "us-east-1", "endpoint_url": endpoint}},
        "groups": [{"name": "web", "provider": "moto", "eips": [eip["AllocationId"]], "policy": POLICY,
                    "targets": world.targets(web_a, web_b)}],
    }
    config_path = workdir / "eipfailover.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    t0 = time.monotonic()

    def echo(at: float, event: dict[str, Any]) -> None:
        line = _fmt(event)
        if line is not None:
            print(f"  [{at - t0:7.2f}s] daemon: {line}", flush=True)

    env = {**os.environ, **CREDENTIALS, "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"}
    daemon = DaemonProcess(config_path, env, echo)
    print(f"moto EC2 at {endpoint}; instances web-a={id_a} web-b={id_b}; EIP {eip['PublicIp']} "
          f"({eip['AllocationId']}) on {holder()}")
    print(f"health endpoints: web-a 127.0.0.1:{web_a.port}, web-b 127.0.0.1:{web_b.port}; policy {POLICY}")
    print(f"config written to {config_path}; starting the daemon\n")
    ok = True
    try:
        await daemon.start_and_settle("web-a", "web-b")
        await asyncio.sleep(2)

        print(f"\n*** stopping web-a's health endpoint (EIP on {holder()})")
        stopped_at = time.monotonic()
        await web_a.stop()
        detected = await daemon.wait_for("target_down", 30, after=stopped_at, target="web-a")
        started = await daemon.wait_for("failover_started", 30, after=stopped_at)
        verified = await daemon.wait_for("failover_verified", 60, after=stopped_at)
        now_on = holder()
        ok &= now_on == "web-b"
        print(f"\n*** timeline from web-a's stop: detected DOWN after {detected - stopped_at:.2f}s, failover started "
              f"after {started - stopped_at:.2f}s, moved and verified after {verified - stopped_at:.2f}s")
        print(f"*** moto says the EIP is on {now_on}")
        api = next(e["address"] for _, e in daemon.events if e.get("event") == "api_listening")
        await _show_status_and_metrics(f"http://{api}")

        print("\n*** starting web-a again (failback: manual, so the EIP must stay on web-b)")
        restarted = time.monotonic()
        await web_a.start()
        await daemon.wait_for("target_up", 30, after=restarted, target="web-a")
        await asyncio.sleep(5)
        moves = daemon.count("failover_started")
        ok &= moves == 1 and holder() == "web-b"
        print(f"*** web-a healthy again; after 5 s more the EIP is on {holder()}; failovers in total: {moves} "
              f"({'no flap' if moves == 1 else 'UNEXPECTED'})")
    except TimeoutError:
        ok = False
        print("\n*** the expected event did not come in time; the daemon's log is above", file=sys.stderr)
    finally:
        code = await daemon.stop()
        await web_a.stop()
        await web_b.stop()
        world.stop()
    print(f"\ndaemon exited with status {code} after SIGTERM")
    print("demo " + ("passed" if ok and code == 0 else "FAILED"))
    return 0 if ok and code == 0 else 1


def main() -> int:
    try:
        import moto  # noqa: F401
    except ImportError:
        print("eipfailover demo needs moto: pip install 'eipfailover[demo]'", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="eipfailover-demo-") as tmp, contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_demo(Path(tmp)))
    return 130
