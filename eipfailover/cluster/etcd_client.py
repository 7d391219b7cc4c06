"""A small asyncio etcd v3 client over etcd's JSON gRPC gateway (``POST /v3/...``), with aiohttp.

Only what the daemon needs: leases, linearizable reads, writes, transactions and prefix watches. Keys are ``str``
(UTF-8), values ``bytes``. On the wire keys and values are base64 and 64-bit integers decimal strings, and the
gateway leaves out every field equal to its default (``0``, ``false``, an event's type ``PUT``): a missing field
reads as zero.

Every call is bounded by the client's ``timeout`` in total. The endpoints are tried in turn, from the last one that
answered; each attempt gets an even share of the time left, so that one hanging member does not use it all, and a
refused connection moves on at once. As with any etcd client, a call that timed out may still have been applied:
retry only what is safe to repeat (conditional transactions, puts of the same value).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any, Literal, TypeVar

import aiohttp

JSON = dict[str, Any]
T = TypeVar("T")
CompareOp = Literal["=", "!=", ">", "<"]

_RESULTS: dict[str, str] = {"=": "EQUAL", "!=": "NOT_EQUAL", ">": "GREATER", "<": "LESS"}
_OPERAND_FIELDS = {"CREATE": "create_revision", "MOD": "mod_revision", "VERSION": "version", "VALUE": "value",
                   "LEASE": "lease"}
"""The gateway names a compare's operand after its target, not after the enum's name."""
_TRANSIENT_CODES = frozenset({1, 4, 8, 14})
"""gRPC codes worth another endpoint: CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED ("too many requests") and
UNAVAILABLE ("no leader", "request timed out", "leader changed", ...)."""
_REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}
"""gRPC metadata ``hasleader: true`` (the gateway forwards ``Grpc-Metadata-*`` headers), as etcd's Go client sends
with ``WithRequireLeader``: a member that knows it has no leader refuses a request at once ("no leader", so the next
endpoint is tried) instead of letting it hang, and cancels its watches after three election timeouts without one."""
_NOT_FOUND = 5
_UNAUTHENTICATED = 16


class EtcdError(Exception):
    """An etcd call failed; the message names the endpoint(s) and the cause. ``code``: etcd's gRPC status code,
    when it gave one (it refused the request: bad credentials, permission denied, ...)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time (refused, reset, timed out, HTTP 5xx, no leader...): the state is unknown."""


class _EndpointFailed(Exception):
    """One endpoint gave no usable answer. Not ``transient``: TLS refused, or not an etcd v3 gateway."""

    def __init__(self, cause: str, *, transient: bool = True) -> None:
        super().__init__(cause)
        self.transient = transient


def _encode(text: str) -> str:
    return _b64(text.encode("utf-8", "surrogateescape"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _int(obj: JSON, name: str) -> int:
    return int(obj.get(name, 0))


def _revision(answer: JSON) -> int:
    return _int(answer.get("header", {}), "revision")


def _prefix_range(prefix: str) -> JSON:
    """The range request for every key starting with ``prefix`` (every key at all for ``""``)."""
    end = prefix.encode("utf-8", "surrogateescape").rstrip(b"\xff")
    if not end:
        return {"key": _encode(prefix) if prefix else _b64(b"\0"), "range_end": _b64(b"\0")}
    return {"key": _encode(prefix), "range_end": _b64(end[:-1] + bytes([end[-1] + 1]))}


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key as etcd stores it. ``create_revision``: the revision that created it (the election's term);
    ``version``: its puts since; ``lease``: the lease it goes with (0: none)."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, kv: JSON) -> KeyValue:
        return cls(key=base64.b64decode(kv.get("key", "")).decode("utf-8", "surrogateescape"),
                   value=base64.b64decode(kv.get("value", "")), create_revision=_int(kv, "create_revision"),
                   mod_revision=_int(kv, "mod_revision"), version=_int(kv, "version"), lease=_int(kv, "lease"))


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of :meth:`EtcdClient.txn`, made by the class methods; a missing key has create revision,
    version and lease 0, so ``Compare.create_revision(key, "=", 0)`` holds while ``key`` does not exist."""

    key: str
    target: Literal["CREATE", "MOD", "VERSION", "VALUE", "LEASE"]
    op: CompareOp
    operand: int | bytes

    def __post_init__(self) -> None:
        if self.op not in _RESULTS:
            raise ValueError(f"compare op must be one of {' '.join(_RESULTS)}, not {self.op!r}")

    @classmethod
    def create_revision(cls, key: str, op: CompareOp, revision: int) -> Compare:
        return cls(key, "CREATE", op, revision)

    @classmethod
    def mod_revision(cls, key: str, op: CompareOp, revision: int) -> Compare:
        return cls(key, "MOD", op, revision)

    @classmethod
    def version(cls, key: str, op: CompareOp, version: int) -> Compare:
        return cls(key, "VERSION", op, version)

    @classmethod
    def value(cls, key: str, op: CompareOp, value: bytes) -> Compare:
        return cls(key, "VALUE", op, value)

    @classmethod
    def lease(cls, key: str, op: CompareOp, lease: int) -> Compare:
        return cls(key, "LEASE", op, lease)

    def to_json(self) -> JSON:
        operand = _b64(self.operand) if isinstance(self.operand, bytes) else str(self.operand)
        return {"key": _encode(self.key), "target": self.target, "result": _RESULTS[self.op],
                _OPERAND_FIELDS[self.target]: operand}


@dataclass(frozen=True, slots=True)
class Op:
    """One request of a :meth:`EtcdClient.txn` branch, made by :meth:`put`, :meth:`get` or :meth:`delete`."""

    kind: Literal["put", "get", "delete"]
    key: str
    value: bytes = b""
    lease: int = 0

    @classmethod
    def put(cls, key: str, value: bytes, lease: int = 0) -> Op:
        return cls("put", key, value, lease)

    @classmethod
    def get(cls, key: str) -> Op:
        return cls("get", key)

    @classmethod
    def delete(cls, key: str) -> Op:
        return cls("delete", key)

    def request(self) -> JSON:
        """The body of the standalone request (``/v3/kv/put``, ``range`` or ``deleterange``)."""
        request: JSON = {"key": _encode(self.key)}
        if self.kind == "put":
            request["value"] = _b64(self.value)
            if self.lease:
                request["lease"] = str(self.lease)
        return request

    def to_json(self) -> JSON:
        name = {"put": "request_put", "get": "request_range", "delete": "request_delete_range"}[self.kind]
        return {name: self.request()}


@dataclass(frozen=True, slots=True)
class TxnResult:
    """``succeeded``: every compare held, the success branch ran (else the failure branch). ``responses``: one per
    op of the branch that ran: a get's KeyValues (empty: no such key), None for a put or a delete."""

    succeeded: bool
    revision: int
    responses: list[list[KeyValue] | None]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A put or a delete; a delete's ``kv`` holds only the key and the deletion's ``mod_revision``."""

    type: Literal["put", "delete"]
    kv: KeyValue


def make_ssl_context(ca_file: str | PathLike[str], cert_file: str | PathLike[str] | None = None,
                     key_file: str | PathLike[str] | None = None) -> ssl.SSLContext:
    """A TLS context for https endpoints: trusts ``ca_file`` only and presents the client certificate ``cert_file``
    (key in ``key_file``, else in ``cert_file``). EtcdError names a file that cannot be loaded."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as e:
        raise EtcdError(f"cannot load the etcd CA file {ca_file}: {e}") from None
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file)
        except OSError as e:
            raise EtcdError(f"cannot load the etcd client certificate {cert_file} (key {key_file}): {e}") from None
    return context


def _describe(error: aiohttp.ClientError) -> str:
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return f"TLS: etcd's certificate not accepted ({error.certificate_error})"
    if isinstance(error, aiohttp.ClientConnectorError):
        failed = "TLS handshake failed" if isinstance(error, aiohttp.ClientSSLError) else "cannot connect"
        return f"{failed}: {error.os_error.strerror or error.os_error}"
    return str(error) or type(error).__name__


class _Stream:
    """A gateway stream (``/v3/watch``): one JSON object a line, each ``{"result": ...}`` or ``{"error": ...}``."""

    def __init__(self, endpoint: str, response: aiohttp.ClientResponse) -> None:
        self.endpoint = endpoint
        self._response = response
        self._buffer = b""

    async def next(self) -> JSON:
        """The next result; _EndpointFailed when the stream breaks or ends."""
        while (end := self._buffer.find(b"\n")) < 0:
            try:
                chunk = await self._response.content.readany()
            except aiohttp.ClientError as e:
                raise _EndpointFailed(_describe(e)) from None
            if not chunk:
                raise _EndpointFailed("the stream ended")
            self._buffer += chunk
        line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
        try:
            message = json.loads(line)
        except ValueError:
            raise _EndpointFailed(f"not a JSON line: {line[:80]!r}") from None
        if not isinstance(message, dict) or not isinstance(message.get("result"), dict):
            raise _EndpointFailed(f"the stream broke: {str(message)[:200]}")
        result: JSON = message["result"]
        return result

    def close(self) -> None:
        self._response.close()


class EtcdClient:
    """An etcd v3 cluster through the JSON gateway of its ``endpoints`` (``http(s)://host:port``).

    ``timeout`` bounds every call, all endpoints included; ``ssl_context`` (see :func:`make_ssl_context`) is used
    for https endpoints; with ``username``, each endpoint gets a token from ``/v3/auth/authenticate`` (etcd's simple
    tokens are only valid on the member that issued them), renewed once when etcd says it is invalid (expired, or
    the member restarted). Reads are linearizable, never stale: a member cut off from its leader lets them hang until
    the timeout, then (once it knows it has none) refuses them at once. Raises :class:`EtcdUnavailable` when no
    endpoint answered in time, :class:`EtcdError` when etcd refused the request or every endpoint refused TLS.
    Create it anywhere, use it in one event loop, :meth:`close` it there.
    """

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 2.0, ssl_context: ssl.SSLContext | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoint")
        if timeout <= 0:
            raise ValueError(f"etcd timeout must be positive, not {timeout}")
        self._endpoints = [endpoint.rstrip("/") for endpoint in endpoints]
        self._timeout = timeout
        self._ssl_context = ssl_context
        self._credentials = None if username is None else (username, password or "")
        self._tokens: dict[str, str] = {}
        self._preferred = 0
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        """Close the connections (a watch still open ends); a later call opens new ones."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (its id, the TTL granted in seconds; etcd raises a TTL below its minimum, about 1.5 election
        timeouts)."""
        answer = await self._call("/v3/lease/grant", {"TTL": ttl})
        return _int(answer, "ID"), _int(answer, "TTL")

    async def keepalive(self, lease_id: int) -> int:
        """Renew a lease once: the TTL it has again, 0 when it is gone (expired or revoked)."""
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)})
        return _int(answer.get("result", {}), "TTL")

    async def revoke(self, lease_id: int) -> None:
        """End a lease now, deleting its keys; a lease already gone is fine."""
        try:
            await self._call("/v3/lease/revoke", {"ID": str(lease_id)})
        except EtcdError as e:
            if e.code != _NOT_FOUND:
                raise

    async def get(self, key: str) -> KeyValue | None:
        """The key, None when it does not exist."""
        answer = await self._call("/v3/kv/range", Op.get(key).request())
        kvs = answer.get("kvs", [])
        return KeyValue.from_json(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix``, sorted, and the revision read (watch from the next one)."""
        answer = await self._call("/v3/kv/range", _prefix_range(prefix))
        return [KeyValue.from_json(kv) for kv in answer.get("kvs", [])], _revision(answer)

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Set the key (with the lease: deleted when the lease ends); the revision of the write."""
        return _revision(await self._call("/v3/kv/put", Op.put(key, value, lease).request()))

    async def delete(self, key: str) -> None:
        """Delete the key; a missing key is fine."""
        await self._call("/v3/kv/deleterange", Op.delete(key).request())

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        """Atomically: if every compare holds, run ``success``, else ``failure``. The election's step is
        ``txn([Compare.create_revision(key, "=", 0)], [Op.put(key, me, lease)], [Op.get(key)])``."""
        answer = await self._call("/v3/kv/txn", {"compare": [c.to_json() for c in compare],
                                                 "success": [op.to_json() for op in success],
                                                 "failure": [op.to_json() for op in failure]})
        responses: list[list[KeyValue] | None] = []
        for response in answer.get("responses", []):
            ranged = response.get("response_range")
            responses.append(None if ranged is None else [KeyValue.from_json(kv) for kv in ranged.get("kvs", [])])
        return TxnResult(succeeded=bool(answer.get("succeeded", False)), revision=_revision(answer),
                         responses=responses)

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncGenerator[list[WatchEvent], None]:
        """The events on keys starting with ``prefix`` from ``start_revision`` on (0: from now), in order, one list
        per etcd message. The stream opens at the first iteration, bounded by the timeout like a call; waiting for
        events is not bounded.

        It ends with :class:`EtcdUnavailable` when the stream breaks, with :class:`EtcdError` when etcd cancels the
        watch (``start_revision`` compacted, permission denied): read again, then watch from the revision read.
        A stream to a member cut off from the cluster just goes quiet, and lease renewals make no events: do not
        rely on the watch alone, read periodically. Close it with :func:`contextlib.aclosing` or ``aclose()``.
        """
        create: JSON = _prefix_range(prefix)
        if start_revision:
            create["start_revision"] = str(start_revision)
        stream = await self._on_endpoints(f"/v3/watch {prefix!r}",
                                          lambda endpoint: self._open_watch(endpoint, prefix, create))
        try:
            while True:
                try:
                    result = await stream.next()
                except _EndpointFailed as e:
                    raise EtcdUnavailable(f"etcd watch on {prefix!r} at {stream.endpoint} ended: {e}") from None
                if result.get("canceled"):
                    raise EtcdError(f"etcd canceled the watch on {prefix!r} at {stream.endpoint}: "
                                    f"{_cancel_reason(result)}")
                events = [WatchEvent("delete" if event.get("type") == "DELETE" else "put",
                                     KeyValue.from_json(event.get("kv", {})))
                          for event in result.get("events", [])]
                if events:
                    yield events
        finally:
            stream.close()

    async def _open_watch(self, endpoint: str, prefix: str, create: JSON) -> _Stream:
        # A watch with a stale token is canceled as "permission denied", like one truly not allowed: a fresh token.
        token = await self._token(endpoint, renew=True)
        response = await self._send(endpoint, "/v3/watch", {"create_request": create}, token)
        try:
            if response.status != 200:
                self._checked(endpoint, "/v3/watch", *await self._answer(response))
            stream = _Stream(endpoint, response)
            created = await stream.next()
            if created.get("canceled"):
                raise EtcdError(f"etcd refused the watch on {prefix!r} at {endpoint}: {_cancel_reason(created)}")
        except BaseException:
            response.close()
            raise
        return stream

    async def _call(self, path: str, body: JSON) -> JSON:
        """POST ``body`` to ``path``: the answer of the first endpoint that gives one."""
        return await self._on_endpoints(path, lambda endpoint: self._request(endpoint, path, body))

    async def _on_endpoints(self, what: str, attempt: Callable[[str], Awaitable[T]]) -> T:
        """``attempt`` on the endpoints in turn, from the last one that answered, until one succeeds: all within the
        timeout, each attempt within an even share of the time left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        failures: list[tuple[str, _EndpointFailed]] = []
        count = len(self._endpoints)
        for tried in range(count):
            index = (self._preferred + tried) % count
            endpoint = self._endpoints[index]
            share = (deadline - loop.time()) / (count - tried)
            try:
                async with asyncio.timeout(share):
                    result = await attempt(endpoint)
            except TimeoutError:
                failures.append((endpoint, _EndpointFailed(f"no answer within {share:.2g} s")))
            except _EndpointFailed as e:
                failures.append((endpoint, e))
            except EtcdError:
                self._preferred = index
                raise
            else:
                self._preferred = index
                return result
        causes = "; ".join(f"{endpoint}: {failure}" for endpoint, failure in failures)
        if any(failure.transient for _, failure in failures):
            raise EtcdUnavailable(f"etcd unavailable ({what}, timeout {self._timeout:g} s): {causes}")
        raise EtcdError(f"etcd not reachable ({what}): {causes}")

    async def _request(self, endpoint: str, path: str, body: JSON) -> JSON:
        token = await self._token(endpoint)
        status, answer = await self._post(endpoint, path, body, token)
        if token is not None and status == 401 and answer.get("code") == _UNAUTHENTICATED:
            # Expired (simple tokens: after 5 idle minutes), or the member restarted: once with a new token.
            status, answer = await self._post(endpoint, path, body, await self._token(endpoint, renew=True))
        return self._checked(endpoint, path, status, answer)

    async def _token(self, endpoint: str, *, renew: bool = False) -> str | None:
        """The auth token for ``endpoint`` (None without a username)."""
        if self._credentials is None:
            return None
        if not renew and endpoint in self._tokens:
            return self._tokens[endpoint]
        name, password = self._credentials
        what = f"authentication as {name!r}"
        answer = self._checked(endpoint, what, *await self._post(
            endpoint, "/v3/auth/authenticate", {"name": name, "password": password}, None))
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise EtcdError(f"etcd {what} at {endpoint}: no token in the answer")
        self._tokens[endpoint] = token
        return token

    async def _post(self, endpoint: str, path: str, body: JSON, token: str | None) -> tuple[int, JSON]:
        async with await self._send(endpoint, path, body, token) as response:
            return await self._answer(response)

    async def _send(self, endpoint: str, path: str, body: JSON, token: str | None) -> aiohttp.ClientResponse:
        if self._session is None:
            # aiohttp's own timeouts off: the client's timeout bounds each call, and nothing bounds a watch.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl_context or True),
                timeout=aiohttp.ClientTimeout(total=None), headers=_REQUIRE_LEADER)
        try:
            return await self._session.post(endpoint + path, json=body,
                                            headers=None if token is None else {"Authorization": token})
        except aiohttp.ClientError as e:
            raise _EndpointFailed(_describe(e), transient=not isinstance(e, aiohttp.ClientSSLError)) from None

    @staticmethod
    async def _answer(response: aiohttp.ClientResponse) -> tuple[int, JSON]:
        try:
            raw = await response.read()
        except aiohttp.ClientError as e:
            raise _EndpointFailed(_describe(e)) from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise _EndpointFailed(f"HTTP {response.status}, not an etcd v3 gateway's answer: {raw[:80]!r}",
                                  transient=response.status >= 500)
        return response.status, answer

    @staticmethod
    def _checked(endpoint: str, what: str, status: int, answer: JSON) -> JSON:
        """The answer of a successful request, else _EndpointFailed (worth another endpoint) or EtcdError."""
        if status == 200:
            return answer
        # {"error": "...", "code": 14, "message": "..."}; from a stream {"error": {"grpc_code": 14, "message": ...}}
        error = answer.get("error")
        detail: JSON = error if isinstance(error, dict) else answer
        message = detail.get("message") or error or f"HTTP {status}"
        code = detail.get("code", detail.get("grpc_code"))
        if status >= 500 or code in _TRANSIENT_CODES:
            raise _EndpointFailed(f"{message} (HTTP {status})")
        raise EtcdError(f"etcd {what} at {endpoint}: {message}", code if isinstance(code, int) else None)


def _cancel_reason(result: JSON) -> str:
    if compacted := _int(result, "compact_revision"):
        return f"the revision asked for is compacted (oldest available: {compacted})"
    return str(result.get("cancel_reason") or "no reason given")
