"""The composition root owns what it starts: a failed start, Ctrl-C or SIGTERM leave no local broker running."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from l2mu.agent.compose import build_agent
from l2mu.agent.errors import OutboxError
from l2mu.agent.outbox import Outbox
from l2mu.agent.settings import DEFAULTS
from tests.support.cli import cli_command

BROKER_LINE = re.compile(r"started a local mosquitto broker at mqtt://127\.0\.0\.1:(\d+)")


def broker_port(text: str) -> int:
    """The port of the local broker the agent said it started."""
    m = BROKER_LINE.search(text)
    assert m, f"the agent should have started its own broker; it said:\n{text[-2000:]}"
    return int(m.group(1))


def still_listening(port: int, wait_s: float = 5.0) -> bool:
    """Whether something still accepts connections on 127.0.0.1:port after up to `wait_s` (a broker left behind)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except OSError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.1)


def children(pid: int) -> set[int]:
    """Pids whose parent is `pid` (from /proc)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                out.add(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = next(ln for ln in (Path("/proc") / str(pid) / "status").read_text().splitlines()
                     if ln.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "Z" not in state.split()[1]  # a zombie has stopped; only its parent has not reaped it yet


def run_demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*cli_command(), "run", "--watch", "demo", "--speed", "0", "--broker", "mosquitto", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_a_queue_dir_that_is_a_file_fails_in_one_line_and_stops_the_local_broker(tmp_path: Path) -> None:
    file = tmp_path / "queue"
    file.write_text("not a directory\n")
    proc = run_demo("--queue-dir", str(file))
    assert proc.returncode == 2, proc.stderr
    port = broker_port(proc.stderr)  # the failure came after the broker was up
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --queue-dir {file}: ")
    assert not still_listening(port)


def test_a_queue_dir_held_by_another_agent_fails_and_stops_the_local_broker(tmp_path: Path) -> None:
    holder = Outbox(tmp_path)  # another agent owns this queue
    try:
        proc = run_demo("--queue-dir", str(tmp_path))
        assert proc.returncode == 2, proc.stderr
        port = broker_port(proc.stderr)
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
        assert not still_listening(port)
    finally:
        holder.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_running_stops_everything_it_started(sig: signal.Signals) -> None:
    proc = subprocess.Popen([*cli_command(), "run", "--watch", "demo", "--speed", "4", "--broker", "mosquitto"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not proc.stdout.readline().startswith("har/activity/demo"):
            pass
        started = children(proc.pid)  # the local mosquitto (and nothing else the agent forks)
        assert started, "the agent should have started its own broker"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "demo: " in err and " decisions" in err  # the closing summary: the agent stopped, it was not killed
    assert not still_listening(broker_port(err))
    assert not any(alive(pid) for pid in started)


def test_build_agent_stops_what_it_started_when_a_later_part_fails(tmp_path: Path) -> None:
    file = tmp_path / "queue"
    file.write_text("")
    said: list[str] = []
    settings = DEFAULTS.replace(watch=["demo"], queue_dir=file, broker="mosquitto")
    with pytest.raises(OutboxError):
        build_agent(settings, say=said.append)
    assert not still_listening(broker_port("\n".join(said)))
