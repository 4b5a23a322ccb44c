"""WISDM windows for compression work, normalised exactly as the agent normalises them.

Which subjects serve which purpose is fixed here, so that no compression step can touch the
held-out test subjects: calibration and fine-tuning use training subjects, selection uses
validation subjects, and only the final report reads the test subjects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from l2mu.model import wisdm
from l2mu.model.metadata import ModelMetadata
from l2mu.model.splits import TEST_SUBJECTS, split_subjects
from l2mu.model.train import labelled_windows


def normalise_windows(x: np.ndarray, meta: ModelMetadata) -> np.ndarray:
    return ((x - np.asarray(meta.norm_mean)) / np.asarray(meta.norm_std)).astype(np.float32)


def fit_subjects(data: Path, meta: ModelMetadata, pool: Sequence[int] | None = None,
                 validation: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """(training, validation) subjects: the ones the checkpoint was trained and selected with, else the
    fixed split; test subjects are removed whatever the checkpoint or the caller says."""
    available = wisdm.list_subjects(data, meta.sensors)
    if not available:
        raise wisdm.DatasetError(f"{data}: no subject has all of {', '.join(meta.sensors)}")
    if pool is None and validation is None and meta.training.get("train_subjects"):
        train = [s for s in meta.training["train_subjects"] if s in available]
        val = [s for s in meta.training.get("validation_subjects", []) if s in available]
    else:
        train, val = split_subjects(available, pool, validation)
    held_out = set(TEST_SUBJECTS)
    train, val = [s for s in train if s not in held_out], [s for s in val if s not in held_out]
    if not train:
        raise wisdm.DatasetError(f"{data}: no training subjects left (test subjects {list(TEST_SUBJECTS)} excluded)")
    return train, val


def raw_windows(data: Path, meta: ModelMetadata, subjects: Sequence[int], hop: int) -> tuple[np.ndarray, np.ndarray]:
    """(raw windows [W, T, C] in SI units, labels [W]) of the model's classes."""
    x, y, _ = labelled_windows(data, list(subjects), tuple(meta.sensors), tuple(meta.classes), hop,
                               window=meta.window_samples)
    if len(x) == 0:
        raise wisdm.DatasetError(f"{data}: no windows of {', '.join(meta.classes)} for subjects {list(subjects)}")
    return x, y
