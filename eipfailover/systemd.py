"""systemd integration in a few lines of our own: ``sd_notify`` over ``$NOTIFY_SOCKET`` and the watchdog.

Messages: ``READY=1`` once every group has completed a check round and a cloud read (successful or not: a restart
loop helps nobody; ``STATUS=`` then says the cloud is unreadable); ``STATUS=`` a one-line summary whenever it changes;
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

from eipfailover.engine import Engine
from eipfailover.errors import ProviderError
from eipfailover.events import FailoverRecord, NullObserver
from eipfailover.model import CheckResult, EipState, Health, Location, Placement
from eipfailover.status import GroupStatus

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


def summary(engine: Engine, now: float) -> str:
    """``web: web-a active, 2/2 healthy; db: cloud unreadable (EIPs last seen on db-a), 0/2 healthy``."""
    return "; ".join(_line(runner.status(now)) for runner in engine.runners.values())


def _line(group: GroupStatus) -> str:
    if not group.started:
        where = "starting"
    elif group.cloud_problem is not None:
        seen = f" (EIPs last seen on {group.location.active})" if group.location.active else ""
        where = f"cloud unreadable{seen}"
    elif group.active:
        where = f"{group.active} active"
    elif group.placement is not Placement.UNKNOWN:
        where = f"EIPs {group.placement.value}"
    else:
        where = "starting"
    extra = ", maintenance" if group.maintenance else ""
    extra += ", failing over" if group.current is not None else ""
    return f"{group.name}: {where}, {group.healthy}/{len(group.targets)} healthy{extra}"


class SystemdObserver(NullObserver):
    """Sends ``STATUS=`` whenever the summary changes: on the engine events that can change it, and every second
    (a cloud read that hangs changes it without any event)."""

    def __init__(self, notifier: Notifier, engine: Engine) -> None:
        self.notifier = notifier
        self.engine = engine
        self.last = ""

    def update(self) -> None:
        text = summary(self.engine, time.monotonic())
        if text != self.last:
            self.last = text
            self.notifier.status(text)

    async def refresh(self, period: float = 1.0) -> None:
        while not self.engine.stop.is_set():
            self.update()
            await asyncio.sleep(period)

    def on_health(self, group: str, target: str, before: Health, after: Health, cause: CheckResult) -> None:
        self.update()

    def on_placement(self, group: str, location: Location, eips: Mapping[str, EipState]) -> None:
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
