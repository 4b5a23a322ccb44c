"""Training on a few real subjects for a few steps: outputs, reproducibility, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from l2mu.model.checkpoint import load_checkpoint
from l2mu.model.metrics import classification_report
from l2mu.model.train import TrainConfig, labels_for, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, wisdm_root: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("train")
    cfg = TrainConfig(data=wisdm_root, out=out, epochs=2, subjects=[1600, 1601, 1604], val_subjects=[1604],
                      max_steps_per_epoch=4, batch_size=32, model={"hidden": 16, "input_hidden": 16})
    return out, train(cfg, progress=False)


def test_training_writes_checkpoint_report_and_plots(trained: tuple[Path, dict]) -> None:
    out, report = trained
    for name in ("checkpoint.pt", "report.json", "curves.png", "confusion.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "report.json").read_text())
    assert saved["subjects"]["train_subjects"] == [1600, 1601]
    assert saved["subjects"]["validation_subjects"] == [1604]
    assert len(saved["history"]) == 2
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt.metadata.classes == ["F", "G", "O", "P", "Q", "R", "S"]
    assert len(ckpt.metadata.norm_mean) == 6 and all(s > 0 for s in ckpt.metadata.norm_std)


def test_training_is_reproducible(trained: tuple[Path, dict], wisdm_root: Path, tmp_path: Path) -> None:
    _, first = trained
    cfg = TrainConfig(data=wisdm_root, out=tmp_path, epochs=2, subjects=[1600, 1601, 1604], val_subjects=[1604],
                      max_steps_per_epoch=4, batch_size=32, model={"hidden": 16, "input_hidden": 16})
    second = train(cfg, progress=False)
    assert [h["train_loss"] for h in second["history"]] == [h["train_loss"] for h in first["history"]]


def test_hand8_maps_remaining_activities_to_other() -> None:
    y = labels_for(np.array(["F", "A", "S", "M"]), ("F", "G", "O", "P", "Q", "R", "S", "other"))
    assert y.tolist() == [0, 7, 6, 7]
    assert labels_for(np.array(["F", "A"]), ("F", "G")).tolist() == [0, -1]


def test_metrics_on_a_known_confusion() -> None:
    r = classification_report(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ["a", "b", "c"])
    assert r["accuracy"] == pytest.approx(0.6)
    assert r["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert r["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                                   "support": 2}
    assert r["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
