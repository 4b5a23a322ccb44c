"""Training, evaluation and personalisation on recordings made from real WISDM wearers (a few steps each)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from l2mu.agent.errors import RecordingError
from l2mu.agent.events import Sample
from l2mu.agent.recording import recording_from_wisdm, write_recording
from l2mu.model.checkpoint import load_checkpoint
from l2mu.model.evaluate import evaluate_recordings
from l2mu.model.personalise import PersonaliseConfig, personalise, split_held_out, wearer_segments
from l2mu.model.recordings import load_segments
from l2mu.model.train import TrainConfig, train
from l2mu.model.trainingdata import ClassSet

SMALL = {"hidden": 16, "input_hidden": 16, "theta": 10.0}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, wisdm_root: Path) -> Path:
    """Three wearers, 20 s each of typing, teeth and catch, in the `record` format."""
    root = tmp_path_factory.mktemp("recordings")
    for subject in (1600, 1601, 1604):
        folder = root / f"w{subject}"
        folder.mkdir()
        write_recording(folder / "session.csv.gz", recording_from_wisdm(wisdm_root, subject, "FGO", 20.0))
    return root


def small_config(out: Path, **kw: object) -> TrainConfig:
    base = {"data": None, "out": out, "classes": None, "epochs": 1, "max_steps_per_epoch": 2, "batch_size": 16,
            "window": 10, "model": SMALL}
    return TrainConfig(**{**base, **kw})


def test_training_on_recordings_writes_the_usual_outputs(recorded: Path, tmp_path: Path) -> None:
    report = train(small_config(tmp_path, recordings=[recorded]), progress=False)
    for name in ("checkpoint.pt", "report.json", "curves.png", "confusion.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    meta = load_checkpoint(tmp_path / "checkpoint.pt").metadata
    assert meta.class_names == ["catch", "teeth", "typing"] and meta.classes == ["O", "G", "F"]
    assert meta.window_samples == 10
    assert meta.training["train_wearers"] == ["w1600", "w1601"] and meta.training["validation_wearers"] == ["w1604"]
    assert set(report["validation"]["by_subject"]) == {"w1604"}
    assert json.loads((tmp_path / "report.json").read_text())["subjects"]["recordings"] == [str(recorded)]


def test_wisdm_and_recordings_train_together_on_one_set_of_classes(recorded: Path, wisdm_root: Path,
                                                                   tmp_path: Path) -> None:
    report = train(small_config(tmp_path, data=wisdm_root, classes="hand7", subjects=[1603], val_subjects=[],
                                recordings=[recorded], val_wearers=["w1604"]), progress=False)
    split = report["subjects"]
    assert split["train_subjects"] == [1603] and split["train_wearers"] == ["w1600", "w1601"]
    assert split["validation_wearers"] == ["w1604"]
    assert load_checkpoint(tmp_path / "checkpoint.pt").metadata.classes == ["F", "G", "O", "P", "Q", "R", "S"]


def test_evaluation_on_recordings_reports_every_wearer(recorded: Path, tiny_checkpoint: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)

    def counts(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return ckpt.model(torch.from_numpy(x)).numpy()

    result = evaluate_recordings([recorded], ckpt.metadata, counts)
    assert {"accuracy", "macro_f1", "per_class", "confusion", "n_windows", "by_wearer"} <= set(result)
    assert sorted(result["by_wearer"]) == ["w1600", "w1601", "w1604"]
    assert sum(w["n_windows"] for w in result["by_wearer"].values()) == result["n_windows"]
    assert np.array(result["confusion"]).sum() == result["n_windows"]


def test_the_held_out_part_is_the_end_of_each_class_and_overlaps_nothing(recorded: Path) -> None:
    segments = load_segments([recorded / "w1600"], ("acc", "gyro"), 20.0, 10)
    cs = ClassSet(("F", "G", "O"), ("typing", "teeth", "catch"))
    fit, held = split_held_out(segments, cs, 0.25, 10, 20.0)
    for label in ("typing", "teeth", "catch"):
        total = sum(len(s.values) for s in segments if s.label == label)
        n_fit = sum(len(s.values) for s in fit if s.label == label)
        n_held = sum(len(s.values) for s in held if s.label == label)
        assert n_fit + n_held == total and n_held == round(0.25 * total)
        whole = np.concatenate([s.values for s in segments if s.label == label])
        np.testing.assert_array_equal(np.concatenate([s.values for s in fit + held if s.label == label]), whole)


def test_personalisation_fine_tunes_the_given_model_and_never_ends_worse(recorded: Path, tiny_checkpoint: Path,
                                                                         tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    segments = wearer_segments([recorded / "w1601"], ckpt)
    report = personalise(ckpt, segments, tmp_path, PersonaliseConfig(epochs=2, trainable="readout"))
    assert report["history"][0]["epoch"] == -1
    best = next(h for h in report["history"] if h["epoch"] == report["best_epoch"])
    assert best["val_macro_f1"] >= report["history"][0]["val_macro_f1"]
    tuned = load_checkpoint(tmp_path / "checkpoint.pt")
    assert tuned.metadata.norm_mean == ckpt.metadata.norm_mean and tuned.metadata.classes == ckpt.metadata.classes
    assert tuned.metadata.training["fine_tuned_from"] == "tiny-test"
    assert tuned.metadata.training["personal_wearer"] == "w1601"
    assert tuned.metadata.training["classes_without_data"] == ["dribbling", "writing", "clapping", "folding"]
    # readout: the input module and the memory's input weights are exactly the shipped ones
    for name in ("inj_gain", "fc_in1.weight", "e_x.weight"):
        assert torch.equal(tuned.model.state_dict()[name], ckpt.model.state_dict()[name]), name


def test_personalisation_refuses_labels_the_model_does_not_know_and_several_wearers(
        recorded: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    with pytest.raises(RecordingError, match="for one wearer"):
        wearer_segments([recorded], ckpt)
    rows = [Sample(i / 20, sensor, (0.1, 9.8, 0.1), "cooking") for i in range(100) for sensor in ("acc", "gyro")]
    (tmp_path / "me").mkdir()
    write_recording(tmp_path / "me" / "a.csv", rows)
    with pytest.raises(RecordingError, match="'cooking' is not one of tiny-test's classes"):
        wearer_segments([tmp_path / "me"], ckpt)


def test_other_is_capped_to_the_average_present_class_alike_in_training_and_personalisation() -> None:
    from l2mu.model.trainingdata import other_capped

    classes = ("typing", "writing", "clapping", "other")
    y = np.array([0] * 10 + [1] * 6 + [3] * 40 + [-1] * 3)  # clapping absent, three windows of no class
    keep = other_capped(y, classes, np.random.default_rng(0))
    assert np.bincount(y[keep]).tolist() == [10, 6, 0, 8]  # other: (10 + 6) // 2 present classes
    assert not keep[y == -1].any()
    assert other_capped(y[y != 3], classes, np.random.default_rng(0)).sum() == 16  # nothing to cap
