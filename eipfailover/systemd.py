"""systemd integration in a few lines of our own: ``sd_notify`` over ``$NOTIFY_SOCKET`` and the watchdog.

Messages: ``READY=1`` after the first reconcile of every group; ``STATUS=`` a one-line summary whenever it changes;
``WATCHDOG=1`` every half ``WATCHDOG_USEC``, only while every group completes check rounds (a wedged loop gets the
daemon restarted); ``RELOADING=1`` + ``MONOTONIC_USEC=`` then ``READY=1`` around a reload; ``STOPPING=1``. Without
``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

import structlog

from eipfailover.engine import Engine, FailoverRecord, NullObserver
from eipfailover.errors import ProviderError
from eipfailover.model import CheckResult, EipState, Health, Placement, TargetState

log = structlog.get_logger("eipfailover.systemd")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.sock: socket.socket | None = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        for_us = not pid or (pid.isdigit() and int(pid) == os.getpid())
        self.watchdog_period = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and for_us else None
        self._failed = False

    def send(self, *fields: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._failed:  # say it once, not on every message
                log.warning("sd_notify_failed", socket=self.address.replace("\0", "@"), error=str(exc))
            self._failed = True

    def ready(self) -> None:
        self.send("READY=1")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def summary(engine: Engine) -> str:
    """``web: web-a active, 2/2 healthy; db: no target holds the EIPs (detached), 0/2 healthy``."""
    parts = []
    for runner in engine.runners.values():
        up = sum(1 for t in runner.targets.values() if t.health.state is TargetState.UP)
        where = (f"{runner.active} active" if runner.active
                 else f"EIPs {runner.placement.value}" if runner.placement is not Placement.UNKNOWN
                 else "cloud unreadable" if runner.cloud_error else "starting")
        extra = ", maintenance" if runner.maintenance else ""
        extra += ", failing over" if runner.current is not None else ""
        parts.append(f"{runner.name}: {where}, {up}/{len(runner.targets)} healthy{extra}")
    return "; ".join(parts)


class SystemdObserver(NullObserver):
    """Sends ``STATUS=`` whenever the summary changes, on the engine events that can change it."""

    def __init__(self, notifier: Notifier, engine: Engine) -> None:
        self.notifier = notifier
        self.engine = engine
        self.last = ""

    def update(self) -> None:
        text = summary(self.engine)
        if text != self.last:
            self.last = text
            self.notifier.status(text)

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None:
        self.update()

    def on_placement(self, group: str, placement: Placement, active: str | None,
                     eips: Mapping[str, EipState]) -> None:
        self.update()

    def on_cloud_error(self, group: str, error: ProviderError | None) -> None:
        self.update()

    def on_failover_started(self, record: FailoverRecord) -> None:
        self.update()

    def on_failover_finished(self, record: FailoverRecord) -> None:
        self.update()

    def on_maintenance(self, group: str, enabled: bool) -> None:
        self.update()


async def watchdog(notifier: Notifier, engine: Engine) -> None:
    """Ping every half ``WATCHDOG_USEC`` while every group has completed a check round within 3 intervals (the
    rule of ``/healthz``, except that a group that has not finished its first round does not count as alive)."""
    if notifier.watchdog_period is None:
        return
    while not engine.stop.is_set():
        if not engine.stalled(time.monotonic(), strict=True):
            notifier.send("WATCHDOG=1")
        await asyncio.sleep(notifier.watchdog_period)
