"""The composition root owns what it starts: a failed start, Ctrl-C or SIGTERM leave no local broker running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from l2mu.agent.compose import build_agent
from l2mu.agent.errors import OutboxError
from l2mu.agent.outbox import Outbox
from l2mu.agent.settings import DEFAULTS
from tests.support.cli import cli_command


def local_brokers() -> set[int]:
    """Pids of the mosquittos LocalBroker starts (their config lives in an l2mu-mosquitto-* folder)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"mosquitto") and b"l2mu-mosquitto-" in b" ".join(cmdline):
            pids.add(int(entry.name))
    return pids


def left_behind(before: set[int], wait_s: float = 5.0) -> set[int]:
    deadline = time.monotonic() + wait_s
    while (extra := local_brokers() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    return extra


def run_demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*cli_command(), "run", "--watch", "demo", "--speed", "0", "--broker", "mosquitto", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_a_queue_dir_that_is_a_file_fails_in_one_line_and_stops_the_local_broker(tmp_path: Path) -> None:
    file = tmp_path / "queue"
    file.write_text("not a directory\n")
    before = local_brokers()
    proc = run_demo("--queue-dir", str(file))
    assert proc.returncode == 2, proc.stderr
    assert "started a local mosquitto broker" in proc.stderr  # the failure came after the broker was up
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --queue-dir {file}: ")
    assert left_behind(before) == set()


def test_a_queue_dir_held_by_another_agent_fails_and_stops_the_local_broker(tmp_path: Path) -> None:
    holder = Outbox(tmp_path)  # another agent owns this queue
    try:
        before = local_brokers()
        proc = run_demo("--queue-dir", str(tmp_path))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
        assert left_behind(before) == set()
    finally:
        holder.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_running_stops_everything_it_started(sig: signal.Signals) -> None:
    before = local_brokers()
    proc = subprocess.Popen([*cli_command(), "run", "--watch", "demo", "--speed", "4", "--broker", "mosquitto"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not proc.stdout.readline().startswith("har/activity/demo"):
            pass
        assert local_brokers() - before, "the agent should have started its own broker"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "demo: " in err and " decisions" in err  # the closing summary: the agent stopped, it was not killed
    assert left_behind(before) == set()


def test_build_agent_stops_what_it_started_when_a_later_part_fails(tmp_path: Path) -> None:
    file = tmp_path / "queue"
    file.write_text("")
    before = local_brokers()
    settings = DEFAULTS.replace(watch=["demo"], queue_dir=file, broker="mosquitto")
    with pytest.raises(OutboxError):
        build_agent(settings, say=lambda _line: None)
    assert left_behind(before) == set()
