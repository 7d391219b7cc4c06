"""systemd integration: sd_notify on a real datagram socket from the daemon as a subprocess, signals (reload,
stop), the unit file (systemd-analyze), the least-privilege policies and the packaging."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from eipfailover.config import parse_config
from eipfailover.demo import DaemonProcess
from eipfailover.engine import Engine, GroupRunner
from eipfailover.events import Observers
from eipfailover.model import Binding
from eipfailover.providers.alibaba import AlibabaProvider
from eipfailover.providers.aws import AwsProvider
from eipfailover.systemd import Notifier, watchdog

from .conftest import REGION, Ec2World, HealthServer, eventually, require_tool
from .fakes import FakeProvider, ScriptedCheck, SwallowingCheck

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "eipfailover.service"


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket that records every message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 4096)
            self.messages.append((time.monotonic(), data.decode()))

    def lines(self, prefix: str = "") -> list[str]:
        return [m for _, m in self.messages if m.startswith(prefix)]

    def times(self, message: str) -> list[float]:
        return [t for t, m in self.messages if m == message]

    def close(self) -> None:
        self._task.cancel()
        self.sock.close()


@pytest.fixture
async def notify(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify.sock")
    yield listener
    listener.close()


def aws_config(ec2: Ec2World, servers: list[HealthServer], endpoint: str | None = None,
               **policy: Any) -> dict[str, Any]:
    return {
        "log": {"format": "json"},
        "api": {"listen": "127.0.0.1:0"},
        "providers": {"moto": {"type": "aws", "region": REGION, "endpoint_url": endpoint or ec2.endpoint,
                               "read_timeout": 2, "max_attempts": 1}},
        "groups": [{
            "name": "web", "provider": "moto", "eips": [ec2.eip],
            "policy": {"interval": "500ms", "timeout": "250ms", "rise": 2, "fall": 2, "cooldown": "5s", **policy},
            "targets": [
                {"name": "web-a", "binding": {"instance_id": ec2.instance_a},
                 "checks": [{"type": "http", "url": servers[0].url}]},
                {"name": "web-b", "binding": {"instance_id": ec2.instance_b},
                 "checks": [{"type": "http", "url": servers[1].url}]},
            ],
        }],
    }


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def daemon(config: Path, notify: NotifySocket | None, **env: str) -> DaemonProcess:
    environ = {**os.environ, **env}
    if notify is not None:
        environ["NOTIFY_SOCKET"] = str(notify.path)
    return DaemonProcess(config, environ, lambda at, event: None)


def fake_runner(checks: dict[str, list[ScriptedCheck]]) -> GroupRunner:
    """A group "g" on a fake cloud (its EIP on the first target), interval 200 ms."""
    names = list(checks)
    config = parse_config({"providers": {"fake": {"type": "aws", "region": "r"}}, "groups": [{
        "name": "g", "provider": "fake", "eips": ["e1"], "policy": {"interval": "200ms", "timeout": "100ms",
                                                                    "rise": 1, "fall": 2},
        "targets": [{"name": n, "binding": {"instance_id": f"i-{n}"},
                     "checks": [{"type": "tcp", "host": "h", "port": 1}]} for n in names]}]}).groups[0]
    cloud = FakeProvider({"e1": Binding(instance_id=f"i-{names[0]}")})
    return GroupRunner(config, cloud, checks, Observers([]))


def test_notifier_is_a_no_op_without_a_socket() -> None:
    notifier = Notifier({})
    notifier.ready()  # nothing to send to, nothing raised
    assert (notifier.sock, notifier.watchdog_period) == (None, None)


def test_notifier_abstract_socket_and_watchdog_pid() -> None:
    name = f"eipfailover-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"})
        notifier.status("web: web-a active, 2/2 healthy")
        assert server.recv(4096) == b"STATUS=web: web-a active, 2/2 healthy"
        assert notifier.watchdog_period == 1.0
        notifier.close()
    finally:
        server.close()
    other = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_period is None  # the watchdog is meant for another process
    other.ready()  # a socket that is gone: logged once, never raised
    other.close()


async def test_notify_sequence_ready_watchdog_status_reload_stopping(
        ec2: Ec2World, health_servers: list[HealthServer], notify: NotifySocket, tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", aws_config(ec2, health_servers))
    proc = daemon(config, notify, WATCHDOG_USEC="1000000")
    try:
        await proc.start_and_settle("web-a", "web-b")
        await eventually(lambda: len(notify.times("WATCHDOG=1")) >= 5, timeout=10)
        ready = notify.times("READY=1")
        assert len(ready) == 1
        located = next(at for at, e in proc.events if e["event"] == "eips_located")
        assert ready[0] >= located - 0.05  # READY only after the first reconcile
        assert min(notify.times("WATCHDOG=1")) >= ready[0] - 0.5
        gaps = [b - a for a, b in zip(notify.times("WATCHDOG=1"), notify.times("WATCHDOG=1")[1:], strict=False)]
        assert 0.4 <= statistics.median(gaps) <= 0.6  # half of WATCHDOG_USEC

        await health_servers[0].stop()
        await eventually(lambda: any(s.startswith("STATUS=web: web-b active") for s in notify.lines("STATUS=")),
                         timeout=10)
        statuses = notify.lines("STATUS=")
        assert statuses[0].startswith("STATUS=web: ")
        assert "STATUS=web: web-a active, 2/2 healthy" in statuses

        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        await proc.wait_for("reload_done", 10)
        await eventually(lambda: len(notify.times("READY=1")) == 2)
        reloading = [m for m in notify.lines() if m.startswith("RELOADING=1")]
        assert len(reloading) == 1
        assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", reloading[0])
        usec = int(reloading[0].split("=")[-1])
        assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 10
        assert notify.times("READY=1")[1] > next(t for t, m in notify.messages if m.startswith("RELOADING=1"))
    finally:
        assert await proc.stop() == 0
    assert "STOPPING=1" in notify.lines()[-3:]
    trace: list[str] = []
    for message in notify.lines():  # folded for reading: WATCHDOG=1 x12
        text = message.replace("\n", " ")
        if trace and trace[-1].split(" x")[0] == text == "WATCHDOG=1":
            trace[-1] = f"WATCHDOG=1 x{int(trace[-1].split(' x')[1]) + 1 if ' x' in trace[-1] else 2}"
        else:
            trace.append(text)
    print("\nsd_notify trace:\n  " + "\n  ".join(trace))


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of moto whose traffic can be held, on open connections too."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            await self.flowing.wait()
            dst.write(data)
            await dst.drain()
        dst.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    async def stop(self) -> None:
        self.flowing.set()
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()


async def test_a_hanging_cloud_keeps_the_watchdog_and_says_so_in_status(
        ec2: Ec2World, health_servers: list[HealthServer], notify: NotifySocket, tmp_path: Path) -> None:
    proxy = Proxy(ec2.endpoint)
    endpoint = await proxy.start()
    data = aws_config(ec2, health_servers, endpoint)
    data["providers"]["moto"]["read_timeout"] = 20  # a cloud call that hangs far longer than 3 intervals
    config = write(tmp_path / "c.yaml", data)
    proc = daemon(config, notify, WATCHDOG_USEC="1000000")
    try:
        await proc.start_and_settle("web-a")
        await eventually(lambda: len(notify.times("WATCHDOG=1")) >= 3)
        proxy.flowing.clear()  # DescribeAddresses now hangs; the checks go on
        await eventually(lambda: any("cloud unreadable" in s for s in notify.lines("STATUS=")), timeout=10)
        (status,) = [s for s in notify.lines("STATUS=") if "cloud unreadable" in s]
        assert status == "STATUS=web: cloud unreadable (EIPs last seen on web-a), 2/2 healthy"
        before = len(notify.times("WATCHDOG=1"))
        await eventually(lambda: len(notify.times("WATCHDOG=1")) >= before + 3, timeout=10)  # still alive
        proxy.flowing.set()
        await eventually(lambda: notify.lines("STATUS=")[-1] == "STATUS=web: web-a active, 2/2 healthy",
                         timeout=30)
    finally:
        proxy.flowing.set()
        await proc.stop()
        await proxy.stop()


async def test_a_wedged_check_loop_stops_the_watchdog(notify: NotifySocket) -> None:
    release = asyncio.Event()
    engine = Engine([fake_runner({"a": [ScriptedCheck()], "b": [ScriptedCheck()]})])
    notifier = Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    running = asyncio.create_task(engine.run())
    pinging = asyncio.create_task(watchdog(notifier, engine))
    try:
        await eventually(lambda: len(notify.times("WATCHDOG=1")) >= 3)
        checks = engine.runners["g"].targets["a"].checks
        assert isinstance(checks, list)
        checks.append(SwallowingCheck(release))  # a plugin bug: the check loop hangs
        await asyncio.sleep(1.0)  # 3 intervals of 200 ms, and then some
        before = len(notify.times("WATCHDOG=1"))
        await asyncio.sleep(1.0)
        assert len(notify.times("WATCHDOG=1")) == before  # no ping while wedged: systemd will restart it
        release.set()
        await eventually(lambda: len(notify.times("WATCHDOG=1")) > before, timeout=5)  # pings resume
    finally:
        release.set()
        engine.request_stop()
        await asyncio.wait_for(running, 5)
        pinging.cancel()
        notifier.close()


async def test_sighup_with_a_broken_file_keeps_the_old_config(ec2: Ec2World, health_servers: list[HealthServer],
                                                              notify: NotifySocket, tmp_path: Path) -> None:
    config = write(tmp_path / "c.yaml", aws_config(ec2, health_servers))
    proc = daemon(config, notify)
    try:
        await proc.start_and_settle("web-a", "web-b")
        config.write_text("groups: [\n")
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        failed = await proc.wait_for("reload_failed", 10)
        event = next(e for at, e in proc.events if at == failed)
        assert "invalid YAML" in event["error"]
        await eventually(lambda: len(notify.times("READY=1")) == 2)  # systemd leaves the reloading state
        # the old config still works: the primary dies, the EIP moves
        await health_servers[0].stop()
        await eventually(lambda: ec2.holder()["InstanceId"] == ec2.instance_b, timeout=10)
    finally:
        assert await proc.stop() == 0


async def test_sighup_with_a_changed_file_adds_a_group_and_moves_nothing(
        ec2: Ec2World, health_servers: list[HealthServer], tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0k3n")
    data = aws_config(ec2, health_servers)
    data["api"]["token_file"] = str(token)
    config = write(tmp_path / "c.yaml", data)
    second = ec2.new_eip(on_instance=ec2.instance_b)
    proc = daemon(config, None)
    try:
        await proc.start_and_settle("web-a", "web-b")
        api = next(e["address"] for _, e in proc.events if e["event"] == "api_listening")
        maintenance = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "eipfailover", "maintenance", "web", "on", "--api", f"http://{api}",
            "--token-file", str(token), stdout=asyncio.subprocess.DEVNULL)
        assert await maintenance.wait() == 0

        added = json.loads(json.dumps(data["groups"][0]))
        added["name"], added["eips"] = "api", [second]
        data["groups"][0]["policy"]["cooldown"] = "9s"  # web changes too: it is rebuilt with its state
        data["groups"].append(added)
        config.write_text(yaml.safe_dump(data))
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        done_at = await proc.wait_for("reload_done", 10)
        done = next(e for at, e in proc.events if at == done_at)
        assert (done["changed"], done["removed"], done["unchanged"]) == (["web", "api"], [], [])
        await proc.wait_for("eips_located", 10, after=done_at, group="api")
        await asyncio.sleep(2)  # a few ticks of both groups
        assert proc.count("failover_started") == 0
        assert ec2.holder()["InstanceId"] == ec2.instance_a
        assert ec2.holder(second)["InstanceId"] == ec2.instance_b
        # web kept its targets' health (no second target_up for them) and its maintenance
        assert [e["target"] for _, e in proc.events if e["event"] == "target_up" and e["group"] == "web"] == [
            "web-a", "web-b"]
        status = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "eipfailover", "status", "--json", "--api", f"http://{api}",
            stdout=asyncio.subprocess.PIPE)
        groups = {g["name"]: g for g in json.loads((await status.communicate())[0])}
        assert groups["web"]["maintenance"] is True
        assert groups["api"]["active_target"] == "web-b"
    finally:
        assert await proc.stop() == 0


# --- the unit file ---

@pytest.fixture
def analyze() -> str:
    return require_tool("systemd-analyze", "systemd")


def unit_root(tmp_path: Path, unit_text: str) -> Path:
    """A minimal root for `systemd-analyze verify --root`: the system's units, our unit, and its commands."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system/eipfailover.service").write_text(unit_text)
    for command in ("/opt/eipfailover/bin/eipfailover", "/bin/kill"):
        target = root / command.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("#!/bin/sh\n")
        target.chmod(0o755)
    return root


def verify(analyze: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([analyze, "verify", f"--root={root}", "/etc/systemd/system/eipfailover.service"],
                          capture_output=True, text=True, timeout=60, check=False)


def test_unit_verifies(analyze: str, tmp_path: Path) -> None:
    result = verify(analyze, unit_root(tmp_path, UNIT.read_text()))
    assert result.returncode == 0, result.stderr
    broken = verify(analyze, unit_root(tmp_path / "b", UNIT.read_text().replace("Type=notify", "Type=notifyy")))
    assert broken.returncode != 0 or "Failed to parse service type" in broken.stderr


def test_unit_security_exposure(analyze: str) -> None:
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for eipfailover\.service: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    print(f"\nsystemd-analyze security: exposure {match.group(1)}")
    assert float(match.group(1)) <= 2.0


def test_unit_contract() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "RestartPreventExitStatus=2", "WatchdogSec=30s", "DynamicUser=yes",
                 "ConfigurationDirectory=eipfailover",
                 "StateDirectory=eipfailover", "LoadCredential=api-token:/etc/eipfailover/api-token",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallFilter=@system-service",
                 "CapabilityBoundingSet=", "UMask=0077"):
        assert re.search(rf"^{re.escape(line)}$", text, re.MULTILINE), line
    stop = float(re.search(r"^TimeoutStopSec=(\d+)s$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert stop > 20 + 60 + 10 + 10  # stop_timeout, failover_deadline (+ its last call), hooks and guards
    assert "check-config" in re.search(r"^ExecStartPre=(.*)$", text, re.MULTILINE).group(1)  # type: ignore[union-attr]


# --- least privilege and packaging ---

def test_policies_grant_exactly_what_the_drivers_call() -> None:
    """The daemon's statements grant its own operations and nothing more; the optional statements (AWS: ``Sid``
    ``EipCommands*``; RAM: the second) grant what only the ``eip`` commands call."""
    aws = json.loads((ROOT / "config/iam/aws-policy.json").read_text())
    daemon = {a for s in aws["Statement"] if not s["Sid"].startswith("EipCommands") for a in s["Action"]}
    commands = {a for s in aws["Statement"] if s["Sid"].startswith("EipCommands") for a in s["Action"]}
    assert daemon == {f"ec2:{op}" for op in AwsProvider.operations}
    assert commands == {f"ec2:{op}" for op in AwsProvider.manual_operations}
    ram = json.loads((ROOT / "config/iam/alibaba-ram-policy.json").read_text())
    assert len(ram["Statement"]) == 2

    def ram_action(op: str) -> str:
        return ("ecs:" if op in AlibabaProvider.ECS_OPERATIONS else "vpc:") + op

    assert set(ram["Statement"][0]["Action"]) == {ram_action(op) for op in AlibabaProvider.operations}
    assert set(ram["Statement"][1]["Action"]) == {ram_action(op) for op in AlibabaProvider.manual_operations}


def test_the_wheel_has_no_test_code(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, timeout=300, capture_output=True)
    (wheel,) = tmp_path.glob("eipfailover-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "eipfailover/openapi.yaml" in names
    assert "eipfailover/daemon.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "fake_aliyun" in n]
