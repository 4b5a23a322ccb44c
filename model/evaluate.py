"""Score a model (exported .pte or eager checkpoint) on WISDM windows of chosen subjects, or on labelled recordings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from l2mu.agent.errors import RecordingError
from l2mu.model import wisdm
from l2mu.model.metadata import ModelMetadata
from l2mu.model.metrics import classification_report
from l2mu.model.recordings import cut_windows, load_segments
from l2mu.model.train import labelled_windows, scores_by_subject
from l2mu.model.trainingdata import ClassSet


def evaluate_windows(
    data: Path,
    meta: ModelMetadata,
    counts_fn: Callable[[np.ndarray], np.ndarray],
    subjects: Sequence[int] | None = None,
    hop: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cost_fn: Callable[[np.ndarray], dict] | None = None,
    watch_rate_hz: float | None = None,
) -> dict:
    """counts_fn maps normalised windows [W, T, C] → counts [W, K]; cost_fn (optional) maps the same
    windows to compute-cost figures (SynOps, MACs) merged into the result under "cost".
    watch_rate_hz: score the windows as a watch sampling at this rate (< 20 Hz) would deliver them
    through the agent's resampler (`l2mu.model.augment.slower_watch`)."""
    available = wisdm.list_subjects(data, meta.sensors)
    chosen = sorted(set(subjects) & set(available)) if subjects else available
    if not chosen:
        wanted = f"subjects {list(subjects)}" if subjects else "any subject"
        raise wisdm.DatasetError(f"{data}: no data with {'+'.join(meta.sensors)} for {wanted}")
    classes = tuple(meta.classes)
    hop = hop or meta.window_samples
    x, y, subj = labelled_windows(data, chosen, tuple(meta.sensors), classes, hop, window=meta.window_samples)
    if len(x) == 0:
        raise wisdm.DatasetError(f"{data}: no windows of the classes {', '.join(classes)}")
    if watch_rate_hz is not None:
        import torch

        from l2mu.model.augment import slower_watch

        x = slower_watch(torch.from_numpy(x), watch_rate_hz).numpy()
    x = ((x - np.asarray(meta.norm_mean)) / np.asarray(meta.norm_std)).astype(np.float32)
    pred = predict(x, counts_fn, progress)
    report = classification_report(y, pred, meta.class_names)
    by_subject = scores_by_subject(y, pred, subj, meta.class_names)
    return {
        "model": meta.name,
        **{k: report[k] for k in ("accuracy", "macro_f1")},
        "n_windows": int(len(y)),
        "n_subjects": len(chosen),
        "subjects": chosen,
        "per_class": report["per_class"],
        "confusion": report["confusion"],
        "classes": meta.class_names,
        "by_subject": by_subject,
        "watch_rate_hz": watch_rate_hz or meta.sample_rate_hz,
        **({"cost": cost_fn(x)} if cost_fn else {}),
    }


def predict(x: np.ndarray, counts_fn: Callable[[np.ndarray], np.ndarray],
            progress: Callable[[int, int], None] | None = None, chunk: int = 256) -> np.ndarray:
    counts = []
    for i in range(0, len(x), chunk):
        counts.append(counts_fn(x[i : i + chunk]))
        if progress:
            progress(min(i + chunk, len(x)), len(x))
    return np.concatenate(counts).argmax(1)


def recorded_eval_windows(dirs: Sequence[Path], meta: ModelMetadata, hop: int | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """(raw windows, class index, wearer, windows per label that is none of the model's classes)."""
    segments = load_segments(dirs, meta.sensors, meta.sample_rate_hz, meta.window_samples)
    w = cut_windows(segments, meta.window_samples, hop or meta.window_samples)
    y = ClassSet(tuple(meta.classes), tuple(meta.class_names)).index(w.label)
    unmatched = {str(lab): int((w.label[y < 0] == lab).sum()) for lab in sorted(set(w.label[y < 0].tolist()))}
    if not (y >= 0).any():
        raise RecordingError(
            f"{', '.join(map(str, dirs))}: no window labelled with one of {meta.name}'s classes "
            f"({', '.join(meta.class_names)}, or their codes {','.join(meta.classes)}); labels found: "
            f"{', '.join(unmatched)}")
    keep = y >= 0
    return w.x[keep], y[keep], w.wearer[keep], unmatched


def evaluate_recordings(
    dirs: Sequence[Path],
    meta: ModelMetadata,
    counts_fn: Callable[[np.ndarray], np.ndarray],
    hop: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """The same figures as `evaluate_windows`, on recorded wearers (resampled as the agent does online),
    with a per-wearer table; windows whose label is none of the model's classes are left out and counted."""
    x, y, wearer, unmatched = recorded_eval_windows(dirs, meta, hop)
    x = ((x - np.asarray(meta.norm_mean)) / np.asarray(meta.norm_std)).astype(np.float32)
    pred = predict(x, counts_fn, progress)
    report = classification_report(y, pred, meta.class_names)
    wearers = sorted(set(wearer.tolist()))
    return {
        "model": meta.name,
        **{k: report[k] for k in ("accuracy", "macro_f1")},
        "n_windows": int(len(y)),
        "n_wearers": len(wearers),
        "wearers": wearers,
        "per_class": report["per_class"],
        "confusion": report["confusion"],
        "classes": meta.class_names,
        "by_wearer": scores_by_subject(y, pred, wearer, meta.class_names),
        "unmatched_labels": unmatched,
    }
