"""The cross-subject protocol: folds partition the non-test subjects, never share a subject between
training and validation, and a fold run resumes instead of retraining."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2mu.model.crossval import crossval, pool_subjects, subject_folds
from l2mu.model.splits import TEST_SUBJECTS
from l2mu.model.train import TrainConfig


def test_folds_partition_the_subjects() -> None:
    subjects = list(range(1600, 1630))
    folds = subject_folds(subjects, 5)
    assert [len(f) for f in folds] == [6] * 5
    assert sorted(s for f in folds for s in f) == subjects
    assert subject_folds(subjects, 5) == folds  # deterministic
    assert subject_folds(subjects, 5, seed=1) != folds
    assert [len(f) for f in subject_folds(subjects[:7], 3)] == [3, 2, 2]
    with pytest.raises(ValueError, match="folds"):
        subject_folds(subjects[:3], 4)


def test_pool_never_holds_a_test_subject(wisdm_root: Path) -> None:
    pool = pool_subjects(TrainConfig(data=wisdm_root, out=Path("unused")))
    assert len(pool) == 30
    assert not set(pool) & set(TEST_SUBJECTS)


def test_each_fold_trains_without_its_validation_subjects(wisdm_root: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(data=wisdm_root, out=tmp_path, epochs=1, subjects=[1600, 1601, 1603, 1604],
                      max_steps_per_epoch=2, batch_size=16, model={"hidden": 8, "input_hidden": 8, "memory_size": 2,
                                                                   "order": 2}, eval_rates_hz=(10.0,))
    summary = crossval(cfg, k=2)
    assert summary is not None
    seen = []
    for i, fold in enumerate(summary["folds"]):
        report = json.loads((tmp_path / f"fold{i}" / "report.json").read_text())
        train_subj, val_subj = report["subjects"]["train_subjects"], report["subjects"]["validation_subjects"]
        assert val_subj == fold
        assert not set(train_subj) & set(val_subj)
        assert sorted(train_subj + val_subj) == [1600, 1601, 1603, 1604]
        assert set(report["validation"]["by_subject"]) == {str(s) for s in fold}
        seen += val_subj
    assert sorted(seen) == [1600, 1601, 1603, 1604]
    assert set(summary["by_subject"]) == {str(s) for s in seen}
    assert 0 <= summary["accuracy"]["mean"] <= 1 and summary["accuracy"]["sd"] >= 0
    assert set(summary["firing_rate"]) == {"u", "m", "h", "out"}
    # SynOps per validation window: each fold's own count, averaged.
    synops = [json.loads((tmp_path / f"fold{i}" / "report.json").read_text())["validation"]["cost"]
              ["synops_per_window"] for i in range(2)]
    assert all(v > 0 for v in synops)
    assert summary["cost"]["synops_per_window"]["mean"] == pytest.approx(sum(synops) / 2)
    assert set(summary["at_rate_hz"]) == {"10"}
    assert set(summary["smoothing"]) == {"majority", "hmm", "none"}
    assert all(0 <= v["accuracy"] <= 1 for v in summary["smoothing"].values())
    # A second call finds every fold done with the same recipe and retrains nothing.
    stamp = (tmp_path / "fold0" / "checkpoint.pt").stat().st_mtime_ns
    assert crossval(cfg, k=2) == summary
    assert (tmp_path / "fold0" / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_final_fit_trains_on_every_given_subject_for_the_given_epochs(wisdm_root: Path, tmp_path: Path) -> None:
    from l2mu.model.train import train

    cfg = TrainConfig(data=wisdm_root, out=tmp_path, epochs=2, subjects=[1600, 1601], val_subjects=[], keep="last",
                      max_steps_per_epoch=2, batch_size=16, model={"hidden": 8, "input_hidden": 8})
    report = train(cfg, progress=False)
    assert report["subjects"]["train_subjects"] == [1600, 1601]
    assert report["subjects"]["validation_subjects"] == []
    assert len(report["history"]) == 2 and report["validation"] == {}
    assert (tmp_path / "checkpoint.pt").stat().st_size > 0
