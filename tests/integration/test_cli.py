"""The command-line contract: help everywhere, JSON from evaluate, one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import cli_command

COMMANDS = ["train", "evaluate", "personalise", "export", "run", "models", "wisdm-recording", "stream-accuracy",
            "doctor", "compress", "bench"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*cli_command(), *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    proc = cli(command, "--help")
    assert proc.returncode == 0 and "Usage" in proc.stdout


def test_console_script_is_installed() -> None:
    import shutil

    assert shutil.which("l2mu-agent") or Path(cli_command()[0]).with_name("l2mu-agent").exists()


@pytest.mark.parametrize("watch,message", [
    ("AA:BB:CC:DD:EE", "expected a Bluetooth address like AA:BB:CC:DD:EE:FF"),
    ("replay:/nonexistent/session.csv", "recording not found"),
])
def test_bad_watch_is_one_line_error(watch: str, message: str) -> None:
    proc = cli("run", "--watch", watch, "--mqtt", "mqtt://127.0.0.1:1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert message in proc.stderr


def test_missing_dataset_is_one_line_error(tmp_path: Path) -> None:
    proc = cli("evaluate", "--data", str(tmp_path), "--json")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "not a WISDM-2019 directory" in proc.stderr


def test_unknown_model_is_one_line_error(wisdm_root: Path) -> None:
    proc = cli("evaluate", "--data", str(wisdm_root), "--model", "no-such-model")
    assert proc.returncode == 2 and "unknown model 'no-such-model'" in proc.stderr


def test_evaluate_json_is_exactly_one_object(wisdm_root: Path, tiny_program: Path) -> None:
    proc = cli("evaluate", "--data", str(wisdm_root), "--model", str(tiny_program), "--json",
               "--subjects", "1600,1601")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert isinstance(result, dict)
    assert {"accuracy", "macro_f1", "n_windows", "n_subjects", "per_class", "confusion", "model"} <= set(result)
    assert result["n_subjects"] == 2 and result["model"] == "tiny-test"
    assert set(result["per_class"]) == {"typing", "teeth", "catch", "dribbling", "writing", "clapping", "folding"}
    assert sum(map(sum, result["confusion"])) == result["n_windows"]
    assert sum(c["support"] for c in result["per_class"].values()) == result["n_windows"]
    assert 0 <= result["accuracy"] <= 1


def test_wisdm_recording_then_replay_file_is_readable(wisdm_root: Path, tmp_path: Path) -> None:
    from l2mu.agent.recording import read_recording

    out = tmp_path / "s.csv.gz"
    proc = cli("wisdm-recording", "--data", str(wisdm_root), "--subject", "1600", "--out", str(out),
               "--activities", "FQ", "--seconds", "5")
    assert proc.returncode == 0, proc.stderr
    samples = read_recording(out)
    assert {s.label for s in samples} == {"typing", "writing"}
    assert {s.sensor for s in samples} == {"acc", "gyro"}
    assert 360 <= len(samples) <= 440  # 10 s × 2 sensors × ~20 Hz
