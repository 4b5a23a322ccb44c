"""Choose the agent's decision smoothing by the cross-subject protocol, not on test subjects.

For each fold's model and each of its validation subjects, the seven hand activities are played
back to back (60 s each after the first 20 s, as `stream-accuracy` plays them), cut into the
agent's decisions (a 2 s window every 1 s), and every smoothing kind of `l2mu.agent.smoothing`
runs over the decision sequence. Scored: decisions whose published activity equals their window's
majority label, and how often the published activity changes (true changes: 6 per subject)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from l2mu.agent.settings import DEFAULTS, SMOOTHING_KINDS
from l2mu.agent.smoothing import make_smoother
from l2mu.model import wisdm
from l2mu.model.checkpoint import load_checkpoint
from l2mu.model.train import SENSOR_SETS

HOP = 20  # one decision per second at 20 Hz


def played_back_to_back(root: Path, subject: int, sensors: tuple[str, ...], codes: str, seconds: float = 60.0,
                        skip_s: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """(values [N, C] on the 20 Hz grid, activity code per sample [N]) for the activities in order."""
    values, labels = [], []
    recs = wisdm.load_subject(root, subject, sensors, set(codes))
    for code in codes:
        pieces = [r for r in recs if r.activity == code]
        if not pieces:
            continue
        run = np.concatenate([p.values for p in pieces])
        start = int(skip_s * wisdm.SAMPLE_RATE_HZ)
        run = run[start : start + int(seconds * wisdm.SAMPLE_RATE_HZ)]
        values.append(run)
        labels.append(np.full(len(run), code))
    return np.concatenate(values), np.concatenate(labels)


def smoothing_scores(checkpoint: Path, root: Path, subjects: list[int],
                     window: int = DEFAULTS.smoothing_window) -> dict:
    ckpt = load_checkpoint(checkpoint)
    meta, net = ckpt.metadata, ckpt.model
    classes = list(meta.classes)
    codes = "".join(c for c in wisdm.HAND7 if c in classes)
    sensors = tuple(meta.sensors) if meta.sensors else SENSOR_SETS["acc-gyro"]
    out: dict[str, dict] = {}
    for subject in subjects:
        x, lab = played_back_to_back(root, subject, sensors, codes)
        t = meta.window_samples
        starts = range(0, len(x) - t + 1, HOP)
        wins = np.stack([x[s : s + t] for s in starts])
        truth = []
        for s in starts:
            codes_in, n = np.unique(lab[s : s + t], return_counts=True)
            truth.append(classes.index(codes_in[np.argmax(n)]))
        norm = ((wins - np.asarray(meta.norm_mean)) / np.asarray(meta.norm_std)).astype(np.float32)
        with torch.no_grad():
            counts = net(torch.from_numpy(norm)).numpy()
        probs = np.exp(counts - counts.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        row = {}
        for kind in SMOOTHING_KINDS:
            smoother = make_smoother(kind, len(classes), window)
            shown = [smoother.update(p) for p in probs]
            row[kind] = {"accuracy": float(np.mean(np.array(shown) == np.array(truth))),
                         "changes": int(sum(a != b for a, b in zip(shown, shown[1:], strict=False)))}
        out[str(subject)] = row
    return out


def summarise_smoothing(per_subject: dict[str, dict]) -> dict:
    kinds = next(iter(per_subject.values())).keys()
    return {k: {"accuracy": float(np.mean([r[k]["accuracy"] for r in per_subject.values()])),
                "accuracy_sd": float(np.std([r[k]["accuracy"] for r in per_subject.values()], ddof=1)),
                "changes_per_subject": float(np.mean([r[k]["changes"] for r in per_subject.values()]))}
            for k in kinds}
