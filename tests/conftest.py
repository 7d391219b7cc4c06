"""Shared fixtures: a moto EC2 server over HTTP on loopback, EC2 fixtures in it, local health servers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
import requests
from aiohttp import web

from .fake_aliyun import FakeAliyun

REGION = "us-east-1"
W = TypeVar("W", bound=FakeAliyun)

# Nothing may leave the machine: no proxy, no metadata service, fake credentials only.
# (the Alibaba SDK honours HTTP(S)_PROXY and ignores NO_PROXY; it falls back to the ECS metadata service)
for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(var, None)
os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
                   "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1,localhost"})
# The journal's default place (state_directory unset) is $STATE_DIRECTORY: a directory of the test's own (below),
# this one for what runs outside a test (module fixtures); never /var/lib/eipfailover.
os.environ["STATE_DIRECTORY"] = tempfile.mkdtemp(prefix="eipfailover-tests-")


@pytest.fixture(autouse=True)
def state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's journal (the default ``state_directory``) in its own directory."""
    path = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(path))
    return path


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One ThreadedMotoServer per session on 127.0.0.1 (its first request costs ~1.5 s); reset per test."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def moto(moto_endpoint: str) -> str:
    requests.post(f"{moto_endpoint}/moto-api/reset", timeout=10).raise_for_status()
    return moto_endpoint


@dataclass
class Ec2World:
    """Two running instances, each with its primary ENI, and one EIP on the first instance."""

    endpoint: str
    client: Any
    instance_a: str
    instance_b: str
    eni_a: str
    eni_b: str
    ip_a: str
    ip_b: str
    eip: str
    public_ip: str

    def holder(self, eip: str | None = None) -> dict[str, Any]:
        return dict(self.client.describe_addresses(AllocationIds=[eip or self.eip])["Addresses"][0])

    def new_eip(self, on_instance: str | None = None) -> str:
        alloc = str(self.client.allocate_address(Domain="vpc")["AllocationId"])
        if on_instance:
            self.client.associate_address(AllocationId=alloc, InstanceId=on_instance, AllowReassociation=True)
        return alloc


def ec2_client(endpoint: str) -> Any:
    return boto3.client("ec2", endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def ec2(moto: str) -> Ec2World:
    return ec2_world(moto)


def ec2_world(endpoint: str) -> Ec2World:
    """Two running instances in the EC2 API at ``endpoint``, and one EIP on the first."""
    client = ec2_client(endpoint)
    reply = client.run_instances(ImageId="ami-12345678", MinCount=2, MaxCount=2, InstanceType="t3.micro")
    a, b = reply["Instances"]
    eip = client.allocate_address(Domain="vpc")
    client.associate_address(AllocationId=eip["AllocationId"], InstanceId=a["InstanceId"], AllowReassociation=True)
    return Ec2World(
        endpoint=endpoint, client=client, instance_a=a["InstanceId"], instance_b=b["InstanceId"],
        eni_a=a["NetworkInterfaces"][0]["NetworkInterfaceId"], eni_b=b["NetworkInterfaces"][0]["NetworkInterfaceId"],
        ip_a=a["PrivateIpAddress"], ip_b=b["PrivateIpAddress"], eip=eip["AllocationId"], public_ip=eip["PublicIp"],
    )


class HealthServer:
    """A real HTTP server on 127.0.0.1 whose answer can be changed, stopped and restarted on the same port."""

    def __init__(self) -> None:
        self.status = 200
        self.body = "ok"
        self.hang = False
        self.port = 0
        self.hits = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.hang:
            await self._forever.wait()  # accept, then never answer
        return web.Response(status=self.status, text=self.body)

    async def start(self) -> None:
        self._forever = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"


@pytest.fixture
async def health_servers() -> AsyncIterator[list[HealthServer]]:
    servers = [HealthServer(), HealthServer()]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAliyun]:
    """An empty fake Alibaba VPC/ECS API (region cn-hangzhou, 0.3 s transitions) serving on 127.0.0.1."""
    async with serving(FakeAliyun(transition=0.3, region="cn-hangzhou")) as world:
        yield world


@contextlib.asynccontextmanager
async def serving(world: W) -> AsyncIterator[W]:
    """``world`` serving on 127.0.0.1 until the block ends (its drivers closed then)."""
    await world.start()
    try:
        yield world
    finally:
        await world.stop()


TOOL_MISSING = "not installed (Debian package"


def require_tool(command: str, package: str) -> str:
    """The path of a command from a Debian package: skipped where it is missing (and said loudly at the end of the
    run), a failure where CI requires it (``EIPFAILOVER_REQUIRE_TOOLS``, set by .ci/run)."""
    path = shutil.which(command)
    if path is None:
        if os.environ.get("EIPFAILOVER_REQUIRE_TOOLS"):
            pytest.fail(f"{command} is required here (Debian package {package})")
        pytest.skip(f"{command} {TOOL_MISSING} {package}); .ci/run installs it")
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Tests skipped for a missing tool did not test anything: say so where nobody can miss it."""
    missing = [r for r in terminalreporter.stats.get("skipped", []) if TOOL_MISSING in str(r.longrepr)]
    if missing:
        terminalreporter.section("TESTS SKIPPED FOR MISSING TOOLS: NOT RUN", sep="!", red=True, bold=True)
        for report in missing:
            terminalreporter.line(f"{report.nodeid}: {report.longrepr[2].removeprefix('Skipped: ')}", red=True)
        terminalreporter.line(f"{len(missing)} test(s) did not run. `bash .ci/test` as root installs the tools; "
                              "`bash .ci/run` requires them.", red=True, bold=True)


async def eventually(condition: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
