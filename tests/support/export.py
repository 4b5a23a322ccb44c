"""Helpers for the export and compression tests (no tests here): real windows, the step path's counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l2mu.agent.runtime import ExecuTorchClassifier
from l2mu.model import wisdm
from tests.support.cli import TINY_WINDOW


def real_windows(root: Path, meta, n: int = 200) -> np.ndarray:  # noqa: ANN001
    """n real windows (subject 1601, hand activities), normalised as the agent does."""
    w = wisdm.load_windows(root, [1601], activities=wisdm.HAND7, hop=TINY_WINDOW)
    x = w.x[:: max(1, len(w.x) // n)][:n, :TINY_WINDOW]
    return ((x - np.asarray(meta.norm_mean)) / np.asarray(meta.norm_std)).astype(np.float32)


def step_counts(clf: ExecuTorchClassifier, window: np.ndarray) -> np.ndarray:
    """`step` applied to every sample of the window from the zero state: the counts it ends with."""
    state = clf.initial_state()
    counts = None
    for sample in window:
        counts, state = clf.step(sample, state)
        np.testing.assert_array_equal(state[0][0], counts)  # the counts head the state
    return counts
