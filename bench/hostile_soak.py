"""Soak: the daemon's real health checks against hostile endpoints, with flat resources.

The endpoints, on 127.0.0.1, are served by a child process (``--serve``) so that their CPU, sockets and tasks are
not the checker's. One accepts and never sends a byte (probed over http, and over https: a hung TLS handshake); one
completes the TLS handshake, then says nothing; one trickles an endless status line and headers, a byte every
100 ms; one streams a 200 with a 1 GiB body as fast as the socket takes it; one a gzip body that inflates to zeros
for ever; endless headers (many short lines; one line that never ends); one closes mid-headers; one presents a
self-signed certificate; a listener with a full backlog makes a tcp connect hang; and a name under the ``.invalid``
TLD (RFC 2606: never resolves, and fails at once here) is checked over http and tcp; one streams endless
``100 Continue`` interim responses (once a known defect: parsed without limit on the event loop, it stalled every
check). Kinds listed in ``KNOWN_DEFECTS`` (none at present) are left out unless ``--include-known-defects``.

The checks are the daemon's: a parsed config through ``daemon.build_checks`` (the check registry), sharing one
aiohttp session made as ``Daemon.run`` makes it. Each is started every ``--interval`` (overlapping when a check
lasts longer) with the group's ``--timeout``, for ``--warmup`` seconds, then ``--duration``. Reported per kind:
checks, failures (every one must fail), p50, p99 and max latency against timeout + ``--slack``; and file
descriptors, asyncio tasks, threads and RSS after the warm-up and at the end. A table, then one JSON line; exit 1
if a check passed, a measured check outlived timeout + slack, or a resource grew beyond its tolerance.

    .venv/bin/python bench/hostile_soak.py                # 600 s
    .venv/bin/python bench/hostile_soak.py --quick        # 20 s
    .venv/bin/python bench/hostile_soak.py --duration 120 --interval 0.25 --timeout 0.5 --slack 0.1
    .venv/bin/python bench/hostile_soak.py --quick --include-known-defects   # with KNOWN_DEFECTS (none now)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import gc
import json
import os
import resource
import socket
import ssl
import sys
import tempfile
import time
import zlib
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from eipfailover.checks.base import Check
from eipfailover.config import parse_config
from eipfailover.daemon import build_checks
from eipfailover.model import Binding, CheckStatus, EipState
from eipfailover.providers.base import InstanceState, Provider

INVALID_HOST = "eipfailover-soak.invalid"
GIGABYTE = 1 << 30
BLOCK = 1 << 16
TRICKLE_PERIOD = 0.1


# --- the hostile endpoints (the child process) ---------------------------------------------------------------------


@dataclass
class ServerStats:
    """What one endpoint saw: connections, and the bytes the kernel took from it (all and per connection)."""

    connections: int = 0
    tls_handshakes_failed: int = 0
    bytes_sent: int = 0
    max_bytes_per_connection: int = 0


def _endless(head: bytes, line: Callable[[int], bytes]) -> Iterator[bytes]:
    yield head
    n = 0
    while True:
        n += 1
        yield line(n)


async def _write(writer: asyncio.StreamWriter, data: bytes, sent: list[int]) -> None:
    writer.write(data)
    await writer.drain()  # as fast as the socket takes it, no faster: no busy loop
    sent[0] += len(data)


async def _trickle(writer: asyncio.StreamWriter, sent: list[int]) -> None:
    """An endless status line and headers, one byte every 100 ms."""
    for chunk in _endless(b"HTTP/1.1 200 OK\r\n", lambda n: b"X-Trickle-%d: %d\r\n" % (n, n)):
        for i in range(len(chunk)):
            await _write(writer, chunk[i:i + 1], sent)
            await asyncio.sleep(TRICKLE_PERIOD)


async def _gigabyte_body(writer: asyncio.StreamWriter, sent: list[int]) -> None:
    await _write(writer, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % GIGABYTE, sent)
    block, body = b"x" * BLOCK, 0
    while body < GIGABYTE:
        await _write(writer, block, sent)
        body += BLOCK


async def _endless_headers(writer: asyncio.StreamWriter, sent: list[int]) -> None:
    """Short, valid header lines, 64 KiB of them per write, for ever."""
    block = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"f" * 40) for i in range(BLOCK // 60))
    await _write(writer, b"HTTP/1.1 200 OK\r\n", sent)
    while True:
        await _write(writer, block, sent)


async def _endless_header_line(writer: asyncio.StreamWriter, sent: list[int]) -> None:
    await _write(writer, b"HTTP/1.1 200 OK\r\nX-Endless: ", sent)
    block = b"e" * BLOCK
    while True:
        await _write(writer, block, sent)


async def _endless_interim(writer: asyncio.StreamWriter, sent: list[int]) -> None:
    """Interim responses (``100 Continue``), each complete and valid, for ever; never a final one."""
    block = b"HTTP/1.1 100 Continue\r\n\r\n" * (BLOCK // 25)
    while True:
        await _write(writer, block, sent)


async def _close_mid_headers(writer: asyncio.StreamWriter, sent: list[int]) -> None:
    await _write(writer, b"HTTP/1.1 200 OK\r\nContent-Type: text/pl", sent)
    writer.close()  # a FIN in the middle of a header line


@functools.cache
def _gzip_megabyte() -> tuple[bytes, bytes]:
    """A gzip header with 1 MiB of zeros, and the next 1 MiB of zeros (1 KiB each): repeated, an endless stream."""
    zeros, compressor = bytes(1 << 20), zlib.compressobj(9, zlib.DEFLATED, 31)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first, compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)


async def _gzip_bomb(writer: asyncio.StreamWriter, sent: list[int]) -> None:
    """A 200 whose gzip body inflates to zeros for ever (64 MiB inflated per 64 KiB sent)."""
    first, megabyte = _gzip_megabyte()
    await _write(writer, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\n"
                         b"Connection: close\r\n\r\n" + first, sent)
    block = megabyte * 64
    while True:
        await _write(writer, block, sent)


async def _healthy(writer: asyncio.StreamWriter, sent: list[int]) -> None:
    """A correct answer: reached only by a client that accepted the bad certificate."""
    await _write(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nhealthy", sent)


Talker = Callable[[asyncio.StreamWriter, list[int]], Coroutine[Any, Any, None]]

ENDPOINTS: dict[str, tuple[bool, Talker | None]] = {
    "hang": (False, None),
    "tls-hang": (True, None),
    "trickle": (False, _trickle),
    "gigabyte": (False, _gigabyte_body),
    "gzip-bomb": (False, _gzip_bomb),
    "headers": (False, _endless_headers),
    "header-line": (False, _endless_header_line),
    "interim": (False, _endless_interim),
    "close": (False, _close_mid_headers),
    "bad-cert": (True, _healthy),
}
"""name: (whether it speaks TLS with a self-signed certificate, what it answers to a request head or None: nothing)"""


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Read and drop what the peer sends until it closes (FIN or reset)."""
    with contextlib.suppress(OSError):
        while await reader.read(BLOCK):
            pass


def _handler(talk: Talker | None, tls: ssl.SSLContext | None,
             stats: ServerStats) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats.connections += 1
        sent = [0]
        talker: asyncio.Task[None] | None = None
        try:
            if tls is not None:
                try:
                    await writer.start_tls(tls)
                except OSError:  # ssl.SSLError too: the client refused the certificate
                    stats.tls_handshakes_failed += 1
                    return
            if talk is not None:
                with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    await reader.readuntil(b"\r\n\r\n")  # the request head, as a real server would
                    talker = asyncio.create_task(talk(writer, sent))
            await _until_closed(reader)  # the client ends every exchange: it gives up or has read enough
        finally:
            if talker is not None:
                talker.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await talker
            writer.transport.abort()
            stats.bytes_sent += sent[0]
            stats.max_bytes_per_connection = max(stats.max_bytes_per_connection, sent[0])

    return handle


def _self_signed(directory: Path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1 (trusted by nobody)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


def _full_backlog() -> tuple[socket.socket, list[socket.socket]]:
    """A listener that never accepts, its backlog filled: a further connect hangs (its SYNs are dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(server.getsockname())
        fillers.append(filler)
    return server, fillers


async def serve() -> None:
    """The child: start the endpoints, print their ports (one JSON line), and on stdin's EOF their stats."""
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    loop.set_exception_handler(lambda _, context: errors.append(str(context.get("message"))))
    stats = {name: ServerStats() for name in ENDPOINTS}
    with tempfile.TemporaryDirectory() as tmp:
        tls = _self_signed(Path(tmp))
    servers = {name: await asyncio.start_server(_handler(talk, tls if uses_tls else None, stats[name]), "127.0.0.1", 0)
               for name, (uses_tls, talk) in ENDPOINTS.items()}
    backlog, fillers = _full_backlog()
    ports = {name: s.sockets[0].getsockname()[1] for name, s in servers.items()}
    ports["backlog"] = backlog.getsockname()[1]
    _gzip_megabyte()  # before the first client: not on its clock
    print(json.dumps({"ports": ports}), flush=True)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await stdin.read()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"endpoints": {n: vars(s) for n, s in stats.items()}, "loop_errors": errors[:5],
                      "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}), flush=True)
    for s in servers.values():
        s.close()
    for sock in [backlog, *fillers]:
        sock.close()


@contextlib.asynccontextmanager
async def endpoints() -> AsyncIterator[tuple[dict[str, int], Callable[[], Awaitable[dict[str, Any]]]]]:
    """Run the endpoints' process: yields their ports and a function that ends it and returns its stats."""
    child = await asyncio.create_subprocess_exec(sys.executable, __file__, "--serve", stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE)
    stdin, stdout = child.stdin, child.stdout
    assert stdin is not None
    assert stdout is not None
    final: dict[str, Any] = {}

    async def finish() -> dict[str, Any]:
        if not final:
            stdin.close()
            final.update(json.loads(await stdout.readline()))
            await child.wait()
        return final

    try:
        async with asyncio.timeout(30):
            line = await stdout.readline()
        if not line:
            raise RuntimeError("the endpoints' process ended before it served")
        yield json.loads(line)["ports"], finish
    finally:
        if not final:
            if child.returncode is None:
                child.kill()
            await child.wait()


# --- the checks, as the daemon builds them --------------------------------------------------------------------------


class NoCloud(Provider):
    """The group's provider: tcp and http checks never call it."""

    kind = "aws"

    @classmethod
    def from_config(cls, name: str, config: Any) -> NoCloud:
        return cls(name)

    async def read_eips(self, eips: Sequence[str]) -> dict[str, EipState]:
        raise NotImplementedError

    async def move(self, eips: Sequence[str], to: Binding) -> None:
        raise NotImplementedError

    async def instance_state(self, binding: Binding) -> InstanceState:
        raise NotImplementedError


KNOWN_DEFECTS: dict[str, str] = {}
"""Kinds left out unless ``--include-known-defects`` (kind: why), each a defect that breaks the run for every other
kind. None at present: ``http-endless-100-continue`` was one until the http check got its own bounded probe."""


def check_configs(ports: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """One check config per hostile kind (the key is also the target's and the check's name)."""
    def url(scheme: str, endpoint: str) -> str:
        return f"{scheme}://127.0.0.1:{ports[endpoint]}/healthz"

    return {
        "http-hang": {"type": "http", "url": url("http", "hang")},
        "https-handshake-hang": {"type": "http", "url": url("https", "hang")},
        "http-trickle": {"type": "http", "url": url("http", "trickle")},
        "https-hang-after-handshake": {"type": "http", "url": url("https", "tls-hang"), "verify_tls": False},
        "http-gigabyte-body": {"type": "http", "url": url("http", "gigabyte"), "body_contains": "healthy"},
        "http-gzip-bomb": {"type": "http", "url": url("http", "gzip-bomb"), "body_contains": "healthy"},
        "http-endless-headers": {"type": "http", "url": url("http", "headers")},
        "http-endless-header-line": {"type": "http", "url": url("http", "header-line")},
        "http-endless-100-continue": {"type": "http", "url": url("http", "interim")},
        "http-close-mid-headers": {"type": "http", "url": url("http", "close")},
        "https-self-signed": {"type": "http", "url": url("https", "bad-cert"), "body_contains": "healthy"},
        "http-unresolvable": {"type": "http", "url": f"http://{INVALID_HOST}/healthz"},
        "tcp-unresolvable": {"type": "tcp", "host": INVALID_HOST, "port": 80},
        "tcp-connect-hang": {"type": "tcp", "host": "127.0.0.1", "port": ports["backlog"]},
    }


def build(configs: Mapping[str, Mapping[str, Any]], timeout: float, http: aiohttp.ClientSession) -> dict[str, Check]:
    """The checks of one group with a target per kind, built by the daemon's own ``build_checks``."""
    config = parse_config({
        "providers": {"local": {"type": "aws", "region": "us-east-1"}},
        "groups": [{
            "name": "hostile", "provider": "local", "eips": ["eipalloc-0000000000000000a"],
            "policy": {"interval": 2 * timeout, "timeout": timeout},
            "targets": [{"name": kind, "binding": {"instance_id": f"i-{i:017x}"}, "checks": [{**cfg, "name": kind}]}
                        for i, (kind, cfg) in enumerate(configs.items())],
        }],
    })
    return {target: checks[0] for target, checks in build_checks(config.groups[0], NoCloud("local"), http).items()}


def daemon_session() -> aiohttp.ClientSession:
    """The checks' shared session, made as ``Daemon.run`` makes it."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))


# --- the soak ---------------------------------------------------------------------------------------------------


@dataclass
class KindStats:
    """The results of one kind's checks."""

    latencies: array[float] = field(default_factory=lambda: array("d"))
    statuses: Counter[str] = field(default_factory=Counter)
    details: Counter[str] = field(default_factory=Counter)

    def add(self, status: CheckStatus, detail: str, latency: float) -> None:
        self.latencies.append(latency)
        self.statuses[status.value] += 1
        if detail in self.details or len(self.details) < 8:
            self.details[detail] += 1
        else:
            self.details["(other details)"] += 1

    @property
    def checks(self) -> int:
        return len(self.latencies)

    @property
    def failed(self) -> int:
        return self.checks - self.statuses[CheckStatus.OK.value]

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    def summary(self) -> dict[str, Any]:
        return {"checks": self.checks, "failed": self.failed, "statuses": dict(self.statuses),
                "p50_ms": round(1000 * self.quantile(0.5), 1), "p99_ms": round(1000 * self.quantile(0.99), 1),
                "max_ms": round(1000 * max(self.latencies, default=0.0), 1),
                "detail": self.details.most_common(1)[0][0] if self.details else ""}


@dataclass(frozen=True)
class Resources:
    """The checker process's resources at one moment."""

    fds: int
    tasks: int
    threads: int
    rss_mb: float


def resources() -> Resources:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return Resources(fds=len(os.listdir("/proc/self/fd")), tasks=len(asyncio.all_tasks()),
                     threads=int(status["Threads"]), rss_mb=round(int(status["VmRSS"].split()[0]) / 1024, 1))


async def settled_resources(limit: float = 5.0) -> Resources:
    """The resources once closing connections have let go of their descriptors: the same figures five polls in a
    row (20 ms apart), or the last after ``limit`` seconds."""
    gc.collect()
    deadline = time.monotonic() + limit
    last, same = resources(), 0
    while same < 5 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        now = resources()
        same = same + 1 if (now.fds, now.tasks, now.threads) == (last.fds, last.tasks, last.threads) else 0
        last = now
    return last


@dataclass(frozen=True)
class Limits:
    """What the soak must show: every check within ``timeout + slack``, resources within these tolerances."""

    slack: float = 0.1
    fds: int = 4
    tasks: int = 2
    threads: int = 2
    rss_mb: float = 20.0


@dataclass
class SoakReport:
    """Everything the soak measured, and what was wrong (``problems`` empty: it passed)."""

    duration: float
    interval: float
    timeout: float
    limits: Limits
    warmup: dict[str, KindStats]
    """The warm-up's checks: they must fail too, but their latency includes one-time costs (imports, the first
    thread of the resolver's pool, the CA store) paid on the event loop, so it is reported and not held to the limit."""
    kinds: dict[str, KindStats]
    loop_lag: float
    """The largest delay of a 50 ms timer on the checker's event loop during the measured run (a busy machine)."""
    start: Resources
    end: Resources
    cpu_s: float
    resolve: dict[str, Any]
    server: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    def evaluate(self) -> None:
        limit = self.timeout + self.limits.slack
        for kind, stats in self.kinds.items():
            if stats.checks == 0:
                self.problems.append(f"{kind}: no check ran")
            for phase, seen in (("", stats), (" during the warm-up", self.warmup[kind])):
                if seen.failed != seen.checks:
                    self.problems.append(f"{kind}: {seen.checks - seen.failed} of {seen.checks} checks passed{phase}")
            worst = max(stats.latencies, default=0.0)
            if worst > limit:
                self.problems.append(f"{kind}: a check took {1000 * worst:.0f} ms (limit {1000 * limit:.0f} ms)")
        for name, allowed in (("fds", self.limits.fds), ("tasks", self.limits.tasks),
                              ("threads", self.limits.threads), ("rss_mb", self.limits.rss_mb)):
            before = getattr(self.start, name)
            if (grew := getattr(self.end, name) - before) > allowed:
                self.problems.append(f"{name} grew by {grew:g} (from {before:g}, allowed {allowed:g})")
        if self.resolve.get("resolved"):
            self.problems.append(f"{INVALID_HOST} resolved: {self.resolve['resolved']}")
        elif self.resolve["ms"] > 1000 * self.timeout:
            self.problems.append(f"{INVALID_HOST} took {self.resolve['ms']} ms to fail: not fast here")
        if self.server.get("loop_errors"):
            self.problems.append(f"the endpoints' process had errors: {self.server['loop_errors']}")

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": not self.problems, "duration_s": self.duration, "interval_s": self.interval,
            "timeout_s": self.timeout, "slack_s": self.limits.slack,
            "kinds": {kind: {**stats.summary(), "warmup": {k: v for k, v in self.warmup[kind].summary().items()
                                                             if k in ("checks", "failed", "max_ms")}}
                      for kind, stats in self.kinds.items()},
            "loop_lag_max_ms": round(1000 * self.loop_lag, 1),
            "resources": {"start": vars(self.start), "end": vars(self.end),
                          "tolerance": {k: v for k, v in vars(self.limits).items() if k != "slack"}},
            "checker_cpu_s": round(self.cpu_s, 2), "resolve_invalid": self.resolve, "server": self.server,
            "left_out": sorted(set(KNOWN_DEFECTS) - set(self.kinds)), "problems": self.problems,
        }


async def _resolve_invalid() -> dict[str, Any]:
    """How the local resolver answers for the ``.invalid`` name (it must fail, and fast)."""
    start = time.monotonic()
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(INVALID_HOST, 80, type=socket.SOCK_STREAM)
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "ms": round(1000 * (time.monotonic() - start), 2)}
    return {"resolved": [str(info[4][0]) for info in infos], "ms": round(1000 * (time.monotonic() - start), 2)}


async def _launch(check: Check, stats: KindStats, interval: float, offset: float, stop: asyncio.Event,
                  running: set[asyncio.Task[None]]) -> None:
    """Start ``check`` every ``interval`` (whether or not the previous one has ended) until ``stop``."""
    async def once() -> None:
        start = time.monotonic()
        result = await check.run()
        stats.add(result.status, result.detail, time.monotonic() - start)

    loop = asyncio.get_running_loop()
    next_at = loop.time() + offset
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(next_at):
                await stop.wait()
        if stop.is_set():
            break
        task = asyncio.create_task(once())
        running.add(task)
        task.add_done_callback(running.discard)
        next_at = max(next_at + interval, loop.time())


async def _phase(checks: Mapping[str, Check], seconds: float, interval: float) -> tuple[dict[str, KindStats], float]:
    """Run every check on its schedule for ``seconds``, then let the checks under way end. Returns the results
    and the event loop's largest lag."""
    stats = {kind: KindStats() for kind in checks}
    stop = asyncio.Event()
    running: set[asyncio.Task[None]] = set()
    launchers = [asyncio.create_task(_launch(check, stats[kind], interval, i * interval / len(checks), stop, running))
                 for i, (kind, check) in enumerate(checks.items())]
    loop, lag = asyncio.get_running_loop(), 0.0
    deadline = loop.time() + seconds
    while (now := loop.time()) < deadline:
        await asyncio.sleep(0.05)
        lag = max(lag, loop.time() - now - 0.05)
    stop.set()
    await asyncio.gather(*launchers)
    while running:
        await asyncio.gather(*running)
    return stats, lag


async def soak(duration: float, *, interval: float = 0.25, timeout: float = 0.5, warmup: float = 2.0,
               limits: Limits | None = None, include_known_defects: bool = False) -> SoakReport:
    """Serve the hostile endpoints, check them for ``warmup`` then ``duration`` seconds, and report."""
    limits = limits or Limits()
    resolve = await _resolve_invalid()
    async with endpoints() as (ports, finish), daemon_session() as http:
        configs = {kind: cfg for kind, cfg in check_configs(ports).items()
                   if include_known_defects or kind not in KNOWN_DEFECTS}
        checks = build(configs, timeout, http)
        warm, _ = await _phase(checks, warmup, interval)
        start = await settled_resources()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        stats, lag = await _phase(checks, duration, interval)
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        end = await settled_resources()
        server = await finish()
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    report = SoakReport(duration, interval, timeout, limits, warm, stats, lag, start, end, cpu, resolve, server)
    report.evaluate()
    return report


# --- the report -------------------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def render(report: SoakReport) -> str:
    """The human-readable tables."""
    limit_ms = 1000 * (report.timeout + report.limits.slack)
    lines = [
        f"hostile soak: {report.duration:g} s (after a warm-up), a check every {1000 * report.interval:g} ms per "
        f"endpoint, timeout {1000 * report.timeout:g} ms, slack {1000 * report.limits.slack:g} ms "
        f"(limit {limit_ms:g} ms; spare: the limit less the slowest check)",
        f"{INVALID_HOST}: {report.resolve.get('error') or report.resolve.get('resolved')} in "
        f"{report.resolve['ms']} ms",
        *(f"left out (--include-known-defects): {kind}: {why}" for kind, why in KNOWN_DEFECTS.items()
          if kind not in report.kinds),
        "",
        f"{'':<26} {'measured':-^47} {'warm-up':-^15}",
        f"{'kind':<26} {'checks':>7} {'failed':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'spare':>6} "
        f"{'failed':>7} {'max ms':>7}  detail",
    ]
    for kind, stats in report.kinds.items():
        s, w = stats.summary(), report.warmup[kind].summary()
        lines.append(f"{kind:<26} {s['checks']:>7} {s['failed']:>7} {s['p50_ms']:>7.1f} {s['p99_ms']:>7.1f} "
                     f"{s['max_ms']:>7.1f} {limit_ms - s['max_ms']:>6.0f} "
                     f"{str(w['failed']) + '/' + str(w['checks']):>7} {w['max_ms']:>7.1f}  {s['detail'][:60]}")
    lines += ["", f"{'resource':<10} {'start':>8} {'end':>8} {'growth':>8} {'allowed':>8}"]
    for name in ("fds", "tasks", "threads", "rss_mb"):
        a, b = getattr(report.start, name), getattr(report.end, name)
        lines.append(f"{name:<10} {a:>8g} {b:>8g} {b - a:>+8.1f} {getattr(report.limits, name):>8g}")
    lines += ["", f"checker CPU: {report.cpu_s:.2f} s ({100 * report.cpu_s / report.duration:.1f}% of one core); "
              f"event loop lag at most {1000 * report.loop_lag:.1f} ms; "
              f"endpoints' process CPU: {report.server.get('cpu_s')} s", "",
              f"{'endpoint':<12} {'conns':>7} {'TLS refused':>11} {'bytes sent':>14} {'max per conn':>14}"]
    for name, e in report.server.get("endpoints", {}).items():
        lines.append(f"{name:<12} {e['connections']:>7} {e['tls_handshakes_failed']:>11} {_mib(e['bytes_sent']):>14} "
                     f"{_mib(e['max_bytes_per_connection']):>14}")
    lines += ["", "PASS" if not report.problems else "FAIL:", *(f"  {p}" for p in report.problems)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds after the warm-up (default 600)")
    parser.add_argument("--quick", action="store_true", help="20 s")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--slack", type=float, default=0.1)
    parser.add_argument("--fd-tolerance", type=int, default=4)
    parser.add_argument("--task-tolerance", type=int, default=2)
    parser.add_argument("--thread-tolerance", type=int, default=2)
    parser.add_argument("--rss-tolerance-mb", type=float, default=20.0)
    parser.add_argument("--include-known-defects", action="store_true",
                        help=f"also run the kinds of known defects ({', '.join(KNOWN_DEFECTS) or 'none at present'}; "
                             f"they fail the run)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve())
        return 0
    limits = Limits(args.slack, args.fd_tolerance, args.task_tolerance, args.thread_tolerance, args.rss_tolerance_mb)
    report = asyncio.run(soak(20.0 if args.quick else args.duration, interval=args.interval, timeout=args.timeout,
                              warmup=args.warmup, limits=limits, include_known_defects=args.include_known_defects))
    print(render(report))
    print(json.dumps(report.to_json()), flush=True)
    return 0 if not report.problems else 1


if __name__ == "__main__":
    sys.exit(main())
