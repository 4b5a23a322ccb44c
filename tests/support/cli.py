"""Helpers for every test module (no tests here): the CLI as a subprocess, the repository, the tiny model's window."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cli_command() -> list[str]:
    """The installed console script, run with this interpreter's environment."""
    return [sys.executable, "-m", "l2mu.agent"]


TINY_WINDOW = 10  # a short window keeps export (which unrolls every time step) quick in tests


def demo_lines(*run_args: str, count: int, timeout: float = 120) -> list[str]:
    """Start `run --watch demo …`, collect the first `count` echoed har/activity/demo lines, stop it with Ctrl-C."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen([*cli_command(), "run", "--watch", "demo", *run_args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(lines) < count:
            line = proc.stdout.readline()
            if line.startswith("har/activity/demo"):
                lines.append(line)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    return lines
