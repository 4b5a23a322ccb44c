"""Stream-level accuracy (l2mu.agent.bench.stream_accuracy): smoothing on a held-out subject, and the command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import cli_command


@pytest.fixture(scope="module")
def held_out_model(request: pytest.FixtureRequest) -> Path:
    """The bundled model when it is there, else the tiny test export."""
    from l2mu.agent.runtime import bundled_dir, resolve_model

    if (bundled_dir() / "hand7-acc-gyro.pte").is_file():
        return resolve_model(None)
    return request.getfixturevalue("tiny_program")


def test_smoothing_keeps_stream_accuracy_and_changes_less_on_a_held_out_subject(held_out_model: Path,
                                                                                wisdm_root: Path) -> None:
    from l2mu.agent.bench.stream_accuracy import measure_wisdm_subject
    from l2mu.agent.runtime import ExecuTorchClassifier
    from l2mu.model.splits import TEST_SUBJECTS

    clf = ExecuTorchClassifier(held_out_model)
    report = measure_wisdm_subject(wisdm_root, TEST_SUBJECTS[0], clf, ["none", "majority", "hmm"], 5,
                                   "FGOPQRS", 30.0)
    by_kind = {r["smoothing"]: r for r in report["results"]}
    none = by_kind["none"]
    assert none["decisions"] >= 190 and none["seconds"] > 190
    assert none["stream_accuracy"] == none["stream_accuracy_raw"] and none["changes"] == none["changes_raw"]
    for kind in ("majority", "hmm"):
        r = by_kind[kind]
        assert r["stream_accuracy_raw"] == pytest.approx(none["stream_accuracy_raw"])  # same windows, same model
        assert r["stream_accuracy"] >= r["stream_accuracy_raw"] - 0.03, (kind, r)
        assert r["changes"] < r["changes_raw"], (kind, r)


def test_stream_accuracy_command_prints_json(held_out_model: Path, wisdm_root: Path) -> None:
    proc = subprocess.run([*cli_command(), "stream-accuracy", "--data", str(wisdm_root), "--model",
                           str(held_out_model), "--subjects", "1615", "--activities", "FG", "--seconds", "10",
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["subject"] == 1615 and [r["smoothing"] for r in report["results"]] == ["none", "majority", "hmm"]
    assert all(0 <= r["stream_accuracy"] <= 1 for r in report["results"])
