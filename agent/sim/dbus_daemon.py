"""A private dbus-daemon on a unix socket in a temporary folder, for the virtual watch and its tests.

The virtual BlueZ service must own `org.bluez`, which the machine's real system bus reserves for
bluetoothd. A private bus with a permissive, session-like policy lets it do so without touching the
system; a client reaches it through `DBUS_SYSTEM_BUS_ADDRESS`, which is where bleak (through
dbus-fast) looks for the system bus.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from l2mu.agent.errors import UserError

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class DBusDaemonError(UserError):
    """dbus-daemon is missing or would not start."""


def dbus_daemon_binary() -> str | None:
    return shutil.which("dbus-daemon") or next(
        (p for p in ("/usr/bin/dbus-daemon", "/bin/dbus-daemon") if os.access(p, os.X_OK)), None
    )


class PrivateBus:
    """`with PrivateBus() as bus:` runs dbus-daemon until the block ends; `bus.address` is its address."""

    def __init__(self) -> None:
        self.address = ""
        self._dir: Path | None = None
        self._proc: subprocess.Popen[str] | None = None

    def start(self) -> PrivateBus:
        binary = dbus_daemon_binary()
        if binary is None:
            raise DBusDaemonError("dbus-daemon is not installed (apt-get install dbus)")
        # A short folder name: unix socket paths are limited to 107 bytes.
        self._dir = Path(tempfile.mkdtemp(prefix="l2mu-bus-"))
        config = self._dir / "bus.conf"
        config.write_text(CONFIG.format(socket=self._dir / "bus"), encoding="utf-8")
        self._proc = subprocess.Popen([binary, f"--config-file={config}", "--nofork", "--nopidfile",
                                       "--print-address=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line:
            err = self._proc.stderr.read() if self._proc.stderr else ""
            self.stop()
            raise DBusDaemonError(f"dbus-daemon did not start: {err.strip() or 'no address printed'}")
        self.address = line
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            for stream in (self._proc.stdout, self._proc.stderr):
                if stream:
                    stream.close()
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PrivateBus:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
