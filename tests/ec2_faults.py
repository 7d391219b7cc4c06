"""Faults for boto3's EC2 client, injected below botocore's retry logic (a before-send hook), so that its real
retry and error parsing run."""

from __future__ import annotations

from typing import Any

from botocore.awsrequest import AWSResponse

EC2_ERROR = ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
             "<Message>{message}</Message></Error></Errors><RequestID>req-1</RequestID></Response>")


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body


class Faults:
    """Scripted faults injected below botocore's retry logic (a before-send hook), so its real retry and error
    parsing run. Each entry is an exception to raise, ``(status, code)`` for an EC2 error reply, or a callable run
    first (in botocore's thread: it may block) before the real request goes out."""

    def __init__(self) -> None:
        self.script: dict[str, list[Any]] = {}
        self.sent: list[str] = []

    def __call__(self, request: Any, event_name: str, **_: Any) -> AWSResponse | None:
        action = event_name.rsplit(".", 1)[1]
        self.sent.append(action)
        queue = self.script.get(action)
        if not queue:
            return None
        fault = queue.pop(0)
        if isinstance(fault, Exception):
            raise fault
        if callable(fault):
            fault()
            return None
        status, code = fault
        body = EC2_ERROR.format(code=code, message=f"injected {code}").encode()
        return AWSResponse(request.url, status, {"Content-Type": "text/xml"}, _Raw(body))
