"""The model shipped in the package: listed, intact, and recognising a wearer it never saw."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from l2mu.agent.runtime import DEFAULT_MODEL
from l2mu.model.splits import TEST_SUBJECTS
from tests.support.cli import cli_command, demo_lines


def test_models_command_lists_the_default() -> None:
    proc = subprocess.run([*cli_command(), "models"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert f"{DEFAULT_MODEL} (default)" in proc.stdout


def test_default_model_recognises_a_held_out_wearer(wisdm_root: Path) -> None:
    subject = str(TEST_SUBJECTS[0])
    proc = subprocess.run([*cli_command(), "evaluate", "--data", str(wisdm_root), "--subjects", subject, "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["model"] == DEFAULT_MODEL and result["subjects"] == [int(subject)]
    assert result["accuracy"] > 0.5  # chance is 1/7; a sanity floor, the measured figures are in MODEL.md


def test_demo_recording_is_recognised() -> None:
    lines = demo_lines("--speed", "0", count=20)
    assert len(lines) == 20
    # The demo opens with 30 s of typing, which the model knows well (see MODEL.md).
    assert sum("typing" in ln.split("true:")[0] for ln in lines) >= 14
