"""A small synchronous client of the daemon's HTTP API, for the CLI's ``status``, ``failover`` and
``maintenance`` commands.

It never goes through ``http_proxy``/``https_proxy`` unless told to (``proxy``): the daemon is normally on this
host, and a proxy would see the bearer token."""

from __future__ import annotations

import getpass
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eipfailover.errors import EipFailoverError


class ApiCallError(EipFailoverError):
    """The API answered with an error, or could not be reached (``status`` 0)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})" if status else message)
        self.status, self.code = status, code


class ApiClient:
    def __init__(self, base_url: str, token_file: Path | None = None, timeout: float = 10.0, *,
                 ca_file: Path | None = None, proxy: str | None = None) -> None:
        """``ca_file``: the CA to verify an HTTPS API with (default: the system's); ``proxy``: an HTTP proxy URL
        to go through (default: none, whatever the environment says)."""
        self.base_url = base_url.rstrip("/")
        self.token_file = token_file
        self.timeout = timeout
        self.ca_file, self.proxy = ca_file, proxy
        self.followed: str | None = None
        """The leader's API URL, once a follower sent this client there (``not_leader``)."""
        self.opener = self._opener(self.base_url)

    def _opener(self, base_url: str) -> urllib.request.OpenerDirector:
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.ProxyHandler({"http": self.proxy, "https": self.proxy} if self.proxy else {})]
        if base_url.lower().startswith("https:"):
            try:
                context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file is not None else None)
            except (OSError, ssl.SSLError) as exc:
                raise ApiCallError(0, "ca_file", f"cannot use the CA file {self.ca_file}: "
                                                 f"{getattr(exc, 'strerror', None) or exc}") from None
            handlers.append(urllib.request.HTTPSHandler(context=context))
        return urllib.request.build_opener(*handlers)

    def _token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            return self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ApiCallError(0, "token_file", f"cannot read the token file {self.token_file}: "
                                                f"{exc.strerror or exc}") from None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
             follow: bool = True) -> dict[str, Any]:
        """One API call. A cluster's follower answers a change with 409 ``not_leader`` and the leader's API URL:
        the call is sent there once (and so are the next ones: :attr:`followed`)."""
        headers = {"Accept": "application/json",
                   "X-Requested-By": f"{getpass.getuser()}@{socket.gethostname()} (cli)"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
            token = self._token()
            if token:
                headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                result = json.loads(response.read())
            if not isinstance(result, dict):
                raise ValueError("not a JSON object")
            return result
        except ValueError as exc:  # not JSON: not the daemon's API
            raise ApiCallError(0, "bad_answer", f"{self.base_url} answered something that is not the daemon's "
                                                f"JSON ({exc})") from None
        except urllib.error.HTTPError as exc:
            leader = None
            try:
                error = json.loads(exc.read())
                code, message = str(error["error"]), str(error["message"])
                leader = error.get("leader_api") if code == "not_leader" else None
            except (ValueError, KeyError, TypeError, AttributeError):
                code, message = "http_error", exc.reason
            downgrade = (self.base_url.lower().startswith("https:") and isinstance(leader, str)
                         and leader.lower().startswith("http:"))
            if downgrade:  # the token would go out in clear text
                message += " (not followed: the leader's API is plain HTTP, and this call was made over HTTPS)"
            elif follow and isinstance(leader, str) and leader.lower().startswith(("http://", "https://")):
                self.base_url, self.followed = leader.rstrip("/"), leader.rstrip("/")
                self.opener = self._opener(self.base_url)
                return self.call(method, path, body, follow=False)
            raise ApiCallError(exc.code, code, message) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiCallError(0, "unreachable", f"cannot reach the daemon at {self.base_url}: {reason}") from None

    def wait_for_failover(self, group: str, failover_id: str, timeout: float) -> dict[str, Any]:
        """Poll the history until the failover has a result; raise ``ApiCallError`` on timeout."""
        end = time.monotonic() + timeout
        while True:
            for record in self.call("GET", f"/v1/history?group={group}&limit=50")["failovers"]:
                if record["id"] == failover_id and record["result"] != "running":
                    return dict(record)
            if time.monotonic() > end:
                raise ApiCallError(0, "timeout", f"failover {failover_id} has no result after {timeout:g}s; "
                                                 f"see `eipfailover status`")
            time.sleep(0.25)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_failover(record: dict[str, Any]) -> str:
    duration = record.get("duration_seconds")
    text = (f"{record['id']} {record['trigger']} {record['from'] or '-'} -> {record['to']}: {record['result']}"
            + (f" in {duration:.2f}s" if duration is not None and record["result"] != "skipped" else ""))
    return text + (f" ({record['error']})" if record.get("error") else "")


def format_status(groups: list[dict[str, Any]]) -> str:
    """A readable table of every group and its targets."""
    lines = []
    for g in groups:
        decision = g["decision"] or {"action": "-", "reason": "starting"}
        last = g["last_failover"]
        lines.append(
            f"{g['name']}: active {g['active_target'] or '-'} ({g['placement']})"
            f"{', MAINTENANCE' if g['maintenance'] else ''}; decision {decision['action']} ({decision['reason']})"
        )
        for eip in g["eips"]:
            lines.append(f"  eip {eip['allocation_id']} {eip['public_ip']} on {eip['bound_to'] or 'nothing'}")
        if g["cloud_error"]:
            lines.append(f"  cloud error: {g['cloud_error']}")
        if g["failover_in_progress"]:
            lines.append(f"  failover in progress: {describe_failover(g['failover_in_progress'])}")
        if last:
            lines.append(f"  last failover at {_when(last['finished_at'])}: {describe_failover(last)}")
        width = max(len(t["name"]) for t in g["targets"])
        for t in g["targets"]:
            checks = ", ".join(
                f"{c['name']} {c['result']}"
                + (f" {1000 * c['latency_seconds']:.1f}ms" if c["result"] == "ok" else f" ({c['detail']})")
                for c in t["checks"]
            )
            marker = "*" if t["name"] == g["active_target"] else " "
            lines.append(f" {marker}{t['name']:<{width}}  {t['state']:<7}  ok {t['consecutive_successes']:>4} "
                         f"fail {t['consecutive_failures']:>4}  {checks}")
    return "\n".join(lines)
