"""Start a throw-away local MQTT broker: mosquitto when installed, else the embedded amqtt.

Used by `run` when no --mqtt URL is given, and by the tests (which always want mosquitto).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from l2mu.agent.errors import BrokerError
from l2mu.agent.settings import BROKER_KINDS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"broker did not start listening on 127.0.0.1:{port} within {timeout:.0f} s")


class LocalBroker:
    """A broker on 127.0.0.1:<free port>; `url` says where. Use as a context manager.

    mosquitto only: `extra_config` is appended to the generated config (a later line overrides an
    earlier one, e.g. `allow_anonymous false`); `files` (name → text or bytes) are written beside
    it before it starts — password and ACL files, certificates — and `{dir}` in `extra_config`
    stands for that folder. `stop()` then `start()` restarts it on the same port.
    """

    def __init__(self, prefer: str = "auto", port: int | None = None, extra_config: str = "",
                 files: Mapping[str, str | bytes] | None = None) -> None:
        if prefer not in BROKER_KINDS:
            raise BrokerError(f"--broker {prefer!r}: expected one of {', '.join(BROKER_KINDS)}")
        self.port = port or free_port()
        self.kind = "mosquitto" if prefer == "mosquitto" or (prefer == "auto" and mosquitto_binary()) else "amqtt"
        self.extra_config = extra_config
        self.files = dict(files or {})
        self._proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._amqtt = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> LocalBroker:
        if self.kind == "mosquitto":
            self._start_mosquitto()
        else:
            self._start_amqtt()
        wait_for_port(self.port)
        return self

    def _start_mosquitto(self) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")
        self._dir = tempfile.TemporaryDirectory(prefix="l2mu-mosquitto-")
        folder = Path(self._dir.name)
        for name, content in self.files.items():
            path = folder / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        # Started by root, mosquitto would switch to its own user, who cannot read this private folder.
        user = "user root\n" if os.geteuid() == 0 else ""
        conf = folder / "mosquitto.conf"
        conf.write_text(
            f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"log_dest stderr\nlog_type error\nlog_type warning\n{self.extra_config.replace('{dir}', str(folder))}"
        )
        # Own session: Ctrl-C in the terminal reaches the agent only, which still needs the broker
        # to publish `offline` and drain its queue before it stops the broker itself.
        self._proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True)

    def _start_amqtt(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)  # amqtt looks the loop up itself
            try:
                self._amqtt = Broker(config, loop=self._loop)
                self._loop.run_until_complete(self._amqtt.start())
            except Exception as exc:  # reported to the starting thread below
                failure.append(exc)
                return
            finally:
                started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="amqtt-broker", daemon=True)
        self._thread.start()
        if not started.wait(10) or failure:
            reason = f": {failure[0]}" if failure else ""
            raise BrokerError(f"embedded amqtt broker did not start{reason}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        if self._loop is not None and self._amqtt is not None:
            asyncio.run_coroutine_threadsafe(self._amqtt.shutdown(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def kill(self) -> None:
        """mosquitto only: SIGKILL, as a crash or the OOM killer would, without its clean shutdown."""
        if self._proc is None:
            raise BrokerError("kill() is for a running mosquitto")
        self._proc.kill()
        self._proc.wait(5)
        self._proc = None
        self.stop()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None
    )
