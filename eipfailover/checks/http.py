"""``http``: healthy when the URL answers with an expected status and, if asked, an expected body.

The probe is :mod:`eipfailover.checks.httpwire` (one request on its own connection, strict limits, regular yields to
the event loop), not aiohttp's client: see that module for why.
"""

from __future__ import annotations

import functools
import re
import ssl

from eipfailover import __version__
from eipfailover.checks import httpwire
from eipfailover.checks.base import OK, Check, CheckContext, describe_exception
from eipfailover.config import HttpCheckConfig
from eipfailover.model import CheckStatus

USER_AGENT = f"eipfailover/{__version__}"


class HttpCheck(Check):
    def __init__(self, name: str, timeout: float, config: HttpCheckConfig) -> None:
        super().__init__(name, timeout)
        self.config = config
        self.regex = re.compile(config.body_regex) if config.body_regex is not None else None
        self.read_body = config.body_contains is not None or self.regex is not None
        self.expect_status = frozenset(config.expect_status)
        self.prepared: tuple[httpwire.Target, bytes] | str
        """The target and the request, or why there are none (a port out of range, a header that cannot be sent):
        then every probe reports that (``error``), and none is made."""
        try:
            target = httpwire.parse_url(config.url)
            self.prepared = (target, httpwire.build_request(config.method, target, config.headers, USER_AGENT))
        except ValueError as exc:
            self.prepared = describe_exception(exc)
        self.tls: ssl.SSLContext | None = None
        if config.url.startswith("https:"):
            if not config.verify_tls:
                self.tls = _unverified_context()
            elif config.ca_file is not None:
                self.tls = ssl.create_default_context(cafile=str(config.ca_file))
            else:
                self.tls = _default_context()

    @classmethod
    def from_config(cls, config: HttpCheckConfig, name: str, timeout: float, ctx: CheckContext) -> HttpCheck:
        return cls(name, timeout, config)

    async def probe(self) -> tuple[CheckStatus, str]:
        cfg = self.config
        if isinstance(self.prepared, str):
            return CheckStatus.ERROR, self.prepared
        target, request = self.prepared
        try:
            conn = await httpwire.Connection.open(target, self.tls)
            try:
                response = await conn.exchange(request)
                if response.status not in self.expect_status:
                    return CheckStatus.FAIL, f"HTTP {response.status}, expected {_statuses(cfg.expect_status)}"
                if not self.read_body:
                    return OK
                raw = await conn.read_body(response, cfg.max_body_bytes, head=cfg.method == "HEAD")
            finally:
                conn.close()
        except httpwire.ConnectError as exc:
            return CheckStatus.FAIL, _connect_failure(exc)
        except httpwire.BadResponse as exc:
            return CheckStatus.FAIL, str(exc)
        except OSError as exc:  # the connection failed once made: a reset, a TLS error
            return CheckStatus.FAIL, f"{type(exc).__name__}: {exc}"
        body = raw.decode("utf-8", "replace")
        if cfg.body_contains is not None and cfg.body_contains not in body:
            return CheckStatus.FAIL, f"body does not contain {cfg.body_contains!r}"
        if self.regex is not None and self.regex.search(body) is None:
            return CheckStatus.FAIL, f"body does not match /{self.regex.pattern}/"
        return OK


def _connect_failure(exc: httpwire.ConnectError) -> str:
    error = exc.error
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {error}"
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused by {exc.where}"
    return f"cannot connect to {exc.where}: {error.strerror or error}"


def _statuses(codes: list[int]) -> str:
    return "/".join(str(c) for c in codes)


@functools.cache
def _default_context() -> ssl.SSLContext:
    """The system's CAs, loaded once (not per check: a few MB and milliseconds each)."""
    return ssl.create_default_context()


@functools.cache
def _unverified_context() -> ssl.SSLContext:
    """``verify_tls: false``: encryption without authentication (no CA, no host name)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
