"""Score a model (exported .pte or eager checkpoint) on WISDM windows of chosen subjects."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from l2mu.model import wisdm
from l2mu.model.metadata import ModelMetadata
from l2mu.model.metrics import classification_report
from l2mu.model.train import labelled_windows


def evaluate_windows(
    data: Path,
    meta: ModelMetadata,
    counts_fn: Callable[[np.ndarray], np.ndarray],
    subjects: Sequence[int] | None = None,
    hop: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cost_fn: Callable[[np.ndarray], dict] | None = None,
) -> dict:
    """counts_fn maps normalised windows [W, T, C] → counts [W, K]; cost_fn (optional) maps the same
    windows to compute-cost figures (SynOps, MACs) merged into the result under "cost"."""
    available = wisdm.list_subjects(data, meta.sensors)
    chosen = sorted(set(subjects) & set(available)) if subjects else available
    if not chosen:
        wanted = f"subjects {list(subjects)}" if subjects else "any subject"
        raise wisdm.DatasetError(f"{data}: no data with {'+'.join(meta.sensors)} for {wanted}")
    classes = tuple(meta.classes)
    hop = hop or meta.window_samples
    x, y, _ = labelled_windows(data, chosen, tuple(meta.sensors), classes, hop, window=meta.window_samples)
    if len(x) == 0:
        raise wisdm.DatasetError(f"{data}: no windows of the classes {', '.join(classes)}")
    x = ((x - np.asarray(meta.norm_mean)) / np.asarray(meta.norm_std)).astype(np.float32)
    chunk = 256
    counts = []
    for i in range(0, len(x), chunk):
        counts.append(counts_fn(x[i : i + chunk]))
        if progress:
            progress(min(i + chunk, len(x)), len(x))
    pred = np.concatenate(counts).argmax(1)
    report = classification_report(y, pred, meta.class_names)
    return {
        "model": meta.name,
        **{k: report[k] for k in ("accuracy", "macro_f1")},
        "n_windows": int(len(y)),
        "n_subjects": len(chosen),
        "subjects": chosen,
        "per_class": report["per_class"],
        "confusion": report["confusion"],
        "classes": meta.class_names,
        **({"cost": cost_fn(x)} if cost_fn else {}),
    }
