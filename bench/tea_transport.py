"""What one Alibaba SDK call costs over HTTPS, with the SDK's own transport and with the pooled one.

The real driver's describe against the fake VPC API served over TLS (a trustme CA) on loopback: N sequential calls,
then N calls 20 at a time while a 10 ms ticker measures how late the event loop runs. The SDK's transport builds
an SSL context (loading the CA bundle) and a TLS connection per call on the event loop; the pooled one reuses both.

    .venv/bin/python bench/tea_transport.py [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trustme

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import alibabacloud_tea_openapi.client as openapi
from darabonba.core import DaraCore

from eipfailover.providers import tea_transport
from tests.fake_aliyun import FakeAliyun, provider_for


async def ticker(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(0.01)
        lags.append(loop.time() - before - 0.01)


async def measure(pooled: bool, calls: int, directory: Path) -> str:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    fake = FakeAliyun()
    await fake.start(ssl_context=server)
    fake.add_eip("eip-1", "47.1.1.1")
    provider = provider_for(fake, directory, protocol="https", ca_file=ca_file, read_timeout=5, connect_timeout=5)
    openapi.DaraCore = tea_transport.PooledTransport if pooled else DaraCore
    try:
        await provider.describe(["eip-1"])  # warm-up
        cpu0, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(calls):
            await provider.describe(["eip-1"])
        sequential = (time.perf_counter() - start) / calls
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = ((cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)) / calls
        lags: list[float] = []
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(lags, stop))
        limit = asyncio.Semaphore(20)

        async def one() -> None:
            async with limit:
                await provider.describe(["eip-1"])

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(calls)))
        concurrent = time.perf_counter() - start
        stop.set()
        await tick
        connections = len({entry.connection for entry in fake.log})
    finally:
        await fake.stop()
    lags.sort()
    return (f"| {'pooled' if pooled else 'SDK (darabonba)'} | {1000 * sequential:.1f} | {1000 * cpu:.1f} "
            f"| {calls / concurrent:.0f} | {1000 * statistics.median(lags):.1f} | {1000 * lags[-1]:.1f} "
            f"| {connections} |")


async def main(calls: int) -> None:
    print(f"{calls} calls each way (client and fake server share this process's CPU)\n")
    print("| transport | ms per call, one at a time | CPU ms per call | calls/s, 20 at a time "
          "| loop lag p50 ms | loop lag max ms | TCP connections |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for pooled in (False, True):
            print(await measure(pooled, calls, Path(tmp)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    asyncio.run(main(parser.parse_args().calls))
