"""Helpers for the settings tests (no tests here): write a config file, run the CLI with an environment."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.cli import cli_command


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([*cli_command(), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
