"""Running under systemd: the notify protocol (READY, STATUS, WATCHDOG, STOPPING) over a real datagram socket."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from l2mu.agent.daemon import Agent
from l2mu.agent.events import Sample
from l2mu.agent.sdnotify import Notifier, socket_address, watchdog_interval

from .conftest import cli_command
from .test_mqtt_support import Subscriber, make_recording, run_agent


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket like systemd's, in a short directory (AF_UNIX paths are limited to 108 bytes)."""
    folder = tempfile.mkdtemp(prefix="l2mu-notify-")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def receive(sock: socket.socket, timeout: float) -> list[tuple[float, list[str]]]:
    """Every datagram arriving within `timeout` seconds, with its arrival time."""
    out = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        out.append((time.monotonic(), data.decode().split("\n")))
    return out


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


# --- the protocol itself -----------------------------------------------------------------------------


def test_socket_addresses() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@/org/freedesktop/systemd1/notify/42") == b"\0/org/freedesktop/systemd1/notify/42"
    assert socket_address("") is None
    assert socket_address("vsock:2:1234") is None


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled and notifier.watchdog_s is None
    assert notifier.ready("x") is False and notifier.notify("WATCHDOG=1") is False


def test_watchdog_interval_is_for_this_process_only() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({}) is None


def test_path_socket_gets_one_datagram_per_call(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready("running")
    assert notifier.stopping()
    notifier.close()
    got = [lines for _, lines in receive(sock, 0.5)]
    assert got == [["READY=1", "STATUS=running"], ["STOPPING=1", "STATUS=stopping"]]


def test_abstract_socket() -> None:
    name = f"l2mu-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        notifier = Notifier({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.notify("WATCHDOG=1")
        notifier.close()
        assert [lines for _, lines in receive(sock, 0.5)] == [["WATCHDOG=1"]]


def test_missing_socket_is_not_fatal(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.notify("READY=1") is False


# --- the watchdog follows the pipeline ---------------------------------------------------------------


class StallingSource:
    """Delivers samples for `live_s` seconds, then hangs forever like a wedged watch connection."""

    watch_id = "stall"
    sensors = {"acc", "gyro"}
    speed = 1.0

    def __init__(self, live_s: float) -> None:
        self.live_s = live_s

    async def stream(self) -> AsyncIterator[Sample]:
        end = time.monotonic() + self.live_s
        t = 0.0
        while time.monotonic() < end:
            yield Sample(t, "acc", (0.0, 0.0, 9.8), "")
            t += 0.05
            await asyncio.sleep(0.02)
        await asyncio.Event().wait()
        yield Sample(t, "acc", (0.0, 0.0, 9.8), "")  # pragma: no cover - never reached


class PipelineFreeAgent(Agent):
    """The real main loop and watchdog, without a model: samples only count as progress."""

    def handle_sample(self, session, sample) -> list[dict]:  # noqa: ANN001
        return []


def test_stalled_pipeline_stops_pinging(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    meta = SimpleNamespace(sensors=["acc", "gyro"], sample_rate_hz=20.0, window_samples=10, classes=list("FGOPQRS"),
                           norm_mean=[0.0] * 6, norm_std=[1.0] * 6)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "300000"})  # 0.3 s: pings every 0.15 s
    agent = PipelineFreeAgent([StallingSource(live_s=1.0)], SimpleNamespace(meta=meta), None, notifier=notifier)

    async def main() -> None:
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(2.5)
        assert not task.done()  # a stalled watch is not an ended one: the agent keeps running, unpinged
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # Collect on a thread, so each datagram's arrival time is when the agent sent it.
    got: list[tuple[float, list[str]]] = []
    collector = threading.Thread(target=lambda: got.extend(receive(sock, 3.0)))
    collector.start()
    start = time.monotonic()
    asyncio.run(main())
    notifier.close()
    collector.join()
    pings = [t - start for t, lines in got if lines == ["WATCHDOG=1"]]
    assert len(pings) >= 4 and pings[0] < 0.5  # pinging while samples flow
    # The last sample comes at 1.0 s; the stall limit is the 0.3 s interval, checked every 0.15 s.
    assert max(pings) < 1.0 + 0.3 + 0.15 + 0.2, pings
    assert any(lines[0].startswith("STATUS=stalled") for _, lines in got)


def test_ended_source_is_not_a_stall() -> None:
    meta = SimpleNamespace(sensors=["acc", "gyro"], sample_rate_hz=20.0, window_samples=10, classes=list("FGOPQRS"),
                           norm_mean=[0.0] * 6, norm_std=[1.0] * 6)
    agent = PipelineFreeAgent([StallingSource(0)], SimpleNamespace(meta=meta), None, stall_after_s=1.0)
    session = agent.sessions[0]
    assert agent.healthy(now=session.last_progress + 0.5)
    assert not agent.healthy(now=session.last_progress + 1.5)
    session.last_progress = None
    assert agent.healthy(now=time.monotonic() + 100)


# --- the real command under a fake systemd -----------------------------------------------------------


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
