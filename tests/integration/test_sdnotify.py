"""`run` under systemd: READY, STATUS, WATCHDOG and STOPPING over a real notify socket."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

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


def test_ready_and_watchdog_while_the_broker_is_unreachable(notify_socket: tuple[socket.socket, str],
                                                            tiny_program: Path, wisdm_root: Path,
                                                            tmp_path: Path) -> None:
    """A broker that is down is no failed start: READY=1 comes anyway (STATUS= says so), the watchdog is pinged
    while it stays down, STATUS= follows it when it appears, and SIGTERM is a clean stop. Otherwise systemd would
    restart the agent into the same wait every TimeoutStartSec, dropping what it had queued each time."""
    from l2mu.agent.broker import LocalBroker
    from l2mu.agent.runtime import MODEL_ID_CHARS
    from l2mu.model.metadata import read_metadata, sha256_file

    sock, path = notify_socket
    sha = read_metadata(tiny_program).program_sha256 or sha256_file(tiny_program)
    model = f"model tiny-test {sha[:MODEL_ID_CHARS]}"  # name and id: the READY line tells programs apart
    recording = make_recording(wisdm_root, tmp_path / "svc.csv.gz", seconds=12)
    broker = LocalBroker(prefer="mosquitto")  # its port is free: nothing listens there until start()
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "PYTHONUNBUFFERED": "1"}
    proc = run_agent("--watch", f"replay:{recording}", "--mqtt", broker.url, "--model", str(tiny_program),
                     "--agent-id", "svc-late", "--queue-dir", str(tmp_path / "queue"), env=env)
    status = None
    try:
        ready = wait_for(sock, "READY=1", timeout=120)[-1][1]
        where = f"broker 127.0.0.1:{broker.port}"
        assert f"STATUS=running: 1 watch(es), {model}; " + where + " not reached, decisions are queued" \
            in ready, ready
        got = receive(sock, 2.2)
        pings = [t for t, lines in got if lines == ["WATCHDOG=1"]]
        assert len(pings) >= 3, got  # every 0.5 s for a 1 s watchdog, broker or not
        assert max(b - a for a, b in zip(pings, pings[1:], strict=False)) < 1.0
        assert proc.poll() is None
        broker.start()
        status = Subscriber(broker.port, "har/status/svc-late")
        seen = wait_for(sock, f"STATUS=running: 1 watch(es), {model}, {where}", timeout=40)
        assert any(lines == ["WATCHDOG=1"] for _, lines in seen)
        status.take(timeout=5, topic="har/status/svc-late", payload=b"online")
        proc.send_signal(signal.SIGTERM)
        wait_for(sock, "STOPPING=1", timeout=10)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if status is not None:
            status.close()
        broker.stop()
    assert "Traceback" not in proc.stderr.read()
