"""Helpers shared by the MQTT tests (no tests here): subscribers, recordings, certificates."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from l2mu.agent.recording import recording_from_wisdm, write_recording
from tests.support.cli import REPO, cli_command

SCHEMA = json.loads((REPO / "docs" / "decision.schema.json").read_text())


class Subscriber:
    """A paho subscriber that reconnects and resubscribes by itself, like a real consumer."""

    def __init__(self, port: int, topic: str = "har/#", *, v5: bool = False, client_id: str = "",
                 clean: bool = True, username: str | None = None, password: str | None = None,
                 ca_file: Path | None = None) -> None:
        self.topic = topic
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.subscribed: queue.Queue[bool] = queue.Queue()
        if v5:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        if username:
            self.client.username_pw_set(username, password)
        if ca_file:
            self.client.tls_set(ca_certs=str(ca_file))
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.put(True)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, m.retain))
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=1)
        connect_kw = {"clean_start": clean} if v5 else {}
        self.client.connect("127.0.0.1", port, keepalive=10, **connect_kw)
        self.client.loop_start()
        self.subscribed.get(timeout=10)

    def take(self, timeout: float = 30.0, topic: str | None = None, live: bool = False,
             payload: bytes | None = None) -> tuple[str, bytes, bool]:
        """The first message matching; live=True skips retained ones left by earlier tests."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if (topic is None or item[0] == topic) and (payload is None or item[1] == payload) \
                    and not (live and item[2]):
                return item
        raise AssertionError(f"no message on {topic} with {payload!r} within {timeout} s")

    def drain(self, quiet: float = 0.5) -> list[tuple[str, bytes, bool]]:
        """Everything received until nothing arrived for `quiet` seconds."""
        out = []
        while True:
            try:
                out.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def decisions(msgs: list[tuple[str, bytes, bool]], topic: str) -> list[dict]:
    return [json.loads(p) for t, p, _ in msgs if t == topic]


def make_recording(root: Path, out: Path, activities: str = "FGR", seconds: float = 12) -> Path:
    write_recording(out, recording_from_wisdm(root, 1601, activities, seconds=seconds))
    return out


def run_agent(*args: str, env: dict | None = None) -> subprocess.Popen:
    import os

    return subprocess.Popen([*cli_command(), "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


class StderrLines:
    """A running agent's stderr, read on a thread, so that a test can wait for a line while the agent runs."""

    def __init__(self, proc: subprocess.Popen) -> None:
        import threading

        self._proc = proc
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._done = False
        assert proc.stderr is not None
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:  # noqa: ANN001
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _next(self, timeout: float) -> str | None:
        item = self._queue.get(timeout=timeout)
        if item is None:
            self._done = True
        else:
            self.seen.append(item)
        return item

    def wait_for(self, text: str, timeout: float) -> str:
        """The first line (from now on) that contains `text`."""
        deadline = time.monotonic() + timeout
        while not self._done and (left := deadline - time.monotonic()) > 0:
            try:
                line = self._next(left)
            except queue.Empty:
                break
            if line is not None and text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {timeout} s; stderr so far:\n" + "\n".join(self.seen))

    def all(self, timeout: float = 10.0) -> list[str]:
        """Every line, once the process has closed its stderr."""
        deadline = time.monotonic() + timeout
        while not self._done and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(queue.Empty):
                self._next(left)
        return self.seen


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=l2mu test CA")
    ssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return {name: folder / f"{name}" for name in ("ca.crt", "server.crt", "server.key")}
