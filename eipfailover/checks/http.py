"""``http``: healthy when the URL answers with an expected status and, if asked, an expected body."""

from __future__ import annotations

import re
import ssl

import aiohttp

from eipfailover.checks.base import Check, CheckContext
from eipfailover.config import HttpCheckConfig
from eipfailover.model import CheckStatus


class HttpCheck(Check):
    def __init__(self, name: str, timeout: float, config: HttpCheckConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(name, timeout)
        self.config = config
        self.session = session
        self.regex = re.compile(config.body_regex) if config.body_regex is not None else None
        self.ssl: ssl.SSLContext | bool = config.verify_tls
        if config.verify_tls and config.ca_file is not None:
            self.ssl = ssl.create_default_context(cafile=str(config.ca_file))

    @classmethod
    def from_config(cls, config: HttpCheckConfig, name: str, timeout: float, ctx: CheckContext) -> HttpCheck:
        return cls(name, timeout, config, ctx.http)

    async def probe(self) -> tuple[CheckStatus, str]:
        cfg = self.config
        try:
            async with self.session.request(
                cfg.method, cfg.url, headers=cfg.headers, ssl=self.ssl, allow_redirects=False
            ) as resp:
                if resp.status not in cfg.expect_status:
                    return CheckStatus.FAIL, f"HTTP {resp.status}, expected {_statuses(cfg.expect_status)}"
                if cfg.body_contains is None and self.regex is None:
                    return CheckStatus.OK, ""
                body = (await _read_at_most(resp.content, cfg.max_body_bytes)).decode("utf-8", "replace")
        except aiohttp.ClientConnectorCertificateError as exc:
            return CheckStatus.FAIL, f"TLS certificate rejected: {exc.certificate_error}"
        except aiohttp.ClientConnectorError as exc:
            where = f"{exc.host}:{exc.port}"
            if isinstance(exc.os_error, ConnectionRefusedError):
                return CheckStatus.FAIL, f"connection refused by {where}"
            return CheckStatus.FAIL, f"cannot connect to {where}: {exc.os_error.strerror or exc.os_error}"
        except aiohttp.ClientError as exc:
            return CheckStatus.FAIL, f"{type(exc).__name__}: {exc}"
        if cfg.body_contains is not None and cfg.body_contains not in body:
            return CheckStatus.FAIL, f"body does not contain {cfg.body_contains!r}"
        if self.regex is not None and self.regex.search(body) is None:
            return CheckStatus.FAIL, f"body does not match /{self.regex.pattern}/"
        return CheckStatus.OK, ""


def _statuses(codes: list[int]) -> str:
    return "/".join(str(c) for c in codes)


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
