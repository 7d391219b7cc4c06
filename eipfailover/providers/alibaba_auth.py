"""Alibaba Cloud credentials for the SDK, as ``alibabacloud_credentials`` providers.

- :class:`KeyFileCredentials`: an AccessKey (and optionally an STS token) from a JSON file, re-read whenever the
  file changes, so a rotated key is used without a restart or reload.
- :class:`DefaultChainCredentials`: the library's default chain (environment keys with an optional STS token, the
  Alibaba CLI profile, the credentials file, an OIDC/RRSA role, the ECS RAM role from instance metadata, a
  credentials URI), asked in a worker thread: its providers take a ``threading`` lock and may fetch over HTTP, which
  would stall the event loop (two concurrent cold fetches stall it for 5 s).

Either way a failure to obtain credentials is a retryable :class:`ProviderError` (credentials that fail at boot
often recover: an instance role attached late, a clock set late).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import structlog
from alibabacloud_credentials.provider.default import DefaultCredentialsProvider
from alibabacloud_credentials.provider.refreshable import Credentials
from alibabacloud_credentials_api import ICredentialsProvider

from eipfailover.errors import ProviderError

log = structlog.get_logger("eipfailover.providers.alibaba")


def read_access_key(path: Path) -> Credentials:
    """The credentials in a JSON file ``{"access_key_id", "access_key_secret", "security_token"?}`` (the Alibaba
    CLI's ``AccessKeyId``/``AccessKeySecret``/``SecurityToken`` spelling works too)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProviderError(f"access key file {path}: {exc.strerror or exc}", retryable=False) from None
    except ValueError as exc:
        raise ProviderError(f"access key file {path} is not JSON: {exc}", retryable=False) from None
    if not isinstance(data, dict):
        raise ProviderError(f"access key file {path}: expected a JSON object", retryable=False)
    key_id = data.get("access_key_id") or data.get("AccessKeyId")
    secret = data.get("access_key_secret") or data.get("AccessKeySecret")
    token = data.get("security_token") or data.get("SecurityToken") or None
    if not isinstance(key_id, str) or not isinstance(secret, str) or not key_id or not secret:
        raise ProviderError(f"access key file {path}: needs access_key_id and access_key_secret", retryable=False)
    if token is not None and not isinstance(token, str):
        raise ProviderError(f"access key file {path}: security_token must be a string", retryable=False)
    return Credentials(access_key_id=key_id, access_key_secret=secret, security_token=token,
                       provider_name="key_file")


class KeyFileCredentials(ICredentialsProvider):  # type: ignore[misc]
    """An AccessKey from a file, re-read when the file's identity, size or modification time changes. A rewrite
    that cannot be read (half-written, wrong permissions) keeps the previous key and is logged once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._credentials = read_access_key(path)
        self._signature = self._stat()
        self._broken: str | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def get_credentials(self) -> Credentials:
        signature = self._stat()
        if signature != self._signature:
            try:
                self._credentials = read_access_key(self.path)
            except ProviderError as exc:
                if str(exc) != self._broken:
                    log.warning("access_key_file_unreadable", error=str(exc), kept="the previous key")
                self._broken = str(exc)
                return self._credentials
            self._signature, self._broken = signature, None
            log.info("access_key_file_reloaded", path=str(self.path))
        return self._credentials

    async def get_credentials_async(self) -> Credentials:
        return self.get_credentials()

    def get_provider_name(self) -> str:
        return "key_file"


class DefaultChainCredentials(ICredentialsProvider):  # type: ignore[misc]
    """The library's default credential chain, asked off the event loop."""

    def __init__(self) -> None:
        self._chain = DefaultCredentialsProvider()

    def get_credentials(self) -> Credentials:
        try:
            credentials: Credentials = self._chain.get_credentials()
        except Exception as exc:  # the chain raises CredentialException, or whatever a provider's HTTP call raised
            raise ProviderError(f"no usable Alibaba Cloud credentials: {exc}", retryable=True,
                                code="NoCredentials") from None
        return credentials

    async def get_credentials_async(self) -> Credentials:
        return await asyncio.to_thread(self.get_credentials)

    def get_provider_name(self) -> str:
        return "default"
