"""The daemon in-process on moto with real health endpoints, and a client of its API, for the API tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from eipfailover.config import load_config, parse_config
from eipfailover.daemon import Daemon
from eipfailover.engine import GroupRunner

from .conftest import REGION, Ec2World, HealthServer, eventually

TOKEN = "s3cr3t-token"


@dataclass
class Running:
    daemon: Daemon
    url: str
    ec2: Ec2World
    servers: list[HealthServer]
    session: aiohttp.ClientSession
    token_file: Path | None

    @property
    def runner(self) -> GroupRunner:
        assert self.daemon.engine is not None
        return self.daemon.engine.runners["web"]

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.url + path) as r:
            return r.status, await r.json() if r.content_type == "application/json" else await r.text()

    async def post(self, path: str, body: Any = None, token: str | None = TOKEN, raw: bytes | None = None,
                   ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw if raw is not None else json.dumps(body).encode() if body is not None else None
        async with self.session.post(self.url + path, data=data, headers=headers) as r:
            return r.status, await r.json()

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        _, text = await self.get("/metrics")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
        }


def config_data(ec2: Ec2World, servers: list[HealthServer], token_file: Path | None) -> dict[str, Any]:
    return {
        "api": {"listen": "127.0.0.1:0", **({"token_file": str(token_file)} if token_file else {})},
        "providers": {"moto": {"type": "aws", "region": REGION, "endpoint_url": ec2.endpoint}},
        "groups": [{
            "name": "web", "provider": "moto", "eips": [ec2.eip],
            "policy": {"interval": "500ms", "timeout": "250ms", "rise": 2, "fall": 2, "cooldown": "30s"},
            "targets": [
                {"name": "web-a", "binding": {"instance_id": ec2.instance_a},
                 "checks": [{"type": "http", "url": servers[0].url}]},
                {"name": "web-b", "binding": {"instance_id": ec2.instance_b},
                 "checks": [{"type": "http", "url": servers[1].url}]},
            ],
        }],
    }


async def start(ec2: Ec2World, servers: list[HealthServer], token_file: Path | None,
                edit: Callable[[dict[str, Any]], None] | None = None) -> tuple[Daemon, asyncio.Task[int]]:
    data = config_data(ec2, servers, token_file)
    if edit is not None:
        edit(data)
    daemon = Daemon(parse_config(data))
    task = asyncio.create_task(daemon.run(install_signals=False))
    serving = asyncio.create_task(daemon.serving.wait())
    await asyncio.wait({task, serving}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    assert daemon.serving.is_set(), "the daemon did not start"
    assert daemon.engine is not None
    await asyncio.wait_for(daemon.engine.ready.wait(), 30)
    return daemon, task


@contextlib.asynccontextmanager
async def running_daemon(ec2: Ec2World, servers: list[HealthServer], tmp_path: Path,
                         edit: Callable[[dict[str, Any]], None] | None = None,
                         session: aiohttp.ClientSession | None = None, scheme: str = "http") -> AsyncIterator[Running]:
    """The daemon with an API token, ``edit`` applied to its config, both targets UP; stopped (exit 0) after."""
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    daemon, task = await start(ec2, servers, token_file, edit)
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(aiohttp.ClientSession())
        r = Running(daemon, f"{scheme}://127.0.0.1:{daemon.api_port}", ec2, servers, session, token_file)
        await eventually(lambda: all(t.health.state == "up" for t in r.runner.targets.values()))
        try:
            yield r
        finally:
            assert daemon.engine is not None
            daemon.engine.request_stop()
            assert await asyncio.wait_for(task, 30) == 0


@contextlib.asynccontextmanager
async def daemon_on(path: Path) -> AsyncIterator[Daemon]:
    """The daemon on the config file ``path`` (so that it can be reloaded), ready; stopped (exit 0) after."""
    daemon = Daemon(load_config(path), path)
    task = asyncio.create_task(daemon.run(install_signals=False))
    await asyncio.wait_for(daemon.serving.wait(), 30)
    assert daemon.engine is not None
    await asyncio.wait_for(daemon.engine.ready.wait(), 30)
    try:
        yield daemon
    finally:
        daemon.engine.request_stop()
        assert await asyncio.wait_for(task, 30) == 0


async def reload(daemon: Daemon, path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path``, reload as SIGHUP does, and wait until the daemon runs on it."""
    before = daemon.config
    await asyncio.to_thread(path.write_text, yaml.safe_dump(data))
    daemon.request_reload()
    await eventually(lambda: daemon.config is not before)
