"""Decision smoothing: the published activity is stable, and on a real held-out recording it costs
(almost) no stream-level accuracy against publishing each window's own argmax."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from l2mu.agent.smoothing import HmmFilter, MajorityVote, NoSmoothing, make_smoother

from .conftest import cli_command


def one_hot(i: int, n: int = 3, p: float = 0.9) -> np.ndarray:
    v = np.full(n, (1 - p) / (n - 1))
    v[i] = p
    return v


@pytest.mark.parametrize("smoother", [MajorityVote(5), HmmFilter(3, 5)], ids=["majority", "hmm"])
def test_smoother_ignores_a_flicker_and_follows_a_lasting_change(smoother) -> None:  # noqa: ANN001
    stream = [0] * 6 + [1] + [0] * 3 + [2] * 6
    out = [smoother.update(one_hot(i)) for i in stream]
    assert out[:10] == [0] * 10  # the single window of class 1 is not published
    assert out[-1] == 2 and out.count(2) >= 2  # the lasting change is, a few windows late
    assert sum(a != b for a, b in zip(out, out[1:], strict=False)) == 1


def test_majority_needs_a_strict_majority_of_the_window() -> None:
    m = MajorityVote(4)
    assert [m.update(one_hot(i)) for i in (0, 1, 1, 2, 1)] == [0, 0, 0, 0, 1]  # 2 of 4 is not enough; 3 is


def test_no_smoothing_and_bad_kinds() -> None:
    assert NoSmoothing().update(one_hot(2)) == 2
    with pytest.raises(ValueError, match="--smoothing"):
        make_smoother("kalman", 3)
    with pytest.raises(ValueError):
        make_smoother("majority", 3, 0)


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
