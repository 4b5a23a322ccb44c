"""systemd's notify protocol (READY=1, RELOADING=1, STATUS=, WATCHDOG=1, STOPPING=1) without libsystemd.

The protocol is one datagram of newline-separated KEY=VALUE lines to the AF_UNIX socket named in
$NOTIFY_SOCKET; speaking it directly keeps a C library (and its Python binding) off the Pi.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as a socket address: a path, or '@name' for a Linux abstract socket."""
    if value.startswith("@"):
        # An abstract name has no terminating NUL and may itself hold NULs, so it is passed as bytes.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # systemd also allows vsock:… addresses, which a Pi service never gets


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds within which systemd expects WATCHDOG=1, or None when no watchdog applies to this process."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    # WATCHDOG_PID names the process the watchdog is meant for; a child that inherited the variables is not it.
    wd_pid = env.get("WATCHDOG_PID", "")
    if wd_pid and (not wd_pid.isdigit() or int(wd_pid) != (os.getpid() if pid is None else pid)):
        return None
    return int(usec) / 1_000_000


class Notifier:
    """Sends state lines to systemd; every method is a no-op when not started by systemd with Type=notify.

    Thread-safe: the MQTT client's thread reports the broker's state in STATUS= while the event loop pings."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = watchdog_interval(env) if self.address is not None else None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send the lines as one datagram; False if not under systemd or the socket refused it."""
        if self.address is None:
            return False
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            # A lost notification must not take the agent down; systemd's timeouts report it instead.
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def reloading(self, status: str) -> bool:
        """A reload (SIGHUP) begins; `ready()` ends it. MONOTONIC_USEC lets systemd match the two to its reload
        job (sd_notify(3): "typically used in combination with RELOADING=1")."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                           f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


async def watchdog_pings(notifier: Notifier, healthy: Callable[[], bool], interval_s: float | None = None) -> None:
    """Send WATCHDOG=1 every half watchdog interval, but only while `healthy()` says the pipeline moves.

    Running on the agent's event loop is itself a check: a loop blocked by a hung call sends nothing.
    A pipeline that stalls stops the pings, so systemd kills and restarts the service."""
    interval_s = notifier.watchdog_s if interval_s is None else interval_s
    if interval_s is None or not notifier.enabled:
        return
    period = interval_s / 2  # systemd's advice: ping at half the interval so one late wake-up is harmless
    stalled = False
    while True:
        if healthy():
            if stalled:
                log.warning("pipeline moves again; watchdog pings resume")
                stalled = False
            notifier.notify("WATCHDOG=1")
        elif not stalled:
            log.error("pipeline stalled; watchdog pings stop so systemd restarts the agent")
            notifier.status("stalled: a watch made no progress")
            stalled = True
        await asyncio.sleep(period)
