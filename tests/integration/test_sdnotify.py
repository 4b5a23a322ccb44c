"""`run` under systemd: READY, STATUS, WATCHDOG and STOPPING over a real notify socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.cli import cli_command
from tests.support.mqtt import Subscriber, make_recording, run_agent
from tests.support.sdnotify import receive


def wait_for(sock: socket.socket, line: str, timeout: float) -> list[tuple[float, list[str]]]:
    """Datagrams up to and including the first that holds `line`."""
    seen = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        got = receive_one(sock, left)
        if got is None:
            break
        seen.append(got)
        if line in got[1]:
            return seen
    raise AssertionError(f"no {line} within {timeout} s; got {seen}")


def receive_one(sock: socket.socket, timeout: float) -> tuple[float, list[str]] | None:
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except TimeoutError:
        return None
    return time.monotonic(), data.decode().split("\n")


def test_run_speaks_notify_protocol(notify_socket: tuple[socket.socket, str], mosquitto, wisdm_root: Path,
                                    tiny_program: Path, tmp_path: Path) -> None:
    sock, path = notify_socket
    recording = make_recording(wisdm_root, tmp_path / "svc.csv.gz", seconds=12)
    status = Subscriber(mosquitto.port, "har/status/svc-agent")
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "PYTHONUNBUFFERED": "1"}
    proc = run_agent("--watch", f"replay:{recording}", "--mqtt", mosquitto.url, "--model", str(tiny_program),
                     "--agent-id", "svc-agent", env=env)
    try:
        before_ready = wait_for(sock, "READY=1", timeout=120)
        assert any(line.startswith("STATUS=") for _, lines in before_ready for line in lines)
        ready_lines = before_ready[-1][1]
        assert any(line.startswith("STATUS=running") for line in ready_lines), ready_lines
        # READY=1 follows the broker's CONNACK, which makes the agent announce itself as online.
        status.take(timeout=5, topic="har/status/svc-agent", payload=b"online", live=True)
        got = receive(sock, 3.2)
        pings = [t for t, lines in got if lines == ["WATCHDOG=1"]]
        assert len(pings) >= 4, got  # every 0.5 s for a 1 s watchdog
        assert max(b - a for a, b in zip(pings, pings[1:], strict=False)) < 1.0
        proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        stopping = wait_for(sock, "STOPPING=1", timeout=5)
        assert stopping[-1][0] - t_term < 5
        assert proc.wait(10) == 0
        assert time.monotonic() - t_term < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        status.close()
    assert "Traceback" not in proc.stderr.read()


def test_no_ready_when_broker_unreachable(notify_socket: tuple[socket.socket, str], tiny_program: Path,
                                          wisdm_root: Path, tmp_path: Path) -> None:
    sock, path = notify_socket
    recording = make_recording(wisdm_root, tmp_path / "svc.csv.gz", activities="F", seconds=5)
    proc = subprocess.run(
        [*cli_command(), "run", "--watch", f"replay:{recording}", "--mqtt",
         "mqtt://127.0.0.1:1", "--model", str(tiny_program)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "NOTIFY_SOCKET": path},
    )
    assert proc.returncode == 2 and "cannot reach MQTT broker" in proc.stderr
    lines = [line for _, ls in receive(sock, 0.3) for line in ls]
    assert "READY=1" not in lines and "STOPPING=1" in lines
