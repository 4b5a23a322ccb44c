"""The model runtime: the bundled default program is there and intact."""

from __future__ import annotations

from l2mu.agent.runtime import DEFAULT_MODEL, bundled_dir, bundled_models, resolve_model
from l2mu.model.metadata import read_metadata
from l2mu.model.splits import TEST_SUBJECTS


def test_default_model_is_bundled_and_intact() -> None:
    assert DEFAULT_MODEL in bundled_models()
    meta = read_metadata(resolve_model(None))  # checks the program's hash against its metadata
    assert meta.sensors == ["acc", "gyro"] and meta.window_samples == 40 and meta.sample_rate_hz == 20
    held_out = set(meta.training["test_subjects_held_out"])
    assert held_out == set(TEST_SUBJECTS)
    assert not held_out & set(meta.training["train_subjects"] + meta.training["validation_subjects"])
    assert (bundled_dir() / f"{DEFAULT_MODEL}.pt").is_file()
